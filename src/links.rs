//! `mtpx access`: the `tg://proxy` and `https://t.me/proxy` links for a secret, as mtg's JSON
//! or as plain text; for several users, the same keyed by user name. And `mtpx users list`'s
//! table.
//!
//! The JSON has mtg's shape and key order (`ipv4`, `ipv6`, `secret`; 2-space indent), minus the
//! `tg_qrcode`/`tme_qrcode` keys: those point at a third-party QR-code service and would hand it
//! the secret. Query keys are sorted (`port`, `secret`, `server`) and percent-encoded as Go's
//! `url.Values.Encode` does, so an IPv6 server appears unbracketed with `%3A` for each colon.
//! The link carries the base64 form of a FakeTLS secret unless `hex` is asked for; classic and
//! `dd` secrets always use hex, the form every client understands.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::fmt_bytes;
use crate::formats::encoding::percent_encode;
use crate::formats::rfc3339;
use crate::formats::state::State;
use crate::proto::secret::{Secret, SecretKind};
use crate::proto::users::UserSpec;

/// The secret as it goes into a link.
fn link_secret(secret: &Secret, hex: bool) -> String {
    if hex || secret.kind != SecretKind::FakeTls {
        secret.to_hex()
    } else {
        secret.to_base64()
    }
}

/// The query string shared by both links: `port=…&secret=…&server=…`.
fn query(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!(
        "port={port}&secret={}&server={}",
        percent_encode(&link_secret(secret, hex)),
        percent_encode(&ip.to_string())
    )
}

/// `tg://proxy?port=…&secret=…&server=…`
pub fn tg_url(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!("tg://proxy?{}", query(secret, ip, port, hex))
}

/// `https://t.me/proxy?port=…&secret=…&server=…`
pub fn tme_url(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!("https://t.me/proxy?{}", query(secret, ip, port, hex))
}

fn json_family(out: &mut String, name: &str, secret: &Secret, ip: IpAddr, port: u16, hex: bool) {
    // Every value here is ASCII without quotes or backslashes (IPs, digits, hex, base64url,
    // percent-encoding), so no JSON escaping is needed.
    let _ = write!(
        out,
        "  \"{name}\": {{\n    \"ip\": \"{ip}\",\n    \"port\": {port},\n    \"tg_url\": \"{}\",\n    \"tme_url\": \"{}\"\n  }},\n",
        tg_url(secret, ip, port, hex),
        tme_url(secret, ip, port, hex)
    );
}

/// mtg's `access` JSON (without the QR-code keys and without a trailing newline). A family
/// whose address is unknown is omitted.
pub fn access_json(
    secret: &Secret,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    hex: bool,
) -> String {
    let mut out = String::from("{\n");
    if let Some(ip) = ipv4 {
        json_family(&mut out, "ipv4", secret, IpAddr::V4(ip), port, hex);
    }
    if let Some(ip) = ipv6 {
        json_family(&mut out, "ipv6", secret, IpAddr::V6(ip), port, hex);
    }
    let _ = write!(
        out,
        "  \"secret\": {{\n    \"hex\": \"{}\",\n    \"base64\": \"{}\"\n  }}\n}}",
        secret.to_hex(),
        secret.to_base64()
    );
    out
}

/// Every user's [`access_json`], as one object keyed by user name (in config order). User
/// names need no JSON escaping (letters, digits, `_`, `.`, `-`).
pub fn access_json_users(
    users: &[&UserSpec],
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    hex: bool,
) -> String {
    let mut out = String::from("{\n");
    for (i, u) in users.iter().enumerate() {
        let _ = write!(out, "  \"{}\": ", u.name);
        let one = access_json(&u.secret, ipv4, ipv6, port, hex);
        for (j, line) in one.lines().enumerate() {
            if j > 0 {
                out.push_str("\n  ");
            }
            out.push_str(line);
        }
        out.push_str(if i + 1 < users.len() { ",\n" } else { "\n" });
    }
    out.push('}');
    out
}

/// The columns of `mtpx users list`: JSON key (the table header is its upper case).
const COLUMNS: [&str; 11] = [
    "name",
    "kind",
    "host",
    "max_connections",
    "max_ips",
    "quota",
    "quota_period",
    "used",
    "period_end",
    "expires",
    "status",
];

/// A cell of `mtpx users list`.
enum Val {
    /// Text (a JSON string).
    Text(String),
    /// A count (a JSON number).
    Count(u64),
    /// Bytes (a JSON number; `1.5 KiB` in the table).
    Bytes(u64),
    /// Seconds (a JSON number; `720h` in the table).
    Secs(u64),
    /// Not set (`null`, `-`).
    None,
}

/// Appends `v` to the JSON `out` (after `key`) and to the table `cells`.
#[inline(never)]
fn put(out: &mut String, cells: &mut Vec<String>, json: bool, key: &str, v: Val) {
    let (j, t) = match v {
        Val::Text(s) => (format!("\"{s}\""), s),
        Val::Count(n) => (n.to_string(), n.to_string()),
        Val::Bytes(n) => (n.to_string(), fmt_bytes(n)),
        Val::Secs(n) => (
            n.to_string(),
            crate::config::fmt_duration(std::time::Duration::from_secs(n)),
        ),
        Val::None => ("null".into(), "-".into()),
    };
    if json {
        let sep = if key == COLUMNS[0] { "" } else { ", " };
        let _ = write!(out, "{sep}\"{key}\": {j}");
    }
    cells.push(t);
}

/// `mtpx users list`: each user's kind, host, limits, usage (from the quota `state`, with the
/// `pending` reset requests applied) and status at `now` (`ok`, `expired`, `over-quota`,
/// `reset-pending`); an aligned table, or (`json`) an array of objects with [`COLUMNS`] as
/// keys, numbers in bytes and seconds, `null` for what is not set.
pub fn users_table(
    users: &[UserSpec],
    state: Option<&State>,
    pending: &[String],
    now: u64,
    json: bool,
) -> String {
    let mut out = String::from("[");
    // The table's cells, row after row (the header first).
    let mut cells: Vec<String> = COLUMNS.iter().map(|c| c.to_ascii_uppercase()).collect();
    for (i, u) in users.iter().enumerate() {
        let l = &u.limits;
        let saved = state.and_then(|s| s.user(&u.name));
        let reset = pending.contains(&u.name);
        let used = if reset {
            Some(0)
        } else {
            saved.map(|s| s.used)
        };
        let status = match l.refuse(now, used.unwrap_or(0)) {
            Some(crate::proto::users::UserReject::Expired) => "expired",
            Some(_) => "over-quota",
            None if reset => "reset-pending",
            None => "ok",
        };
        let end = saved
            .and_then(|s| crate::proto::users::quota::period_end(l.quota_period, s.period_start));
        let text = |s: Option<String>| s.map_or(Val::None, Val::Text);
        let date = |t: Option<i64>| text(t.map(rfc3339::format));
        let n = |v: Option<u32>, f: fn(u64) -> Val| v.map_or(Val::None, |v| f(v.into()));
        let host = &u.secret.host;
        let row = [
            Val::Text(u.name.clone()),
            Val::Text(u.secret.kind.as_str().into()),
            text((!host.is_empty()).then(|| host.clone())),
            n(l.max_connections, Val::Count),
            n(l.max_ips, Val::Count),
            l.quota.map_or(Val::None, Val::Bytes),
            l.quota_period.map_or(Val::None, Val::Secs),
            used.map_or(Val::None, Val::Bytes),
            date(end.map(|t| t as i64)),
            date(l.expires),
            Val::Text(status.into()),
        ];
        out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
        for (key, v) in COLUMNS.iter().zip(row) {
            put(&mut out, &mut cells, json, key, v);
        }
        out.push('}');
    }
    if json {
        out.push_str("\n]\n");
        return out;
    }
    out.clear();
    let n = COLUMNS.len();
    let mut width = [0usize; 11];
    for (k, c) in cells.iter().enumerate() {
        width[k % n] = width[k % n].max(c.chars().count());
    }
    for row in cells.chunks(n) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(width) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A short human-readable form: one link per line (`tg://` then `https://t.me/`, IPv4 first).
/// Empty when no address is known.
pub fn access_text(
    secret: &Secret,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    hex: bool,
) -> String {
    let mut out = String::new();
    let ips = ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6));
    for ip in ips {
        out.push_str(&tg_url(secret, ip, port, hex));
        out.push('\n');
        out.push_str(&tme_url(secret, ip, port, hex));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EE_HEX: &str =
        "ee367a189aee18fa31c190054efd4a8e9573746f726167652e676f6f676c65617069732e636f6d";

    fn ee() -> Secret {
        Secret::parse(EE_HEX).unwrap()
    }

    #[test]
    fn json_has_mtg_shape_for_both_families() {
        let s = ee();
        let b64 = s.to_base64();
        let got = access_json(
            &s,
            Some(Ipv4Addr::new(1, 2, 3, 4)),
            Some("2001:db8::1".parse().unwrap()),
            443,
            false,
        );
        let expected = format!(
            r#"{{
  "ipv4": {{
    "ip": "1.2.3.4",
    "port": 443,
    "tg_url": "tg://proxy?port=443&secret={b64}&server=1.2.3.4",
    "tme_url": "https://t.me/proxy?port=443&secret={b64}&server=1.2.3.4"
  }},
  "ipv6": {{
    "ip": "2001:db8::1",
    "port": 443,
    "tg_url": "tg://proxy?port=443&secret={b64}&server=2001%3Adb8%3A%3A1",
    "tme_url": "https://t.me/proxy?port=443&secret={b64}&server=2001%3Adb8%3A%3A1"
  }},
  "secret": {{
    "hex": "{EE_HEX}",
    "base64": "{b64}"
  }}
}}"#
        );
        assert_eq!(got, expected);
        assert!(b64.starts_with("7jZ6"), "{b64}");
    }

    #[test]
    fn json_omits_unknown_families_and_uses_hex_when_asked() {
        let got = access_json(&ee(), None, None, 8443, true);
        assert_eq!(
            got,
            format!(
                "{{\n  \"secret\": {{\n    \"hex\": \"{EE_HEX}\",\n    \"base64\": \"{}\"\n  }}\n}}",
                ee().to_base64()
            )
        );
        let got = access_json(&ee(), Some(Ipv4Addr::new(203, 0, 113, 1)), None, 8443, true);
        assert!(got.contains(&format!(
            "\"tg_url\": \"tg://proxy?port=8443&secret={EE_HEX}&server=203.0.113.1\""
        )));
        assert!(!got.contains("ipv6") && !got.contains("qrcode"));
    }

    #[test]
    fn classic_and_dd_secrets_link_in_hex() {
        let classic = Secret::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            tg_url(&classic, IpAddr::V4(Ipv4Addr::LOCALHOST), 443, false),
            "tg://proxy?port=443&secret=0123456789abcdef0123456789abcdef&server=127.0.0.1"
        );
        let dd = Secret::parse("dd0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            tme_url(&dd, IpAddr::V4(Ipv4Addr::LOCALHOST), 1, false),
            "https://t.me/proxy?port=1&secret=dd0123456789abcdef0123456789abcdef&server=127.0.0.1"
        );
    }

    #[test]
    fn text_is_one_link_per_line() {
        let s = ee();
        let b64 = s.to_base64();
        assert_eq!(
            access_text(&s, None, Some(Ipv6Addr::LOCALHOST), 443, false),
            format!(
                "tg://proxy?port=443&secret={b64}&server=%3A%3A1\nhttps://t.me/proxy?port=443&secret={b64}&server=%3A%3A1\n"
            )
        );
        assert_eq!(access_text(&s, None, None, 443, false), "");
    }

    fn spec(name: &str, secret: Secret, limits: crate::proto::users::Limits) -> UserSpec {
        UserSpec {
            name: name.into(),
            secret,
            limits,
            ad_tag: None,
        }
    }

    #[test]
    fn users_json_is_keyed_by_name_with_the_single_shape_inside() {
        let dd = Secret::parse("dd0123456789abcdef0123456789abcdef").unwrap();
        let a = spec("alice", ee(), Default::default());
        let b = spec("bob.smith", dd.clone(), Default::default());
        let ip = Some(Ipv4Addr::new(1, 2, 3, 4));
        let got = access_json_users(&[&a, &b], ip, None, 443, false);
        let indent = |s: String| s.replace('\n', "\n  ");
        let want = format!(
            "{{\n  \"alice\": {},\n  \"bob.smith\": {}\n}}",
            indent(access_json(&ee(), ip, None, 443, false)),
            indent(access_json(&dd, ip, None, 443, false))
        );
        assert_eq!(got, want);
        assert!(
            got.contains("\n  \"bob.smith\": {\n    \"ipv4\": {\n      \"ip\": \"1.2.3.4\""),
            "{got}"
        );
    }

    #[test]
    fn users_table_shows_limits_usage_and_status() {
        use crate::formats::state::{State, UserUsage};
        use crate::proto::users::Limits;
        let now = 1_800_000_000u64;
        let quota = Limits {
            max_connections: Some(8),
            max_ips: Some(2),
            quota: Some(10 << 30),
            quota_period: Some(30 * 86_400),
            expires: Some(1_798_761_599),
        };
        let dd = Secret::parse("dd0123456789abcdef0123456789abcdef").unwrap();
        let users = [
            spec("alice", ee(), quota),
            spec(
                "bob",
                dd,
                Limits {
                    quota: Some(100),
                    ..Limits::default()
                },
            ),
            spec(
                "carol",
                Secret::parse("0123456789abcdef0123456789abcdee").unwrap(),
                Limits::default(),
            ),
        ];
        let state = State {
            written: now,
            users: vec![
                UserUsage {
                    name: "alice".into(),
                    used: 1536,
                    period_start: 1_799_000_000,
                },
                UserUsage {
                    name: "bob".into(),
                    used: 100,
                    period_start: 1,
                },
            ],
            applied: vec![],
        };
        let text = users_table(&users, Some(&state), &[], now, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("NAME   KIND     HOST  "), "{text}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[0]),
            [
                "NAME",
                "KIND",
                "HOST",
                "MAX_CONNECTIONS",
                "MAX_IPS",
                "QUOTA",
                "QUOTA_PERIOD",
                "USED",
                "PERIOD_END",
                "EXPIRES",
                "STATUS"
            ]
        );
        assert_eq!(
            cols(lines[1]),
            [
                "alice",
                "faketls",
                "storage.googleapis.com",
                "8",
                "2",
                "10.0",
                "GiB",
                "720h",
                "1.5",
                "KiB",
                "2027-02-02T18:13:20Z",
                "2026-12-31T23:59:59Z",
                "expired"
            ]
        );
        // A lifetime quota has no period end.
        assert_eq!(
            cols(lines[2]),
            [
                "bob",
                "dd",
                "-",
                "-",
                "-",
                "100",
                "B",
                "-",
                "100",
                "B",
                "-",
                "-",
                "over-quota"
            ]
        );
        assert_eq!(
            cols(lines[3]),
            [
                "carol", "classic", "-", "-", "-", "-", "-", "-", "-", "-", "ok"
            ]
        );
        // A pending reset shows as zero usage.
        let text = users_table(&users, Some(&state), &["bob".into()], now, false);
        assert!(
            text.lines().nth(2).unwrap().ends_with("reset-pending"),
            "{text}"
        );
        let json = users_table(&users, None, &[], now, true);
        assert!(
            json.starts_with(
                "[\n  {\"name\": \"alice\", \"kind\": \"faketls\", \"host\": \
                 \"storage.googleapis.com\", \"max_connections\": 8, \"max_ips\": 2, \"quota\": \
                 10737418240, \"quota_period\": 2592000, \"used\": null, \"period_end\": null, \
                 \"expires\": \"2026-12-31T23:59:59Z\", \"status\": \"expired\"},\n"
            ),
            "{json}"
        );
        assert!(
            json.ends_with(
                "\"quota\": null, \"quota_period\": null, \"used\": null, \"period_end\": \
                 null, \"expires\": null, \"status\": \"ok\"}\n]\n"
            ),
            "{json}"
        );
        assert_eq!(json.lines().count(), 5);
    }
}
