//! The FireHOL netset parser and the IP table built from it, and `Secret::parse` (hex or
//! base64url, then the kind rules), on the input as text.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use mtpx::formats::iplist::{self, Cidr, IpTable};
use mtpx::proto::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let (cidrs, errors) = iplist::parse_netset(&text);
    for e in &errors {
        assert!(e.text.len() <= 100);
        let _ = e.to_string();
    }
    for c in &cidrs {
        // A CIDR prints in a form that parses back to itself.
        assert_eq!(Cidr::parse(&c.to_string()), Ok(*c));
        assert!(c.contains(c.addr()));
    }
    let table = IpTable::from_cidrs(&cidrs);
    for c in &cidrs {
        assert!(table.contains(c.addr()), "{c} not in its own table");
    }
    let _ = (table.len(), table.ranges(), table.is_empty());
    let probes = [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::from(u128::MAX)),
    ];
    for ip in probes {
        let _ = table.contains(ip);
    }
    let _ = IpTable::from_lists(&[cidrs.clone(), cidrs]);

    match Secret::parse(&text) {
        Ok(s) => {
            // What it prints parses back to the same secret.
            let again = Secret::parse(&s.to_hex()).expect("to_hex parses");
            assert_eq!(again.to_bytes(), s.to_bytes());
            // Hex is tried first, so a base64 form made only of hex digits (odds about
            // 1e-10 for a random key) reads as hex: the round trip holds for the others.
            let b64 = s.to_base64();
            if !b64.bytes().all(|b| b.is_ascii_hexdigit()) {
                let again = Secret::parse(&b64).expect("to_base64 parses");
                assert_eq!(again.to_bytes(), s.to_bytes());
            }
            let _ = (s.is_fronting(), format!("{s:?}"));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = Secret::from_bytes(data);
});
