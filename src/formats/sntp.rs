//! SNTP client packets (RFC 4330 / RFC 5905 wire format), for `doctor`'s time-skew check.
//!
//! Pure: the caller reads the clock and passes times in as [`NtpTimestamp`]s (built from Unix
//! seconds and nanoseconds), sends the 48 bytes of [`request`] over UDP to port 123, and hands
//! the reply with its own receive time to [`parse_response`].

use std::fmt;

/// Length of an NTP packet without extension fields or MAC.
pub const PACKET_LEN: usize = 48;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp: 32 bits of seconds since 1900-01-01 (era 0) and 32 bits of fraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// The all-zero timestamp (means "unknown" on the wire).
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    /// From a time since the Unix epoch (e.g. `SystemTime::duration_since(UNIX_EPOCH)` split
    /// into `as_secs()` and `subsec_nanos()`). Seconds wrap modulo 2^32 (so times after
    /// 2036-02-07 land in era 1, as on the wire); nanos above 999_999_999 are clamped.
    pub fn from_unix(secs: u64, nanos: u32) -> NtpTimestamp {
        let ntp_secs = secs.wrapping_add(UNIX_OFFSET) & 0xFFFF_FFFF;
        let nanos = u64::from(nanos.min(999_999_999));
        // Round to the nearest 2^-32 s; 999_999_999 ns rounds to 0xFFFF_FFFC, never overflows.
        let frac = ((nanos << 32) + 500_000_000) / 1_000_000_000;
        NtpTimestamp((ntp_secs << 32) | frac.min(0xFFFF_FFFF))
    }

    /// Back to Unix seconds and nanoseconds. Uses RFC 4330 section 3's rule to resolve the era:
    /// with the top bit of the seconds set the time is in 1968-2036 (era 0), otherwise in
    /// 2036-2104 (era 1). Times before 1970 saturate to `(0, 0)`.
    pub fn to_unix(self) -> (u64, u32) {
        let secs = u64::from(self.seconds());
        let secs = if secs & 0x8000_0000 != 0 {
            secs
        } else {
            secs + (1 << 32)
        };
        let Some(unix) = secs.checked_sub(UNIX_OFFSET) else {
            return (0, 0);
        };
        let nanos = (u64::from(self.fraction()) * 1_000_000_000 + (1 << 31)) >> 32;
        if nanos >= 1_000_000_000 {
            (unix + 1, 0)
        } else {
            (unix, nanos as u32)
        }
    }

    /// The seconds part.
    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The fraction part (units of 2^-32 s).
    pub fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// `self - earlier` in seconds, era-independent (correct while the true difference is
    /// under 68 years).
    pub fn diff_secs(self, earlier: NtpTimestamp) -> f64 {
        fixed_to_secs(i128::from(self.0.wrapping_sub(earlier.0) as i64))
    }

    fn read(b: &[u8], at: usize) -> NtpTimestamp {
        let mut a = [0u8; 8];
        if let Some(s) = b.get(at..at + 8) {
            a.copy_from_slice(s);
        }
        NtpTimestamp(u64::from_be_bytes(a))
    }
}

fn fixed_to_secs(v: i128) -> f64 {
    v as f64 / 4_294_967_296.0
}

/// One clock sample from a server reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How far the server's clock is ahead of ours, in seconds (`theta`, RFC 5905 8):
    /// `((T2 - T1) + (T3 - T4)) / 2`. Positive: our clock is behind.
    pub offset: f64,
    /// Round-trip delay in seconds, server processing excluded: `(T4 - T1) - (T3 - T2)`.
    pub delay: f64,
    /// The server's stratum (1..=15).
    pub stratum: u8,
}

/// Why a reply was discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SntpError {
    /// Shorter than 48 bytes.
    TooShort,
    /// Version number not 1..=4.
    BadVersion(u8),
    /// Mode is not 4 (server).
    BadMode(u8),
    /// Leap indicator 3: the server's clock is not synchronised.
    Unsynchronized,
    /// Stratum 0: a kiss-of-death packet; the code (e.g. `RATE`, `DENY`) is the reference id.
    KissOfDeath([u8; 4]),
    /// Stratum 16..=255 (unsynchronised or invalid).
    BadStratum(u8),
    /// The originate timestamp does not echo our transmit timestamp: a stale or forged reply.
    OriginateMismatch,
    /// The server's receive or transmit timestamp is zero.
    ZeroTimestamp,
    /// The server claims to have sent its reply before receiving our request.
    BadTimestamps,
}

impl fmt::Display for SntpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SntpError::TooShort => f.write_str("NTP reply shorter than 48 bytes"),
            SntpError::BadVersion(v) => write!(f, "NTP reply has version {v}"),
            SntpError::BadMode(m) => write!(f, "NTP reply has mode {m}, not server (4)"),
            SntpError::Unsynchronized => f.write_str("NTP server clock is not synchronised"),
            SntpError::KissOfDeath(code) => {
                f.write_str("NTP server sent kiss-of-death ")?;
                for &c in code {
                    let c = if c.is_ascii_graphic() { c as char } else { '?' };
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            SntpError::BadStratum(s) => write!(f, "NTP reply has invalid stratum {s}"),
            SntpError::OriginateMismatch => {
                f.write_str("NTP reply does not answer our request (originate mismatch)")
            }
            SntpError::ZeroTimestamp => f.write_str("NTP reply carries a zero timestamp"),
            SntpError::BadTimestamps => f.write_str("NTP reply timestamps are inconsistent"),
        }
    }
}

impl std::error::Error for SntpError {}

/// A client request: LI = 0, VN = 4, mode 3 (client), everything zero except the transmit
/// timestamp, which the server echoes back as the originate timestamp. `transmit_time` may be
/// the real send time or any unpredictable value (it only has to be remembered for
/// [`parse_response`]'s `sent`).
pub fn request(transmit_time: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 0x23; // LI 0, VN 4, mode 3
    p[40..48].copy_from_slice(&transmit_time.0.to_be_bytes());
    p
}

/// Validates a server reply and computes the clock offset and delay. `sent` is the transmit
/// timestamp we put in the request (T1), `received` the time the reply arrived (T4). Extension
/// fields and MACs after the first 48 bytes are ignored.
pub fn parse_response(
    resp: &[u8],
    sent: NtpTimestamp,
    received: NtpTimestamp,
) -> Result<Sample, SntpError> {
    let Some(&first) = resp.first() else {
        return Err(SntpError::TooShort);
    };
    if resp.len() < PACKET_LEN {
        return Err(SntpError::TooShort);
    }
    let li = first >> 6;
    let vn = (first >> 3) & 7;
    let mode = first & 7;
    if !(1..=4).contains(&vn) {
        return Err(SntpError::BadVersion(vn));
    }
    if mode != 4 {
        return Err(SntpError::BadMode(mode));
    }
    let stratum = resp[1];
    if stratum == 0 {
        let mut code = [0u8; 4];
        code.copy_from_slice(&resp[12..16]);
        return Err(SntpError::KissOfDeath(code));
    }
    if stratum > 15 {
        return Err(SntpError::BadStratum(stratum));
    }
    if li == 3 {
        return Err(SntpError::Unsynchronized);
    }
    let originate = NtpTimestamp::read(resp, 24);
    let receive = NtpTimestamp::read(resp, 32);
    let transmit = NtpTimestamp::read(resp, 40);
    if originate != sent {
        return Err(SntpError::OriginateMismatch);
    }
    if receive == NtpTimestamp::ZERO || transmit == NtpTimestamp::ZERO {
        return Err(SntpError::ZeroTimestamp);
    }
    // Fixed-point differences (2^-32 s units), wrapping so that era boundaries do not matter.
    let d = |a: NtpTimestamp, b: NtpTimestamp| i128::from(a.0.wrapping_sub(b.0) as i64);
    let server_hold = d(transmit, receive);
    if server_hold < 0 {
        return Err(SntpError::BadTimestamps);
    }
    let offset = (d(receive, sent) + d(transmit, received)) / 2;
    let delay = d(received, sent) - server_hold;
    Ok(Sample {
        offset: fixed_to_secs(offset),
        delay: fixed_to_secs(delay),
        stratum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    fn ts(secs: u64, nanos: u32) -> NtpTimestamp {
        NtpTimestamp::from_unix(secs, nanos)
    }

    /// A server reply with the given header byte, stratum and T1/T2/T3.
    fn reply(
        first: u8,
        stratum: u8,
        t1: NtpTimestamp,
        t2: NtpTimestamp,
        t3: NtpTimestamp,
    ) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = first;
        p[1] = stratum;
        p[2] = 6; // poll
        p[3] = 0xEC; // precision -20
        p[12..16].copy_from_slice(b"GPS\0");
        p[16..24].copy_from_slice(&t3.0.to_be_bytes()); // reference time
        p[24..32].copy_from_slice(&t1.0.to_be_bytes());
        p[32..40].copy_from_slice(&t2.0.to_be_bytes());
        p[40..48].copy_from_slice(&t3.0.to_be_bytes());
        p
    }

    #[test]
    fn request_layout() {
        let t = NtpTimestamp(0x0123_4567_89AB_CDEF);
        let p = request(t);
        assert_eq!(p[0], 0b00_100_011);
        assert!(p[1..40].iter().all(|&b| b == 0));
        assert_eq!(&p[40..], &[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
    }

    #[test]
    fn unix_conversions() {
        assert_eq!(ts(0, 0), NtpTimestamp(UNIX_OFFSET << 32));
        assert_eq!(ts(0, 500_000_000).fraction(), 0x8000_0000);
        assert_eq!(ts(0, 999_999_999).fraction(), 0xFFFF_FFFC);
        assert_eq!(ts(0, 2_000_000_000).fraction(), 0xFFFF_FFFC);
        // 2024-01-01T00:00:00Z = 1704067200 -> NTP 3913056000.
        assert_eq!(ts(1_704_067_200, 0).seconds(), 3_913_056_000);
        for (s, n) in [
            (0u64, 0u32),
            (1_704_067_200, 123_456_789),
            (2_085_978_495, 999_999_999),
        ] {
            let (s2, n2) = ts(s, n).to_unix();
            assert_eq!(s2, s);
            assert!(n2.abs_diff(n) <= 1, "{n} {n2}");
        }
        // Era 1: 2036-02-07T06:28:16Z (Unix 2085978496) is NTP seconds 0 again.
        assert_eq!(ts(2_085_978_496, 0).seconds(), 0);
        assert_eq!(ts(2_085_978_496, 0).to_unix(), (2_085_978_496, 0));
        assert_eq!(
            ts(2_200_000_000, 250_000_000).to_unix(),
            (2_200_000_000, 250_000_000)
        );
        // Before 1968 in era 0 is read as era 1 (RFC 4330 rule); never panics.
        let _ = NtpTimestamp(1).to_unix();
        assert_eq!(
            NtpTimestamp(0xFFFF_FFFF_FFFF_FFFF).to_unix(),
            (2_085_978_496, 0)
        );
        // diff across the era boundary
        let a = ts(2_085_978_495, 0);
        let b = ts(2_085_978_497, 500_000_000);
        assert_eq!(b.diff_secs(a), 2.5);
        assert_eq!(a.diff_secs(b), -2.5);
    }

    #[test]
    fn accepts_reply_and_computes_offset_and_delay() {
        // Our clock is 10 s behind; 40 ms each way, 5 ms server hold.
        let t1 = ts(1_700_000_000, 0);
        let t2 = ts(1_700_000_010, 40_000_000);
        let t3 = ts(1_700_000_010, 45_000_000);
        let t4 = ts(1_700_000_000, 85_000_000);
        let r = reply(0x24, 2, t1, t2, t3);
        let s = parse_response(&r, t1, t4).unwrap();
        assert!((s.offset - 10.0).abs() < 1e-6, "{}", s.offset);
        assert!((s.delay - 0.080).abs() < 1e-6, "{}", s.delay);
        assert_eq!(s.stratum, 2);
        // Our clock ahead by 3.25 s, VN 3, LI 1 (leap second pending) accepted, extension bytes ignored.
        let t2 = ts(1_699_999_996, 790_000_000);
        let t3 = t2;
        let t4 = ts(1_700_000_000, 80_000_000);
        let mut r = reply(0b01_011_100, 1, t1, t2, t3).to_vec();
        r.extend_from_slice(&[0xAA; 20]);
        let s = parse_response(&r, t1, t4).unwrap();
        assert!((s.offset + 3.25).abs() < 1e-6, "{}", s.offset);
        assert!((s.delay - 0.080).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_replies() {
        let t1 = ts(1_700_000_000, 0);
        let t2 = ts(1_700_000_000, 10);
        let t4 = ts(1_700_000_001, 0);
        let ok = reply(0x24, 2, t1, t2, t2);
        assert!(parse_response(&ok, t1, t4).is_ok());
        assert_eq!(parse_response(&ok[..47], t1, t4), Err(SntpError::TooShort));
        assert_eq!(parse_response(&[], t1, t4), Err(SntpError::TooShort));
        let bad = |f: &dyn Fn(&mut [u8; 48])| {
            let mut p = ok;
            f(&mut p);
            parse_response(&p, t1, t4)
        };
        assert_eq!(bad(&|p| p[0] = 0x23), Err(SntpError::BadMode(3)));
        assert_eq!(bad(&|p| p[0] = 0x25), Err(SntpError::BadMode(5)));
        assert_eq!(bad(&|p| p[0] = 0x04), Err(SntpError::BadVersion(0)));
        assert_eq!(bad(&|p| p[0] = 0x2C), Err(SntpError::BadVersion(5)));
        assert_eq!(bad(&|p| p[0] = 0xE4), Err(SntpError::Unsynchronized));
        assert_eq!(
            bad(&|p| {
                p[1] = 0;
                p[12..16].copy_from_slice(b"RATE");
            }),
            Err(SntpError::KissOfDeath(*b"RATE"))
        );
        assert_eq!(bad(&|p| p[1] = 16), Err(SntpError::BadStratum(16)));
        assert_eq!(bad(&|p| p[31] ^= 1), Err(SntpError::OriginateMismatch));
        assert_eq!(bad(&|p| p[40..48].fill(0)), Err(SntpError::ZeroTimestamp));
        assert_eq!(bad(&|p| p[32..40].fill(0)), Err(SntpError::ZeroTimestamp));
        // Transmit before receive.
        assert_eq!(
            bad(&|p| p[39] = p[39].wrapping_add(100)),
            Err(SntpError::BadTimestamps)
        );
        // A kiss code is printable in the error text.
        assert!(
            SntpError::KissOfDeath(*b"DENY")
                .to_string()
                .ends_with("DENY")
        );
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let t1 = ts(1_700_000_000, 0);
        let r = reply(0x24, 1, t1, t1, t1);
        for n in 0..48 {
            assert_eq!(parse_response(&r[..n], t1, t1), Err(SntpError::TooShort));
        }
        let mut rng = XorShift64(0x5179);
        let mut accepted = 0;
        for i in 0..20_000 {
            let len = (rng.next_u64() % 80) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let sent = NtpTimestamp(rng.next_u64());
            if i % 2 == 0 && len >= 48 {
                buf[24..32].copy_from_slice(&sent.0.to_be_bytes());
                buf[0] = (buf[0] & 0xC0) | 0x24;
                buf[1] = 1 + buf[1] % 15;
            }
            if let Ok(s) = parse_response(&buf, sent, NtpTimestamp(rng.next_u64())) {
                assert!(s.offset.is_finite() && s.delay.is_finite());
                accepted += 1;
            }
            let _ = NtpTimestamp(rng.next_u64()).to_unix();
            let _ = NtpTimestamp::from_unix(rng.next_u64(), rng.next_u64() as u32);
        }
        assert!(accepted > 1000);
    }
}
