//! mtpx's AES-256-CTR hot path, in a crate of its own.
//!
//! The release profile optimises mtpx for size; this crate is built at `opt-level = 3` (see
//! the workspace's `Cargo.toml`), and the generic cipher code is instantiated here, not in
//! mtpx, so the relay's per-byte work keeps full speed in a small binary.

#![deny(unsafe_code)]

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

type AesCtr = ctr::Ctr128BE<aes::Aes256Enc>;

/// XORs the AES-256-CTR keystream for `key`/`iv`, starting `pos` bytes into the stream, into
/// `data` (the counter is the IV as a 128-bit big-endian number).
#[inline(never)]
pub fn apply_keystream(key: &[u8; 32], iv: &[u8; 16], pos: u64, data: &mut [u8]) {
    let mut c = AesCtr::new(&(*key).into(), &(*iv).into());
    c.seek(pos);
    c.apply_keystream(data);
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
}
