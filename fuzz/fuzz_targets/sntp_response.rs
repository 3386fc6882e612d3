//! The SNTP reply parser (network input: `mtpx doctor` reads replies from NTP servers):
//! `sntp::parse_response` on arbitrary bytes. T1 (the transmit time we sent, which a genuine
//! reply echoes) is taken from the input's originate field, so that the timestamp checks are
//! reached too; T4 (arrival) from bytes 48..56 when present.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::formats::sntp::{self, NtpTimestamp};

fuzz_target!(|data: &[u8]| {
    let at = |i: usize| {
        data.get(i..i + 8).map_or(NtpTimestamp::ZERO, |b| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            NtpTimestamp(u64::from_be_bytes(w))
        })
    };
    let (sent, received) = (at(24), at(sntp::PACKET_LEN));
    for t1 in [sent, NtpTimestamp(sent.0 ^ 1)] {
        match sntp::parse_response(data, t1, received) {
            Ok(s) => {
                assert!(data.len() >= sntp::PACKET_LEN);
                assert_eq!(t1, sent, "a reply that does not echo T1 was accepted");
                assert!((1..=15).contains(&s.stratum));
                assert!(s.offset.is_finite() && s.delay.is_finite());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
