//! PROXY protocol (HAProxy, versions 1 and 2): the header that tells a server behind a proxy
//! who the real client is.
//!
//! Pure / no I/O. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//! This module writes v2 headers (toward the fronting site, PROTOCOL.md §6).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

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
}
