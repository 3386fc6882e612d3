//! A worker's buffer pool: relay buffers and small handshake buffers, each kind in one
//! allocation made at start-up.
//!
//! I/O layer support, no sockets. `checkout` hands out a buffer id or `None` when the pool is
//! exhausted (the caller then waits: backpressure, never a crash); `release` gives it back.
//! Pages of the allocation are only touched when a buffer is first used, so a large pool costs
//! resident memory only for the buffers that were ever in flight at once.

/// Identifies one buffer of a [`Pool`] (the top bit marks a handshake buffer).
pub(crate) type BufId = u32;

/// Set in the ids of the small handshake buffers.
const SMALL: BufId = 1 << 31;

/// One class of equal-sized buffers with a LIFO free list.
struct Class {
    mem: Vec<u8>,
    size: usize,
    free: Vec<BufId>,
    total: usize,
}

impl Class {
    fn new(count: usize, size: usize) -> Class {
        // LIFO free list: recently released (warm, already resident) buffers are reused first.
        Class {
            mem: vec![0u8; count * size],
            size,
            free: (0..count as BufId).rev().collect(),
            total: count,
        }
    }

    fn range(&self, index: BufId) -> std::ops::Range<usize> {
        let start = index as usize * self.size;
        start..start + self.size
    }
}

/// A worker's buffers: relay buffers, and small handshake buffers.
///
/// A connection still in its handshake keeps what it has read so far in a small buffer (one
/// per connection the worker may hold, so stalled handshakes cannot take the relay buffers
/// from everybody else: a slowloris costs only a connection slot). A handshake that outgrows
/// its small buffer moves to a relay buffer, but only while three quarters of them are free
/// (the caller decides on what it has otherwise); fronted connections take relay buffers only
/// while half of them are free ([`Pool::checkout_spare`]). So our clients always have half of
/// the relay buffers, and fronted connections (probes) a quarter whatever handshakes do.
pub(crate) struct Pool {
    big: Class,
    small: Class,
}

impl Pool {
    /// Allocates `count` relay buffers of `size` bytes and `small_count` handshake buffers of
    /// `small_size` bytes (zeroed lazily by the OS).
    pub(crate) fn new(count: usize, size: usize, small_count: usize, small_size: usize) -> Pool {
        let size = size.max(64);
        Pool {
            big: Class::new(count.max(1), size),
            small: Class::new(small_count, small_size.clamp(64, size)),
        }
    }

    /// Takes a free relay buffer, or `None` when all are in use.
    pub(crate) fn checkout(&mut self) -> Option<BufId> {
        self.big.free.pop()
    }

    /// Takes a relay buffer only if at least half of them stay free afterwards: for fronted
    /// connections (not our clients'), so that however many there are, they never hold more
    /// than half of the relay buffers.
    pub(crate) fn checkout_spare(&mut self) -> Option<BufId> {
        if self.spare_free() {
            self.big.free.pop()
        } else {
            None
        }
    }

    /// Whether [`Pool::checkout_spare`] would succeed.
    pub(crate) fn spare_free(&self) -> bool {
        self.big.free.len() * 2 >= self.big.total + 2
    }

    /// Takes a buffer for a handshake: a small one, else (more connections than small
    /// buffers) a relay buffer, else `None`.
    pub(crate) fn checkout_handshake(&mut self) -> Option<BufId> {
        match self.small.free.pop() {
            Some(i) => Some(i | SMALL),
            None => self.big.free.pop(),
        }
    }

    /// Moves the first `len` bytes of small buffer `id` into a relay buffer and returns it, or
    /// `None`, leaving `id` as it was. With `limited` (a handshake still undecided), only while
    /// at least three quarters of the relay buffers stay free. A relay buffer's id is returned
    /// unchanged.
    pub(crate) fn grow_handshake(&mut self, id: BufId, len: usize, limited: bool) -> Option<BufId> {
        if id & SMALL == 0 {
            return Some(id);
        }
        // Afterwards at least three quarters of the relay buffers must be free: oversized
        // handshakes wait long (up to the handshake timeout), and must leave some of the spare
        // half to fronted connections.
        if limited && self.big.free.len() * 4 < self.big.total * 3 + 4 {
            return None;
        }
        let big = self.big.free.pop()?;
        let from = self.small.range(id & !SMALL);
        let to = self.big.range(big);
        let len = len.min(from.len());
        self.big.mem[to.start..to.start + len]
            .copy_from_slice(&self.small.mem[from.start..from.start + len]);
        self.release(id);
        Some(big)
    }

    /// Whether `id` is a small handshake buffer.
    pub(crate) fn is_small(id: BufId) -> bool {
        id & SMALL != 0
    }

    /// Returns a buffer to the pool.
    pub(crate) fn release(&mut self, id: BufId) {
        let (class, index) = self.class_mut(id);
        debug_assert!((index as usize) < class.total);
        debug_assert!(!class.free.contains(&index));
        class.free.push(index);
    }

    fn class_mut(&mut self, id: BufId) -> (&mut Class, BufId) {
        if id & SMALL != 0 {
            (&mut self.small, id & !SMALL)
        } else {
            (&mut self.big, id)
        }
    }

    /// The bytes of buffer `id` (its whole length: relay or handshake size).
    pub(crate) fn get(&mut self, id: BufId) -> &mut [u8] {
        let (class, index) = self.class_mut(id);
        let r = class.range(index);
        &mut class.mem[r]
    }

    /// Size of every relay buffer.
    pub(crate) fn buf_size(&self) -> usize {
        self.big.size
    }

    /// Relay buffers currently checked out.
    pub(crate) fn in_use(&self) -> usize {
        self.big.total - self.big.free.len()
    }

    /// Relay buffers in the pool.
    pub(crate) fn capacity(&self) -> usize {
        self.big.total
    }

    /// Buffers of both kinds currently checked out (a change means some came back).
    pub(crate) fn all_in_use(&self) -> usize {
        self.in_use() + self.small.total - self.small.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_returns_none_and_release_restores() {
        let mut p = Pool::new(3, 128, 0, 64);
        let a = p.checkout().unwrap();
        let b = p.checkout().unwrap();
        let c = p.checkout().unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(p.in_use(), 3);
        assert!(p.checkout().is_none());
        p.release(b);
        assert_eq!(p.checkout(), Some(b));
        assert_eq!(p.capacity(), 3);
    }

    #[test]
    fn buffers_do_not_overlap() {
        let mut p = Pool::new(4, 100, 0, 64);
        let ids: Vec<_> = (0..4).map(|_| p.checkout().unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            p.get(*id).fill(i as u8 + 1);
        }
        for (i, id) in ids.iter().enumerate() {
            assert!(p.get(*id).iter().all(|&x| x == i as u8 + 1));
            assert_eq!(p.get(*id).len(), p.buf_size());
        }
    }

    #[test]
    fn handshakes_take_small_buffers_first() {
        let mut p = Pool::new(2, 1000, 2, 100);
        let a = p.checkout_handshake().unwrap();
        let b = p.checkout_handshake().unwrap();
        assert!(Pool::is_small(a) && Pool::is_small(b));
        assert_eq!((p.get(a).len(), p.in_use(), p.all_in_use()), (100, 0, 2));
        // Small ones gone: relay buffers.
        let c = p.checkout_handshake().unwrap();
        assert!(!Pool::is_small(c) && p.get(c).len() == 1000);
        assert_eq!(p.in_use(), 1);
        assert!(p.checkout().is_some() && p.checkout_handshake().is_none());
        p.release(a);
        assert!(p.checkout().is_none(), "a small buffer is not a relay one");
        assert_eq!(p.checkout_handshake(), Some(a));
    }

    #[test]
    fn growing_needs_three_quarters_and_fronting_half_the_relay_buffers_free() {
        let mut p = Pool::new(8, 1000, 4, 100);
        let small: Vec<_> = (0..3).map(|_| p.checkout_handshake().unwrap()).collect();
        let g1 = p.grow_handshake(small[0], 10, true).unwrap();
        let g2 = p.grow_handshake(small[1], 10, true).unwrap();
        assert_eq!(p.in_use(), 2);
        assert_eq!(
            p.grow_handshake(small[2], 10, true),
            None,
            "6 of 8 free: no more"
        );
        // Fronted connections still get the spare half: two more.
        let f1 = p.checkout_spare().unwrap();
        let f2 = p.checkout_spare().unwrap();
        assert!(
            !p.spare_free() && p.checkout_spare().is_none(),
            "4 of 8 free"
        );
        // Our clients get the rest.
        let clients: Vec<_> = (0..4).map(|_| p.checkout().unwrap()).collect();
        assert!(p.checkout().is_none());
        for id in clients.into_iter().chain([f1, f2, g1, g2]) {
            p.release(id);
        }
        assert!(p.spare_free());
        assert!(p.grow_handshake(small[2], 10, false).is_some());
    }

    #[test]
    fn growing_a_handshake_buffer_keeps_its_bytes_and_frees_it() {
        let mut p = Pool::new(4, 1000, 1, 100);
        let a = p.checkout_handshake().unwrap();
        p.get(a)
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u8);
        let b = p.grow_handshake(a, 60, true).unwrap();
        assert!(!Pool::is_small(b));
        assert!(
            p.get(b)[..60]
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as u8)
        );
        assert_eq!(p.all_in_use(), 1, "the small buffer went back");
        assert_eq!(
            p.grow_handshake(b, 60, true),
            Some(b),
            "a relay buffer stays itself"
        );
        // No relay buffer free: growing fails and the small buffer is kept.
        let rest: Vec<_> = (0..3).map(|_| p.checkout().unwrap()).collect();
        let s = p.checkout_handshake().unwrap();
        assert!(Pool::is_small(s));
        assert_eq!(p.grow_handshake(s, 10, false), None);
        assert_eq!(p.all_in_use(), 5);
        rest.into_iter().for_each(|id| p.release(id));
    }
}
