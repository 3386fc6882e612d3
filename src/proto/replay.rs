//! Anti-replay filter: remembers accepted handshakes (PROTOCOL.md §5, §13.3). FakeTLS hellos
//! carry a timestamp, so they are remembered for the whole clock-skew window (older ones fail
//! the timestamp check anyway); obfuscated2 frames (`dd` and classic secrets) carry none, so
//! they are forgotten only when the memory is full ([`ReplayFilter::capacity_only`]): a frame
//! replayed hours later is still a replay while fewer than [`ReplayFilter::capacity`]
//! handshakes came after it.
//!
//! Pure / no I/O: the current time (`now_unix`, seconds) and the per-process hash key are
//! parameters; nothing here reads the clock or the OS random source.
//!
//! Unlike mtg's Stable Bloom Filter, which forgets entries at random, this filter is exact
//! within its window:
//!
//! * Each digest (the 32-byte client random for FakeTLS, which carries the HMAC of the whole
//!   hello; frame bytes 8..56 for `dd` and classic secrets) is reduced to a 64-bit fingerprint with SipHash-2-4 under a per-process random
//!   128-bit key, so clients cannot aim collisions or cluster the table.
//! * Fingerprints and their insert times live in a fixed ring in insertion order; an
//!   open-addressing index (linear probing, load factor <= 1/2, backward-shift deletion, so no
//!   tombstones) maps a fingerprint to its ring position.
//! * Before each check, entries older than `window_secs` are dropped from the ring's head (never,
//!   for a [`ReplayFilter::capacity_only`] filter).
//!
//! Invariants:
//! * All memory is allocated in [`ReplayFilter::new`]; nothing allocates afterwards, and
//!   [`ReplayFilter::memory_bytes`] never exceeds the budget (unless the budget is smaller than
//!   one entry, see [`ReplayFilter::new`]).
//! * While fewer than [`ReplayFilter::capacity`] handshakes arrive per window, every digest
//!   accepted in the last `window_secs` seconds is reported as a replay (no false negatives).
//!   False positives need a 64-bit fingerprint collision (about n^2 / 2^65).
//! * When the ring is full of live entries, the OLDEST entry is evicted and counted in
//!   [`ReplayFilter::evictions`]; size the budget for peak handshake rate x window
//!   ([`ReplayFilter::BYTES_PER_ENTRY`] bytes each) so that this never happens.
//! * Lookups and inserts cost O(1) expected: the index is at most half full.
//! * A clock that steps backwards only makes entries live longer (safe); time is stored as
//!   `u32` unix seconds, saturating.

/// Marks an empty index slot (ring positions are always < `u32::MAX`).
const EMPTY: u32 = u32::MAX;

/// The largest ring we build, so ring positions fit in `u32` with room for [`EMPTY`].
const MAX_CAPACITY: usize = 1 << 30;

/// A bounded set of recently accepted handshake digests. See the module documentation.
#[derive(Debug)]
pub struct ReplayFilter {
    k0: u64,
    k1: u64,
    window_secs: u64,
    /// Ring of fingerprints, oldest at `head`.
    ring_fp: Vec<u64>,
    /// Insert time (unix seconds, saturated to `u32`) of each ring entry.
    ring_time: Vec<u32>,
    head: usize,
    len: usize,
    /// Open-addressing index: ring position or [`EMPTY`]; twice the ring's capacity.
    index: Vec<u32>,
    evictions: u64,
}

impl ReplayFilter {
    /// Memory per remembered handshake: 8 (fingerprint) + 4 (time) + 2 x 4 (index slots).
    pub const BYTES_PER_ENTRY: usize = 20;

    /// A filter using at most `max_bytes` (e.g. 1 MiB, about 52,000 handshakes) that remembers
    /// each handshake for at least `window_secs` seconds (the proxy passes 2 x the clock-skew
    /// tolerance plus a margin). `hash_key` must be random per process and kept secret.
    ///
    /// A budget too small for one entry is raised to one entry.
    /// `window_secs` = [`ReplayFilter::NO_EXPIRY`] is [`ReplayFilter::capacity_only`].
    pub fn new(max_bytes: usize, window_secs: u64, hash_key: [u8; 16]) -> ReplayFilter {
        let fixed = std::mem::size_of::<ReplayFilter>();
        let capacity =
            (max_bytes.saturating_sub(fixed) / Self::BYTES_PER_ENTRY).clamp(1, MAX_CAPACITY);
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&hash_key[..8]);
        k1.copy_from_slice(&hash_key[8..]);
        ReplayFilter {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
            window_secs,
            ring_fp: vec![0; capacity],
            ring_time: vec![0; capacity],
            head: 0,
            len: 0,
            index: vec![EMPTY; capacity * 2],
            evictions: 0,
        }
    }

    /// A window that never ends: see [`ReplayFilter::capacity_only`].
    pub const NO_EXPIRY: u64 = u64::MAX;

    /// A filter that forgets an entry only to make room for a new one (the oldest goes first,
    /// counted in [`evictions`](Self::evictions)): for obfuscated2 frames, which carry no
    /// timestamp, so that no age makes a replay acceptable. It remembers the last
    /// `max_bytes / BYTES_PER_ENTRY` handshakes (1 MiB: about 52,000).
    pub fn capacity_only(max_bytes: usize, hash_key: [u8; 16]) -> ReplayFilter {
        ReplayFilter::new(max_bytes, Self::NO_EXPIRY, hash_key)
    }

    /// Returns true if `digest` was recorded within the last `window_secs` seconds (a replay);
    /// otherwise records it (at `now_unix`) and returns false.
    pub fn check_and_insert(&mut self, digest: &[u8], now_unix: u64) -> bool {
        self.expire(now_unix);
        let fp = siphash24(self.k0, self.k1, digest);
        let (slot, found) = self.find(fp);
        if found {
            return true;
        }
        let mut slot = slot;
        if self.len == self.ring_fp.len() {
            // Full of live entries: forget the oldest one, loudly.
            self.evictions += 1;
            self.pop_head();
            // The deletion may have shifted entries into our probe path; look again.
            slot = self.find(fp).0;
        }
        let cap = self.ring_fp.len();
        let pos = (self.head + self.len) % cap;
        self.ring_fp[pos] = fp;
        self.ring_time[pos] = u32::try_from(now_unix).unwrap_or(u32::MAX);
        self.len += 1;
        // pos < MAX_CAPACITY < u32::MAX, so this never saturates.
        self.index[slot] = u32::try_from(pos).unwrap_or(EMPTY);
        false
    }

    /// Drops every entry older than the window at `now_unix` (also done by
    /// [`check_and_insert`](Self::check_and_insert)); keeps [`len`](Self::len) accurate.
    pub fn expire(&mut self, now_unix: u64) {
        while self.len > 0 {
            let t = u64::from(self.ring_time[self.head]);
            if now_unix.saturating_sub(t) <= self.window_secs {
                break;
            }
            self.pop_head();
        }
    }

    /// Entries currently remembered (some may have expired since the last call).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most entries remembered at once; more live handshakes than this evict the oldest.
    pub fn capacity(&self) -> usize {
        self.ring_fp.len()
    }

    /// How many live (not yet expired) entries were forgotten because the filter was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Bytes used by the filter (struct plus its tables); fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<ReplayFilter>()
            + self.ring_fp.capacity() * std::mem::size_of::<u64>()
            + self.ring_time.capacity() * std::mem::size_of::<u32>()
            + self.index.capacity() * std::mem::size_of::<u32>()
    }

    /// The home index slot of a fingerprint (multiply-shift range reduction).
    fn home(&self, fp: u64) -> usize {
        let n = self.index.len() as u128;
        // The product shifted by 64 is < n, which is a usize.
        ((u128::from(fp) * n) >> 64) as usize
    }

    fn next(&self, slot: usize) -> usize {
        if slot + 1 == self.index.len() {
            0
        } else {
            slot + 1
        }
    }

    /// Probes for `fp`: (slot holding it, true) or (first empty slot on its path, false).
    /// Terminates because the index is never more than half full.
    fn find(&self, fp: u64) -> (usize, bool) {
        let mut slot = self.home(fp);
        loop {
            match self.index[slot] {
                EMPTY => return (slot, false),
                pos if self.ring_fp[pos as usize] == fp => return (slot, true),
                _ => slot = self.next(slot),
            }
        }
    }

    /// Removes the ring's oldest entry and its index slot.
    fn pop_head(&mut self) {
        if self.len == 0 {
            return;
        }
        let pos = self.head;
        let mut slot = self.home(self.ring_fp[pos]);
        // The head is in the index, so this finds it before an empty slot.
        loop {
            match self.index[slot] {
                EMPTY => break,
                p if p as usize == pos => {
                    self.remove_slot(slot);
                    break;
                }
                _ => slot = self.next(slot),
            }
        }
        self.head = (self.head + 1) % self.ring_fp.len();
        self.len -= 1;
    }

    /// Backward-shift deletion for linear probing: pull later entries of the cluster into the
    /// hole when their home allows it, so lookups never need tombstones.
    fn remove_slot(&mut self, hole: usize) {
        let mut i = hole;
        let mut j = hole;
        loop {
            j = self.next(j);
            let pos = self.index[j];
            if pos == EMPTY {
                break;
            }
            let k = self.home(self.ring_fp[pos as usize]);
            // The entry at j stays if its home k lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.index[i] = pos;
                i = j;
            }
        }
        self.index[i] = EMPTY;
    }

    /// The longest probe a lookup can currently take (distance of any entry from its home).
    #[cfg(test)]
    fn max_probe(&self) -> usize {
        let n = self.index.len();
        let mut worst = 0;
        for (slot, &pos) in self.index.iter().enumerate() {
            if pos != EMPTY {
                let home = self.home(self.ring_fp[pos as usize]);
                worst = worst.max((slot + n - home) % n);
            }
        }
        worst
    }
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 (Aumasson & Bernstein, 2012) of `data` under the key (k0, k1).
fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let m = u64::from_le_bytes(w);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8; // length mod 256, per the specification
    let b = u64::from_le_bytes(last);
    v[3] ^= b;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Rng, XorShift64};

    const KEY: [u8; 16] = [7; 16];
    const T0: u64 = 1_700_000_000;

    fn digest(rng: &mut XorShift64) -> [u8; 32] {
        let mut d = [0u8; 32];
        rng.fill(&mut d);
        d
    }

    #[test]
    fn accepts_siphash24_reference_vectors() {
        // Key 00..0f; messages 00..(n-1) (reference implementation's vectors.h / paper).
        let key: Vec<u8> = (0u8..16).collect();
        let mut kb = [0u8; 8];
        kb.copy_from_slice(&key[..8]);
        let k0 = u64::from_le_bytes(kb);
        kb.copy_from_slice(&key[8..]);
        let k1 = u64::from_le_bytes(kb);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn rejects_duplicate_as_replay() {
        let mut f = ReplayFilter::new(1 << 16, 20, KEY);
        let d = [0xabu8; 32];
        assert!(!f.check_and_insert(&d, T0));
        assert!(f.check_and_insert(&d, T0));
        assert!(f.check_and_insert(&d, T0 + 5));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn accepts_distinct_digests() {
        let mut f = ReplayFilter::new(1 << 16, 20, KEY);
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        b[31] = 1; // differs in one bit only
        assert!(!f.check_and_insert(&a, T0));
        assert!(!f.check_and_insert(&b, T0));
        a[0] = 1;
        assert!(!f.check_and_insert(&a, T0));
        assert!(!f.check_and_insert(&[], T0));
        assert!(!f.check_and_insert(&[0u8; 48], T0));
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn rejects_replay_until_window_ends_then_accepts() {
        let window = 30;
        let mut f = ReplayFilter::new(1 << 16, window, KEY);
        let d = [0x11u8; 32];
        assert!(!f.check_and_insert(&d, T0));
        // Remembered for the whole window, inclusive.
        assert!(f.check_and_insert(&d, T0 + window - 1));
        assert!(f.check_and_insert(&d, T0 + window));
        // Forgotten once older than the window, then remembered afresh.
        assert!(!f.check_and_insert(&d, T0 + window + 1));
        assert_eq!(f.len(), 1);
        assert!(f.check_and_insert(&d, T0 + window + 2));
        assert_eq!(f.evictions(), 0);
    }

    #[test]
    fn accepts_clock_stepping_back_without_forgetting() {
        let mut f = ReplayFilter::new(1 << 16, 10, KEY);
        let d = [0x22u8; 32];
        assert!(!f.check_and_insert(&d, T0));
        assert!(f.check_and_insert(&d, T0 - 1000));
        assert!(f.check_and_insert(&d, 0));
    }

    #[test]
    fn rejects_all_of_a_full_window_under_capacity() {
        let mut f = ReplayFilter::new(1 << 16, 60, KEY);
        let cap = f.capacity();
        let mut rng = XorShift64(5);
        let ds: Vec<[u8; 32]> = (0..cap).map(|_| digest(&mut rng)).collect();
        for (i, d) in ds.iter().enumerate() {
            assert!(!f.check_and_insert(d, T0 + (i as u64 * 60) / cap as u64));
        }
        assert_eq!(f.len(), cap);
        for d in &ds {
            assert!(f.check_and_insert(d, T0 + 60));
        }
        assert_eq!(f.evictions(), 0);
    }

    #[test]
    fn accepts_eviction_of_oldest_when_full_and_counts_it() {
        let budget = 4096;
        let mut f = ReplayFilter::new(budget, 1000, KEY);
        let cap = f.capacity();
        assert!(cap > 10);
        assert!(f.memory_bytes() <= budget);
        let mut rng = XorShift64(9);
        let ds: Vec<[u8; 32]> = (0..cap + 3).map(|_| digest(&mut rng)).collect();
        for (i, d) in ds[..cap].iter().enumerate() {
            assert!(!f.check_and_insert(d, T0 + i as u64 / 8));
        }
        assert_eq!(f.evictions(), 0);
        for d in &ds[cap..] {
            assert!(!f.check_and_insert(d, T0 + 100));
            assert!(f.memory_bytes() <= budget);
        }
        assert_eq!(f.evictions(), 3);
        assert_eq!(f.len(), cap);
        // The three oldest were forgotten (not an arbitrary three); the rest are remembered.
        for d in &ds[3..] {
            assert!(f.check_and_insert(d, T0 + 100));
        }
        assert_eq!(f.evictions(), 3);
        assert!(!f.check_and_insert(&ds[0], T0 + 100));
        assert_eq!(f.evictions(), 4);
    }

    #[test]
    fn accepts_memory_within_budget_for_many_sizes() {
        for budget in [1024, 4096, 65_536, 1 << 20, 3_000_001, 16 << 20] {
            let f = ReplayFilter::new(budget, 10, KEY);
            assert!(f.memory_bytes() <= budget, "budget {budget}");
            // Not wasteful either: within one entry of the budget.
            assert!(f.memory_bytes() + ReplayFilter::BYTES_PER_ENTRY > budget);
        }
        // A budget below one entry still yields a working filter of one entry.
        let mut f = ReplayFilter::new(0, 10, KEY);
        assert_eq!(f.capacity(), 1);
        assert!(!f.check_and_insert(b"a", T0));
        assert!(f.check_and_insert(b"a", T0));
        assert!(!f.check_and_insert(b"b", T0));
        assert_eq!(f.evictions(), 1);
    }

    #[test]
    fn rejects_no_fresh_digest_among_100k_random_inserts() {
        let mut f = ReplayFilter::new(4 << 20, 3600, KEY);
        assert!(f.capacity() > 100_000);
        let mut rng = XorShift64(0xfeed);
        let mut false_positives = 0;
        for i in 0..100_000u64 {
            if f.check_and_insert(&digest(&mut rng), T0 + i / 100) {
                false_positives += 1;
            }
        }
        assert_eq!(false_positives, 0);
        assert_eq!(f.len(), 100_000);
    }

    #[test]
    fn accepts_bounded_probe_length_when_full_and_after_churn() {
        let mut f = ReplayFilter::new(1 << 20, 15, KEY);
        let cap = f.capacity();
        let mut rng = XorShift64(3);
        for _ in 0..cap {
            f.check_and_insert(&digest(&mut rng), T0);
        }
        // Load factor 1/2: linear probing keeps clusters short.
        assert!(f.max_probe() < 64, "max probe {}", f.max_probe());
        // Churn: expiry and eviction delete with backward shifts; probes stay short, and the
        // table still holds exactly what it should.
        let mut last = Vec::new();
        // At +10 and +20 the previous round is still live (evicted as the ring fills up); at +40
        // it is older than the window (expired).
        for now in [T0 + 10, T0 + 20, T0 + 40] {
            last = (0..cap).map(|_| digest(&mut rng)).collect::<Vec<_>>();
            for d in &last {
                assert!(!f.check_and_insert(d, now));
            }
            assert_eq!(f.len(), cap);
            assert!(f.max_probe() < 64, "max probe {}", f.max_probe());
        }
        let occupied = f.index.iter().filter(|&&p| p != EMPTY).count();
        assert_eq!(occupied, cap);
        // Every surviving entry is still found after all those deletions.
        let evictions = f.evictions();
        assert_eq!(evictions, 2 * cap as u64);
        for d in &last {
            assert!(f.check_and_insert(d, T0 + 41));
        }
        assert_eq!(f.evictions(), evictions);
    }

    #[test]
    fn rejects_capacity_only_replay_at_any_age_until_evicted() {
        // Obfuscated2 frames: no age makes a replay acceptable; only capacity evicts, oldest
        // first, and each eviction is counted.
        let mut f = ReplayFilter::capacity_only(4096, KEY);
        let cap = f.capacity();
        let mut rng = XorShift64(12);
        let ds: Vec<[u8; 32]> = (0..cap + 2).map(|_| digest(&mut rng)).collect();
        assert!(!f.check_and_insert(&ds[0], T0));
        for later in [T0 + 5, T0 + 3600, T0 + 365 * 86_400, u64::MAX] {
            assert!(f.check_and_insert(&ds[0], later), "forgotten at {later}");
        }
        f.expire(u64::MAX);
        assert_eq!(f.len(), 1);
        for (i, d) in ds[1..cap].iter().enumerate() {
            assert!(!f.check_and_insert(d, T0 + 86_400 * i as u64));
        }
        assert_eq!((f.len(), f.evictions()), (cap, 0));
        // Full: each new digest evicts the oldest one.
        assert!(!f.check_and_insert(&ds[cap], T0));
        assert_eq!(f.evictions(), 1);
        assert!(!f.check_and_insert(&ds[0], T0), "the oldest was evicted");
        assert_eq!(f.evictions(), 2);
        assert!(!f.check_and_insert(&ds[1], T0), "then the next oldest");
        for d in &ds[3..=cap] {
            assert!(f.check_and_insert(d, u64::MAX));
        }
    }

    #[test]
    fn accepts_expire_emptying_the_filter() {
        let mut f = ReplayFilter::new(1 << 16, 10, KEY);
        let mut rng = XorShift64(11);
        for i in 0..100 {
            f.check_and_insert(&digest(&mut rng), T0 + i);
        }
        f.expire(T0 + 99 + 11);
        assert!(f.is_empty());
        assert!(f.index.iter().all(|&p| p == EMPTY));
    }
}
