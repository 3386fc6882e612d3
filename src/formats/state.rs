//! The users' quota state file, and the reset requests `mtpx users reset-quota` leaves beside
//! it. Pure text: [`write`] / [`parse`], [`write_reset`] / [`parse_reset`].
//!
//! ```text
//! mtpx-quota-state 1
//! # written by mtpx every few seconds and at shutdown; do not edit (mtpx users reset-quota)
//! written 1767225600
//! user alice 123456789 1767225600
//! user bob.smith 0 1764547200
//! applied 9f86d081884c7d65
//! sha256 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! ```
//!
//! Line 1 names the format and its version; `written` is when it was written (Unix seconds);
//! one `user NAME USED PERIOD-START` line per user (bytes used in the period that started at
//! PERIOD-START); one `applied ID` line per reset request applied since the previous write (so
//! that a request whose file outlived a crash is not applied twice); the last line is the
//! SHA-256 of every byte before it. Parsing is strict (every line, number and name checked,
//! duplicates refused) and a file that fails is corrupt as a whole, reported with its line:
//! the caller starts from zero rather than trust part of it.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::formats::encoding::hex_encode;
use crate::proto::users::{MAX_USERS, check_name};

/// The first line.
const MAGIC: &str = "mtpx-quota-state 1";
/// The first line of a reset request.
const RESET_MAGIC: &str = "mtpx-quota-reset 1";
/// Largest state file accepted (4,096 users take about 400 KB).
pub const MAX_STATE_BYTES: usize = 4 << 20;

/// One user's quota usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserUsage {
    /// The user's name.
    pub name: String,
    /// Bytes used in the current period.
    pub used: u64,
    /// Unix time the current period started.
    pub period_start: u64,
}

/// The whole state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Unix time it was written.
    pub written: u64,
    /// Per user.
    pub users: Vec<UserUsage>,
    /// Reset requests applied since the previous write.
    pub applied: Vec<u64>,
}

impl State {
    /// The entry of user `name`.
    pub fn user(&self, name: &str) -> Option<&UserUsage> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Why a state file or reset request was refused: the 1-based line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateError {
    /// Line of the fault (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub msg: &'static str,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        f.write_str(self.msg)
    }
}

/// The file's text.
pub fn write(state: &State) -> String {
    let mut out = String::with_capacity(64 + 48 * state.users.len());
    out.push_str(MAGIC);
    out.push_str(
        "\n# written by mtpx every few seconds and at shutdown; do not edit (mtpx users \
         reset-quota)\n",
    );
    let _ = writeln!(out, "written {}", state.written);
    for u in &state.users {
        let _ = writeln!(out, "user {} {} {}", u.name, u.used, u.period_start);
    }
    for id in &state.applied {
        let _ = writeln!(out, "applied {id:016x}");
    }
    let sum = hex_encode(&Sha256::digest(out.as_bytes()));
    let _ = writeln!(out, "sha256 {sum}");
    out
}

/// A decimal `u64` written plainly (digits only, no sign, no leading zero but `0`).
fn number(s: &str) -> Option<u64> {
    let plain =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten()
}

/// 16 lowercase hex digits: a request id.
fn id(s: &str) -> Option<u64> {
    let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

/// Parses a state file; see the module documentation for what is checked.
pub fn parse(text: &str) -> Result<State, StateError> {
    let bad = |line: usize, msg: &'static str| StateError { line, msg };
    if text.len() > MAX_STATE_BYTES {
        return Err(bad(0, "larger than 4 MiB"));
    }
    // The checksum line: the last one, covering every byte before it.
    let body_end = text
        .strip_suffix('\n')
        .and_then(|t| t.rfind('\n').map(|i| i + 1))
        .ok_or_else(|| bad(0, "truncated: no checksum line at the end"))?;
    let (body, last) = text.split_at(body_end);
    let last_line = 1 + body.matches('\n').count();
    let sum = last
        .strip_prefix("sha256 ")
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| s.len() == 64)
        .ok_or_else(|| bad(last_line, "the last line is not `sha256 <64 hex digits>`"))?;
    if hex_encode(&Sha256::digest(body.as_bytes())) != sum {
        return Err(bad(
            last_line,
            "checksum mismatch: the file was changed or only partly written",
        ));
    }
    let mut state = State::default();
    let mut written = false;
    for (i, line) in body.lines().enumerate() {
        let n = i + 1;
        if n == 1 {
            if line != MAGIC {
                return Err(bad(
                    1,
                    "not an mtpx quota state file of a version this mtpx reads (1)",
                ));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["written", t] if !written => {
                state.written = number(t).ok_or_else(|| bad(n, "bad time after `written`"))?;
                written = true;
            }
            ["user", name, used, start] if written => {
                check_name(name).map_err(|e| bad(n, e))?;
                if state.user(name).is_some() {
                    return Err(bad(n, "this user is listed twice"));
                }
                if state.users.len() == MAX_USERS {
                    return Err(bad(n, "more users than mtpx serves"));
                }
                let (Some(used), Some(period_start)) = (number(used), number(start)) else {
                    return Err(bad(n, "bad number in a user line"));
                };
                state.users.push(UserUsage {
                    name: name.to_string(),
                    used,
                    period_start,
                });
            }
            ["applied", x] if written => {
                let x = id(x).ok_or_else(|| bad(n, "bad request id after `applied`"))?;
                if state.applied.len() == MAX_USERS * 4 {
                    return Err(bad(n, "too many applied requests"));
                }
                state.applied.push(x);
            }
            _ => {
                return Err(bad(
                    n,
                    "expected `written TIME`, then `user NAME USED START` and `applied ID` lines",
                ));
            }
        }
    }
    if !written {
        return Err(bad(0, "no `written` line"));
    }
    Ok(state)
}

/// The text of a request to reset the quota usage of user `name`.
pub fn write_reset(name: &str) -> String {
    format!("{RESET_MAGIC}\nuser {name}\n")
}

/// The user named by a reset request.
pub fn parse_reset(text: &str) -> Result<String, StateError> {
    let bad = |line, msg| StateError { line, msg };
    let mut lines = text.split_inclusive('\n');
    if lines.next() != Some("mtpx-quota-reset 1\n") {
        return Err(bad(1, "not an mtpx quota reset request (version 1)"));
    }
    let name = lines
        .next()
        .and_then(|l| l.strip_prefix("user "))
        .and_then(|l| l.strip_suffix('\n'))
        .ok_or_else(|| bad(2, "expected `user NAME`"))?;
    check_name(name).map_err(|e| bad(2, e))?;
    if lines.next().is_some() {
        return Err(bad(3, "unexpected text after the user line"));
    }
    Ok(name.to_string())
}

/// The file name of reset request `id` beside state file `<stem>.state`.
pub fn reset_file_name(stem: &str, id: u64) -> String {
    format!("{stem}.reset-{id:016x}")
}

/// The request id in file name `name`, if it is one of `stem`'s reset requests.
pub fn reset_file_id(stem: &str, name: &str) -> Option<u64> {
    id(name.strip_prefix(stem)?.strip_prefix(".reset-")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            written: 1_767_225_600,
            users: vec![
                UserUsage {
                    name: "alice".into(),
                    used: 123_456_789,
                    period_start: 1_767_225_600,
                },
                UserUsage {
                    name: "bob.smith".into(),
                    used: 0,
                    period_start: u64::MAX,
                },
            ],
            applied: vec![0x9f86_d081_884c_7d65, 0],
        }
    }

    #[test]
    fn round_trips_and_looks_as_documented() {
        let s = sample();
        let text = write(&s);
        assert_eq!(parse(&text), Ok(s.clone()));
        assert!(
            text.starts_with("mtpx-quota-state 1\n# written by mtpx"),
            "{text}"
        );
        assert!(
            text.contains("\nuser alice 123456789 1767225600\n"),
            "{text}"
        );
        assert!(text.contains("\napplied 9f86d081884c7d65\napplied 0000000000000000\nsha256 "));
        let empty = State::default();
        assert_eq!(parse(&write(&empty)), Ok(empty));
        assert_eq!(s.user("bob.smith").map(|u| u.used), Some(0));
    }

    /// Rewrites `text`'s body with `f` and a correct checksum (to reach the line checks).
    fn resum(text: &str, f: impl Fn(&str) -> String) -> String {
        let body_end = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let body = f(&text[..body_end]);
        let sum = hex_encode(&Sha256::digest(body.as_bytes()));
        format!("{body}sha256 {sum}\n")
    }

    #[test]
    fn corruption_is_found_with_its_line() {
        let text = write(&sample());
        // Any changed byte, and any truncation, is refused.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x01;
            if let Ok(t) = std::str::from_utf8(&b) {
                assert!(parse(t).is_err(), "byte {i} changed: {t}");
            }
            assert!(parse(&text[..i]).is_err(), "cut at {i}");
        }
        let e = |t: &str| parse(t).unwrap_err();
        let mut bad = text.replace("alice 123456789", "alice 123456788");
        assert_eq!(e(&bad).line, 8);
        assert!(e(&bad).msg.contains("checksum mismatch"), "{}", e(&bad));
        bad = text.replace("\nsha256 ", "\nsha257 ");
        assert_eq!(e(&bad).line, 8);
        let cases: [(&str, &str, usize, &str); 10] = [
            ("mtpx-quota-state 1", "mtpx-quota-state 2", 1, "version"),
            ("mtpx-quota-state 1", "something else", 1, "not an mtpx"),
            (
                "user alice 123456789",
                "user alice 0123456789",
                4,
                "bad number",
            ),
            ("user alice 123456789", "user alice -1", 4, "bad number"),
            (
                "user alice 123456789",
                "user alice 18446744073709551616",
                4,
                "bad number",
            ),
            ("user alice", "user al ice", 4, "expected"),
            ("user alice", "user a/b", 4, "letters"),
            ("user bob.smith", "user alice", 5, "twice"),
            ("applied 9f86", "applied 9F86", 6, "request id"),
            ("written 1767225600\n", "", 3, "expected"),
        ];
        for (from, to, line, needle) in cases {
            let t = resum(&text, |b| b.replacen(from, to, 1));
            let err = e(&t);
            assert_eq!(err.line, line, "{from} -> {to}: {err}");
            assert!(err.msg.contains(needle), "{from} -> {to}: {err}");
        }
        let no_written = resum(&text, |b| {
            b.replace("written 1767225600\n", "")
                .replace("user ", "# ")
                .replace("applied ", "# ")
        });
        assert_eq!(e(&no_written).msg, "no `written` line");
        assert_eq!(e("").msg, "truncated: no checksum line at the end");
        assert!(e(&"x".repeat(MAX_STATE_BYTES + 1)).msg.contains("4 MiB"));
    }

    #[test]
    fn reset_requests_round_trip_and_are_strict() {
        assert_eq!(
            parse_reset(&write_reset("bob.smith")),
            Ok("bob.smith".into())
        );
        for bad in [
            "",
            "mtpx-quota-reset 1\n",
            "mtpx-quota-reset 2\nuser a\n",
            "mtpx-quota-reset 1\nuser a",
            "mtpx-quota-reset 1\nuser a b\n",
            "mtpx-quota-reset 1\nuser a\nuser b\n",
            "mtpx-quota-reset 1\r\nuser a\r\n",
        ] {
            assert!(parse_reset(bad).is_err(), "{bad:?}");
        }
        let name = reset_file_name("proxy", 0xab);
        assert_eq!(name, "proxy.reset-00000000000000ab");
        assert_eq!(reset_file_id("proxy", &name), Some(0xab));
        assert_eq!(reset_file_id("other", &name), None);
        assert_eq!(
            reset_file_id("proxy", "proxy.reset-00000000000000ab.tmp"),
            None
        );
        assert_eq!(reset_file_id("proxy", "proxy.state"), None);
    }
}
