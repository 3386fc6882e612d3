//! mtpx's AES hot paths (the relay's AES-256-CTR, the middle-proxy connections' AES-256-CBC
//! encryption), in a crate of its own. (CBC decryption lives in mtpx, built for size: see
//! `mtpx::proto::middle::CompactCbc::decrypt`.)
//!
//! The release profile optimises mtpx for size; this crate is built at `opt-level = 3` (see
//! the workspace's `Cargo.toml`), and the generic cipher code is instantiated here, not in
//! mtpx, so the relay's per-byte work keeps full speed in a small binary.

#![deny(unsafe_code)]

use aes::cipher::array::Array;
use aes::cipher::{BlockCipherEncrypt, KeyInit, KeyIvInit, StreamCipher, StreamCipherSeek};

type AesCtr = ctr::Ctr128BE<aes::Aes256Enc>;

/// XORs the AES-256-CTR keystream for `key`/`iv`, starting `pos` bytes into the stream, into
/// `data` (the counter is the IV as a 128-bit big-endian number).
#[inline(never)]
pub fn apply_keystream(key: &[u8; 32], iv: &[u8; 16], pos: u64, data: &mut [u8]) {
    let mut c = AesCtr::new(&(*key).into(), &(*iv).into());
    c.seek(pos);
    c.apply_keystream(data);
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
