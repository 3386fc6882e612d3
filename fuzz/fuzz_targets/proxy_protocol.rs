//! PROXY protocol v1/v2 parsing of a connection's first bytes: no panic, a decision taken on a
//! prefix stands when more bytes arrive, a header never claims more bytes than it was given;
//! and a v2 header written by `write_v2` for addresses taken from the input parses back.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mtpx::proto::proxy_protocol::{self, MAX_HEADER_LEN, Parse, V2_MAX_LEN};

fn addr(b: &[u8]) -> SocketAddr {
    let port = u16::from_be_bytes([b[0], b[1]]);
    if b[2] & 1 == 0 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[3], b[4], b[5], b[6])), port)
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[3..19]);
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
    }
}

fuzz_target!(|data: &[u8]| {
    let full = proxy_protocol::parse(data);
    if let Parse::Header { consumed, .. } = full {
        assert!(consumed <= data.len() && consumed <= MAX_HEADER_LEN);
    }
    if !matches!(full, Parse::NeedMore) {
        // The shortest prefix that decides must decide the same.
        for cut in 0..data.len().min(MAX_HEADER_LEN + 1) {
            let part = proxy_protocol::parse(&data[..cut]);
            if part != Parse::NeedMore {
                assert_eq!(part, full, "prefix of {cut} bytes");
                break;
            }
        }
    }

    if data.len() >= 38 {
        let (src, dst) = (addr(&data[..19]), addr(&data[19..38]));
        let mut out = [0u8; V2_MAX_LEN];
        let n = proxy_protocol::write_v2(&mut out, src, dst);
        let want = match (src, dst) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => src,
            _ => SocketAddr::new(
                match src.ip() {
                    IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                    v6 => v6,
                },
                src.port(),
            ),
        };
        assert_eq!(
            proxy_protocol::parse(&out[..n]),
            Parse::Header {
                consumed: n,
                source: Some(want)
            }
        );
    }
});
