//! A worker's buffer pool: relay buffers and small handshake buffers, each kind in one
//! allocation made at start-up.
//!
//! I/O layer support, no sockets. `checkout(class)` hands out a buffer id, or `None` when none
//! of that class is left (the caller then waits: backpressure, never a crash); `release` gives
//! it back. Which class may take which buffer is decided here and nowhere else.
//! Pages of the allocation are only touched when a buffer is first used, so a large pool costs
//! resident memory only for the buffers that were ever in flight at once.

/// Identifies one buffer of a [`Pool`] (the top bit marks a handshake buffer).
pub(crate) type BufId = u32;

/// What a buffer is for: the whole buffer policy is [`Pool::checkout`] and [`Pool::grow`]
/// deciding by class. A connection that gets none waits in its class's queue
/// ([`Class::waits_for_spare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A handshake's bytes: a small handshake buffer, else (more connections than small
    /// buffers) a relay buffer.
    Handshake,
    /// A handshake that outgrew its small buffer: a relay buffer, only while three quarters
    /// of them stay free (it waits long, up to the handshake timeout).
    Grown,
    /// A relay direction of one of our clients (also the rest of a server flight, and the
    /// PROXY header sent ahead of a fronted connection's bytes): any relay buffer, else a
    /// small one.
    Client,
    /// A relay direction of a fronted connection (not our client): a relay buffer only while
    /// half of them stay free, else a small one.
    Fronted,
}

impl Class {
    /// Whether a connection refused a buffer of this class waits for the spare half (else
    /// for any relay buffer).
    pub(crate) fn waits_for_spare(self) -> bool {
        self == Class::Fronted
    }
}

/// Set in the ids of the small handshake buffers.
const SMALL: BufId = 1 << 31;

/// Equal-sized buffers with a LIFO free list.
struct Buffers {
    mem: Vec<u8>,
    size: usize,
    free: Vec<BufId>,
    total: usize,
}

impl Buffers {
    fn new(count: usize, size: usize) -> Buffers {
        // LIFO free list: recently released (warm, already resident) buffers are reused first.
        Buffers {
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
/// A connection still in its handshake keeps what it has read so far in a small buffer (two
/// per connection the worker may hold, so stalled handshakes cannot take the relay buffers
/// from everybody else: a slowloris costs only a connection slot). A handshake that outgrows
/// its small buffer moves to a relay buffer, but only while three quarters of them are free
/// (the caller decides on what it has otherwise); fronted connections take relay buffers only
/// while half of them are free ([`Class::Fronted`]). So our clients always have half of
/// the relay buffers, and fronted connections (probes) a quarter whatever handshakes do.
///
/// When a relay direction finds no relay buffer it may take, it takes a small one (issue 12:
/// slow readers that held every relay buffer silenced new probes and stalled every client).
/// With two small buffers per connection slot (one per direction), no class of connection
/// can pin the pool: the others run on small buffers, slower (more system calls, smaller
/// records toward FakeTLS clients) but at once, until relay buffers come back (a direction
/// leaves its small buffer when it empties, and a direction stuck on a relay buffer is closed
/// when they run short: `Relay::stalled`).
pub(crate) struct Pool {
    big: Buffers,
    small: Buffers,
}

impl Pool {
    /// Allocates `count` relay buffers of `size` bytes and `small_count` handshake buffers of
    /// `small_size` bytes (zeroed lazily by the OS).
    pub(crate) fn new(count: usize, size: usize, small_count: usize, small_size: usize) -> Pool {
        let size = size.max(64);
        Pool {
            big: Buffers::new(count.max(1), size),
            small: Buffers::new(small_count, small_size.clamp(64, size)),
        }
    }

    /// Takes a buffer for `class`, or `None` (the caller waits: backpressure).
    /// * `Handshake`: a small buffer, else a relay buffer;
    /// * `Client`: any free relay buffer, else a small one;
    /// * `Fronted`: a relay buffer only if at least half of them stay free afterwards, so that
    ///   however many fronted connections there are, they never hold more than half; else a
    ///   small one;
    /// * `Grown`: a relay buffer while three quarters stay free.
    pub(crate) fn checkout(&mut self, class: Class) -> Option<BufId> {
        match class {
            Class::Handshake => self.small().or_else(|| self.big.free.pop()),
            Class::Client | Class::Fronted => self.checkout_relay(class).or_else(|| self.small()),
            Class::Grown => self.checkout_relay(class),
        }
    }

    /// A relay buffer for `class` ([`Pool::checkout`]'s rules), never a small one.
    pub(crate) fn checkout_relay(&mut self, class: Class) -> Option<BufId> {
        match class {
            Class::Handshake | Class::Client => self.big.free.pop(),
            Class::Fronted if self.spare_free() => self.big.free.pop(),
            Class::Grown if self.three_quarters_free() => self.big.free.pop(),
            Class::Fronted | Class::Grown => None,
        }
    }

    fn small(&mut self) -> Option<BufId> {
        self.small.free.pop().map(|i| i | SMALL)
    }

    /// Whether relay buffers run short (fewer than a quarter free): directions stuck on one
    /// are then closed (`Relay::stalled`).
    pub(crate) fn short(&self) -> bool {
        self.big.free.len() * 4 < self.big.total
    }

    /// Whether at least three quarters of the relay buffers stay free after one more is taken.
    fn three_quarters_free(&self) -> bool {
        self.big.free.len() * 4 >= self.big.total * 3 + 4
    }

    /// Whether a [`Class::Fronted`] checkout would succeed.
    pub(crate) fn spare_free(&self) -> bool {
        self.big.free.len() * 2 >= self.big.total + 2
    }

    /// Moves the first `len` bytes of small buffer `id` into a relay buffer of `class`
    /// ([`Class::Grown`] for a handshake still undecided, [`Class::Client`] otherwise) and
    /// returns it, or `None`, leaving `id` as it was. A relay buffer's id is returned unchanged.
    pub(crate) fn grow(&mut self, id: BufId, len: usize, class: Class) -> Option<BufId> {
        if id & SMALL == 0 {
            return Some(id);
        }
        let big = self.checkout_relay(class)?;
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

    fn class_mut(&mut self, id: BufId) -> (&mut Buffers, BufId) {
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

    /// Two different buffers at once (a middle-proxy relay encodes from one into the other).
    pub(crate) fn get2(&mut self, a: BufId, b: BufId) -> (&mut [u8], &mut [u8]) {
        assert_ne!(a, b, "two different buffers");
        if (a ^ b) & SMALL != 0 {
            let (big, small) = (&mut self.big, &mut self.small);
            let (ca, cb) = if a & SMALL != 0 {
                (small, big)
            } else {
                (big, small)
            };
            let (ra, rb) = (ca.range(a & !SMALL), cb.range(b & !SMALL));
            return (&mut ca.mem[ra], &mut cb.mem[rb]);
        }
        let (class, ia) = self.class_mut(a);
        let (ra, rb) = (class.range(ia), class.range(b & !SMALL));
        if ra.start < rb.start {
            let (x, y) = class.mem.split_at_mut(rb.start);
            (&mut x[ra], &mut y[..rb.len()])
        } else {
            let (x, y) = class.mem.split_at_mut(ra.start);
            (&mut y[..ra.len()], &mut x[rb])
        }
    }

    /// Size of every relay buffer.
    #[cfg(test)]
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
        let a = p.checkout(Class::Client).unwrap();
        let b = p.checkout(Class::Client).unwrap();
        let c = p.checkout(Class::Client).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(p.in_use(), 3);
        assert!(p.checkout(Class::Client).is_none());
        p.release(b);
        assert_eq!(p.checkout(Class::Client), Some(b));
        assert_eq!(p.capacity(), 3);
    }

    #[test]
    fn buffers_do_not_overlap() {
        let mut p = Pool::new(4, 100, 0, 64);
        let ids: Vec<_> = (0..4).map(|_| p.checkout(Class::Client).unwrap()).collect();
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
        let a = p.checkout(Class::Handshake).unwrap();
        let b = p.checkout(Class::Handshake).unwrap();
        assert!(Pool::is_small(a) && Pool::is_small(b));
        assert_eq!((p.get(a).len(), p.in_use(), p.all_in_use()), (100, 0, 2));
        // Small ones gone: relay buffers.
        let c = p.checkout(Class::Handshake).unwrap();
        assert!(!Pool::is_small(c) && p.get(c).len() == 1000);
        assert_eq!(p.in_use(), 1);
        assert!(p.checkout(Class::Client).is_some() && p.checkout(Class::Handshake).is_none());
        p.release(a);
        assert_eq!(
            p.checkout_relay(Class::Client),
            None,
            "a small one is not a relay one"
        );
        assert_eq!(p.checkout(Class::Handshake), Some(a));
    }

    /// Issue 12: with no relay buffer a direction may take, our clients and fronted
    /// connections run on small buffers rather than wait; growing never takes a small one.
    #[test]
    fn relay_directions_fall_back_to_small_buffers() {
        let mut p = Pool::new(4, 1000, 4, 100);
        let relay: Vec<_> = (0..2)
            .map(|_| p.checkout(Class::Fronted).unwrap())
            .collect();
        assert!(relay.iter().all(|&id| !Pool::is_small(id)));
        assert!(!p.short(), "half free");
        let f = p.checkout(Class::Fronted).unwrap();
        assert!(
            Pool::is_small(f),
            "fronted past the spare half: a small one"
        );
        let c: Vec<_> = (0..2).map(|_| p.checkout(Class::Client).unwrap()).collect();
        assert!(c.iter().all(|&id| !Pool::is_small(id)) && p.short());
        let d = p.checkout(Class::Client).unwrap();
        assert!(Pool::is_small(d) && p.get(d).len() == 100);
        assert_eq!(p.checkout_relay(Class::Client), None);
        let h = p.checkout(Class::Handshake).unwrap();
        assert_eq!(
            p.grow(h, 10, Class::Client),
            None,
            "no relay buffer to grow into"
        );
        let last = p.checkout(Class::Client).unwrap();
        assert!(Pool::is_small(last));
        assert_eq!(p.checkout(Class::Client), None, "all gone: wait");
        p.release(c[0]);
        assert!(!Pool::is_small(p.checkout(Class::Client).unwrap()));
    }

    #[test]
    fn growing_needs_three_quarters_and_fronting_half_the_relay_buffers_free() {
        let mut p = Pool::new(8, 1000, 4, 100);
        let small: Vec<_> = (0..3)
            .map(|_| p.checkout(Class::Handshake).unwrap())
            .collect();
        let g1 = p.grow(small[0], 10, Class::Grown).unwrap();
        let g2 = p.grow(small[1], 10, Class::Grown).unwrap();
        assert_eq!(p.in_use(), 2);
        assert_eq!(
            p.grow(small[2], 10, Class::Grown),
            None,
            "6 of 8 free: no more"
        );
        // Fronted connections still get the spare half: two more.
        let f1 = p.checkout(Class::Fronted).unwrap();
        let f2 = p.checkout(Class::Fronted).unwrap();
        assert!(
            !p.spare_free() && p.checkout_relay(Class::Fronted).is_none(),
            "4 of 8 free"
        );
        // Our clients get the rest.
        let clients: Vec<_> = (0..4).map(|_| p.checkout(Class::Client).unwrap()).collect();
        assert!(p.checkout_relay(Class::Client).is_none());
        for id in clients.into_iter().chain([f1, f2, g1, g2]) {
            p.release(id);
        }
        assert!(p.spare_free());
        assert!(p.grow(small[2], 10, Class::Client).is_some());
    }

    #[test]
    fn growing_a_handshake_buffer_keeps_its_bytes_and_frees_it() {
        let mut p = Pool::new(4, 1000, 1, 100);
        let a = p.checkout(Class::Handshake).unwrap();
        p.get(a)
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u8);
        let b = p.grow(a, 60, Class::Grown).unwrap();
        assert!(!Pool::is_small(b));
        assert!(
            p.get(b)[..60]
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as u8)
        );
        assert_eq!(p.all_in_use(), 1, "the small buffer went back");
        assert_eq!(
            p.grow(b, 60, Class::Grown),
            Some(b),
            "a relay buffer stays itself"
        );
        // No relay buffer free: growing fails and the small buffer is kept.
        let rest: Vec<_> = (0..3).map(|_| p.checkout(Class::Client).unwrap()).collect();
        let s = p.checkout(Class::Handshake).unwrap();
        assert!(Pool::is_small(s));
        assert_eq!(p.grow(s, 10, Class::Client), None);
        assert_eq!(p.all_in_use(), 5);
        rest.into_iter().for_each(|id| p.release(id));
    }
}
