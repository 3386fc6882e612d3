//! `mtpx::config::parse` (the TOML config, with its own pre-pass over nanoserde's parser) on
//! arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match mtpx::config::parse(&text) {
        Ok((_config, warnings)) => {
            for w in &warnings {
                let _ = format!("{w:?}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
