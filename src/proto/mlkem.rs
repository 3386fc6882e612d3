//! ML-KEM-768 look-alikes for the X25519MLKEM768 key share (TLS group 0x11ec).
//!
//! mtpx never runs ML-KEM: a fake ServerHello only has to carry bytes distributed like a real
//! server's share, and the scout's ClientHello like a real client's. Both follow FIPS 203:
//!
//! * a ciphertext (server share, §6.2 / K-PKE.Encrypt §5.2) is `c1 ‖ c2` =
//!   3 × ByteEncode₁₀(Compress₁₀(u)) ‖ ByteEncode₄(Compress₄(v)): 3 × 320 + 128 = 1,088 bytes.
//!   `u` and `v` are (pseudo)uniform mod q = 3329 under the MLWE assumption, so a fake one
//!   compresses coefficients drawn uniformly mod q (rejection sampling). Raw random bytes would
//!   NOT do: Compress maps 3329 values onto 1024 (or 16) outputs unevenly (3 or 4 preimages
//!   each), which a histogram over many handshakes shows (see the tests);
//! * an encapsulation key (client share, §7.1) is ByteEncode₁₂(t̂) ‖ ρ: 3 × 384 + 32 = 1,184
//!   bytes, every 12-bit coefficient < q (the one check a server makes, §7.2), ρ random.
//!
//! The TLS shares (draft-ietf-tls-ecdhe-mlkem) put the ML-KEM part first, then the 32-byte
//! X25519 public key: 1,120 bytes from the server, 1,216 from the client.
//!
//! Pure: randomness comes in through [`Rng`]. No panics, no allocation.

use super::Rng;

/// The ML-KEM modulus.
pub const Q: u16 = 3329;
/// Coefficients per polynomial.
pub const N: usize = 256;
/// ML-KEM-768's module rank.
pub const K: usize = 3;
/// Bits per coefficient of `u` (ML-KEM-768's d_u).
pub const DU: u32 = 10;
/// Bits per coefficient of `v` (ML-KEM-768's d_v).
pub const DV: u32 = 4;
/// ML-KEM-768 ciphertext length: 32·(d_u·k + d_v).
pub const CIPHERTEXT_LEN: usize = 32 * (DU as usize * K + DV as usize);
/// ML-KEM-768 encapsulation key length: 384·k + 32.
pub const ENCAPS_KEY_LEN: usize = 384 * K + 32;

/// Coefficients uniform mod q, drawn as FIPS 203's SampleNTT draws them (two 12-bit candidates
/// per 3 random bytes, candidates ≥ q rejected), from the caller's randomness.
struct Uniform<'a, R: Rng> {
    rng: &'a mut R,
    buf: [u8; 168],
    pos: usize,
    /// A second candidate left over from the last 3 bytes.
    spare: Option<u16>,
}

impl<'a, R: Rng> Uniform<'a, R> {
    fn new(rng: &'a mut R) -> Self {
        Uniform {
            rng,
            buf: [0; 168],
            pos: 168,
            spare: None,
        }
    }

    fn next(&mut self) -> u16 {
        loop {
            if let Some(d) = self.spare.take().filter(|&d| d < Q) {
                return d;
            }
            if self.pos + 3 > self.buf.len() {
                self.rng.fill(&mut self.buf);
                self.pos = 0;
            }
            let b = match self.buf.get(self.pos..self.pos + 3) {
                Some(&[b0, b1, b2]) => [u16::from(b0), u16::from(b1), u16::from(b2)],
                _ => [0; 3],
            };
            self.pos += 3;
            let d1 = b[0] | (b[1] & 0x0f) << 8;
            self.spare = Some(b[1] >> 4 | b[2] << 4);
            if d1 < Q {
                return d1;
            }
        }
    }
}

/// FIPS 203 Compress_d: ⌈(2^d / q)·x⌋ mod 2^d, rounding halves up (exact integer arithmetic).
pub fn compress(x: u16, d: u32) -> u16 {
    let q = u32::from(Q);
    let y = ((u32::from(x) << (d + 1)) + q) / (2 * q);
    (y & ((1 << d) - 1)) as u16
}

/// FIPS 203 ByteEncode_d of 256 `d`-bit values: little-endian bit packing into `32·d` bytes
/// (bit j of value i is bit i·d + j of `out`). `out` shorter than that gets what fits.
fn byte_encode(mut value: impl FnMut() -> u16, d: u32, out: &mut [u8]) {
    out.iter_mut().for_each(|b| *b = 0);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut at = 0usize;
    for _ in 0..N {
        acc |= u32::from(value()) << bits;
        bits += d;
        while bits >= 8 {
            if let Some(b) = out.get_mut(at) {
                *b = acc as u8;
            }
            at += 1;
            acc >>= 8;
            bits -= 8;
        }
    }
}

/// A fake ML-KEM-768 ciphertext: every coefficient of `u` (3 polynomials, d_u = 10) and `v`
/// (1 polynomial, d_v = 4) uniform mod q, then Compress and ByteEncode exactly as FIPS 203.
pub fn fake_ciphertext(rng: &mut impl Rng, out: &mut [u8; CIPHERTEXT_LEN]) {
    let mut u = Uniform::new(rng);
    let (c1, c2) = out.split_at_mut(32 * DU as usize * K);
    for poly in c1.chunks_mut(32 * DU as usize) {
        byte_encode(|| compress(u.next(), DU), DU, poly);
    }
    byte_encode(|| compress(u.next(), DV), DV, c2);
}

/// A fake ML-KEM-768 encapsulation key: 3 × 256 coefficients uniform mod q, ByteEncode₁₂,
/// then a random 32-byte ρ. It passes a server's modulus check (FIPS 203 §7.2).
pub fn fake_encaps_key(rng: &mut impl Rng, out: &mut [u8; ENCAPS_KEY_LEN]) {
    let (t, rho) = out.split_at_mut(384 * K);
    {
        let mut u = Uniform::new(rng);
        for poly in t.chunks_mut(384) {
            byte_encode(|| u.next(), 12, poly);
        }
    }
    rng.fill(rho);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    /// ByteDecode_d of one encoded polynomial.
    fn decode(b: &[u8], d: u32) -> Vec<u16> {
        (0..N)
            .map(|i| {
                (0..d).fold(0u16, |v, j| {
                    let bit = i * d as usize + j as usize;
                    v | (u16::from(b[bit / 8] >> (bit % 8) & 1) << j)
                })
            })
            .collect()
    }

    #[test]
    fn lengths_match_fips_203_and_the_tls_draft() {
        assert_eq!(CIPHERTEXT_LEN, 1088);
        assert_eq!(ENCAPS_KEY_LEN, 1184);
        assert_eq!(CIPHERTEXT_LEN + 32, 1120);
        assert_eq!(ENCAPS_KEY_LEN + 32, 1216);
    }

    #[test]
    fn compress_matches_the_rational_definition() {
        // ⌈(2^d/q)·x⌋ = floor(2^d·x/q + 1/2), checked in floating point for every x.
        for d in [1u32, 4, 10, 11] {
            for x in 0..Q {
                let r = ((f64::from(1u32 << d) * f64::from(x)) / f64::from(Q) + 0.5).floor();
                assert_eq!(compress(x, d), (r as u32 % (1 << d)) as u16, "x {x} d {d}");
            }
        }
        // q-1 rounds to 2^d, i.e. 0.
        assert_eq!(compress(Q - 1, 10), 0);
        assert_eq!(compress(Q / 2, 1), 1);
    }

    #[test]
    fn byte_encode_is_little_endian_bit_packing() {
        let mut out = [0u8; 320];
        let mut i = 0u16;
        byte_encode(
            || {
                i += 1;
                i - 1
            },
            10,
            &mut out,
        );
        // Values 0, 1, 2, 3: bits 0..10 = 0, 10..20 = 1, 20..30 = 2, 30..40 = 3.
        assert_eq!(out[..5], [0x00, 0x04, 0x20, 0xc0, 0x00]);
        assert_eq!(decode(&out, 10), (0..256).collect::<Vec<u16>>());
        let mut out = [0u8; 128];
        let mut i = 0u16;
        byte_encode(
            || {
                i += 1;
                (i - 1) % 16
            },
            4,
            &mut out,
        );
        assert_eq!(out[..2], [0x10, 0x32]);
    }

    #[test]
    fn encaps_key_passes_the_modulus_check() {
        let mut rng = XorShift64(3);
        let mut ek = [0u8; ENCAPS_KEY_LEN];
        for _ in 0..20 {
            fake_encaps_key(&mut rng, &mut ek);
            for poly in ek[..1152].chunks(384) {
                let c = decode(poly, 12);
                assert!(c.iter().all(|&x| x < Q));
            }
        }
        // Coefficients use the whole range.
        let c = decode(&ek[..384], 12);
        assert!(c.iter().any(|&x| x > 3000) && c.iter().any(|&x| x < 300));
    }

    /// Pearson's chi-square of `hist` against the distribution of Compress_d(uniform mod q).
    fn chi2_vs_compressed_uniform(hist: &[u64], d: u32) -> f64 {
        let mut preimages = vec![0u64; 1 << d];
        for x in 0..Q {
            preimages[usize::from(compress(x, d))] += 1;
        }
        let total: u64 = hist.iter().sum();
        hist.iter()
            .zip(&preimages)
            .map(|(&o, &p)| {
                let e = total as f64 * p as f64 / f64::from(Q);
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn histograms(cts: &[[u8; CIPHERTEXT_LEN]]) -> (Vec<u64>, Vec<u64>) {
        let mut h10 = vec![0u64; 1024];
        let mut h4 = vec![0u64; 16];
        for ct in cts {
            for poly in ct[..960].chunks(320) {
                for v in decode(poly, 10) {
                    h10[usize::from(v)] += 1;
                }
            }
            for v in decode(&ct[960..], 4) {
                h4[usize::from(v)] += 1;
            }
        }
        (h10, h4)
    }

    /// Our ciphertexts' coefficients follow Compress(uniform mod q); raw random bytes fail the
    /// same test by far (the statistic a censor would compute over many handshakes).
    #[test]
    fn ciphertext_coefficients_are_distributed_like_a_real_one() {
        let mut rng = XorShift64(0x5eed);
        let ours: Vec<[u8; CIPHERTEXT_LEN]> = (0..400)
            .map(|_| {
                let mut ct = [0u8; CIPHERTEXT_LEN];
                fake_ciphertext(&mut rng, &mut ct);
                ct
            })
            .collect();
        let raw: Vec<[u8; CIPHERTEXT_LEN]> = (0..400)
            .map(|_| {
                let mut ct = [0u8; CIPHERTEXT_LEN];
                rng.fill(&mut ct);
                ct
            })
            .collect();
        // 1023 degrees of freedom: mean 1023, sd ≈ 45; a 6-sd bound.
        let bound10 = 1023.0 + 6.0 * (2.0f64 * 1023.0).sqrt();
        let (h10, h4) = histograms(&ours);
        let c10 = chi2_vs_compressed_uniform(&h10, 10);
        assert!(c10 < bound10, "ours: chi2 {c10:.0} >= {bound10:.0}");
        let (r10, _) = histograms(&raw);
        let r = chi2_vs_compressed_uniform(&r10, 10);
        assert!(
            r > 3.0 * bound10,
            "raw bytes: chi2 {r:.0} should be far above {bound10:.0}"
        );
        // v (d = 4): 15 degrees of freedom, 6-sd bound.
        let c4 = chi2_vs_compressed_uniform(&h4, 4);
        assert!(c4 < 15.0 + 6.0 * 30f64.sqrt(), "ours (v): chi2 {c4:.1}");
        // Every output value occurs: the compressed range is covered.
        assert!(h10.iter().all(|&n| n > 0) && h4.iter().all(|&n| n > 0));
    }
}
