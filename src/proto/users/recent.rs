//! Which user a client address used last, so that its next handshake tries that user's key
//! first: a fixed table of atomic slots shared by all workers, one probe per lookup, no locks,
//! no allocation after construction and no growth however many addresses come (a flood of
//! new addresses only evicts hints; a miss costs the full search, never a wrong answer: the
//! handshake check decides, the hint only orders it).
//!
//! An IPv4 client is keyed by its address, an IPv6 client by its /64 (privacy addresses change
//! within it). Slots are chosen by a keyed hash, the key passed in (random in the proxy), so
//! that nobody can aim at the slot of somebody else's address.
//!
//! Pure / no I/O.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::UserId;

/// Users a slot can name: ids below 2^24 - 1 (far above [`super::MAX_USERS`]).
const USER_BITS: u32 = 24;
const USER_MASK: u64 = (1 << USER_BITS) - 1;

/// The table. Each slot holds `hash tag (40 bits) ‖ user id + 1 (24 bits)`; 0 is empty.
pub struct RecentUsers {
    slots: Box<[AtomicU64]>,
    key: [u64; 2],
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl RecentUsers {
    /// A table of `slots` entries (rounded up to a power of two, 64..=2^20), hashing with
    /// `key`. 8 bytes per slot; a few slots per expected client address keeps hints alive.
    pub fn new(slots: usize, key: [u8; 16]) -> RecentUsers {
        let n = slots.clamp(64, 1 << 20).next_power_of_two();
        let half = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(b)
        };
        RecentUsers {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            key: [half(0), half(8)],
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn hash(&self, ip: IpAddr) -> u64 {
        let (hi, lo) = match ip {
            IpAddr::V4(a) => (u64::from(u32::from(a)), 4),
            IpAddr::V6(a) => ((u128::from(a) >> 64) as u64, 6),
        };
        mix(mix(hi ^ self.key[0]) ^ lo ^ self.key[1])
    }

    fn slot(&self, h: u64) -> &AtomicU64 {
        &self.slots[(h as usize) & (self.slots.len() - 1)]
    }

    /// The user last remembered for `ip`, if its slot still holds it.
    pub fn get(&self, ip: IpAddr) -> Option<UserId> {
        let h = self.hash(ip);
        let v = self.slot(h).load(Ordering::Relaxed);
        let user = v & USER_MASK;
        (user != 0 && v >> USER_BITS == h >> USER_BITS).then(|| (user - 1) as UserId)
    }

    /// Remembers that `ip` just used `user` (replacing whatever the slot held).
    pub fn remember(&self, ip: IpAddr, user: UserId) {
        let Some(u) = (user as u64).checked_add(1).filter(|&u| u <= USER_MASK) else {
            return;
        };
        let h = self.hash(ip);
        self.slot(h)
            .store((h >> USER_BITS) << USER_BITS | u, Ordering::Relaxed);
    }

    /// The order in which to try `users` users for `ip`: its last user first, then the others
    /// in config order.
    pub fn candidates(&self, ip: IpAddr, users: usize) -> Candidates {
        Candidates::new(self.get(ip), users, users)
    }
}

/// User ids `0..n`, `first` (when below `users`) moved to the front.
#[derive(Clone, Debug)]
pub struct Candidates {
    first: Option<UserId>,
    next: UserId,
    n: UserId,
}

impl Candidates {
    /// `first` (if below `users`), then every other id below `n` in order.
    pub fn new(first: Option<UserId>, n: usize, users: usize) -> Candidates {
        Candidates {
            first: first.filter(|&f| f < users),
            next: 0,
            n,
        }
    }
}

impl Iterator for Candidates {
    type Item = UserId;

    fn next(&mut self) -> Option<UserId> {
        if let Some(f) = self.first {
            if self.next == 0 {
                self.next = usize::MAX;
                return Some(f);
            }
            if self.next == usize::MAX {
                self.next = 0;
            }
        }
        while self.next < self.n {
            let id = self.next;
            self.next += 1;
            if Some(id) != self.first {
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    #[test]
    fn candidates_put_the_hint_first_once() {
        let c = |f, n| Candidates::new(f, n, n).collect::<Vec<_>>();
        assert_eq!(c(None, 4), [0, 1, 2, 3]);
        assert_eq!(c(Some(2), 4), [2, 0, 1, 3]);
        assert_eq!(c(Some(0), 3), [0, 1, 2]);
        assert_eq!(c(Some(3), 4), [3, 0, 1, 2]);
        assert_eq!(c(Some(4), 4), [0, 1, 2, 3]);
        assert_eq!(c(Some(0), 0), Vec::<usize>::new());
        assert_eq!(c(None, 0), Vec::<usize>::new());
        // The hint alone (a source over its share of handshake work).
        let only = |f, users| Candidates::new(f, 0, users).collect::<Vec<_>>();
        assert_eq!(only(Some(2), 4), [2]);
        assert_eq!(only(Some(4), 4), Vec::<usize>::new());
        assert_eq!(only(None, 4), Vec::<usize>::new());
    }

    #[test]
    fn remembers_per_address_and_per_ipv6_64() {
        let t = RecentUsers::new(1024, [7; 16]);
        assert_eq!(t.capacity(), 1024);
        assert_eq!(t.get(v4(1)), None);
        t.remember(v4(1), 5);
        t.remember(v4(2), 0);
        assert_eq!((t.get(v4(1)), t.get(v4(2))), (Some(5), Some(0)));
        t.remember(v4(1), 9);
        assert_eq!(t.get(v4(1)), Some(9));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2:abcd::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        t.remember(a, 3);
        assert_eq!((t.get(same64), t.get(other)), (Some(3), None));
        // An IPv4 address and an IPv6 /64 with the same bits are different keys.
        let mapped: IpAddr = "::1:0:0:0".parse().unwrap();
        t.remember(v4(1), 4);
        assert_ne!(t.get(mapped), Some(4));
        assert_eq!(t.candidates(v4(1), 10).next(), Some(4));
        // Ids too large to store are not remembered.
        t.remember(v4(77), usize::MAX);
        t.remember(v4(78), 1 << 24);
        assert_eq!((t.get(v4(77)), t.get(v4(78))), (None, None));
        t.remember(v4(79), (1 << 24) - 2);
        assert_eq!(t.get(v4(79)), Some((1 << 24) - 2));
    }

    #[test]
    fn a_flood_of_addresses_neither_grows_it_nor_gives_wrong_users() {
        let t = RecentUsers::new(256, [1; 16]);
        t.remember(v4(42), 7);
        for i in 1000..201_000 {
            t.remember(v4(i), (i % 100) as usize);
        }
        assert_eq!(t.capacity(), 256);
        // Each remembered hint is the user last stored for that address, or nothing.
        let mut kept = 0;
        for i in 200_000..201_000u32 {
            if let Some(u) = t.get(v4(i)) {
                assert_eq!(u, (i % 100) as usize);
                kept += 1;
            }
        }
        assert!(kept > 100, "{kept}");
        assert!(matches!(t.get(v4(42)), None | Some(7)));
        // Different keys place addresses differently.
        let other = RecentUsers::new(256, [2; 16]);
        let same = (0..64u32)
            .filter(|&i| t.hash(v4(i)) & 255 == other.hash(v4(i)) & 255)
            .count();
        assert!(same < 16, "{same}");
    }
}
