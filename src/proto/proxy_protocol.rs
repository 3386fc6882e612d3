//! PROXY protocol (HAProxy, versions 1 and 2): the header that tells a server behind a proxy
//! who the real client is.
//!
//! Pure / no I/O. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//! This module writes v2 headers (toward the fronting site, PROTOCOL.md §6) and parses v1 and v2
//! headers arriving on the listener (PROTOCOL.md §8.1: optional per connection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::codec::Reader;

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v2 header [`write_v2`] produces (TCP over IPv6).
pub const V2_MAX_LEN: usize = 16 + 36;

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Writes a PROXY v2 header for a TCP connection from `src` to `dst` into `out` and returns
/// its length, or 0 if `out` is shorter than [`V2_MAX_LEN`]. Mixed families are written as
/// IPv6 with the IPv4 address mapped (`::ffff:a.b.c.d`).
pub fn write_v2(out: &mut [u8], src: SocketAddr, dst: SocketAddr) -> usize {
    if out.len() < V2_MAX_LEN {
        return 0;
    }
    out[..12].copy_from_slice(&V2_SIGNATURE);
    out[12] = 0x21; // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = 0x11; // TCP over IPv4
            out[14..16].copy_from_slice(&12u16.to_be_bytes());
            out[16..20].copy_from_slice(&s.octets());
            out[20..24].copy_from_slice(&d.octets());
            out[24..26].copy_from_slice(&src.port().to_be_bytes());
            out[26..28].copy_from_slice(&dst.port().to_be_bytes());
            28
        }
        (s, d) => {
            out[13] = 0x21; // TCP over IPv6
            out[14..16].copy_from_slice(&36u16.to_be_bytes());
            out[16..32].copy_from_slice(&v6(s).octets());
            out[32..48].copy_from_slice(&v6(d).octets());
            out[48..50].copy_from_slice(&src.port().to_be_bytes());
            out[50..52].copy_from_slice(&dst.port().to_be_bytes());
            52
        }
    }
}

/// Writes a PROXY v2 LOCAL header (no addresses: "this connection is the proxy's own").
pub fn write_v2_local(out: &mut [u8]) -> usize {
    if out.len() < 16 {
        return 0;
    }
    out[..12].copy_from_slice(&V2_SIGNATURE);
    out[12] = 0x20;
    out[13] = 0x00;
    out[14..16].copy_from_slice(&0u16.to_be_bytes());
    16
}

/// The 6 bytes that start every v1 (text) header.
pub const V1_SIGNATURE: [u8; 6] = *b"PROXY ";

/// Longest v1 header, CRLF included (spec §2.1: 107 bytes).
pub const V1_MAX_LEN: usize = 107;

/// Longest header [`parse`] accepts: the 16-byte v2 preamble plus 520 bytes of addresses and
/// TLVs (the spec's practical limit: 216 bytes of UNIX addresses and room for TLVs). A v2 header
/// announcing more is [`Parse::Invalid`]. Buffer this many bytes before giving up on a header.
pub const MAX_HEADER_LEN: usize = 536;

/// The outcome of [`parse`] on the first bytes a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// The bytes so far are a prefix of a possible header: read more and call again.
    NeedMore,
    /// These bytes cannot start a PROXY header (they differ from both signatures): the
    /// connection carries no header and all its bytes belong to the client protocol.
    NotProxy,
    /// A complete header of `consumed` bytes. `source` is the real client address, or `None` for
    /// a LOCAL command, `UNKNOWN` protocol or a family without a TCP address (UNIX, UDP,
    /// unspecified): then the peer address of the socket stands.
    Header {
        /// Length of the header; the client protocol starts at `input[consumed..]`.
        consumed: usize,
        /// The client address the header announces.
        source: Option<SocketAddr>,
    },
    /// It starts like a PROXY header but is malformed or too long: close the connection.
    Invalid,
}

/// Parses an optional PROXY v1 or v2 header at the start of `input` (everything received so far
/// on the connection). Decides [`Parse::NotProxy`] as soon as the bytes differ from both
/// signatures (after one byte unless it is `P` or `\r`).
pub fn parse(input: &[u8]) -> Parse {
    let v1 = is_prefix_of_either(input, &V1_SIGNATURE);
    let v2 = is_prefix_of_either(input, &V2_SIGNATURE);
    match (v1, v2) {
        (Prefix::Full, _) => parse_v1(input),
        (_, Prefix::Full) => parse_v2(input),
        (Prefix::Partial, _) | (_, Prefix::Partial) => Parse::NeedMore,
        (Prefix::No, Prefix::No) => Parse::NotProxy,
    }
}

enum Prefix {
    /// `input` differs from `sig` within their common length.
    No,
    /// `input` is a strict prefix of `sig` (or empty).
    Partial,
    /// `input` starts with all of `sig`.
    Full,
}

fn is_prefix_of_either(input: &[u8], sig: &[u8]) -> Prefix {
    let n = input.len().min(sig.len());
    if input.get(..n) != sig.get(..n) {
        Prefix::No
    } else if n < sig.len() {
        Prefix::Partial
    } else {
        Prefix::Full
    }
}

fn parse_v1(input: &[u8]) -> Parse {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    // Stray control bytes end the matter early: a v1 line is printable ASCII up to its CRLF.
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Parse::Invalid,
                // A CRLF that would end past byte 107 is too long.
                None if window.len() >= V1_MAX_LEN => return Parse::Invalid,
                None => return Parse::NeedMore,
            },
            0x20..=0x7e => {}
            _ => return Parse::Invalid,
        }
    }
    let Some(end) = end else {
        return if window.len() >= V1_MAX_LEN {
            Parse::Invalid
        } else {
            Parse::NeedMore
        };
    };
    let Some(line) = window.get(V1_SIGNATURE.len()..end) else {
        return Parse::Invalid;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Parse::Invalid;
    };
    match v1_source(line) {
        Ok(source) => Parse::Header {
            consumed: end + 2,
            source,
        },
        Err(()) => Parse::Invalid,
    }
}

/// `line` is what follows `"PROXY "`, without the CRLF.
fn v1_source(line: &str) -> Result<Option<SocketAddr>, ()> {
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(None); // the rest of an UNKNOWN line is ignored (spec §2.1)
    }
    let mut fields = line.split(' ');
    let proto = fields.next().ok_or(())?;
    let src = fields.next().ok_or(())?;
    let dst = fields.next().ok_or(())?;
    let sport = v1_port(fields.next().ok_or(())?)?;
    v1_port(fields.next().ok_or(())?)?; // destination port: checked, not used
    if fields.next().is_some() {
        return Err(());
    }
    match proto {
        "TCP4" => {
            let s: Ipv4Addr = src.parse().map_err(|_| ())?;
            let _: Ipv4Addr = dst.parse().map_err(|_| ())?;
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(s, sport))))
        }
        "TCP6" => {
            let s: Ipv6Addr = src.parse().map_err(|_| ())?;
            let _: Ipv6Addr = dst.parse().map_err(|_| ())?;
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(s, sport, 0, 0))))
        }
        _ => Err(()),
    }
}

/// A decimal port, 1 to 5 digits, 0..=65535.
fn v1_port(s: &str) -> Result<u16, ()> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    s.parse::<u16>().map_err(|_| ())
}

fn parse_v2(input: &[u8]) -> Parse {
    let Some(&ver_cmd) = input.get(12) else {
        return Parse::NeedMore;
    };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Parse::Invalid;
    }
    let (Some(&fam), Some(len)) = (input.get(13), input.get(14..16)) else {
        return Parse::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let total = 16 + len;
    if total > MAX_HEADER_LEN {
        return Parse::Invalid;
    }
    let Some(body) = input.get(16..total) else {
        return Parse::NeedMore;
    };
    if ver_cmd & 0x0f == 0 {
        // LOCAL: the receiver ignores the family and the address block, whatever they hold.
        return Parse::Header {
            consumed: total,
            source: None,
        };
    }
    // Minimum address block per family (spec §2.2); other family bytes are invalid.
    let need = match fam {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Parse::Invalid,
    };
    if body.len() < need {
        return Parse::Invalid;
    }
    // Address block: source address, destination address, source port, destination port.
    let mut r = Reader::new(body);
    let source = match fam {
        0x11 => {
            let ip = r.take_array::<4>().map(Ipv4Addr::from);
            let port = r.take(4).and_then(|_| r.u16());
            match (ip, port) {
                (Some(ip), Some(port)) => Some(SocketAddr::V4(SocketAddrV4::new(ip, port))),
                _ => return Parse::Invalid,
            }
        }
        0x21 => {
            let ip = r.take_array::<16>().map(Ipv6Addr::from);
            let port = r.take(16).and_then(|_| r.u16());
            match (ip, port) {
                (Some(ip), Some(port)) => Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))),
                _ => return Parse::Invalid,
            }
        }
        _ => None, // UDP, UNIX, unspecified: no TCP source address to use
    };
    Parse::Header {
        consumed: total,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_v4_header_exactly() {
        let mut b = [0u8; V2_MAX_LEN];
        let n = write_v2(
            &mut b,
            "192.0.2.1:50000".parse().unwrap(),
            "198.51.100.7:443".parse().unwrap(),
        );
        assert_eq!(n, 28);
        let want: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
            0x0a, // signature
            0x21, 0x11, 0x00, 0x0c, // v2 PROXY, TCP4, 12 bytes
            192, 0, 2, 1, 198, 51, 100, 7, // addresses
            0xc3, 0x50, 0x01, 0xbb, // 50000, 443
        ];
        assert_eq!(&b[..n], &want);
    }

    #[test]
    fn writes_v6_and_mixed_headers() {
        let mut b = [0u8; V2_MAX_LEN];
        let n = write_v2(
            &mut b,
            "[2001:db8::1]:1234".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(n, 52);
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(b[16], 0x20);
        assert_eq!(b[17], 0x01);
        // dst mapped: ::ffff:127.0.0.1
        assert_eq!(
            &b[32..48],
            &Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets()
        );
        assert_eq!(&b[48..52], &[0x04, 0xd2, 0x01, 0xbb]);
    }

    #[test]
    fn rejects_short_output_and_writes_local() {
        let mut small = [0u8; 20];
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert_eq!(write_v2(&mut small, a, a), 0);
        assert_eq!(write_v2_local(&mut small), 16);
        assert_eq!(&small[12..16], &[0x20, 0, 0, 0]);
        assert_eq!(write_v2_local(&mut small[..15]), 0);
    }

    // ---- parsing ----

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(consumed: usize, source: Option<&str>) -> Parse {
        Parse::Header {
            consumed,
            source: source.map(sa),
        }
    }

    /// Every strict prefix of a valid header is NeedMore.
    fn assert_prefixes_need_more(h: &[u8]) {
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Parse::NeedMore, "prefix {n} of {h:?}");
        }
    }

    #[test]
    fn accepts_v1_spec_examples() {
        // proxy-protocol.txt §2.1 examples.
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(parse(h), header(h.len(), Some("192.168.0.1:56324")));
        let h = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(parse(h), header(h.len(), Some("255.255.255.255:65535")));
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(h), header(15, None));
        // Worst case: exactly 107 bytes.
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), V1_MAX_LEN);
        assert_eq!(parse(h), header(107, None));
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), 104);
        assert_eq!(
            parse(h),
            header(104, Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
        );
    }

    #[test]
    fn accepts_v1_ipv6_port_bounds_and_trailing_data() {
        let h = b"PROXY TCP6 2001:db8::1 ::1 0 443\r\n";
        assert_eq!(parse(h), header(h.len(), Some("[2001:db8::1]:0")));
        let mut buf = h.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01 client hello follows");
        assert_eq!(parse(&buf), header(h.len(), Some("[2001:db8::1]:0")));
        let h = b"PROXY TCP4 1.2.3.4 5.6.7.8 65535 0\r\n";
        assert_eq!(parse(h), header(h.len(), Some("1.2.3.4:65535")));
        let h = b"PROXY UNKNOWN whatever follows is ignored\r\n";
        assert_eq!(parse(h), header(h.len(), None));
    }

    #[test]
    fn rejects_v1_malformed() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n", // port too big
            b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 443\r\n", // 6 digits
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n",    // sign
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 443\r\n",    // sign
            b"PROXY TCP4 1.2.3.4 5.6.7.8  1 443\r\n",    // double space
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 443 \r\n",    // trailing space
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 443\r\n",    // double space
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",         // missing port
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",     // extra field
            b"PROXY TCP4 ::1 ::1 1 2\r\n",               // family mismatch
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",       // family mismatch
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",           // mixed
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",     // bad octet
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",       // unknown protocol
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",       // case matters
            b"PROXY UNKNOWNX\r\n",                       // not UNKNOWN
            b"PROXY \r\n",                               // empty
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",         // LF without CR
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",        // CR without LF
            b"PROXY TCP4 1.2.3.4\x00",                   // control byte, early
            b"PROXY TCP4 \xff",                          // non-ASCII, early
        ];
        for h in bad {
            assert_eq!(parse(h), Parse::Invalid, "{:?}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn rejects_v1_over_long() {
        // 108 bytes with its CRLF: one byte too many.
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(106, b'a');
        h.extend_from_slice(b"\r\n");
        assert_eq!(h.len(), 108);
        assert_eq!(parse(&h), Parse::Invalid);
        assert_eq!(parse(&h[..107]), Parse::Invalid); // CR as the 107th byte
        assert_eq!(parse(&h[..106]), Parse::NeedMore);
        // No CRLF at all within 107 bytes.
        let long = [b'P', b'R', b'O', b'X', b'Y', b' ']
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'1', 200))
            .collect::<Vec<u8>>();
        assert_eq!(parse(&long[..106]), Parse::NeedMore);
        assert_eq!(parse(&long[..107]), Parse::Invalid);
        assert_eq!(parse(&long), Parse::Invalid);
    }

    #[test]
    fn accepts_not_proxy_early() {
        assert_eq!(parse(b""), Parse::NeedMore);
        assert_eq!(parse(b"\x16"), Parse::NotProxy); // TLS record
        assert_eq!(parse(b"\xef"), Parse::NotProxy); // abridged-looking obfs2 byte
        assert_eq!(parse(b"G"), Parse::NotProxy);
        assert_eq!(parse(b"P"), Parse::NeedMore);
        assert_eq!(parse(b"\r"), Parse::NeedMore);
        assert_eq!(parse(b"PO"), Parse::NotProxy);
        assert_eq!(parse(b"PROXY"), Parse::NeedMore);
        assert_eq!(parse(b"PROXY\r\n"), Parse::NotProxy);
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT"), Parse::NeedMore);
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Parse::NotProxy);
        assert_eq!(parse(b"\r\n\r\n\x01"), Parse::NotProxy);
    }

    #[test]
    fn accepts_v2_round_trip_with_write_v2() {
        let cases = [
            ("192.0.2.1:50000", "198.51.100.7:443", "192.0.2.1:50000"),
            (
                "[2001:db8::1]:1234",
                "[2001:db8::2]:443",
                "[2001:db8::1]:1234",
            ),
            // Mixed families are written mapped; the source comes back mapped.
            ("10.1.2.3:7", "[::1]:443", "[::ffff:10.1.2.3]:7"),
        ];
        for (src, dst, want) in cases {
            let mut b = [0u8; V2_MAX_LEN + 8];
            let n = write_v2(&mut b, sa(src), sa(dst));
            b[n..].fill(0xee);
            assert_eq!(parse(&b), header(n, Some(want)));
            assert_prefixes_need_more(&b[..n]);
        }
        let mut b = [0u8; 16];
        let n = write_v2_local(&mut b);
        assert_eq!(parse(&b[..n]), header(16, None));
        assert_prefixes_need_more(&b[..n]);
    }

    #[test]
    fn accepts_v2_exact_bytes_with_tlvs() {
        // PROXY, TCP4, 12 address bytes + a 7-byte TLV (PP2_TYPE_AUTHORITY "a.b") + NOOP TLV.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 6 + 3]);
        h.extend_from_slice(&[203, 0, 113, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb]);
        h.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
        h.extend_from_slice(&[0x04, 0x00, 0x00]);
        assert_eq!(parse(&h), header(16 + 21, Some("203.0.113.9:8080")));
        assert_prefixes_need_more(&h);
    }

    #[test]
    fn accepts_v2_local_and_addressless_families() {
        // LOCAL with an address block: ignored.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x11, 0x00, 12]);
        h.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(parse(&h), header(28, None));
        // LOCAL with a nonsensical family byte is still LOCAL.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0xff, 0x00, 0x00]);
        assert_eq!(parse(&h), header(16, None));
        // PROXY over UDP4, UDP6, UNIX stream/dgram, unspecified: no usable source.
        for (fam, len) in [
            (0x12u8, 12usize),
            (0x22, 36),
            (0x31, 216),
            (0x32, 216),
            (0x00, 0),
        ] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, fam]);
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h.resize(16 + len, 0x41);
            assert_eq!(parse(&h), header(16 + len, None), "family {fam:#x}");
        }
    }

    #[test]
    fn rejects_v2_malformed() {
        let with = |ver_cmd: u8, fam: u8, len: u16, body: usize| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[ver_cmd, fam]);
            h.extend_from_slice(&len.to_be_bytes());
            h.resize(16 + body, 0);
            h
        };
        assert_eq!(parse(&with(0x11, 0x11, 12, 12)), Parse::Invalid); // version 1
        assert_eq!(parse(&with(0x31, 0x11, 12, 12)), Parse::Invalid); // version 3
        assert_eq!(parse(&with(0x22, 0x11, 12, 12)), Parse::Invalid); // command 2
        assert_eq!(parse(&with(0x21, 0x13, 12, 12)), Parse::Invalid); // transport 3
        assert_eq!(parse(&with(0x21, 0x41, 12, 12)), Parse::Invalid); // family 4
        assert_eq!(parse(&with(0x21, 0x11, 11, 11)), Parse::Invalid); // short TCP4 block
        assert_eq!(parse(&with(0x21, 0x21, 12, 12)), Parse::Invalid); // short TCP6 block
        assert_eq!(parse(&with(0x21, 0x31, 108, 108)), Parse::Invalid); // short UNIX block
        // Version/command are judged as soon as byte 12 arrives.
        assert_eq!(parse(&with(0x11, 0x11, 12, 12)[..13]), Parse::Invalid);
        // Length cap: 520 is the most accepted, 521 is refused before its body arrives.
        let max = with(0x21, 0x11, 520, 520);
        assert!(matches!(parse(&max), Parse::Header { consumed: 536, .. }));
        assert_eq!(parse(&with(0x21, 0x11, 521, 0)), Parse::Invalid);
        assert_eq!(parse(&with(0x21, 0x11, 0xffff, 0)), Parse::Invalid);
    }

    #[test]
    fn rejects_truncation_sweep() {
        let valid: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 2001:db8::1 ::1 0 443\r\n",
            b"PROXY UNKNOWN\r\n",
        ];
        for h in valid {
            assert_prefixes_need_more(h);
        }
        // Prefixes of invalid headers: NeedMore or Invalid, never a Header or NotProxy.
        let bad: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n";
        for n in 1..bad.len() {
            let r = parse(&bad[..n]);
            assert!(matches!(r, Parse::NeedMore | Parse::Invalid), "{n}: {r:?}");
        }
        assert_eq!(parse(bad), Parse::Invalid);
    }

    #[test]
    fn rejects_garbage_sweep() {
        let mut rng = crate::proto::XorShift64(0x9e11_7c0d);
        let mut buf = [0u8; 600];
        for i in 0..20_000 {
            use crate::proto::Rng;
            let n = rng.below(600) as usize;
            rng.fill(&mut buf[..n]);
            // Bias half the cases towards each signature so the parsers get exercised.
            match i % 3 {
                0 if n >= 6 => buf[..6].copy_from_slice(&V1_SIGNATURE),
                1 if n >= 14 => {
                    buf[..12].copy_from_slice(&V2_SIGNATURE);
                    buf[12] = 0x20 | (buf[12] & 1);
                }
                _ => {}
            }
            match parse(&buf[..n]) {
                Parse::Header { consumed, .. } => {
                    assert!(consumed <= n && consumed <= MAX_HEADER_LEN)
                }
                Parse::NeedMore => assert!(n < MAX_HEADER_LEN),
                Parse::NotProxy | Parse::Invalid => {}
            }
        }
    }
}
