//! Admission by source address (issue 12: one address took every slot of `concurrency`).
//!
//! I/O layer support, shared by the workers, lock-free. Two rules on top of `concurrency`, and
//! a budget of handshake work:
//! * once half of `concurrency` is in use, an address (IPv6: its /64) holds at most
//!   `concurrency-per-ip` unauthenticated connections at once (handshakes, and connections
//!   fronted to the site). Below half, nobody is turned away for its address: a load test, a
//!   busy carrier NAT or a prober's burst from one address sees what the site would show, and
//!   the cap engages only when slots get scarce, which is when one address could starve the
//!   others;
//! * the last eighth of `concurrency` is kept for addresses that completed a handshake in the
//!   last hour: when the proxy is that full, other addresses are turned away, so a flood from
//!   many addresses does not lock out the clients that use the proxy;
//! * a source may take an eighth of one worker's time for its handshake steps, give or take
//!   a burst of 50 ms: past that, its next handshakes try only the user its address used last
//!   (the hint), not every user. With many users a hello that matches nobody costs a search
//!   over all their keys (1,000 users: about 0.4 ms here), so a flood of them from one
//!   address would otherwise pin a worker; with one user, or for a returning client, it
//!   changes nothing. What a prober sees is the same either way: a hello that matches no
//!   tried key is fronted. (A GCRA: one atomic per bucket.)
//!
//! Counts live in a fixed table of buckets chosen by a keyed hash of the address (keys from
//! the OS, so a prober cannot aim at a client's bucket); two addresses in one bucket share its
//! count (stricter, never looser), which with 4,096 buckets is rare. No allocation after
//! start; two atomics per accept, two per handshake step (the budget), one per completed
//! handshake or close.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets of the table.
const BUCKETS: usize = 4096;
/// How long an address that completed a handshake may use the reserve.
const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// A source's share of one worker's time for handshakes: one in this many.
const WORK_SHARE: u64 = 8;
/// How far ahead of its share a source may run (in its share's time: 400 ms at 1/8 is 50 ms
/// of work in a burst).
const WORK_BURST: Duration = Duration::from_millis(400);

/// Why a connection is turned away at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address holds `concurrency-per-ip` unauthenticated connections already.
    PerSource,
    /// Only the reserve is left, and its address is not a known client's.
    Reserve,
}

/// Per-source counts of unauthenticated connections, and when each bucket last saw a
/// completed handshake.
pub(crate) struct Sources {
    /// The bucket hash's key (from the OS).
    key: [u64; 2],
    /// Unauthenticated connections per bucket.
    unauth: [AtomicU32; BUCKETS],
    /// Seconds since `origin` (plus one; 0: never) of the last handshake completed per bucket.
    known: [AtomicU32; BUCKETS],
    /// Per bucket, when the handshake work of its addresses is paid off at its share, in µs
    /// since `origin` (the theoretical arrival time of a GCRA).
    work: [AtomicU64; BUCKETS],
    origin: Instant,
    /// Largest count per bucket (0: no limit).
    cap: u32,
    /// Slots of `concurrency` kept for known addresses.
    reserve: usize,
    concurrency: usize,
}

impl Sources {
    /// The rules for `concurrency` slots and `per_ip` unauthenticated connections per address
    /// (0: no limit).
    pub(crate) fn new(concurrency: usize, per_ip: usize, origin: Instant) -> Sources {
        let mut key = [0u8; 16];
        // Without OS randomness (never seen) the buckets are still right, only guessable.
        let _ = super::rng::os_fill(&mut key);
        let half = |i: usize| u64::from_le_bytes(key[i..i + 8].try_into().unwrap_or_default());
        Sources {
            key: [half(0), half(8)],
            unauth: [const { AtomicU32::new(0) }; BUCKETS],
            known: [const { AtomicU32::new(0) }; BUCKETS],
            work: [const { AtomicU64::new(0) }; BUCKETS],
            origin,
            cap: u32::try_from(per_ip).unwrap_or(u32::MAX),
            reserve: concurrency / 8,
            concurrency,
        }
    }

    /// The bucket of `ip` (an IPv6 address by its /64; an IPv4-mapped one as IPv4).
    #[inline(never)]
    pub(crate) fn bucket(&self, ip: IpAddr) -> u32 {
        let x = match ip.to_canonical() {
            IpAddr::V4(v4) => u64::from(u32::from(v4)) | 1 << 63,
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        };
        // Two keyed multiply-xorshift rounds: enough to keep a prober from aiming at a
        // client's bucket without knowing the key (not a MAC: nothing is authenticated).
        let mut h = (x ^ self.key[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ h >> 29 ^ self.key[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        ((h ^ h >> 32) % BUCKETS as u64) as u32
    }

    fn secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.origin).as_secs() as u32 + 1
    }

    /// Admits a new unauthenticated connection in `bucket`, `active` connections being open
    /// before it; counts it (give it back with [`Sources::release`] or
    /// [`Sources::established`]).
    #[inline(never)]
    pub(crate) fn admit(&self, bucket: u32, active: usize, now: Instant) -> Result<(), Refused> {
        let b = bucket as usize % BUCKETS;
        if active + self.reserve >= self.concurrency {
            let known = self.known[b].load(Ordering::Relaxed);
            if known == 0 || self.secs(now) - known > KNOWN_FOR.as_secs() as u32 {
                return Err(Refused::Reserve);
            }
        }
        let held = self.unauth[b].fetch_add(1, Ordering::AcqRel);
        if self.cap != 0 && held >= self.cap && active * 2 >= self.concurrency {
            self.unauth[b].fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerSource);
        }
        Ok(())
    }

    /// An unauthenticated connection of `bucket` closed.
    pub(crate) fn release(&self, bucket: u32) {
        self.unauth[bucket as usize % BUCKETS].fetch_sub(1, Ordering::AcqRel);
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// Whether `bucket` may have every user tried for its next handshake step: its work so
    /// far is within its share, give or take the burst.
    pub(crate) fn may_search(&self, bucket: u32, now: Instant) -> bool {
        let due = self.work[bucket as usize % BUCKETS].load(Ordering::Relaxed);
        due <= self.micros(now) + WORK_BURST.as_micros() as u64
    }

    /// A handshake step of `bucket` took `cost` of a worker's time.
    pub(crate) fn charge(&self, bucket: u32, cost: Duration, now: Instant) {
        let now = self.micros(now);
        let add = (cost.as_micros() as u64).saturating_mul(WORK_SHARE);
        let _ = self.work[bucket as usize % BUCKETS].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |due| Some(due.max(now).saturating_add(add)),
        );
    }

    /// A connection of `bucket` completed its handshake: no longer counted, and its address
    /// may use the reserve for an hour.
    #[inline(never)]
    pub(crate) fn established(&self, bucket: u32, now: Instant) {
        self.release(bucket);
        self.known[bucket as usize % BUCKETS].store(self.secs(now), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_share_of_handshake_work_is_limited_until_it_is_paid_off() {
        let t0 = Instant::now();
        let s = Sources::new(80, 0, t0);
        let (a, b) = (0, 1);
        let ms = Duration::from_millis;
        // 50 ms of work in a burst is within the share (400 ms ahead at 1/8)...
        for _ in 0..5 {
            assert!(s.may_search(a, t0));
            s.charge(a, ms(10), t0);
        }
        assert!(s.may_search(a, t0), "exactly at the burst");
        s.charge(a, Duration::from_micros(1), t0);
        // ... more is not, for this bucket only.
        assert!(!s.may_search(a, t0));
        assert!(s.may_search(b, t0));
        // Paid off at the share: 1 µs × 8 later.
        assert!(!s.may_search(a, t0 + Duration::from_micros(7)));
        assert!(s.may_search(a, t0 + Duration::from_micros(8)));
        // Idle time is no credit beyond the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            s.charge(a, ms(10), later);
        }
        assert!(s.may_search(a, later));
        s.charge(a, ms(1), later);
        assert!(!s.may_search(a, later));
    }

    #[test]
    fn caps_unauthenticated_connections_per_source_and_keeps_a_reserve() {
        let t0 = crate::testing::t0();
        let s = Sources::new(80, 3, t0);
        let a = s.bucket("192.0.2.1".parse().unwrap());
        let b = (2..=255u8)
            .map(|i| s.bucket(IpAddr::from([192, 0, 2, i])))
            .find(|&b| b != a)
            .unwrap();
        // Below half of concurrency (40), no cap: a burst from one address is let in.
        for i in 0..3 {
            assert_eq!(s.admit(a, i, t0), Ok(()));
        }
        assert_eq!(s.admit(a, 3, t0), Ok(()), "below half of concurrency");
        s.release(a);
        // From half on, the cap.
        assert_eq!(s.admit(a, 40, t0), Err(Refused::PerSource));
        assert_eq!(s.admit(b, 41, t0), Ok(()));
        // One completes its handshake, one closes: two more fit.
        s.established(a, t0);
        s.release(a);
        assert_eq!(s.admit(a, 43, t0), Ok(()));
        assert_eq!(s.admit(a, 44, t0), Ok(()));
        assert_eq!(s.admit(a, 45, t0), Err(Refused::PerSource));
        // The reserve (80 / 8 = 10): only for an address that completed a handshake lately.
        assert_eq!(s.admit(b, 70, t0), Err(Refused::Reserve));
        s.release(a);
        assert_eq!(s.admit(a, 70, t0), Ok(()));
        let later = t0 + KNOWN_FOR + Duration::from_secs(2);
        s.release(a);
        assert_eq!(s.admit(a, 70, later), Err(Refused::Reserve));
        // IPv6 by /64.
        let x = s.bucket("2001:db8:1:2::1".parse().unwrap());
        assert_eq!(x, s.bucket("2001:db8:1:2:ffff::9".parse().unwrap()));
        let v4 = s.bucket("192.0.2.1".parse().unwrap());
        assert_eq!(v4, s.bucket("::ffff:192.0.2.1".parse().unwrap()));
    }
}
