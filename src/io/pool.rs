//! A worker's buffer pool: `count` buffers of `size` bytes in one allocation made at start-up.
//!
//! I/O layer support, no sockets. `checkout` hands out a buffer id or `None` when the pool is
//! exhausted (the caller then waits: backpressure, never a crash); `release` gives it back.
//! Pages of the allocation are only touched when a buffer is first used, so a large pool costs
//! resident memory only for the buffers that were ever in flight at once.

/// Identifies one buffer of a [`Pool`].
pub(crate) type BufId = u32;

/// Fixed set of equal-sized buffers with a free list.
pub(crate) struct Pool {
    mem: Vec<u8>,
    size: usize,
    free: Vec<BufId>,
    total: usize,
}

impl Pool {
    /// Allocates `count` buffers of `size` bytes (zeroed lazily by the OS).
    pub(crate) fn new(count: usize, size: usize) -> Pool {
        let count = count.max(1);
        let size = size.max(64);
        // LIFO free list: recently released (warm, already resident) buffers are reused first.
        let free = (0..count as BufId).rev().collect();
        Pool {
            mem: vec![0u8; count * size],
            size,
            free,
            total: count,
        }
    }

    /// Takes a free buffer, or `None` when all are in use.
    pub(crate) fn checkout(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    /// Returns a buffer to the pool.
    pub(crate) fn release(&mut self, id: BufId) {
        debug_assert!((id as usize) < self.total);
        debug_assert!(!self.free.contains(&id));
        self.free.push(id);
    }

    /// The bytes of buffer `id`.
    pub(crate) fn get(&mut self, id: BufId) -> &mut [u8] {
        let start = id as usize * self.size;
        &mut self.mem[start..start + self.size]
    }

    /// Size of every buffer.
    pub(crate) fn buf_size(&self) -> usize {
        self.size
    }

    /// Buffers currently checked out.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.free.len()
    }

    /// Buffers in the pool.
    pub(crate) fn capacity(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_returns_none_and_release_restores() {
        let mut p = Pool::new(3, 128);
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
        let mut p = Pool::new(4, 100);
        let ids: Vec<_> = (0..4).map(|_| p.checkout().unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            p.get(*id).fill(i as u8 + 1);
        }
        for (i, id) in ids.iter().enumerate() {
            assert!(p.get(*id).iter().all(|&x| x == i as u8 + 1));
            assert_eq!(p.get(*id).len(), p.buf_size());
        }
    }
}
