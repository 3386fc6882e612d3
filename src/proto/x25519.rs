//! X25519 Diffie-Hellman (RFC 7748 §5), used to put a genuine key share into the fake
//! ServerHello (PROTOCOL.md §2.4) so that it is indistinguishable from a real one.
//!
//! Pure / no I/O: randomness for [`keypair`] comes in through [`crate::proto::Rng`].
//!
//! Written from RFC 7748:
//! * field elements mod p = 2^255 - 19 are five 51-bit limbs (`u64`), products in `u128`;
//! * the scalar is clamped (§5: clear bits 0, 1, 2 and 255, set bit 254);
//! * the u-coordinate is decoded little-endian with the top bit masked (§5); non-canonical
//!   values (>= p) are accepted and reduced, as the RFC requires;
//! * the Montgomery ladder runs all 255 steps with a constant-time conditional swap, and the
//!   final inversion is a fixed exponentiation (x^(p-2)), so timing does not depend on secrets.
//!
//! Invariants: every function here is total (no panics, no allocation); limbs between operations
//! stay below 2^52, which keeps every `u128` sum far from overflow.

/// A field element mod 2^255 - 19: value = sum(limb[i] * 2^(51 i)).
type Fe = [u64; 5];

const MASK51: u64 = (1 << 51) - 1;

/// (A - 2) / 4 for Curve25519 (RFC 7748 §5: a24 = 121665).
const A24: u64 = 121_665;

/// The curve coefficient A of v^2 = u^3 + A u^2 + u (RFC 7748 §4.1).
const A: u64 = 486_662;

/// The field element 1.
const ONE: Fe = [1, 0, 0, 0, 0];

fn load8(b: &[u8; 32], at: usize) -> u64 {
    let mut w = [0u8; 8];
    // `at` is one of a few constants <= 24, so the range is always in bounds.
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decodes 32 little-endian bytes, ignoring bit 255 (RFC 7748 §5 `decodeUCoordinate`).
fn fe_from_bytes(b: &[u8; 32]) -> Fe {
    [
        load8(b, 0) & MASK51,
        (load8(b, 6) >> 3) & MASK51,
        (load8(b, 12) >> 6) & MASK51,
        (load8(b, 19) >> 1) & MASK51,
        (load8(b, 24) >> 12) & MASK51,
    ]
}

/// One carry pass: afterwards every limb is < 2^51 except limb 1, which may exceed it by a
/// small amount (< 2^21) from the wrapped top carry.
fn fe_carry(mut h: Fe) -> Fe {
    let mut c = h[0] >> 51;
    h[0] &= MASK51;
    h[1] += c;
    c = h[1] >> 51;
    h[1] &= MASK51;
    h[2] += c;
    c = h[2] >> 51;
    h[2] &= MASK51;
    h[3] += c;
    c = h[3] >> 51;
    h[3] &= MASK51;
    h[4] += c;
    c = h[4] >> 51;
    h[4] &= MASK51;
    h[0] += c * 19;
    c = h[0] >> 51;
    h[0] &= MASK51;
    h[1] += c;
    h
}

/// Canonical little-endian encoding (fully reduced mod p).
fn fe_to_bytes(h: &Fe) -> [u8; 32] {
    // Two carry passes leave every limb < 2^51, so the value is < 2^255.
    let mut h = fe_carry(fe_carry(*h));
    // q = 1 iff h >= p, i.e. iff h + 19 >= 2^255.
    let mut q = (h[0] + 19) >> 51;
    q = (h[1] + q) >> 51;
    q = (h[2] + q) >> 51;
    q = (h[3] + q) >> 51;
    q = (h[4] + q) >> 51;
    // h - q p = h + 19 q - q 2^255: add 19 q, carry, drop bit 255.
    h[0] += 19 * q;
    let mut c = h[0] >> 51;
    h[0] &= MASK51;
    h[1] += c;
    c = h[1] >> 51;
    h[1] &= MASK51;
    h[2] += c;
    c = h[2] >> 51;
    h[2] &= MASK51;
    h[3] += c;
    c = h[3] >> 51;
    h[3] &= MASK51;
    h[4] += c;
    h[4] &= MASK51;

    let words = [
        h[0] | (h[1] << 51),
        (h[1] >> 13) | (h[2] << 38),
        (h[2] >> 26) | (h[3] << 25),
        (h[3] >> 39) | (h[4] << 12),
    ];
    let mut out = [0u8; 32];
    for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn fe_add(a: &Fe, b: &Fe) -> Fe {
    fe_carry([
        a[0] + b[0],
        a[1] + b[1],
        a[2] + b[2],
        a[3] + b[3],
        a[4] + b[4],
    ])
}

/// a - b, computed as a + 2p - b so no limb underflows (inputs are carried: limbs < 2^52).
fn fe_sub(a: &Fe, b: &Fe) -> Fe {
    const TWO_P0: u64 = 2 * ((1 << 51) - 19);
    const TWO_P: u64 = 2 * ((1 << 51) - 1);
    // Limbs of b are < 2^51 + 2^21 <= 2p's limbs, except limb 0 of 2p which is 2^52 - 38;
    // b[0] < 2^51 there, so nothing underflows.
    fe_carry([
        (a[0] + TWO_P0) - b[0],
        (a[1] + TWO_P) - b[1],
        (a[2] + TWO_P) - b[2],
        (a[3] + TWO_P) - b[3],
        (a[4] + TWO_P) - b[4],
    ])
}

fn m(a: u64, b: u64) -> u128 {
    u128::from(a) * u128::from(b)
}

/// Reduces five `u128` column sums (each < 2^116) to a carried field element.
fn fe_reduce_wide(r: [u128; 5]) -> Fe {
    let mask = u128::from(MASK51);
    let mut r = r;
    r[1] += r[0] >> 51;
    r[0] &= mask;
    r[2] += r[1] >> 51;
    r[1] &= mask;
    r[3] += r[2] >> 51;
    r[2] &= mask;
    r[4] += r[3] >> 51;
    r[3] &= mask;
    r[0] += (r[4] >> 51) * 19;
    r[4] &= mask;
    r[1] += r[0] >> 51;
    r[0] &= mask;
    // Every value now fits in 52 bits, so the narrowing below is exact.
    [
        r[0] as u64,
        r[1] as u64,
        r[2] as u64,
        r[3] as u64,
        r[4] as u64,
    ]
}

fn fe_mul(a: &Fe, b: &Fe) -> Fe {
    let b1 = b[1] * 19;
    let b2 = b[2] * 19;
    let b3 = b[3] * 19;
    let b4 = b[4] * 19;
    fe_reduce_wide([
        m(a[0], b[0]) + m(a[1], b4) + m(a[2], b3) + m(a[3], b2) + m(a[4], b1),
        m(a[0], b[1]) + m(a[1], b[0]) + m(a[2], b4) + m(a[3], b3) + m(a[4], b2),
        m(a[0], b[2]) + m(a[1], b[1]) + m(a[2], b[0]) + m(a[3], b4) + m(a[4], b3),
        m(a[0], b[3]) + m(a[1], b[2]) + m(a[2], b[1]) + m(a[3], b[0]) + m(a[4], b4),
        m(a[0], b[4]) + m(a[1], b[3]) + m(a[2], b[2]) + m(a[3], b[1]) + m(a[4], b[0]),
    ])
}

fn fe_sq(a: &Fe) -> Fe {
    let d0 = a[0] * 2;
    let d1 = a[1] * 2;
    let a3_19 = a[3] * 19;
    let a4_19 = a[4] * 19;
    fe_reduce_wide([
        m(a[0], a[0]) + m(d1, a4_19) + m(a[2] * 2, a3_19),
        m(d0, a[1]) + m(a[2] * 2, a4_19) + m(a[3], a3_19),
        m(d0, a[2]) + m(a[1], a[1]) + m(a[3] * 2, a4_19),
        m(d0, a[3]) + m(d1, a[2]) + m(a[4], a4_19),
        m(d0, a[4]) + m(d1, a[3]) + m(a[2], a[2]),
    ])
}

/// a^(2^n).
fn fe_sq_n(a: &Fe, n: u32) -> Fe {
    let mut r = *a;
    for _ in 0..n {
        r = fe_sq(&r);
    }
    r
}

fn fe_mul_small(a: &Fe, k: u64) -> Fe {
    fe_reduce_wide([m(a[0], k), m(a[1], k), m(a[2], k), m(a[3], k), m(a[4], k)])
}

/// (z^(2^250 - 1), z^11): the common head of the two fixed exponentiations below.
fn fe_pow_2_250_1(z: &Fe) -> (Fe, Fe) {
    let z2 = fe_sq(z); // 2
    let z9 = fe_mul(&fe_sq_n(&z2, 2), z); // 9
    let z11 = fe_mul(&z9, &z2); // 11
    let z_5_0 = fe_mul(&fe_sq(&z11), &z9); // 2^5 - 1
    let z_10_0 = fe_mul(&fe_sq_n(&z_5_0, 5), &z_5_0); // 2^10 - 1
    let z_20_0 = fe_mul(&fe_sq_n(&z_10_0, 10), &z_10_0); // 2^20 - 1
    let z_40_0 = fe_mul(&fe_sq_n(&z_20_0, 20), &z_20_0); // 2^40 - 1
    let z_50_0 = fe_mul(&fe_sq_n(&z_40_0, 10), &z_10_0); // 2^50 - 1
    let z_100_0 = fe_mul(&fe_sq_n(&z_50_0, 50), &z_50_0); // 2^100 - 1
    let z_200_0 = fe_mul(&fe_sq_n(&z_100_0, 100), &z_100_0); // 2^200 - 1
    let z_250_0 = fe_mul(&fe_sq_n(&z_200_0, 50), &z_50_0); // 2^250 - 1
    (z_250_0, z11)
}

/// z^(p-2) = z^(2^255 - 21) = 1/z (and 0 for z = 0), by a fixed addition chain.
fn fe_invert(z: &Fe) -> Fe {
    let (z_250_0, z11) = fe_pow_2_250_1(z);
    fe_mul(&fe_sq_n(&z_250_0, 5), &z11) // 2^255 - 32 + 11 = 2^255 - 21
}

/// z^((p-3)/2) = z^(2^254 - 11) = χ(z) / z, where χ(z) = z^((p-1)/2) is 1 for a non-zero
/// square, -1 for a non-square (Euler's criterion): one exponentiation gives both whether `z`
/// is a square (multiply by `z`) and its inverse (up to that sign).
fn fe_pow_p3_2(z: &Fe) -> Fe {
    let (z_250_0, _) = fe_pow_2_250_1(z);
    let z5 = fe_mul(&fe_sq(&fe_sq(z)), z);
    fe_mul(&fe_sq_n(&z_250_0, 4), &z5) // (2^250 - 1) 2^4 + 5 = 2^254 - 11
}

/// One x-only doubling in projective coordinates: (X : Z) = u(P) -> u(2P) (RFC 7748 §5's
/// ladder, doubling half).
fn fe_double(x: &Fe, z: &Fe) -> (Fe, Fe) {
    let aa = fe_sq(&fe_add(x, z));
    let bb = fe_sq(&fe_sub(x, z));
    let e = fe_sub(&aa, &bb);
    (
        fe_mul(&aa, &bb),
        fe_mul(&e, &fe_add(&aa, &fe_mul_small(&e, A24))),
    )
}

/// Swaps `a` and `b` when `swap` is 1, leaves them when it is 0, without branching on it.
fn fe_cswap(swap: u64, a: &mut Fe, b: &mut Fe) {
    let mask = 0u64.wrapping_sub(swap);
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let t = mask & (*x ^ *y);
        *x ^= t;
        *y ^= t;
    }
}

/// RFC 7748 §5 `decodeScalar25519`: clamp a 32-byte scalar.
fn clamp(scalar: &[u8; 32]) -> [u8; 32] {
    let mut k = *scalar;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// The X25519 function of RFC 7748 §5: clamps `scalar`, decodes `u` (top bit masked) and
/// returns the u-coordinate of scalar · u, encoded little-endian. Constant time in `scalar`.
///
/// The result is all zeros for small-order `u`; callers that need contributory behaviour
/// must check for that themselves (the fake ServerHello does not).
pub fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    ladder(&clamp(scalar), 255, u)
}

/// Montgomery ladder over the low `bits` bits of the little-endian scalar `k` (no clamping).
pub(crate) fn ladder(k: &[u8; 32], bits: usize, u: &[u8; 32]) -> [u8; 32] {
    let x1 = fe_from_bytes(u);
    let mut x2: Fe = [1, 0, 0, 0, 0];
    let mut z2: Fe = [0; 5];
    let mut x3 = x1;
    let mut z3: Fe = [1, 0, 0, 0, 0];
    let mut swap = 0u64;

    for t in (0..bits.min(256)).rev() {
        let k_t = u64::from((k[t >> 3] >> (t & 7)) & 1);
        swap ^= k_t;
        fe_cswap(swap, &mut x2, &mut x3);
        fe_cswap(swap, &mut z2, &mut z3);
        swap = k_t;

        let a = fe_add(&x2, &z2);
        let aa = fe_sq(&a);
        let b = fe_sub(&x2, &z2);
        let bb = fe_sq(&b);
        let e = fe_sub(&aa, &bb);
        let c = fe_add(&x3, &z3);
        let d = fe_sub(&x3, &z3);
        let da = fe_mul(&d, &a);
        let cb = fe_mul(&c, &b);
        x3 = fe_sq(&fe_add(&da, &cb));
        z3 = fe_mul(&x1, &fe_sq(&fe_sub(&da, &cb)));
        x2 = fe_mul(&aa, &bb);
        z2 = fe_mul(&e, &fe_add(&aa, &fe_mul_small(&e, A24)));
    }
    fe_cswap(swap, &mut x2, &mut x3);
    fe_cswap(swap, &mut z2, &mut z3);

    fe_to_bytes(&fe_mul(&x2, &fe_invert(&z2)))
}

/// Key shares for the fake ServerHellos: each one drawn afresh by [`random_share`], so no two
/// are related. (Stateless; kept as a type so that a worker owns "its" source of shares.)
pub struct KeyShares;

impl KeyShares {
    /// A source of key shares (draws nothing up front).
    pub fn new(_rng: &mut impl crate::proto::Rng) -> KeyShares {
        KeyShares
    }

    /// The next public key: [`random_share`].
    pub fn next(&mut self, rng: &mut impl crate::proto::Rng) -> [u8; 32] {
        random_share(rng)
    }
}

/// A uniformly random point of Curve25519's prime-order subgroup (its u-coordinate, canonical
/// little-endian): the distribution of an honest X25519 public key `a·G`, unrelated to any
/// other share, at about a fifth of the cost of a key pair (nobody needs the discrete log: the
/// fake ServerHello never completes a key exchange).
///
/// Draw u (32 random bytes, bit 255 masked, reduced mod p: a bias of 19/2^255), compute
/// v = u^3 + A u^2 + u and (X : Z) = u(8P) with three x-only doublings (clearing the cofactor
/// 8 maps the uniform point P of the whole curve to a uniform point of the order-ℓ
/// subgroup). Then one exponentiation t = w^((p-3)/2) = χ(w)/w of w = v Z^2 tells both
/// whether P is on the curve at all (v a non-zero square, i.e. t w = 1; otherwise u is on the
/// twist, or P or 8P is the point at infinity or of order 2, and u is drawn again: about half
/// the draws) and 1/Z^2 = v t, so u(8P) = X/Z = X Z v t with no second exponentiation.
/// Expected cost: two draws of one exponentiation each, about 2 x 270 field operations,
/// against about 2,800 for a key pair (255 ladder steps plus an inversion).
///
/// The relation-free property is what matters: the earlier stream multiplied the previous
/// share by a 32-bit scalar, which baby-step giant-step links in 2^16 steps per pair.
pub fn random_share(rng: &mut impl crate::proto::Rng) -> [u8; 32] {
    loop {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        let u = fe_from_bytes(&b);
        let v = fe_mul(&u, &fe_add(&fe_add(&fe_sq(&u), &fe_mul_small(&u, A)), &ONE));
        let (mut x, mut z) = (u, ONE);
        for _ in 0..3 {
            (x, z) = fe_double(&x, &z);
        }
        let w = fe_mul(&v, &fe_sq(&z));
        let t = fe_pow_p3_2(&w);
        if fe_to_bytes(&fe_mul(&t, &w)) == fe_to_bytes(&ONE) {
            return fe_to_bytes(&fe_mul(&fe_mul(&x, &z), &fe_mul(&v, &t)));
        }
    }
}

/// The base point's u-coordinate, 9 (RFC 7748 §4.1).
pub const BASE_POINT: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 9;
    b
};

/// The public key for `scalar`: `x25519(scalar, 9)`.
pub fn public_key(scalar: &[u8; 32]) -> [u8; 32] {
    x25519(scalar, &BASE_POINT)
}

/// A fresh key pair `(secret, public)`; `secret` is 32 random bytes (clamped on use).
pub fn keypair(rng: &mut impl crate::proto::Rng) -> ([u8; 32], [u8; 32]) {
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    let public = public_key(&secret);
    (secret, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        assert_eq!(s.len(), 64);
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("test vector hex");
        }
        out
    }

    #[test]
    fn accepts_rfc7748_5_2_vector_1() {
        let k = hex32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = hex32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = hex32("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
        assert_eq!(x25519(&k, &u), out);
    }

    #[test]
    fn accepts_rfc7748_5_2_vector_2_with_top_bit_set() {
        // The u-coordinate of this vector has bit 255 set; it must be masked.
        let k = hex32("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d");
        let u = hex32("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493");
        let out = hex32("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
        assert_eq!(x25519(&k, &u), out);
        let mut u_masked = u;
        u_masked[31] &= 0x7f;
        assert_eq!(x25519(&k, &u_masked), out);
    }

    fn iterate(n: u32) -> [u8; 32] {
        let mut k = BASE_POINT;
        let mut u = BASE_POINT;
        for _ in 0..n {
            let r = x25519(&k, &u);
            u = k;
            k = r;
        }
        k
    }

    #[test]
    fn accepts_rfc7748_iterated_once() {
        assert_eq!(
            iterate(1),
            hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
        );
    }

    #[test]
    fn accepts_rfc7748_iterated_1000_times() {
        assert_eq!(
            iterate(1000),
            hex32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    #[test]
    #[ignore = "slow: ~minutes"]
    fn accepts_rfc7748_iterated_1000000_times() {
        assert_eq!(
            iterate(1_000_000),
            hex32("7c3911e0ab2586fd864497297e575e6f3bc601c0883c30df5f4dd2d24f665424")
        );
    }

    #[test]
    fn accepts_rfc7748_6_1_diffie_hellman() {
        let alice_sk = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pk = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let bob_sk = hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let bob_pk = hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(public_key(&alice_sk), alice_pk);
        assert_eq!(public_key(&bob_sk), bob_pk);
        assert_eq!(x25519(&alice_sk, &bob_pk), shared);
        assert_eq!(x25519(&bob_sk, &alice_pk), shared);
    }

    #[test]
    fn accepts_random_keypairs_agreeing() {
        let mut rng = XorShift64(0x1234_5678);
        for _ in 0..8 {
            let (a_sk, a_pk) = keypair(&mut rng);
            let (b_sk, b_pk) = keypair(&mut rng);
            assert_ne!(a_pk, b_pk);
            assert_eq!(x25519(&a_sk, &b_pk), x25519(&b_sk, &a_pk));
        }
    }

    #[test]
    fn accepts_non_canonical_u_reduced_mod_p() {
        // u = p + 9 (non-canonical encoding of 9) must behave exactly like u = 9.
        let mut u = [0xffu8; 32];
        u[31] = 0x7f;
        u[0] = 0xed + 9; // p = 2^255 - 19 -> low byte 0xed; + 9 = 0xf6, no carry
        let k = hex32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        assert_eq!(x25519(&k, &u), public_key(&k));
    }

    #[test]
    fn accepts_small_order_input_returning_zero() {
        // u = 0 and u = 1 are small-order points: the result is the all-zero value.
        let k = [0x42u8; 32];
        assert_eq!(x25519(&k, &[0u8; 32]), [0u8; 32]);
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(x25519(&k, &one), [0u8; 32]);
    }

    #[test]
    fn accepts_field_encoding_round_trip() {
        let mut rng = XorShift64(99);
        for _ in 0..100 {
            let mut b = [0u8; 32];
            crate::proto::Rng::fill(&mut rng, &mut b);
            b[31] &= 0x3f; // below p, so the encoding is canonical
            assert_eq!(fe_to_bytes(&fe_from_bytes(&b)), b);
            // x * x^-1 = 1 for x != 0
            let x = fe_from_bytes(&b);
            let mut one = [0u8; 32];
            one[0] = 1;
            assert_eq!(fe_to_bytes(&fe_mul(&x, &fe_invert(&x))), one);
        }
    }

    // ---------------------------------------------------------------- key shares

    /// The order ℓ = 2^252 + 27742317777372353535851937790883648493 of the base point,
    /// little-endian.
    const ELL: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn fe_small(n: u64) -> Fe {
        [n, 0, 0, 0, 0]
    }

    fn fe_eq(a: &Fe, b: &Fe) -> bool {
        fe_to_bytes(a) == fe_to_bytes(b)
    }

    /// v = u^3 + A u^2 + u: u is a point of the curve iff v is a square (else of the twist).
    fn curve_rhs(u: &Fe) -> Fe {
        fe_mul(u, &fe_add(&fe_add(&fe_sq(u), &fe_mul_small(u, A)), &ONE))
    }

    /// z^e for a little-endian exponent (square and multiply; tests only).
    fn fe_pow(z: &Fe, e: &[u8; 32]) -> Fe {
        let mut r = ONE;
        for bit in (0..256).rev() {
            r = fe_sq(&r);
            if (e[bit >> 3] >> (bit & 7)) & 1 == 1 {
                r = fe_mul(&r, z);
            }
        }
        r
    }

    /// A square root of a square `w` (p = 5 mod 8: w^((p+3)/8), times sqrt(-1) if needed).
    fn fe_sqrt(w: &Fe) -> Fe {
        let mut e = [0xffu8; 32]; // (p+3)/8 = 2^252 - 2
        e[0] = 0xfe;
        e[31] = 0x0f;
        let b = fe_pow(w, &e);
        if fe_eq(&fe_sq(&b), w) {
            return b;
        }
        let mut e = [0xffu8; 32]; // (p-1)/4 = 2^253 - 5: 2^((p-1)/4) = sqrt(-1)
        e[0] = 0xfb;
        e[31] = 0x1f;
        let r = fe_mul(&b, &fe_pow(&fe_small(2), &e));
        assert!(fe_eq(&fe_sq(&r), w), "not a square");
        r
    }

    /// u(P + Q) and u(P - Q) for curve points with u-coordinates `p`, `q` (p != q): lifted to
    /// (u, v) and added with the affine chord rule (which sign is which depends on the lifts).
    fn add_both_signs(p: &Fe, q: &Fe) -> [Fe; 2] {
        let (yp, yq) = (fe_sqrt(&curve_rhs(p)), fe_sqrt(&curve_rhs(q)));
        let inv = fe_invert(&fe_sub(q, p));
        [yq, fe_sub(&[0; 5], &yq)].map(|yq| {
            let l = fe_mul(&fe_sub(&yq, &yp), &inv);
            fe_sub(&fe_sub(&fe_sub(&fe_sq(&l), &fe_small(A)), p), q)
        })
    }

    /// Differential addition: u(P + Q) from u(P), u(Q) and u(P - Q), all projective.
    fn fe_diff_add(p: (Fe, Fe), q: (Fe, Fe), diff: (Fe, Fe)) -> (Fe, Fe) {
        let da = fe_mul(&fe_sub(&q.0, &q.1), &fe_add(&p.0, &p.1));
        let cb = fe_mul(&fe_add(&q.0, &q.1), &fe_sub(&p.0, &p.1));
        (
            fe_mul(&diff.1, &fe_sq(&fe_add(&da, &cb))),
            fe_mul(&diff.0, &fe_sq(&fe_sub(&da, &cb))),
        )
    }

    /// Canonical u-coordinates of projective points, with one inversion (Montgomery's trick).
    fn normalize(points: &[(Fe, Fe)]) -> Vec<[u8; 32]> {
        let mut prefix = Vec::with_capacity(points.len());
        let mut acc = ONE;
        for p in points {
            prefix.push(acc);
            acc = fe_mul(&acc, &p.1);
        }
        let mut inv = fe_invert(&acc);
        let mut out = vec![[0u8; 32]; points.len()];
        for i in (0..points.len()).rev() {
            out[i] = fe_to_bytes(&fe_mul(&points[i].0, &fe_mul(&inv, &prefix[i])));
            inv = fe_mul(&inv, &points[i].1);
        }
        out
    }

    /// The attack on linked key shares: baby-step giant-step for a scalar k < 2^32 with
    /// u(k·P1) = u(P2) (2^16 steps each way, x-only differential chains). Returns k if found.
    fn bsgs_small_scalar(s1: &[u8; 32], s2: &[u8; 32]) -> Option<u64> {
        const M: u64 = 1 << 16;
        let p1 = (fe_from_bytes(s1), ONE);
        // Baby steps: u(j·P1) for j = 1..=M.
        let mut baby = vec![p1, fe_double(&p1.0, &p1.1)];
        while (baby.len() as u64) < M {
            let n = baby.len();
            baby.push(fe_diff_add(baby[n - 1], p1, baby[n - 2]));
        }
        let table: std::collections::HashMap<[u8; 32], u64> = normalize(&baby)
            .into_iter()
            .enumerate()
            .map(|(j, u)| (u, j as u64 + 1))
            .collect();
        // Giant steps: u(P2 + i·M·P1) and u(P2 - i·M·P1) for i = 0..M (u(Q) = u(-Q), so
        // one of the two sequences meets the table at i = k / M if k < 2^32).
        let mut m_bytes = [0u8; 32];
        m_bytes[..8].copy_from_slice(&M.to_le_bytes());
        let big = fe_from_bytes(&ladder(&m_bytes, 64, s1));
        let p2 = fe_from_bytes(s2);
        for first in add_both_signs(&p2, &big) {
            let mut giant = vec![(p2, ONE), (first, ONE)];
            while (giant.len() as u64) < M {
                let n = giant.len();
                giant.push(fe_diff_add(giant[n - 1], (big, ONE), giant[n - 2]));
            }
            for (i, u) in normalize(&giant).iter().enumerate() {
                let Some(&j) = table.get(u) else { continue };
                // P2 = ±(i M ± j)·P1: check the candidates.
                let i = i as u64;
                for k in [i * M + j, (i * M).abs_diff(j)] {
                    let mut kb = [0u8; 32];
                    kb[..8].copy_from_slice(&k.to_le_bytes());
                    if ladder(&kb, 64, s1) == *s2 {
                        return Some(k);
                    }
                }
            }
        }
        None
    }

    #[test]
    fn rejects_share_off_the_prime_order_subgroup() {
        // Every share is a point of the curve (not the twist), not of small order, and ℓ·P
        // is the point at infinity (encoded 0): the prime-order subgroup, as for a·G.
        let mut rng = XorShift64(0x5eed);
        let mut shares = KeyShares::new(&mut rng);
        for _ in 0..64 {
            let share = shares.next(&mut rng);
            assert_ne!(share, [0u8; 32]);
            assert_eq!(share[31] & 0x80, 0);
            let u = fe_from_bytes(&share);
            assert_eq!(fe_to_bytes(&u), share, "canonical encoding");
            let v = curve_rhs(&u);
            assert!(fe_eq(&fe_mul(&fe_pow_p3_2(&v), &v), &ONE), "on the twist");
            assert_eq!(ladder(&ELL, 253, &share), [0u8; 32], "not in the subgroup");
        }
        // The checks above tell real keys from the rest: a twist point and a point of order
        // 8 fail them.
        let twist = fe_small(2); // 2^3 + 4 A + 2 is not a square mod p
        let v = curve_rhs(&twist);
        assert!(!fe_eq(&fe_mul(&fe_pow_p3_2(&v), &v), &ONE));
        let order8 = hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert_ne!(ladder(&ELL, 253, &order8), [0u8; 32]);
        assert_eq!(ladder(&ELL, 253, &public_key(&[7; 32])), [0u8; 32]);
    }

    #[test]
    fn rejects_linked_consecutive_key_shares() {
        // The attack a passive observer runs on two ServerHellos of one worker: a scalar of
        // up to 32 bits linking consecutive shares. Independent shares never link.
        let mut rng = XorShift64(0xabcd);
        let mut shares = KeyShares::new(&mut rng);
        let s1 = shares.next(&mut rng);
        let s2 = shares.next(&mut rng);
        let s3 = shares.next(&mut rng);
        assert_eq!(
            bsgs_small_scalar(&s1, &s2),
            None,
            "shares 1 and 2 are linked"
        );
        assert_eq!(
            bsgs_small_scalar(&s2, &s3),
            None,
            "shares 2 and 3 are linked"
        );
    }

    #[test]
    fn accepts_bsgs_finding_a_32_bit_link() {
        // The attack itself works: it finds the link of the previous construction (the next
        // share = the previous one times a random 32-bit k, top bit set), and small ones.
        let mut rng = XorShift64(77);
        let (_, s1) = keypair(&mut rng);
        for k in [0x8123_4567u64, 0xffff_fff1, 3, 0x1_0000] {
            let mut kb = [0u8; 32];
            kb[..8].copy_from_slice(&k.to_le_bytes());
            let s2 = ladder(&kb, 64, &s1);
            assert_eq!(bsgs_small_scalar(&s1, &s2), Some(k), "k = {k:#x}");
        }
    }

    #[test]
    fn accepts_shares_looking_uniform() {
        // Each of bits 0..=254 is set about half the time, bit 255 never (as for real keys);
        // byte values are spread evenly (chi-square); no share repeats.
        let n = 2000;
        let mut rng = XorShift64(0x0dd5);
        let mut shares = KeyShares::new(&mut rng);
        let all: Vec<[u8; 32]> = (0..n).map(|_| shares.next(&mut rng)).collect();
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), n);
        // Binomial(2000, 1/2): sd 22.4; 6 sd either way.
        for bit in 0..255 {
            let ones = all
                .iter()
                .filter(|s| (s[bit / 8] >> (bit % 8)) & 1 == 1)
                .count();
            assert!((866..=1134).contains(&ones), "bit {bit} set {ones} times");
        }
        assert!(all.iter().all(|s| s[31] & 0x80 == 0));
        let mut hist = [0u32; 256];
        for s in &all {
            for &b in &s[..31] {
                hist[usize::from(b)] += 1;
            }
        }
        let expect = (31 * n) as f64 / 256.0;
        let chi2: f64 = hist
            .iter()
            .map(|&h| (f64::from(h) - expect).powi(2) / expect)
            .sum();
        // 255 degrees of freedom: mean 255, sd 22.6.
        assert!(chi2 < 400.0, "chi-square {chi2}");
    }
}
