//! `mtpx::config::parse_users_text` (a `users-file`: `[users.NAME]` tables through the strict
//! pre-pass and nanoserde) on arbitrary text, and the same users checked together as the
//! config does (`Users::new`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::users::{MAX_USERS, Users, check_name};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match mtpx::config::parse_users_text(&text) {
        Ok((users, warnings)) => {
            assert!(users.len() <= MAX_USERS);
            for (u, line, secret_line) in &users {
                assert!(check_name(&u.name).is_ok(), "{:?}", u.name);
                assert!(*line >= 1 && *secret_line >= 1);
                let _ = format!("{u:?}");
            }
            for w in &warnings {
                let _ = w.to_string();
            }
            if !users.is_empty() {
                let specs = users.into_iter().map(|(u, _, _)| u).collect();
                if let Ok(u) = Users::new(specs) {
                    let _ = u.hosts();
                }
            }
        }
        Err(e) => {
            // Errors name a line or a key; they never carry a whole secret line back.
            assert!(e.line.is_some() || e.key.is_some(), "{e}");
            let _ = e.to_string();
        }
    }
});
