//! Pure protocol logic (sans-IO): bytes, `now` and randomness go in; bytes, decisions and
//! deadlines come out. Nothing here touches a socket, the clock or the OS random source.

pub mod browserhello;
pub mod codec;
pub mod dc;
pub mod faketls;
pub mod fronting;
pub mod handshake;
pub mod hash;
pub mod ja4;
pub mod middle;
pub mod mlkem;
pub mod obfs2;
pub mod proxy_protocol;
pub mod replay;
pub mod secret;
pub mod shaping;
pub mod socks5;
pub mod tlsprofile;
pub mod users;
pub mod x25519;

use std::fmt;

/// A source of randomness, passed in so that protocol code stays deterministic under test.
pub trait Rng {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    /// A uniform random integer in `0..n` (`n > 0`); `0` when `n == 0`.
    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let mut b = [0u8; 8];
        self.fill(&mut b);
        (u64::from_le_bytes(b) % u64::from(n)) as u32
    }
}

/// A small deterministic generator (xorshift64*) for tests and benchmarks. Not for secrets.
#[derive(Clone, Debug)]
pub struct XorShift64(pub u64);

impl XorShift64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = if self.0 == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            self.0
        };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Rng for XorShift64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Why a client's handshake was not accepted. Drives fronting, metrics and logs; `Copy`, no
/// allocation. `as_str` is the stable label used in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// A TLS record header with a type other than handshake (0x16).
    RecordType,
    /// A TLS record header with an unexpected protocol version.
    RecordVersion,
    /// The ClientHello was split over more than 11 records.
    TooManyFragments,
    /// The ClientHello does not fit the handshake buffer.
    TooLarge,
    /// Not a ClientHello, or its body is malformed.
    Malformed,
    /// Every offered cipher suite is GREASE.
    NoCipherSuite,
    /// The SNI does not name the secret's host.
    Sni,
    /// The HMAC in the client random does not match the secret.
    Digest,
    /// The timestamp in the client random is outside the tolerated clock skew.
    TimeSkew,
    /// This handshake was seen before (anti-replay).
    Replay,
    /// The obfuscated2 frame carries no known protocol tag under this secret.
    ObfsTag,
    /// The obfuscated2 tag is valid but not allowed for this secret kind.
    ObfsTagNotAllowed,
    /// The client went silent before finishing its handshake.
    Timeout,
    /// The client closed the connection before finishing its handshake.
    Eof,
    /// A malformed PROXY protocol header (with `proxy-protocol-listener`).
    ProxyHeader,
    /// A client of a user refused by the user's limits (expired, quota, max-ips,
    /// max-connections; per user and reason in the user metrics).
    UserLimit,
}

impl Reject {
    /// Every reason, in declaration order: `Reject::ALL[r as usize] == r` (metrics keep one
    /// counter per reason, indexed so).
    pub const ALL: [Reject; 16] = [
        Reject::RecordType,
        Reject::RecordVersion,
        Reject::TooManyFragments,
        Reject::TooLarge,
        Reject::Malformed,
        Reject::NoCipherSuite,
        Reject::Sni,
        Reject::Digest,
        Reject::TimeSkew,
        Reject::Replay,
        Reject::ObfsTag,
        Reject::ObfsTagNotAllowed,
        Reject::Timeout,
        Reject::Eof,
        Reject::ProxyHeader,
        Reject::UserLimit,
    ];

    /// A short, stable, lowercase label (for logs and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::RecordType => "record-type",
            Reject::RecordVersion => "record-version",
            Reject::TooManyFragments => "too-many-fragments",
            Reject::TooLarge => "too-large",
            Reject::Malformed => "malformed",
            Reject::NoCipherSuite => "no-cipher-suite",
            Reject::Sni => "sni-mismatch",
            Reject::Digest => "bad-digest",
            Reject::TimeSkew => "time-skew",
            Reject::Replay => "replay",
            Reject::ObfsTag => "obfs2-bad-tag",
            Reject::ObfsTagNotAllowed => "obfs2-tag-not-allowed",
            Reject::Timeout => "timeout",
            Reject::Eof => "eof",
            Reject::ProxyHeader => "bad-proxy-header",
            Reject::UserLimit => "user-limit",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable insertion sort by key, for the short lists of configuration code (warnings, DC
/// overrides, DC ids: tens of items). Size, not speed: each `sort_by_key`/`sort_unstable` on a
/// new element type brings its own copy of the standard library's sort (several KiB per type in
/// the shipped binary, issue 5); this loop costs a few hundred bytes. Quadratic: not for long
/// or attacker-sized input.
pub fn sort_small_by_key<T, K: Ord>(v: &mut [T], mut key: impl FnMut(&T) -> K) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && key(&v[j - 1]) > key(&v[j]) {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// In-place heapsort (unstable): O(n log n) at worst, no allocation, a few hundred bytes of
/// code per element type. For long lists built off the hot path (IP lists: up to millions of
/// ranges, on the list loader's thread): std's `sort_unstable` brings about 5 KiB of code per
/// element type (10.7 KiB for the two of the IP lists) for a sort about 6 times faster (1M
/// IPv6 ranges: 50 ms against 300 ms on the development machine).
pub fn sort_heap<T: Ord>(v: &mut [T]) {
    fn sift_down<T: Ord>(v: &mut [T], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift_down(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sort_heap_sorts_like_sort_unstable() {
        let mut rng = super::XorShift64(11);
        for len in (0..70).chain([255, 256, 1000, 4097]) {
            for modulus in [2, 50, u64::MAX] {
                let mut v: Vec<(u64, u64)> = (0..len)
                    .map(|_| (rng.next_u64() % modulus, rng.next_u64() % 3))
                    .collect();
                let mut want = v.clone();
                want.sort_unstable();
                super::sort_heap(&mut v);
                assert_eq!(v, want, "len {len}, modulus {modulus}");
            }
        }
        let mut down: Vec<u128> = (0..500).rev().collect();
        super::sort_heap(&mut down);
        assert!(down.iter().enumerate().all(|(i, &x)| x == i as u128));
    }

    #[test]
    fn sort_small_by_key_is_a_stable_sort() {
        let mut rng = super::XorShift64(7);
        for len in 0..40 {
            let mut v: Vec<(u64, usize)> = (0..len).map(|i| (rng.next_u64() % 5, i)).collect();
            let mut want = v.clone();
            want.sort_by_key(|e| e.0);
            super::sort_small_by_key(&mut v, |e| e.0);
            assert_eq!(v, want);
        }
    }

    use super::*;

    #[test]
    fn reject_all_lists_every_reason_at_its_discriminant() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        // A new variant must be added to ALL: the match has no wildcard, so adding one fails
        // to compile here until it is listed (and then the length check catches a gap).
        let last = |r: Reject| match r {
            Reject::RecordType
            | Reject::RecordVersion
            | Reject::TooManyFragments
            | Reject::TooLarge
            | Reject::Malformed
            | Reject::NoCipherSuite
            | Reject::Sni
            | Reject::Digest
            | Reject::TimeSkew
            | Reject::Replay
            | Reject::ObfsTag
            | Reject::ObfsTagNotAllowed
            | Reject::Timeout
            | Reject::Eof
            | Reject::ProxyHeader => false,
            Reject::UserLimit => true,
        };
        assert!(last(Reject::ALL[Reject::ALL.len() - 1]));
        let mut labels: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reject::ALL.len(), "labels are distinct");
    }

    #[test]
    fn xorshift_is_deterministic_and_below_is_bounded() {
        let mut a = XorShift64(1);
        let mut b = XorShift64(1);
        assert_eq!(a.next_u64(), b.next_u64());
        for _ in 0..1000 {
            assert!(a.below(7) < 7);
        }
        assert_eq!(a.below(0), 0);
    }
}
