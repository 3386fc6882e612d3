//! The stub resolver's parsers: `dns::parse_response` on arbitrary bytes (as the answer to a
//! fixed query, both A and AAAA; the id is taken from the input so the header check passes)
//! and `parse_resolv_conf` on the input as text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::formats::dns::{self, QType};

const NAME: &str = "example.com";

fuzz_target!(|data: &[u8]| {
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    for qtype in [QType::A, QType::Aaaa] {
        match dns::parse_response(data, id, NAME, qtype) {
            Ok(answer) => {
                assert!(!answer.truncated || answer.addrs.is_empty());
                for (ip, _ttl) in &answer.addrs {
                    assert_eq!(ip.is_ipv4(), qtype == QType::A);
                }
            }
            Err(e) => {
                let _ = e.to_string();
                let _ = e.is_foreign();
            }
        }
    }
    let conf = dns::parse_resolv_conf(&String::from_utf8_lossy(data));
    assert!(conf.nameservers.len() <= dns::MAX_NAMESERVERS);
});
