//! Telegram's proxy config (`getProxyConfig`) and proxy secret as they arrive from the network
//! or a file: `parse` and `check_secret` never panic, and what `parse` accepts is within its
//! limits and builds a DC table whose DC 203 list stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::dc::{DcTable, MAX_DC_ADDRS, PreferIp};
use mtpx::formats::proxy_config::{self, MAX_CONFIG_BYTES, MAX_ENTRIES};

fuzz_target!(|data: &[u8]| {
    let _ = proxy_config::check_secret(data);
    match proxy_config::parse(data) {
        Ok(c) => {
            assert!(data.len() <= MAX_CONFIG_BYTES);
            assert!(!c.entries.is_empty() && c.entries.len() <= MAX_ENTRIES);
            assert!(c.entries.iter().all(|(_, a)| a.port() != 0));
            let cdn: Vec<_> = c.addrs_for(203).collect();
            for prefer in [PreferIp::PreferIpv6, PreferIp::OnlyIpv4] {
                let t = DcTable::with_updates(prefer, &[], &cdn);
                let n = t.lookup(203).map_or(0, <[_]>::len);
                assert!(n <= MAX_DC_ADDRS);
                assert_eq!(t.lookup(-203), t.lookup(203));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
