//! Small hash functions the middle-proxy protocol needs: MD5 and SHA-1 (its key derivation)
//! and CRC32 (its packet checksum).
//!
//! Pure and allocation-free. MD5 and SHA-1 are broken as collision-resistant hashes; here they
//! only derive AES keys from secrets the way Telegram's middle proxies do (MTProxy's
//! `aes_create_keys`), where that does not matter. Never use them for anything else.

pub mod crc32;
pub mod md5;
pub mod sha1;

pub use crc32::{Crc32, crc32};
pub use md5::md5;
pub use sha1::sha1;

/// Runs `block` over every 64-byte block of `data` followed by the MD5/SHA-1 padding: a 0x80
/// byte, zeros, and the bit length as 8 bytes (little-endian for MD5, big-endian for SHA-1).
pub(crate) fn md_blocks(data: &[u8], big_endian: bool, mut block: impl FnMut(&[u8; 64])) {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        let mut b = [0u8; 64];
        b.copy_from_slice(c);
        block(&b);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let end = if rest.len() < 56 { 64 } else { 128 };
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[end - 8..end].copy_from_slice(&if big_endian {
        bits.to_be_bytes()
    } else {
        bits.to_le_bytes()
    });
    for c in tail[..end].chunks_exact(64) {
        let mut b = [0u8; 64];
        b.copy_from_slice(c);
        block(&b);
    }
}
