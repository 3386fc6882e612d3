//! mtpx's AES-256-CTR hot path, in a crate of its own.
//!
//! The counter mode is written here on top of the `aes` crate's block encryption instead of
//! taken from the `ctr` crate, because of how the shipped binary is built: with fat LTO the
//! whole program is optimised again at the root crate's `opt-level = "s"`, which runs neither
//! the loop nor the SLP vectoriser. The `ctr`/`cipher` code relies on them: its keystream XOR
//! became a byte-by-byte loop between two 1 KiB `memcpy`s per batch, three times the cost of
//! the AES rounds themselves. Here the XOR works on 64-bit words (fast without any vectoriser),
//! keystream blocks are generated in batches of [`BATCH`] (a multiple of every backend's
//! parallel width, so the `aes` crate's wide VAES / AES-NI / ARMv8 code does all of them), and
//! [`apply_keystream2`] applies two streams in one pass over the data.

#![deny(unsafe_code)]

use aes::cipher::array::Array;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::{Aes256Enc, Block};

/// Keystream blocks generated per batch: a multiple of the `aes` backends' parallel widths
/// (VAES with AVX-512: 64 blocks, AES-NI and ARMv8: 8; VAES with AVX2 does 30 at once and
/// leaves 16 of 256 to the single-block path).
const BATCH: usize = 256;

/// One AES-256-CTR stream (128-bit big-endian counter starting at the IV) at a byte position.
struct Stream {
    cipher: Aes256Enc,
    /// Counter of the block holding the next keystream byte.
    block: u128,
    /// Keystream bytes of that block already used.
    skip: usize,
}

impl Stream {
    fn new(key: &[u8; 32], iv: &[u8; 16], pos: u64) -> Stream {
        Stream {
            cipher: Aes256Enc::new(&Array(*key)),
            block: u128::from_be_bytes(*iv).wrapping_add(u128::from(pos / 16)),
            skip: (pos % 16) as usize,
        }
    }

    /// Blocks needed for the next `len` bytes, capped at a batch.
    fn blocks_for(&self, len: usize) -> usize {
        (self.skip + len).div_ceil(16).min(BATCH)
    }

    /// Generates `n` keystream blocks into `buf` and returns the next `len` keystream bytes
    /// (`len <= n * 16 - skip`), moving the stream on by `len`.
    fn next<'a>(&mut self, buf: &'a mut [Block; BATCH], n: usize, len: usize) -> &'a [u8] {
        let blocks = &mut buf[..n];
        let mut c = self.block;
        for b in blocks.iter_mut() {
            *b = Array(c.to_be_bytes());
            c = c.wrapping_add(1);
        }
        self.cipher.encrypt_blocks(blocks);
        let (skip, used) = (self.skip, self.skip + len);
        self.block = self.block.wrapping_add((used / 16) as u128);
        self.skip = used % 16;
        &Array::slice_as_flattened(blocks)[skip..used]
    }
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_ne_bytes(w)
}

/// `data ^= a` (equal lengths), eight bytes at a time.
fn xor1(data: &mut [u8], a: &[u8]) {
    let mut d = data.chunks_exact_mut(8);
    let mut x = a.chunks_exact(8);
    for (d, x) in (&mut d).zip(&mut x) {
        let v = word(d) ^ word(x);
        d.copy_from_slice(&v.to_ne_bytes());
    }
    for (d, x) in d.into_remainder().iter_mut().zip(x.remainder()) {
        *d ^= x;
    }
}

/// `data ^= a ^ b` (equal lengths), eight bytes at a time: the data is read and written once.
fn xor2(data: &mut [u8], a: &[u8], b: &[u8]) {
    let mut d = data.chunks_exact_mut(8);
    let mut x = a.chunks_exact(8);
    let mut y = b.chunks_exact(8);
    for ((d, x), y) in (&mut d).zip(&mut x).zip(&mut y) {
        let v = word(d) ^ word(x) ^ word(y);
        d.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = d.into_remainder().iter_mut();
    for ((d, x), y) in rest.zip(x.remainder()).zip(y.remainder()) {
        *d ^= x ^ y;
    }
}

/// XORs the AES-256-CTR keystream for `key`/`iv`, starting `pos` bytes into the stream, into
/// `data` (the counter is the IV as a 128-bit big-endian number).
#[inline(never)]
pub fn apply_keystream(key: &[u8; 32], iv: &[u8; 16], pos: u64, data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    let mut s = Stream::new(key, iv, pos);
    let mut buf = [Block::default(); BATCH];
    let mut rest = data;
    while !rest.is_empty() {
        // A full batch while the data lasts (every batch but the last keeps the backends'
        // full parallel width).
        let n = s.blocks_for(rest.len());
        let len = rest.len().min(n * 16 - s.skip);
        let (now, later) = rest.split_at_mut(len);
        xor1(now, s.next(&mut buf, n, len));
        rest = later;
    }
}

/// XORs two AES-256-CTR keystreams, `a` then `b` (each `(key, iv, pos)` as for
/// [`apply_keystream`]), into `data` in one pass: what the relay does to every byte (decrypt
/// with one peer's stream, encrypt with the other's).
#[inline(never)]
pub fn apply_keystream2(
    a: (&[u8; 32], &[u8; 16], u64),
    b: (&[u8; 32], &[u8; 16], u64),
    data: &mut [u8],
) {
    if data.is_empty() {
        return;
    }
    let mut sa = Stream::new(a.0, a.1, a.2);
    let mut sb = Stream::new(b.0, b.1, b.2);
    let mut buf_a = [Block::default(); BATCH];
    let mut buf_b = [Block::default(); BATCH];
    let mut rest = data;
    while !rest.is_empty() {
        // A full batch for both streams while the data lasts; the stream that is further into
        // its block decides how many bytes that covers.
        let (na, nb) = (sa.blocks_for(rest.len()), sb.blocks_for(rest.len()));
        let len = rest.len().min(na * 16 - sa.skip).min(nb * 16 - sb.skip);
        let (now, later) = rest.split_at_mut(len);
        let ka = sa.next(&mut buf_a, na, len);
        let kb = sb.next(&mut buf_b, nb, len);
        xor2(now, ka, kb);
        rest = later;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

    type Reference = ctr::Ctr128BE<aes::Aes256Enc>;

    fn reference(key: &[u8; 32], iv: &[u8; 16], pos: u64, data: &mut [u8]) {
        let mut c = Reference::new(&Array(*key), &Array(*iv));
        c.seek(pos);
        c.apply_keystream(data);
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn matches_the_ctr_crate_at_any_position_and_length() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        for pos in [0u64, 1, 15, 16, 17, 64, 4095, 4096, 4097, 1 << 33] {
            for len in [
                0usize, 1, 7, 8, 15, 16, 17, 1000, 4079, 4080, 4081, 4096, 16384, 40000,
            ] {
                let mut want = pattern(len, pos as u8);
                let mut got = want.clone();
                reference(&key, &iv, pos, &mut want);
                apply_keystream(&key, &iv, pos, &mut got);
                assert_eq!(got, want, "pos {pos} len {len}");
            }
        }
    }

    #[test]
    fn two_streams_match_two_passes() {
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let (ia, ib) = ([3u8; 16], [4u8; 16]);
        for (pa, pb) in [
            (0u64, 0u64),
            (64, 64),
            (1, 15),
            (15, 1),
            (4000, 3),
            (17, 1 << 20),
        ] {
            for len in [0usize, 1, 9, 16, 255, 4065, 4080, 4096, 16379, 16384, 70000] {
                let mut want = pattern(len, len as u8);
                let mut got = want.clone();
                reference(&ka, &ia, pa, &mut want);
                reference(&kb, &ib, pb, &mut want);
                apply_keystream2((&ka, &ia, pa), (&kb, &ib, pb), &mut got);
                assert_eq!(got, want, "pos {pa}/{pb} len {len}");
            }
        }
    }

    #[test]
    fn the_counter_wraps_as_a_128_bit_number() {
        let key = [5u8; 32];
        let iv = [0xffu8; 16];
        let mut want = pattern(100, 1);
        let mut got = want.clone();
        reference(&key, &iv, 0, &mut want);
        apply_keystream(&key, &iv, 0, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn seeking_matches_a_continuous_stream() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        let mut whole = vec![0u8; 1000];
        apply_keystream(&key, &iv, 0, &mut whole);
        let mut parts = vec![0u8; 1000];
        let (a, b) = parts.split_at_mut(333);
        apply_keystream(&key, &iv, 0, a);
        apply_keystream(&key, &iv, 333, b);
        assert_eq!(whole, parts);
        assert_ne!(whole, vec![0u8; 1000]);
    }
}
