//! The quota state file and reset request parsers (`mtpx::formats::state`) on arbitrary
//! text: no panic, and whatever parses writes back to text that parses to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::formats::state;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match state::parse(&text) {
        Ok(s) => assert_eq!(state::parse(&state::write(&s)), Ok(s)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(name) = state::parse_reset(&text) {
        assert_eq!(state::parse_reset(&state::write_reset(&name)), Ok(name));
    }
});
