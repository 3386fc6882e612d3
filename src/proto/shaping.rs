//! Inter-record timing toward FakeTLS clients (PROTOCOL.md §7.1–7.2).
//!
//! Pure logic; the worker's timers ([`crate::io`]) do the waiting. A TLS server answers a
//! download with records spaced by small, heavy-tailed gaps; mtg measured them on ok.ru and
//! fitted a Weibull distribution (shape k ≈ 0.378, scale λ ≈ 1.73 ms: median 0.66 ms, mean
//! 6.8 ms, p99 98 ms). With shaping on, every record sent to the client waits such a gap after
//! the previous one.
//!
//! Unlike mtg, shaping here never cuts a bulk download below a configured floor: a record of
//! `n` bytes waits at most `n / min_rate`, so while data is queued the connection still moves
//! at least `min_rate` bytes per second. Waiting happens with the data left in the
//! connection's one pool buffer (reads from the DC stop while it is full), so shaping delays
//! but never queues without bound.

use std::time::Duration;

/// mtg's shape parameter k (measured on ok.ru).
pub const DEFAULT_SHAPE: f64 = 0.378_463_738_957_853_35;
/// mtg's scale parameter λ: 1.731 770 860 ms.
pub const DEFAULT_SCALE: Duration = Duration::from_nanos(1_731_771);
/// Longest single gap (the far tail of the distribution: p99.99 is about 0.9 s).
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Gap distribution and throughput floor of one listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shaping {
    inv_shape: f64,
    scale_ns: f64,
    /// Bytes per second a backlogged connection keeps at least; 0 = no floor.
    min_rate: u64,
}

impl Shaping {
    /// `shape` (k) must be positive and finite, `scale` (λ) positive.
    pub fn new(shape: f64, scale: Duration, min_rate: u64) -> Option<Shaping> {
        if !(shape.is_finite() && shape > 0.0) || scale.is_zero() {
            return None;
        }
        Some(Shaping {
            inv_shape: 1.0 / shape,
            scale_ns: scale.as_nanos() as f64,
            min_rate,
        })
    }

    /// The Weibull gap for a uniform `u` in (0, 1]: `λ·(−ln u)^(1/k)`, at most [`MAX_DELAY`].
    pub fn gap(&self, u: f64) -> Duration {
        let u = u.clamp(f64::MIN_POSITIVE, 1.0);
        let ns = self.scale_ns * (-u.ln()).powf(self.inv_shape);
        let max = MAX_DELAY.as_nanos() as f64;
        if ns.is_nan() || ns >= max {
            return MAX_DELAY;
        }
        Duration::from_nanos(ns as u64)
    }

    /// How long a record carrying `len` payload bytes waits after the previous record: the
    /// Weibull gap for `u`, capped so that the record still moves at `min_rate`.
    pub fn delay(&self, len: usize, u: f64) -> Duration {
        let gap = self.gap(u);
        if self.min_rate == 0 {
            return gap;
        }
        let floor_ns = (len as u128 * 1_000_000_000 / u128::from(self.min_rate)) as u64;
        gap.min(Duration::from_nanos(floor_ns))
    }
}

/// A uniform number in (0, 1] from `rng`.
pub fn draw(rng: &mut impl super::Rng) -> f64 {
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    unit(u64::from_le_bytes(b))
}

/// A uniform number in (0, 1] from 64 random bits.
pub fn unit(bits: u64) -> f64 {
    ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile(s: &Shaping, p: f64) -> Duration {
        // P(gap <= x) = p  <=>  u = 1 - p.
        s.gap(1.0 - p)
    }

    #[test]
    fn defaults_reproduce_mtgs_measured_quantiles() {
        let s = Shaping::new(DEFAULT_SHAPE, DEFAULT_SCALE, 0).unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let median = ms(quantile(&s, 0.5));
        let p90 = ms(quantile(&s, 0.9));
        let p99 = ms(quantile(&s, 0.99));
        let p999 = ms(quantile(&s, 0.999));
        assert!((0.60..0.72).contains(&median), "median {median}");
        assert!((14.0..18.0).contains(&p90), "p90 {p90}");
        assert!((90.0..106.0).contains(&p99), "p99 {p99}");
        assert!((270.0..310.0).contains(&p999), "p99.9 {p999}");
        // u = 1 is a zero gap; the far tail is capped.
        assert_eq!(s.gap(1.0), Duration::ZERO);
        assert_eq!(s.gap(0.0), MAX_DELAY);
        assert_eq!(s.gap(1e-300), MAX_DELAY);
    }

    #[test]
    fn sample_mean_matches_the_distribution() {
        // Mean of Weibull(k, λ) = λ Γ(1 + 1/k); for mtg's values about 6.8 ms (capped tail
        // lowers it slightly). Sampled with a fixed xorshift sequence.
        let s = Shaping::new(DEFAULT_SHAPE, DEFAULT_SCALE, 0).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let n = 200_000;
        let mut sum = 0.0;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sum += s.gap(unit(x)).as_secs_f64();
        }
        let mean_ms = sum / f64::from(n) * 1000.0;
        assert!((5.8..7.6).contains(&mean_ms), "mean {mean_ms} ms");
    }

    #[test]
    fn min_rate_caps_each_records_wait() {
        // 4 MiB/s floor: a 16 KiB record waits at most 16384 / 4 MiB = 3.906 ms.
        let s = Shaping::new(DEFAULT_SHAPE, DEFAULT_SCALE, 4 << 20).unwrap();
        let cap = Duration::from_nanos(3_906_250);
        assert_eq!(s.delay(16384, 1e-9), cap);
        assert_eq!(s.delay(16384, 0.0), cap);
        // Short gaps are untouched.
        assert_eq!(s.delay(16384, 0.9), s.gap(0.9));
        assert!(s.delay(16384, 0.9) < cap);
        // Whatever the draws, a backlog of full records moves at >= the floor.
        let mut total = Duration::ZERO;
        for i in 1..=1000u32 {
            total += s.delay(16384, f64::from(i) / 1000.0);
        }
        let rate = 1000.0 * 16384.0 / total.as_secs_f64();
        assert!(rate >= f64::from(4u32 << 20), "rate {rate}");
        // No floor: the raw gap.
        let free = Shaping::new(DEFAULT_SHAPE, DEFAULT_SCALE, 0).unwrap();
        assert_eq!(free.delay(16384, 1e-9), free.gap(1e-9));
        assert!(free.delay(16384, 1e-9) > Duration::from_secs(0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        for k in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Shaping::new(k, DEFAULT_SCALE, 0).is_none(), "{k}");
        }
        assert!(Shaping::new(1.0, Duration::ZERO, 0).is_none());
        // k = 1 is the exponential distribution: median λ ln 2.
        let e = Shaping::new(1.0, Duration::from_millis(10), 0).unwrap();
        let median = e.gap(0.5).as_secs_f64() * 1000.0;
        assert!((median - 6.931).abs() < 0.01, "{median}");
    }

    #[test]
    fn unit_is_in_the_half_open_interval() {
        assert!(unit(0) > 0.0);
        assert_eq!(unit(u64::MAX), 1.0);
        assert!(unit(1 << 63) > 0.49 && unit(1 << 63) < 0.51);
    }
}
