//! Inter-record timing toward FakeTLS clients (PROTOCOL.md §7.1–7.2).
//!
//! Pure logic; the worker's timers ([`crate::io`]) do the waiting. [`Pacer`] holds one
//! connection's record timing and sizes. A TLS server answers a
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

use std::time::{Duration, Instant};

// ln and exp of our own: the libm versions (`f64::ln`, `powf`) pull ~13 KiB of tables into
// the static binary, and shaping needs only a few digits.

const LN2: f64 = std::f64::consts::LN_2;

/// Natural logarithm of a positive, finite `x` (relative error below 1e-12); `-inf` for 0 and
/// anything not positive.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    // x = m · 2^e with m in [1, 2) (subnormals scaled up first).
    let (x, bias) = if x < f64::MIN_POSITIVE {
        (x * (1u64 << 54) as f64, -54)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023 + bias;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let mut e = e as f64;
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1.0;
    }
    // ln m = 2 atanh(t), t = (m − 1)/(m + 1), |t| < 0.172.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    for k in 0..12 {
        sum += term / f64::from(2 * k + 1);
        term *= t2;
    }
    e * LN2 + 2.0 * sum
}

/// e^x (relative error below 1e-12); 0 below −745, `inf` above 709.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -745.0 {
        return 0.0;
    }
    // x = n ln2 + r, |r| <= ln2 / 2; e^r by Taylor series.
    let n = (x / LN2).round();
    let r = x - n * LN2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..18 {
        term *= r / f64::from(k);
        sum += term;
    }
    // Scale by 2^n in two steps (n may be below the normal exponent range).
    let n = n as i64;
    let half = n / 2;
    let p = |k: i64| f64::from_bits(((k + 1023) as u64) << 52);
    sum * p(half) * p(n - half)
}

/// `x^y` for `x > 0`.
fn pow(x: f64, y: f64) -> f64 {
    exp(y * ln(x))
}

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
        let ns = self.scale_ns * pow(-ln(u), self.inv_shape);
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

/// Fewest gaps a fit is made from.
pub const MIN_FIT_SAMPLES: usize = 64;

/// Fits a Weibull distribution to observed gaps by maximum likelihood (PROTOCOL.md §7.4):
/// the shape k solves `1/k + mean(ln x) − Σ xᵏ ln x / Σ xᵏ = 0` (70 bisection steps on
/// [0.01, 10]), then λ = mean(xᵏ)^(1/k). Gaps are taken in milliseconds and clamped to at least
/// 1 µs (a zero gap would make ln x = −∞ and collapse the fit). `None` with fewer than
/// [`MIN_FIT_SAMPLES`] gaps. Returns `(k, λ)`.
pub fn fit(gaps: &[Duration]) -> Option<(f64, Duration)> {
    if gaps.len() < MIN_FIT_SAMPLES {
        return None;
    }
    let xs = gaps.iter().map(|g| (g.as_nanos() as f64 / 1e6).max(1e-3));
    let n = gaps.len() as f64;
    let mean_ln = xs.clone().map(ln).sum::<f64>() / n;
    let g = |k: f64| {
        let (mut sk, mut skl) = (0.0, 0.0);
        for x in xs.clone() {
            let lx = ln(x);
            let xk = exp(k * lx);
            sk += xk;
            skl += xk * lx;
        }
        1.0 / k + mean_ln - skl / sk
    };
    // g decreases in k: positive below the root, negative above.
    let (mut lo, mut hi) = (0.01f64, 10.0f64);
    for _ in 0..70 {
        let mid = (lo + hi) / 2.0;
        if g(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let k = (lo + hi) / 2.0;
    let lambda_ms = pow(xs.map(|x| pow(x, k)).sum::<f64>() / n, 1.0 / k);
    if !(k.is_finite() && lambda_ms.is_finite() && lambda_ms > 0.0) {
        return None;
    }
    let ns = (lambda_ms * 1e6).clamp(1.0, MAX_DELAY.as_nanos() as f64);
    Some((k, Duration::from_nanos(ns as u64)))
}

/// A shaped record may leave this early (the proxy's timers have 1 ms ticks).
pub const PACE_SLACK: Duration = Duration::from_micros(500);

/// How late a shaped record may have left without the next gap growing by as much.
pub const PACE_LATE_CREDIT: Duration = Duration::from_millis(2);

/// Largest application-data payload the proxy sends per record.
const FULL_RECORD: usize = super::faketls::MAX_RECORD_PAYLOAD;

/// The timing and sizes of the records sent to one FakeTLS client (PROTOCOL.md §7): pacing by
/// [`Shaping`] (when the next record may leave) and dynamic record sizing (how big the next
/// records are). Pure: `now` and randomness are passed in; the caller waits.
///
/// Dynamic record sizing, as TLS servers do it (§7.3): after an idle second the first 40
/// records carry about one MSS (1450 − U[0,100) bytes), the next 20 about 4 KiB
/// (4096 − U[0,100)), then full records. Off: always full records.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Dynamic record sizing on.
    sizing: bool,
    /// Records framed since the last idle second.
    records: u32,
    /// When records were last framed.
    last: Instant,
    /// When the next record may leave (with shaping).
    next_at: Instant,
}

impl Pacer {
    /// A pacer for a connection opened at `now`, with dynamic record sizing on or off.
    pub fn new(sizing: bool, now: Instant) -> Pacer {
        Pacer {
            sizing,
            records: 0,
            last: now,
            next_at: now,
        }
    }

    /// The server flight went out at `now`: with shaping, the first record waits one gap
    /// after it, as mtg does. `u` is a uniform draw in (0, 1] ([`draw`]).
    pub fn flight_sent(&mut self, now: Instant, shaping: &Shaping, u: f64) {
        self.next_at = now + shaping.delay(FULL_RECORD, u);
    }

    /// Payload caps for the next `N` records of one read (dynamic record sizing).
    pub fn caps<const N: usize>(&mut self, now: Instant, rng: &mut impl super::Rng) -> [usize; N] {
        let mut caps = [FULL_RECORD; N];
        if !self.sizing {
            return caps;
        }
        if now.saturating_duration_since(self.last) > Duration::from_secs(1) {
            self.records = 0;
        }
        for (i, cap) in caps.iter_mut().enumerate() {
            let k = self.records.saturating_add(i as u32);
            let jitter = rng.below(100) as usize;
            *cap = match k {
                0..40 => 1450 - jitter,
                40..60 => 4096 - jitter,
                _ => FULL_RECORD,
            };
        }
        caps
    }

    /// `records` records were framed at `now`.
    pub fn framed(&mut self, records: u32, now: Instant) {
        if self.sizing {
            self.records = self.records.saturating_add(records);
            self.last = now;
        }
    }

    /// With shaping: may the next record, of `payload` bytes, leave at `now`? `None`: yes, and
    /// the record after it is scheduled one gap later (lateness of the timer up to
    /// [`PACE_LATE_CREDIT`] is not added to that gap, so a backlog really moves at the floor
    /// rate). `Some(t)`: not before `t`; call again then.
    #[must_use]
    pub fn delay(
        &mut self,
        now: Instant,
        payload: usize,
        shaping: &Shaping,
        rng: &mut impl super::Rng,
    ) -> Option<Instant> {
        if now + PACE_SLACK < self.next_at {
            return Some(self.next_at);
        }
        let u = draw(rng);
        let base = now.checked_sub(PACE_LATE_CREDIT).unwrap_or(now);
        self.next_at = self.next_at.max(base) + shaping.delay(payload, u);
        None
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
    fn fit_recovers_the_parameters_it_was_sampled_from() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            unit(x)
        };
        for (k, scale_us) in [(0.378, 1732u64), (0.7, 5000), (1.5, 20_000), (3.0, 800)] {
            let s = Shaping::new(k, Duration::from_micros(scale_us), 0).unwrap();
            let gaps: Vec<Duration> = (0..4096).map(|_| s.gap(next())).collect();
            let (fk, fl) = fit(&gaps).expect("fit");
            let fl_us = fl.as_secs_f64() * 1e6;
            assert!((fk / k - 1.0).abs() < 0.06, "k {k}: fitted {fk}");
            assert!(
                (fl_us / scale_us as f64 - 1.0).abs() < 0.08,
                "λ {scale_us} µs: fitted {fl_us}"
            );
        }
    }

    #[test]
    fn fit_is_safe_on_degenerate_samples() {
        // Too few gaps: no fit.
        assert_eq!(fit(&[Duration::from_millis(1); 10]), None);
        // All zero (a site that sends everything at once on loopback): clamped to 1 µs, a
        // tiny scale, never an absurd one.
        let (k, l) = fit(&[Duration::ZERO; 100]).expect("fit");
        assert!(k > 0.0 && l <= Duration::from_micros(2), "{k} {l:?}");
        // Zeros mixed with long gaps: the scale stays finite and capped.
        let mixed: Vec<Duration> = (0..200)
            .map(|i| {
                if i % 2 == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs(30)
                }
            })
            .collect();
        let (k, l) = fit(&mixed).expect("fit");
        assert!(k >= 0.01 && l <= MAX_DELAY, "{k} {l:?}");
        let s = Shaping::new(k, l, 4 << 20).unwrap();
        assert!(s.delay(16384, 1e-9) <= Duration::from_millis(4));
    }

    #[test]
    fn own_ln_and_exp_match_libm() {
        let mut x = 1e-300;
        while x < 1e300 {
            for v in [x, x * 1.37, x * 2.9] {
                let (a, b) = (ln(v), v.ln());
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    "ln {v}: {a} vs {b}"
                );
            }
            x *= 7.3;
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert_eq!(ln(-1.0), f64::NEG_INFINITY);
        assert!((ln(f64::MIN_POSITIVE / 8.0) - (f64::MIN_POSITIVE / 8.0).ln()).abs() < 1e-9);
        let mut y = -740.0;
        while y < 705.0 {
            let (a, b) = (exp(y), y.exp());
            assert!((a - b).abs() <= 1e-12 * b, "exp {y}: {a} vs {b}");
            y += 0.731;
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert!((pow(2.0, 10.0) - 1024.0).abs() < 1e-9);
    }

    #[test]
    fn unit_is_in_the_half_open_interval() {
        assert!(unit(0) > 0.0);
        assert_eq!(unit(u64::MAX), 1.0);
        assert!(unit(1 << 63) > 0.49 && unit(1 << 63) < 0.51);
    }

    #[test]
    fn pacer_spaces_records_and_keeps_the_floor_rate() {
        let t0 = crate::testing::t0();
        let us = Duration::from_micros;
        let mut rng = crate::proto::XorShift64(3);
        // Gaps far above the floor: every record of n bytes waits n / 1 MB/s = n µs.
        let s = Shaping::new(0.5, Duration::from_secs(1000), 1_000_000).unwrap();
        let mut p = Pacer::new(false, t0);
        p.flight_sent(t0, &s, 0.5);
        let first = t0 + us(FULL_RECORD as u64);
        assert_eq!(p.delay(t0, 1000, &s, &mut rng), Some(first));
        // Within the slack it may go; the next one waits its 1000 µs.
        assert_eq!(p.delay(first - PACE_SLACK, 1000, &s, &mut rng), None);
        assert_eq!(p.delay(first, 1000, &s, &mut rng), Some(first + us(1000)));
        // A timer 50 ms late: the record goes, and the next gap starts from the lateness minus
        // the credit, not from the schedule (no burst to catch up) nor from now (no extra wait).
        let late = first + us(1000) + Duration::from_millis(50);
        assert_eq!(p.delay(late, 1000, &s, &mut rng), None);
        assert_eq!(p.delay(late, 1000, &s, &mut rng), None, "credit: 2 ms");
        assert_eq!(p.delay(late, 1000, &s, &mut rng), None);
        assert_eq!(
            p.delay(late, 1000, &s, &mut rng),
            Some(late - PACE_LATE_CREDIT + us(3000))
        );
    }

    #[test]
    fn pacer_sizes_records_like_a_tls_server() {
        let t0 = crate::testing::t0();
        let mut rng = crate::proto::XorShift64(4);
        let mut p = Pacer::new(true, t0);
        let mut sizes = Vec::new();
        for _ in 0..20 {
            let caps: [usize; 4] = p.caps(t0, &mut rng);
            sizes.extend_from_slice(&caps);
            p.framed(4, t0);
        }
        assert!(
            sizes[..40].iter().all(|&c| (1351..=1450).contains(&c)),
            "{sizes:?}"
        );
        assert!(sizes[40..60].iter().all(|&c| (3997..=4096).contains(&c)));
        assert!(sizes[60..].iter().all(|&c| c == FULL_RECORD));
        // After an idle second the ramp starts again.
        let later = t0 + Duration::from_millis(1001);
        let caps: [usize; 4] = p.caps(later, &mut rng);
        assert!(caps.iter().all(|&c| c <= 1450), "{caps:?}");
        // Off: always full records.
        let mut off = Pacer::new(false, t0);
        assert_eq!(off.caps::<4>(t0, &mut rng), [FULL_RECORD; 4]);
    }
}
