//! mtpx's AES hot paths (the relay's AES-256-CTR, the middle-proxy connections' AES-256-CBC
//! encryption), in a crate of its own. (CBC decryption lives in mtpx, built for size: see
//! `mtpx::proto::middle::CompactCbc::decrypt`.)
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
use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
    ParBlocksSizeUser,
};
use aes::{Aes256Enc, Block};

/// Room for keystream blocks per batch. A batch is a whole number of the backend's parallel
/// width (VAES with AVX-512: 64 blocks, with AVX2: 30; AES-NI and ARMv8: 8; software: 4), so
/// every block goes through its wide code, never the one-block path.
const BATCH: usize = 256;

/// Encrypts consecutive counter blocks from `first` into `blocks`, a whole number of the
/// backend's parallel width covering at least `need` blocks if the room allows; the number
/// made goes to `made`.
struct Generate<'a> {
    blocks: &'a mut [Block],
    first: u128,
    need: usize,
    made: &'a mut usize,
}

impl BlockSizeUser for Generate<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for Generate<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let par = <B as ParBlocksSizeUser>::ParBlocksSize::USIZE;
        let (pars, _) =
            Array::<Block, <B as ParBlocksSizeUser>::ParBlocksSize>::slice_as_chunks_mut(
                self.blocks,
            );
        let (hi, lo) = ((self.first >> 64) as u64, self.first as u64);
        if pars.is_empty() || lo.checked_add(BATCH as u64).is_none() {
            // Rare: a backend wider than the room, or the low 64 bits of the counter wrap in
            // this batch (once every 2^64 blocks of a stream).
            let n = self.need.min(self.blocks.len());
            let mut c = self.first;
            for b in &mut self.blocks[..n] {
                *b = Array(c.to_be_bytes());
                c = c.wrapping_add(1);
                backend.encrypt_block(b.into());
            }
            *self.made = n;
            return;
        }
        let take = self.need.div_ceil(par).min(pars.len());
        let hi = hi.to_be_bytes();
        let mut lo = lo;
        for p in &mut pars[..take] {
            for b in p.iter_mut() {
                b[..8].copy_from_slice(&hi);
                b[8..].copy_from_slice(&lo.to_be_bytes());
                lo += 1;
            }
            backend.encrypt_par_blocks(p.into());
        }
        *self.made = take * par;
    }
}

/// One AES-256-CTR stream (128-bit big-endian counter starting at the IV) at a byte position,
/// key schedule expanded: for a stream used often in small pieces (a random generator).
pub struct Stream {
    cipher: Aes256Enc,
    /// Counter of the block holding the next keystream byte.
    block: u128,
    /// Keystream bytes of that block already used.
    skip: usize,
}

impl Stream {
    /// The stream for `key`/`iv`, `pos` bytes in.
    pub fn new(key: &[u8; 32], iv: &[u8; 16], pos: u64) -> Stream {
        Stream {
            cipher: Aes256Enc::new(&Array(*key)),
            block: u128::from_be_bytes(*iv).wrapping_add(u128::from(pos / 16)),
            skip: (pos % 16) as usize,
        }
    }

    /// Generates a batch of keystream (covering up to `want` bytes, more if the backend's
    /// width asks for it) into `buf`; returns the usable keystream from the stream's position.
    /// The stream does not move: see [`Stream::advance`].
    fn batch<'a>(&self, buf: &'a mut [Block; BATCH], want: usize) -> &'a [u8] {
        let mut made = 0;
        self.cipher.encrypt_with_backend(Generate {
            blocks: &mut buf[..],
            first: self.block,
            need: (self.skip + want).div_ceil(16),
            made: &mut made,
        });
        &Array::slice_as_flattened(&buf[..made])[self.skip..]
    }

    /// Moves the stream on by `len` bytes.
    fn advance(&mut self, len: usize) {
        let used = self.skip + len;
        self.block = self.block.wrapping_add((used / 16) as u128);
        self.skip = used % 16;
    }

    /// XORs the next `data.len()` bytes of keystream into `data`.
    pub fn apply_keystream(&mut self, data: &mut [u8]) {
        let mut buf = [Block::default(); BATCH];
        let mut rest = data;
        while !rest.is_empty() {
            let ks = self.batch(&mut buf, rest.len());
            let len = rest.len().min(ks.len());
            let (now, later) = rest.split_at_mut(len);
            xor1(now, ks);
            self.advance(len);
            rest = later;
        }
    }
}

/// `data ^= a` (`a` at least as long), eight bytes at a time.
fn xor1(data: &mut [u8], a: &[u8]) {
    let a = &a[..data.len()];
    let whole = data.len() / 8 * 8;
    let (d8, d1) = data.split_at_mut(whole);
    let (a8, a1) = a.split_at(whole);
    for (d, x) in d8.chunks_exact_mut(8).zip(a8.chunks_exact(8)) {
        let v = word(d) ^ word(x);
        d.copy_from_slice(&v.to_ne_bytes());
    }
    for (d, x) in d1.iter_mut().zip(a1) {
        *d ^= x;
    }
}

/// `data ^= a ^ b` (`a`, `b` at least as long), eight bytes at a time: the data is read and
/// written once.
fn xor2(data: &mut [u8], a: &[u8], b: &[u8]) {
    let (a, b) = (&a[..data.len()], &b[..data.len()]);
    let whole = data.len() / 8 * 8;
    let (d8, d1) = data.split_at_mut(whole);
    let (a8, a1) = a.split_at(whole);
    let (b8, b1) = b.split_at(whole);
    for ((d, x), y) in d8
        .chunks_exact_mut(8)
        .zip(a8.chunks_exact(8))
        .zip(b8.chunks_exact(8))
    {
        let v = word(d) ^ word(x) ^ word(y);
        d.copy_from_slice(&v.to_ne_bytes());
    }
    for ((d, x), y) in d1.iter_mut().zip(a1).zip(b1) {
        *d ^= x ^ y;
    }
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_ne_bytes(w)
}

/// XORs the AES-256-CTR keystream for `key`/`iv`, starting `pos` bytes into the stream, into
/// `data` (the counter is the IV as a 128-bit big-endian number).
#[inline(never)]
pub fn apply_keystream(key: &[u8; 32], iv: &[u8; 16], pos: u64, data: &mut [u8]) {
    if !data.is_empty() {
        Stream::new(key, iv, pos).apply_keystream(data);
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
        // As much as both batches cover (the stream further into its block covers less).
        let ka = sa.batch(&mut buf_a, rest.len());
        let kb = sb.batch(&mut buf_b, rest.len());
        let len = rest.len().min(ka.len()).min(kb.len());
        let (now, later) = rest.split_at_mut(len);
        xor2(now, ka, kb);
        sa.advance(len);
        sb.advance(len);
        rest = later;
    }
}

/// AES-256-CBC encryption (NIST SP 800-38A §6.2) of `data` in place, chaining from `iv`, which
/// becomes the last ciphertext block (so consecutive calls continue one stream). Only whole
/// 16-byte blocks are processed; a trailing partial block is left untouched.
#[inline(never)]
pub fn cbc_encrypt(key: &[u8; 32], iv: &mut [u8; 16], data: &mut [u8]) {
    let aes = aes::Aes256Enc::new(&(*key).into());
    let (blocks, _) = Array::slice_as_chunks_mut(data);
    let mut prev = Array::from(*iv);
    for b in blocks {
        for (x, p) in b.iter_mut().zip(prev.iter()) {
            *x ^= p;
        }
        aes.encrypt_block(b);
        prev = *b;
    }
    *iv = prev.into();
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
        // The whole counter wraps; the low 64 bits carry into the high ones.
        let mut low_wraps = [0u8; 16];
        low_wraps[8..].copy_from_slice(&(u64::MAX - 20).to_be_bytes());
        for iv in [[0xffu8; 16], low_wraps] {
            for len in [100, 5000, 20000] {
                let mut want = pattern(len, 1);
                let mut got = want.clone();
                reference(&key, &iv, 3, &mut want);
                apply_keystream(&key, &iv, 3, &mut got);
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_kept_stream_matches_the_ctr_crate_in_pieces() {
        let (key, iv) = ([8u8; 32], [6u8; 16]);
        let mut want = pattern(20000, 3);
        let mut got = want.clone();
        reference(&key, &iv, 5, &mut want);
        let mut s = Stream::new(&key, &iv, 5);
        let mut at = 0;
        for n in [0usize, 1, 3, 4, 16, 100, 4096, 15, 5000].iter().cycle() {
            let end = (at + n).min(got.len());
            s.apply_keystream(&mut got[at..end]);
            at = end;
            if at == got.len() {
                break;
            }
        }
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

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // NIST SP 800-38A F.2.5 / F.2.6 (CBC-AES256).
    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    const PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                         30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
    const CIPHER: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d\
                          39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b";

    fn key() -> [u8; 32] {
        unhex(KEY).try_into().unwrap()
    }

    fn iv() -> [u8; 16] {
        unhex(IV).try_into().unwrap()
    }

    #[test]
    fn cbc_matches_sp800_38a() {
        let mut data = unhex(PLAIN);
        let mut chain = iv();
        cbc_encrypt(&key(), &mut chain, &mut data);
        assert_eq!(data, unhex(CIPHER));
        assert_eq!(chain.as_slice(), &unhex(CIPHER)[48..]);
    }

    #[test]
    fn cbc_continues_across_calls_and_leaves_partial_blocks() {
        for split in [0, 16, 32, 48, 64] {
            let mut data = unhex(PLAIN);
            data.extend_from_slice(&[0xaa; 5]);
            let mut chain = iv();
            let (a, b) = data.split_at_mut(split);
            cbc_encrypt(&key(), &mut chain, a);
            cbc_encrypt(&key(), &mut chain, b);
            assert_eq!(&data[..64], unhex(CIPHER).as_slice(), "split {split}");
            assert_eq!(&data[64..], &[0xaa; 5]);
        }
    }
}
