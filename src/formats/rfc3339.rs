//! RFC 3339 timestamps, strictly: `2026-01-31T23:59:59Z`, `2026-01-31t23:59:59.5+03:00`,
//! `2026-01-31 23:59:59-05:30`, or a bare `full-date` `2026-01-31` (that day's 00:00:00 UTC).
//! A date-time without `Z` or an offset (local time) is refused: it names no instant.
//! Pure text processing; seconds since the Unix epoch as `i64`.

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01 (Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Exactly `n` ASCII digits at `s[at..]`, as a number.
fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let d = s.get(at..at + n)?;
    d.iter().try_fold(0u32, |v, &c| {
        c.is_ascii_digit().then(|| v * 10 + u32::from(c - b'0'))
    })
}

/// Parses an RFC 3339 `date-time` or `full-date` into Unix seconds (fractions of a second are
/// checked and dropped; a leap second `:60` counts as the next second). The error says what is
/// wrong.
pub fn parse(text: &str) -> Result<i64, &'static str> {
    const SHAPE: &str = "is not an RFC 3339 date (e.g. 2026-12-31 or 2026-12-31T23:59:59Z)";
    let s = text.as_bytes();
    let (Some(year), Some(month), Some(day)) = (digits(s, 0, 4), digits(s, 5, 2), digits(s, 8, 2))
    else {
        return Err(SHAPE);
    };
    if s[4] != b'-' || s[7] != b'-' {
        return Err(SHAPE);
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("has no such day (month 01-12, day within the month)");
    }
    let days = days_from_civil(year, month, day);
    if s.len() == 10 {
        return Ok(days * 86_400);
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return Err(SHAPE);
    }
    let (Some(h), Some(m), Some(sec)) = (digits(s, 11, 2), digits(s, 14, 2), digits(s, 17, 2))
    else {
        return Err(SHAPE);
    };
    if s[13] != b':' || s[16] != b':' {
        return Err(SHAPE);
    }
    if h > 23 || m > 59 || sec > 60 {
        return Err("has no such time (hour 00-23, minute 00-59, second 00-60)");
    }
    let mut at = 19;
    if s.get(at) == Some(&b'.') {
        let n = s[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 {
            return Err(SHAPE);
        }
        at += 1 + n;
    }
    let offset: i64 = match s.get(at) {
        Some(b'Z' | b'z') if s.len() == at + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if s.len() == at + 6 && s[at + 3] == b':' => {
            let (Some(oh), Some(om)) = (digits(s, at + 1, 2), digits(s, at + 4, 2)) else {
                return Err(SHAPE);
            };
            if oh > 23 || om > 59 {
                return Err("has an impossible UTC offset (at most +23:59)");
            }
            let o = i64::from(oh * 3600 + om * 60);
            if sign == b'-' { -o } else { o }
        }
        None => return Err("has no time zone: add Z (UTC) or an offset such as +03:00"),
        _ => return Err(SHAPE),
    };
    Ok(days * 86_400 + i64::from(h * 3600 + m * 60 + sec) - offset)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rfc_forms() {
        let cases: [(&str, i64); 11] = [
            ("1970-01-01", 0),
            ("1970-01-01T00:00:00Z", 0),
            ("2026-12-31", 1_798_675_200),
            ("2026-12-31T23:59:59Z", 1_798_761_599),
            ("2026-12-31t23:59:59z", 1_798_761_599),
            ("2026-12-31 23:59:59Z", 1_798_761_599),
            // RFC 3339 §5.8 examples.
            ("1985-04-12T23:20:50.52Z", 482_196_050),
            ("1996-12-19T16:39:57-08:00", 851_042_397),
            ("1990-12-31T23:59:60Z", 662_688_000),
            ("1937-01-01T12:00:27.87+00:20", -1_041_337_173),
            ("2000-02-29T00:00:00+23:59", 951_696_060),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_rfc_3339() {
        for bad in [
            "",
            "2026",
            "2026-1-01",
            "2026/01/01",
            "2026-00-10",
            "2026-13-01",
            "2026-02-29",
            "2100-02-29",
            "2026-04-31",
            "2026-01-01T",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
            "2026-01-01T23:59:61Z",
            "2026-01-01T23:59:59",
            "2026-01-01T23:59:59.Z",
            "2026-01-01T23:59:59+0300",
            "2026-01-01T23:59:59+24:00",
            "2026-01-01T23:59:59+03:60",
            "2026-01-01T23:59:59Zjunk",
            "2026-01-01x",
            "2026-01-01T1:00:00Z",
            " 2026-01-01",
            "+2026-01-01",
            "2026-01-01T23:59Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("2026-01-01T10:00:00"),
            Err("has no time zone: add Z (UTC) or an offset such as +03:00")
        );
        assert!(parse("2026-02-30").unwrap_err().contains("no such day"));
    }

    #[test]
    fn format_round_trips_and_calendar_is_exact() {
        for secs in [
            0i64,
            1,
            86_399,
            951_782_400,
            1_798_761_599,
            -1,
            -86_401,
            253_402_300_799,
        ] {
            let text = format(secs);
            assert_eq!(parse(&text), Ok(secs), "{text}");
        }
        assert_eq!(format(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(format(-1), "1969-12-31T23:59:59Z");
        // Every day from 1900 to 2100 round-trips and days are consecutive.
        let start = days_from_civil(1900, 1, 1);
        let mut prev = civil_from_days(start - 1);
        for d in start..days_from_civil(2100, 12, 31) {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
            assert!(day == prev.2 + 1 || (day == 1 && prev.2 == days_in_month(prev.0, prev.1)));
            prev = (y, m, day);
        }
    }
}
