//! The scout's reading of the fronted site's first flight (`parse_server_flight`), and what
//! the proxy does with it: a usable observation goes into a `Profile`, whose shape then shapes
//! the fake flight `write_server_hello_as` writes for a real Telegram ClientHello (which the
//! client side must accept). Also: an answer on a prefix stands when more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls::{self, HelloRead};
use mtpx::proto::tlsprofile::{self, FlightError, Profile};

const KEY: [u8; 16] = *b"0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let full = tlsprofile::parse_server_flight(data);
    // Prefix check: on a prefix the answer is NeedMore, or a settled answer the full input
    // also gives (a non-1.3 ServerHello or an error), or an observation of fewer records.
    let cut = data.len() / 2;
    match tlsprofile::parse_server_flight(&data[..cut]) {
        Err(FlightError::NeedMore) => {}
        Err(e) => assert_eq!(full, Err(e), "prefix of {cut} bytes"),
        Ok(part) => {
            let Ok(obs) = full else {
                // More records can only turn into an error if a later record is bad.
                return;
            };
            assert_eq!(part.server_hello, obs.server_hello);
            assert!(part.records().len() <= obs.records().len());
        }
    }
    let Ok(obs) = full else {
        return;
    };
    let _ = (obs.is_tls13(), obs.looks_finished(), obs.one_record_len());
    let _ = obs.server_hello.extension_types();
    let _ = obs.server_hello.message_len(32);

    let mut profile = Profile::new(4);
    let pushed = profile.push(obs);
    let _ = profile.push(obs);
    let summary = profile.summary();
    let _ = (summary.to_string(), summary.advice());
    let shape = profile.shape();
    assert_eq!(shape.learned, pushed.is_ok());

    // Answer a genuine Telegram hello with that shape, as io::conn does.
    let mut rng = XorShift64(3);
    let rec = faketls::telegram_hello(&mut rng, &KEY, "www.example.com", 1_700_000_000);
    let mut scratch = vec![0u8; 32 * 1024];
    let HelloRead::Complete { msg_len, .. } = faketls::read_client_hello(&rec, &mut scratch) else {
        panic!("telegram_hello does not read back");
    };
    let hello = faketls::parse_client_hello(&scratch[..msg_len]).expect("parses");
    let room = faketls::noise_room(&shape.template, hello.session_id_len, scratch.len());
    let noise = shape.noise_len(&mut rng).min(room);
    let n = faketls::write_server_hello_as(
        &mut scratch,
        &hello,
        &KEY,
        &mut rng,
        &shape.template,
        noise,
        &[7; 32],
    );
    assert!(n > 0, "no room for the flight");
    assert_eq!(
        faketls::verify_server_flight(&scratch[..n], &hello.random, &KEY),
        Ok(Some(n))
    );
});
