//! Randomness from the operating system: the one place that calls `getrandom`.
//!
//! I/O layer. [`os_fill`] is the OS source itself; [`OsRng`] wraps it for code that must not
//! go on without randomness, [`FastRng`] is a worker's fast keystream seeded from it.

use crate::log::Level;
use crate::proto::Rng;

/// Fills `buf` from the operating system's random source (one system call). An error is rare
/// (Linux before its pool is seeded, or a sandbox without the call); callers decide.
pub(crate) fn os_fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A worker's random source: an AES-256-CTR keystream keyed from the operating system's
/// generator and re-keyed every [`RESEED_EVERY`] bytes (the construction of OpenBSD's
/// arc4random). Fake-handshake noise, key shares and frames need a few KiB per connection;
/// a system call for each would dominate the handshake's cost.
#[derive(Default)]
pub(crate) struct FastRng {
    stream: Option<mtpx_ctr::Stream>,
    used: usize,
}

/// Bytes produced before the keystream is re-keyed from the OS.
const RESEED_EVERY: usize = 1 << 20;

/// The operating system's random source itself (one system call per `fill`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsRng;

impl Rng for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        OsRng::os_fill(buf);
    }
}

impl OsRng {
    fn os_fill(buf: &mut [u8]) {
        if os_fill(buf).is_err() {
            // The OS random source does not fail on Linux once seeded; if it ever does, a
            // proxy without randomness must not go on.
            crate::log_event!(Level::Error, "fatal", reason = "getrandom failed");
            crate::log::flush();
            std::process::abort();
        }
    }
}

impl Rng for FastRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if self.stream.is_none() || self.used >= RESEED_EVERY {
            let mut seed = [0u8; 48];
            OsRng::os_fill(&mut seed);
            let key: [u8; 32] = seed[..32].try_into().expect("32 bytes");
            let iv: [u8; 16] = seed[32..].try_into().expect("16 bytes");
            // mtpx's own counter mode (crates/ctr-hot): the `ctr` crate's keystream XOR is a
            // byte loop in the size-optimised build, a few µs per fake server flight.
            self.stream = Some(mtpx_ctr::Stream::new(&key, &iv, 0));
            self.used = 0;
        }
        buf.fill(0);
        if let Some(s) = self.stream.as_mut() {
            s.apply_keystream(buf);
        }
        self.used += buf.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::x25519;

    #[test]
    fn fast_rng_is_one_keystream_across_fills_of_any_size() {
        let mut rng = FastRng::default();
        let mut a = vec![0u8; 10_000];
        for chunk in a.chunks_mut(7) {
            rng.fill(chunk);
        }
        assert_eq!(rng.used, 10_000);
        assert_ne!(a[..16], [0u8; 16]);
        // Different fills give different bytes (no repeated keystream).
        let mut b = vec![0u8; 10_000];
        rng.fill(&mut b);
        assert_ne!(a, b);
        let ones = a.iter().map(|x| x.count_ones()).sum::<u32>() as f64 / 80_000.0;
        assert!((0.45..0.55).contains(&ones), "bit balance {ones}");
    }

    /// CPU per ServerHello key share: the former linked stream (the previous share times a
    /// random 32-bit scalar), the independent [`x25519::random_share`], and a full key pair.
    #[test]
    #[ignore = "timing printout: cargo test --release --lib key_share_cost -- --ignored --nocapture"]
    fn key_share_cost() {
        let mut rng = super::FastRng::default();
        let n = 2000;
        let (_, mut cur) = x25519::keypair(&mut rng);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let mut k = [0u8; 32];
            crate::proto::Rng::fill(&mut rng, &mut k[..4]);
            k[3] |= 0x80;
            cur = x25519::ladder(&k, 32, &cur);
        }
        let old = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(x25519::random_share(&mut rng));
        }
        let new = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(x25519::keypair(&mut rng));
        }
        let full = t.elapsed() / n;
        eprintln!("per share: linked 32-bit step {old:?}, random_share {new:?}, key pair {full:?}");
    }
}
