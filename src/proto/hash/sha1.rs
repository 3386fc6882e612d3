//! SHA-1 (FIPS 180-4 §6.1, RFC 3174), one-shot. For the middle-proxy key derivation only (see
//! [`super`]).

/// The SHA-1 digest of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
    super::md_blocks(data, true, |block| {
        let mut w = [0u32; 16];
        for (v, c) in w.iter_mut().zip(block.chunks_exact(4)) {
            *v = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for t in 0..80 {
            // The message schedule in a 16-word ring (FIPS 180-4 §6.1.3).
            let wt = if t < 16 {
                w[t]
            } else {
                let x = (w[(t + 13) % 16] ^ w[(t + 8) % 16] ^ w[(t + 2) % 16] ^ w[t % 16])
                    .rotate_left(1);
                w[t % 16] = x;
                x
            };
            let (f, k) = match t / 20 {
                0 => ((b & c) | (!b & d), 0x5a827999),
                1 => (b ^ c ^ d, 0x6ed9eba1),
                2 => ((b & c) | (b & d) | (c & d), 0x8f1bbcdc),
                _ => (b ^ c ^ d, 0xca62c1d6),
            };
            let tmp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wt);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = tmp;
        }
        for (s, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *s = s.wrapping_add(v);
        }
    });
    let mut out = [0u8; 20];
    for (o, w) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::encoding::hex_encode;

    #[test]
    fn accepts_rfc3174_test_vectors() {
        // RFC 3174 §7.3 TEST1, TEST2, TEST4 (TEST3, a million 'a', is below).
        assert_eq!(
            hex_encode(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex_encode(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let test4 = b"01234567012345670123456701234567".repeat(20);
        assert_eq!(
            hex_encode(&sha1(&test4)),
            "dea356a2cddd90c7a7ecedc5ebb563934f460452"
        );
        assert_eq!(
            hex_encode(&sha1(b"")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    #[test]
    fn accepts_million_a() {
        // RFC 3174 TEST3 / FIPS 180 example: one million 'a'.
        let data = vec![b'a'; 1_000_000];
        assert_eq!(
            hex_encode(&sha1(&data)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn accepts_every_padding_boundary() {
        // Expected values from Python's hashlib over bytes i % 251.
        let data: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        let cases: [(usize, &str); 9] = [
            (55, "8ae2d46729cfe68ff927af5eec9c7d1b66d65ac2"),
            (56, "636e2ec698dac903498e648bd2f3af641d3c88cb"),
            (57, "7cb1330f35244b57437539253304ea78a6b7c443"),
            (63, "6d942da0c4392b123528f2905c713a3ce28364bd"),
            (64, "c6138d514ffa2135bfce0ed0b8fac65669917ec7"),
            (65, "69bd728ad6e13cd76ff19751fde427b00e395746"),
            (119, "41c89d06001bab4ab78736b44efe7ce18ce6ae08"),
            (120, "d3dbd653bd8597b7475321b60a36891278e6a04a"),
            (128, "e6434bc401f98603d7eda504790c98c67385d535"),
        ];
        for (n, want) in cases {
            assert_eq!(hex_encode(&sha1(&data[..n])), want, "length {n}");
        }
    }
}
