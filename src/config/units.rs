//! Units of config values: Go-style durations (`500ms`, `1m30s`) and byte sizes (`512KiB`,
//! `1MiB`, `16kb`). Pure text parsing.

use std::time::Duration;

/// Drops whitespace and lower-cases what unit names contain: ASCII letters, and the Greek
/// capital mu (`ΜS`) to `μ`. Not `char::to_lowercase`: that links core's Unicode case tables
/// (12 KiB of the static binary) for letters no unit has.
fn fold_unit(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| {
            if c == '\u{39c}' {
                'μ'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Parses a Go-style duration: `500ms`, `5s`, `1m30s`, `1.5h`, `0` (units ns, us/µs, ms, s, m,
/// h; case-insensitive; spaces ignored). Negative or overflowing values are refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = fold_unit(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(&s);
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let units: [(&str, u128); 8] = [
            ("ns", 1),
            ("us", 1_000),
            ("µs", 1_000),
            ("μs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ];
        let (unit, scale) = units.iter().find(|(u, _)| after.starts_with(u))?;
        rest = &after[unit.len()..];
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut value = int.checked_mul(*scale)?;
        let mut div: u128 = 1;
        for d in frac.bytes().take(20) {
            div *= 10;
            value = value.checked_add(u128::from(d - b'0') * scale / div)?;
        }
        total = total.checked_add(value)?;
        if total > u128::from(u64::MAX) {
            return None;
        }
    }
    Some(Duration::from_nanos(u64::try_from(total).ok()?))
}

/// Parses a period: whole days (`30d`) or weeks (`1w`), or a [`parse_duration`] value
/// (`36h`, `90m`). Used for `quota-period`.
pub fn parse_period(s: &str) -> Option<Duration> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.len().checked_sub(1)?);
    let secs = match unit {
        "d" | "D" => 86_400,
        "w" | "W" => 7 * 86_400,
        _ => return parse_duration(t),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>()
        .ok()?
        .checked_mul(secs)
        .map(Duration::from_secs)
}

/// Formats a duration Go-style (`1m30s`, `500ms`, `0s`).
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    if ms % 1000 != 0 && ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let sub = d.subsec_millis();
    if sub != 0 {
        out.push_str(&format!("{s}.{sub:03}s"));
    } else if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Formats a byte count with a 1024-based unit: `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses a byte size: `1MiB`, `1mb`, `16KB`, `512k`, `4096`, `1.5m` (all units base 1024,
/// case-insensitive, spaces ignored).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = fold_unit(s);
    let n = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(n);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let power = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 2,
        "g" | "gb" | "gib" => 3,
        "t" | "tb" | "tib" => 4,
        _ => return None,
    };
    let scale = 1024u128.pow(power);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let mut value = int.parse::<u128>().ok()?.checked_mul(scale)?;
    let mut div: u128 = 1;
    for d in frac.bytes().take(20) {
        if !d.is_ascii_digit() {
            return None;
        }
        div *= 10;
        value = value.checked_add(u128::from(d - b'0') * scale / div)?;
    }
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_style() {
        let d = |s| parse_duration(s);
        assert_eq!(d("5s"), Some(Duration::from_secs(5)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d(" 2M 3S "), Some(Duration::from_secs(123)));
        assert_eq!(d("10us"), Some(Duration::from_micros(10)));
        assert_eq!(d("10µs"), Some(Duration::from_micros(10)));
        assert_eq!(d("10 ΜS"), Some(Duration::from_micros(10)));
        assert_eq!(d("10µS"), Some(Duration::from_micros(10)));
        assert_eq!(d("1H 2M"), Some(Duration::from_secs(3720)));
        assert_eq!(d("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "5x",
            "-5s",
            "s",
            "1d",
            ".s",
            "99999999999999999999h",
            "5s5",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn byte_counts_format_with_binary_units() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(20 << 30), "20.0 GiB");
        assert_eq!(fmt_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn periods_are_days_weeks_or_durations() {
        let p = |s| parse_period(s).map(|d| d.as_secs());
        assert_eq!(p("30d"), Some(30 * 86_400));
        assert_eq!(p(" 1w "), Some(7 * 86_400));
        assert_eq!(p("2D"), Some(2 * 86_400));
        assert_eq!(p("36h"), Some(36 * 3600));
        assert_eq!(p("1h30m"), Some(5400));
        for bad in [
            "",
            "d",
            "30",
            "1.5d",
            "-1d",
            "+1d",
            "d30",
            "1x",
            "1d1",
            "1d12h",
            "99999999999999999999w",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
