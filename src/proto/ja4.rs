//! JA4 fingerprints of ClientHellos (FoxIO's published definition, `technical_details/JA4.md`),
//! computed for every hello before any secret is checked, so that an operator sees which apps
//! connect and what probes arrive (`io::ja4stats` counts them).
//!
//! `JA4 = a_b_c`:
//! * `a`: `t` (TCP), the TLS version (the highest non-GREASE supported_versions value, else the
//!   hello's legacy version: `13`, `12`, `11`, `10`, `s3`, `s2`, `00`), `d` with an SNI
//!   extension else `i`, the number of cipher suites and of extensions (GREASE ignored, SNI and
//!   ALPN counted, at most 99), the first and last character of the first ALPN value (`00`
//!   without one; a byte ≥ 0x80 as `9`, `99` when either end is a control byte, as FoxIO's
//!   Python and Rust implementations do);
//! * `b`: SHA-256 of the sorted cipher suites (4 lowercase hex digits each, comma separated,
//!   GREASE removed), first 12 hex digits (`000000000000` without any);
//! * `c`: SHA-256 of the sorted extensions (GREASE, SNI 0000 and ALPN 0010 removed), then `_`
//!   and the signature algorithms in their order (no `_` without any), first 12 hex digits.
//!
//! Pure; no allocation. A hello with more than [`MAX_ITEMS`] cipher suites, extensions or
//! signature algorithms has no fingerprint here (counted as "other": real clients send a few
//! dozen, and sorting must cost a bounded time).

use sha2::{Digest, Sha256};

use super::codec::Reader;
use super::faketls::is_grease;
use super::sort_small_by_key;

/// A JA4 fingerprint: 36 ASCII bytes (`t13d1516h2_8daaf6152771_e5627efa2ab1`).
pub type Ja4 = [u8; 36];
/// Most cipher suites, extensions or signature algorithms a fingerprinted hello may have.
pub const MAX_ITEMS: usize = 128;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Items of one list, without GREASE values.
struct List {
    items: [u16; MAX_ITEMS],
    len: usize,
}

impl List {
    fn new() -> Self {
        List {
            items: [0; MAX_ITEMS],
            len: 0,
        }
    }

    /// Adds `v` unless GREASE; `None` once the list is full.
    fn push(&mut self, v: u16) -> Option<()> {
        if is_grease(v) {
            return Some(());
        }
        *self.items.get_mut(self.len)? = v;
        self.len += 1;
        Some(())
    }

    fn as_slice(&self) -> &[u16] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

fn hash_hex(h: &mut Sha256, items: &[u16], first: bool) {
    for (i, v) in items.iter().enumerate() {
        if i > 0 || !first {
            h.update(b",");
        }
        let b = v.to_be_bytes();
        h.update([
            HEX[usize::from(b[0] >> 4)],
            HEX[usize::from(b[0] & 15)],
            HEX[usize::from(b[1] >> 4)],
            HEX[usize::from(b[1] & 15)],
        ]);
    }
}

fn truncated(h: Sha256, out: &mut [u8]) {
    let d = h.finalize();
    for (i, o) in out.iter_mut().enumerate().take(12) {
        let b = d[i / 2];
        *o = HEX[usize::from(if i % 2 == 0 { b >> 4 } else { b & 15 })];
    }
}

/// One end of the first ALPN value as FoxIO's implementations write it: printable ASCII as
/// itself, a byte ≥ 0x80 as `9`, a control byte as `None` (the pair is then `99`).
fn alpn_end(b: u8) -> Option<u8> {
    match b {
        0x20..=0x7e => Some(b),
        0x80.. => Some(b'9'),
        _ => None,
    }
}

fn two_digits(n: usize, out: &mut [u8]) {
    let n = n.min(99);
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// The JA4 fingerprint of a ClientHello handshake message (`01 | u24 length | body`), or
/// `None` when it is not a well-formed ClientHello (or exceeds [`MAX_ITEMS`]).
pub fn fingerprint(msg: &[u8]) -> Option<Ja4> {
    let mut c = Reader::new(msg);
    if c.u8()? != 0x01 || c.u24()? != msg.len().checked_sub(4)? {
        return None;
    }
    let legacy = c.u16()?;
    c.take(32)?;
    let sid = c.u8()?;
    c.take(usize::from(sid))?;
    let mut ciphers = List::new();
    let suites = c.u16()?;
    let mut s = Reader::new(c.take(usize::from(suites))?);
    while !s.is_empty() {
        ciphers.push(s.u16()?)?;
    }
    let comp = c.u8()?;
    c.take(usize::from(comp))?;
    let mut exts = List::new();
    let mut sigs = List::new();
    let (mut version, mut sni, mut alpn) = (legacy, false, [b'0'; 2]);
    let mut count = 0usize;
    if !c.is_empty() {
        let ext_len = c.u16()?;
        let mut e = Reader::new(c.take(usize::from(ext_len))?);
        while !e.is_empty() {
            let kind = e.u16()?;
            let len = e.u16()?;
            let mut d = Reader::new(e.take(usize::from(len))?);
            if is_grease(kind) {
                continue;
            }
            count += 1;
            match kind {
                0x0000 => sni = true,
                0x0010 => {
                    d.u16()?;
                    let n = d.u8()?;
                    let v = d.take(usize::from(n))?;
                    if let (Some(&f), Some(&l)) = (v.first(), v.last()) {
                        alpn = match (alpn_end(f), alpn_end(l)) {
                            (Some(f), Some(l)) => [f, l],
                            _ => [b'9'; 2],
                        };
                    }
                }
                0x000d => {
                    let n = d.u16()?;
                    let mut a = Reader::new(d.take(usize::from(n))?);
                    while !a.is_empty() {
                        sigs.push(a.u16()?)?;
                    }
                }
                0x002b => {
                    let n = d.u8()?;
                    let mut v = Reader::new(d.take(usize::from(n))?);
                    let mut best = None;
                    while !v.is_empty() {
                        let x = v.u16()?;
                        if !is_grease(x) && best.is_none_or(|b| x > b) {
                            best = Some(x);
                        }
                    }
                    version = best.unwrap_or(legacy);
                }
                _ => {}
            }
            if kind != 0x0000 && kind != 0x0010 {
                exts.push(kind)?;
            }
        }
    }
    let mut out = [b'_'; 36];
    out[0] = b't';
    let v: &[u8; 2] = match version {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0002 => b"s2",
        _ => b"00",
    };
    out[1..3].copy_from_slice(v);
    out[3] = if sni { b'd' } else { b'i' };
    two_digits(ciphers.len, &mut out[4..6]);
    two_digits(count, &mut out[6..8]);
    out[8..10].copy_from_slice(&alpn);
    sort_small_by_key(&mut ciphers.items[..ciphers.len], |&x| x);
    sort_small_by_key(&mut exts.items[..exts.len], |&x| x);
    if ciphers.len == 0 {
        out[11..23].fill(b'0');
    } else {
        let mut h = Sha256::new();
        hash_hex(&mut h, ciphers.as_slice(), true);
        truncated(h, &mut out[11..23]);
    }
    if exts.len == 0 && sigs.len == 0 {
        out[24..36].fill(b'0');
    } else {
        let mut h = Sha256::new();
        hash_hex(&mut h, exts.as_slice(), true);
        if sigs.len > 0 {
            h.update(b"_");
            hash_hex(&mut h, sigs.as_slice(), true);
        }
        truncated(h, &mut out[24..36]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha12(s: &str) -> String {
        let d = Sha256::digest(s.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_string()
    }

    #[test]
    fn hashes_match_the_spec_examples() {
        // FoxIO's JA4.md worked example.
        assert_eq!(
            sha12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
            "8daaf6152771"
        );
        assert_eq!(
            sha12(
                "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,\
                 0804,0401,0503,0805,0501,0806,0601"
            ),
            "e5627efa2ab1"
        );
        let mut h = Sha256::new();
        hash_hex(&mut h, &[0x0005, 0x000a], true);
        let d = h.finalize();
        assert_eq!(d[..], Sha256::digest(b"0005,000a")[..]);
    }

    #[test]
    fn fingerprints_the_captured_tdlib_hello() {
        const TDLIB: &[u8] = include_bytes!("../../tests/data/tls/tdlib-1.8.69-client-hello.bin");
        let fp = fingerprint(&TDLIB[5..]).unwrap();
        let s = std::str::from_utf8(&fp).unwrap();
        // 15 suites, 16 extensions (18 less two GREASE), ALPN h2; the signature algorithms
        // start with ML-DSA's 0904..0906. tests/ja4.py checks it with an independent
        // implementation.
        assert_eq!(s, "t13d1516h2_8daaf6152771_806a8c22fdea");
        // Not a ClientHello, cut short, trailing bytes: no fingerprint.
        assert_eq!(fingerprint(&TDLIB[5..100]), None);
        assert_eq!(fingerprint(&[]), None);
        let mut m = TDLIB[5..].to_vec();
        m[0] = 2;
        assert_eq!(fingerprint(&m), None);
    }

    #[test]
    fn alpn_ends_as_foxio_writes_them() {
        assert_eq!(alpn_end(b'h'), Some(b'h'));
        assert_eq!(alpn_end(b'/'), Some(b'/'));
        assert_eq!(alpn_end(0xba), Some(b'9'));
        assert_eq!(alpn_end(0x1f), None);
        assert_eq!(alpn_end(0x7f), None);
        // http/1.1 first: "h1".
        const TDLIB: &[u8] = include_bytes!("../../tests/data/tls/tdlib-1.8.69-client-hello.bin");
        let mut m = TDLIB[5..].to_vec();
        let at = m.windows(5).position(|w| w == b"\x02h2\x08h").unwrap();
        m[at..at + 12].copy_from_slice(b"\x08http/1.1\x02h2");
        let fp = fingerprint(&m).unwrap();
        assert_eq!(&fp[8..10], b"h1");
        m[at + 8] = 0x01;
        assert_eq!(&fingerprint(&m).unwrap()[8..10], b"99");
    }

    #[test]
    fn no_panic_and_bounded_on_garbage() {
        let mut rng = crate::proto::XorShift64(4);
        const TDLIB: &[u8] = include_bytes!("../../tests/data/tls/tdlib-1.8.69-client-hello.bin");
        for i in 0..3000 {
            let mut m = TDLIB[5..].to_vec();
            for _ in 0..=i % 4 {
                let at = crate::proto::Rng::below(&mut rng, m.len() as u32) as usize;
                m[at] = crate::proto::Rng::below(&mut rng, 256) as u8;
            }
            if let Some(fp) = fingerprint(&m) {
                assert!(fp.iter().all(u8::is_ascii_graphic));
            }
        }
        // 200 cipher suites: over the bound, no fingerprint.
        let mut m = vec![1, 0, 0, 0, 3, 3];
        m.extend_from_slice(&[0; 32]);
        m.push(0);
        m.extend_from_slice(&400u16.to_be_bytes());
        m.extend((0..200u16).flat_map(|i| (i + 1).to_be_bytes()));
        m.extend_from_slice(&[1, 0]);
        let n = m.len() - 4;
        m[1..4].copy_from_slice(&[0, (n >> 8) as u8, n as u8]);
        assert_eq!(fingerprint(&m), None);
    }
}
