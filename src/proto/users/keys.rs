//! Finding the user whose key made a handshake, as cheaply as the protocols allow.
//!
//! FakeTLS: the digest hidden in the client random is HMAC-SHA256(key, hello with the random
//! zeroed). [`HmacKey`] holds the SHA-256 states after the key's ipad and opad blocks, so one
//! key costs the message's compressions plus one (10 for a 517-byte Telegram hello instead of
//! 12), and [`Users::find_faketls`] lays the hello out in SHA-256 blocks once for all keys.
//! The message blocks cannot be shared further: HMAC puts the key first, so every compression
//! of the message depends on it. A client the [`super::recent`] table knows costs one key; an
//! unknown one costs one key per FakeTLS user (on average half of them, all of them when the
//! hello matches none, as a prober's does).
//!
//! obfuscated2 (`dd`, classic): the client→proxy key is SHA-256(frame[8..40] ‖ key), one
//! compression, then one AES-256 block for the tag at 56..60. Nothing of it can be computed
//! per key in advance (the frame comes first); [`Users::find_obfs2`] builds the block once and
//! only writes each key into it.
//!
//! Pure / no I/O.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use sha2::block_api::compress256;

use super::{UserId, Users};
use crate::proto::Reject;
use crate::proto::faketls::ClientHello;
use crate::proto::obfs2::{ClientHandshake, CompactCtr, FRAME_LEN, Tag};
use crate::proto::secret::{SecretKind, ct_eq};

const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Offset of the client random in the handshake message; the HMAC input is the 5-byte record
/// header, then the message with these 32 bytes zeroed.
const MSG_RANDOM: usize = 6;
const HEAD: usize = 5 + MSG_RANDOM + 32;
/// Hellos up to this many SHA-256 blocks (about 2.5 KB) are laid out once for all keys;
/// longer ones (never a Telegram client's) are laid out again for each key.
const SHARED_BLOCKS: usize = 40;

fn state_bytes(s: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(s) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// HMAC-SHA256 for one 16-byte key, the ipad and opad blocks already absorbed.
#[derive(Clone)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// Absorbs `key ⊕ ipad` and `key ⊕ opad` (RFC 2104; the key is shorter than a block).
    pub fn new(key: &[u8; 16]) -> HmacKey {
        let pad = |byte: u8| {
            let mut block = [byte; 64];
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut s = IV;
            compress256(&mut s, &[block]);
            s
        };
        HmacKey {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The MAC, from the inner state after the message and its padding.
    fn finish(&self, inner: &[u32; 8]) -> [u8; 32] {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&state_bytes(inner));
        block[32] = 0x80;
        // (64 + 32) bytes = 768 bits.
        block[62] = 0x03;
        let mut s = self.outer;
        compress256(&mut s, &[block]);
        state_bytes(&s)
    }

    /// HMAC-SHA256 of `data` (any length), for tests and one-off uses.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let msg = Message::new(&[], data);
        let mut s = self.inner;
        let mut block = [0u8; 64];
        for i in 0..msg.blocks {
            msg.block(i, &mut block);
            compress256(&mut s, &[block]);
        }
        self.finish(&s)
    }
}

/// The HMAC input after the ipad block: `head ‖ tail`, then SHA-256 padding for a message of
/// 64 + its length bytes.
struct Message<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    len: usize,
    blocks: usize,
}

impl<'a> Message<'a> {
    fn new(head: &'a [u8], tail: &'a [u8]) -> Message<'a> {
        let len = head.len() + tail.len();
        Message {
            head,
            tail,
            len,
            blocks: (len + 9).div_ceil(64),
        }
    }

    /// Block `i` of the padded message.
    fn block(&self, i: usize, out: &mut [u8; 64]) {
        let (start, end) = (i * 64, i * 64 + 64);
        let h = self.head.len();
        let mut o = 0;
        if start < h {
            o = h.min(end) - start;
            out[..o].copy_from_slice(&self.head[start..start + o]);
        }
        let (from, to) = (start.max(h), end.min(self.len));
        if from < to {
            out[o..o + to - from].copy_from_slice(&self.tail[from - h..to - h]);
            o += to - from;
        }
        out[o..].fill(0);
        if (start..end).contains(&self.len) {
            out[self.len - start] = 0x80;
        }
        if i + 1 == self.blocks {
            let bits = ((64 + self.len) as u64) * 8;
            out[56..].copy_from_slice(&bits.to_be_bytes());
        }
    }
}

/// The user a FakeTLS hello belongs to, and the timestamp its digest carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeTlsMatch {
    /// The user whose key made the digest.
    pub user: UserId,
    /// The client's Unix time from the digest (checked against the tolerance).
    pub timestamp: u32,
}

impl Users {
    /// The ids to try, `first` (a hint, e.g. from [`super::RecentUsers::get`]) first, then
    /// the others if `all`.
    pub fn candidates(&self, first: Option<UserId>, all: bool) -> super::Candidates {
        super::Candidates::new(first, if all { self.len() } else { 0 }, self.len())
    }

    /// Finds the FakeTLS user whose key made `hello`'s digest: the same check as
    /// [`crate::proto::faketls::verify_client_hello`] (SNI must name the user's host, then the
    /// HMAC, then the clock), over every FakeTLS user (only `first` unless `all`), `first`
    /// first. A user whose key matches
    /// but whose timestamp is off ends the search with `TimeSkew`. When nobody matches: `Sni`
    /// if no user's host is in the SNI, else `Digest`.
    pub fn find_faketls(
        &self,
        hello: &ClientHello,
        msg: &[u8],
        now_unix: u64,
        tolerance_secs: u64,
        first: Option<UserId>,
        all: bool,
    ) -> Result<FakeTlsMatch, Reject> {
        let len = u16::try_from(msg.len()).map_err(|_| Reject::Digest)?;
        let (Some(pre), Some(tail)) = (msg.get(..MSG_RANDOM), msg.get(MSG_RANDOM + 32..)) else {
            return Err(Reject::Malformed);
        };
        let mut head = [0u8; HEAD];
        head[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        head[3..5].copy_from_slice(&len.to_be_bytes());
        head[5..5 + MSG_RANDOM].copy_from_slice(pre);
        let m = Message::new(&head, tail);
        let shared = m.blocks <= SHARED_BLOCKS;
        let mut blocks = [[0u8; 64]; SHARED_BLOCKS];
        if shared {
            for (i, b) in blocks.iter_mut().enumerate().take(m.blocks) {
                m.block(i, b);
            }
        }
        let mut sni_seen = false;
        for id in self.candidates(first, all) {
            let spec = &self.specs[id];
            if spec.secret.kind != SecretKind::FakeTls
                || !hello.has_sni(msg, spec.secret.host.as_bytes())
            {
                continue;
            }
            sni_seen = true;
            let key = &self.keys[id];
            let mut s = key.inner;
            if shared {
                compress256(&mut s, &blocks[..m.blocks]);
            } else {
                let mut b = [0u8; 64];
                for i in 0..m.blocks {
                    m.block(i, &mut b);
                    compress256(&mut s, &[b]);
                }
            }
            let mac = key.finish(&s);
            let mut x = [0u8; 32];
            for (o, (a, b)) in x.iter_mut().zip(mac.iter().zip(&hello.random)) {
                *o = a ^ b;
            }
            if !ct_eq(&x[..28], &[0u8; 28]) {
                continue;
            }
            let ts = u32::from_le_bytes([x[28], x[29], x[30], x[31]]);
            if now_unix.abs_diff(u64::from(ts)) > tolerance_secs {
                return Err(Reject::TimeSkew);
            }
            return Ok(FakeTlsMatch {
                user: id,
                timestamp: ts,
            });
        }
        Err(if sni_seen {
            Reject::Digest
        } else {
            Reject::Sni
        })
    }

    /// Finds the `dd` or classic user whose key decrypts `frame` to a protocol tag, `first`
    /// first (and only `first` unless `all`), and gives the same [`ClientHandshake`] as
    /// [`crate::proto::obfs2::client_handshake`] with that user's key (reusing the key derived
    /// for the check). A `dd` user's key that yields another tag than padded is
    /// `ObfsTagNotAllowed` unless a later user matches; no match at all is `ObfsTag`. (A wrong
    /// key yields a valid tag with probability 3/2^32, so with 4,096 users about one frame in
    /// 350,000 of a prober's random ones passes this check, as one in 1.4 billion does with
    /// one user; it then fails like any client that sends garbage.)
    pub fn find_obfs2(
        &self,
        frame: &[u8; FRAME_LEN],
        first: Option<UserId>,
        all: bool,
    ) -> Result<Obfs2Match, Reject> {
        // SHA-256(material ‖ key): 48 bytes, one block.
        let one_block = |material: &[u8], key: &[u8; 16]| {
            let mut block = [0u8; 64];
            block[..32].copy_from_slice(material);
            block[32..48].copy_from_slice(key);
            block[48] = 0x80;
            block[62..].copy_from_slice(&384u16.to_be_bytes());
            block
        };
        let mut block = one_block(&frame[8..40], &[0; 16]);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&frame[40..56]);
        let mut not_allowed = false;
        for id in self.candidates(first, all) {
            let secret = &self.specs[id].secret;
            if secret.kind == SecretKind::FakeTls {
                continue;
            }
            block[32..48].copy_from_slice(&secret.key);
            let mut s = IV;
            compress256(&mut s, &[block]);
            let key = state_bytes(&s);
            // Bytes 56..64 (tag, DC, noise) are the second half of keystream block 3: one AES
            // block (a whole CTR batch would cost several).
            let mut block3 = (u128::from_be_bytes(iv).wrapping_add(3))
                .to_be_bytes()
                .into();
            aes::Aes256Enc::new(&key.into()).encrypt_block(&mut block3);
            let mut tail = [0u8; 8];
            for (t, (f, k)) in tail.iter_mut().zip(frame[56..].iter().zip(&block3[8..])) {
                *t = f ^ k;
            }
            let tag = match Tag::from_bytes([tail[0], tail[1], tail[2], tail[3]]) {
                Some(t) if secret.kind == SecretKind::Secure && t != Tag::Padded => {
                    not_allowed = true;
                    continue;
                }
                Some(t) => t,
                None => continue,
            };
            // The proxy→client key: SHA-256(reverse(frame[8..56])[..32] ‖ key).
            let mut rev = [0u8; 48];
            rev.copy_from_slice(&frame[8..56]);
            rev.reverse();
            let mut s = IV;
            compress256(&mut s, &[one_block(&rev[..32], &secret.key)]);
            let mut rev_iv = [0u8; 16];
            rev_iv.copy_from_slice(&rev[32..]);
            return Ok(Obfs2Match {
                user: id,
                handshake: ClientHandshake {
                    tag,
                    dc: i16::from_le_bytes([tail[4], tail[5]]),
                    decrypt: CompactCtr::new(key, iv, FRAME_LEN as u64),
                    encrypt: CompactCtr::new(state_bytes(&s), rev_iv, 0),
                },
            });
        }
        Err(if not_allowed {
            Reject::ObfsTagNotAllowed
        } else {
            Reject::ObfsTag
        })
    }
}

/// The user an obfuscated2 frame belongs to, and the client's streams.
pub struct Obfs2Match {
    /// The user whose key decrypts the frame to an allowed tag.
    pub user: UserId,
    /// As [`crate::proto::obfs2::client_handshake`] gives it for that user's key.
    pub handshake: ClientHandshake,
}

#[cfg(test)]
mod tests {
    use aes::cipher::StreamCipher;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;

    use super::super::tests::user;
    use super::*;
    use crate::proto::XorShift64;
    use crate::proto::faketls::{build_client_hello, parse_client_hello, verify_client_hello};
    use crate::proto::obfs2::{client_frame, client_handshake};

    fn reference(key: &[u8; 16], data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    #[test]
    fn hmac_key_matches_the_hmac_crate_at_every_length() {
        let mut rng = XorShift64(3);
        for len in (0..300).chain([517, 1000, 4096, 65_535]) {
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            assert_eq!(
                HmacKey::new(&key).mac(&data),
                reference(&key, &data),
                "{len}"
            );
        }
    }

    trait Fill {
        fn fill_bytes(&mut self, b: &mut [u8]);
    }
    impl Fill for XorShift64 {
        fn fill_bytes(&mut self, b: &mut [u8]) {
            crate::proto::Rng::fill(self, b);
        }
    }

    /// `n` users: `ee` users alternate hosts a/b.example, every third user is `dd`.
    fn users(n: usize) -> Users {
        Users::new(
            (0..n)
                .map(|i| {
                    if i % 3 == 2 {
                        user(&format!("u{i}"), SecretKind::Secure, "", i as u64 + 1)
                    } else {
                        let host = if i % 2 == 0 { "a.example" } else { "b.example" };
                        user(&format!("u{i}"), SecretKind::FakeTls, host, i as u64 + 1)
                    }
                })
                .collect(),
        )
        .unwrap()
    }

    /// A Telegram-shaped hello for user `id`, its padding extension grown by `grow` bytes
    /// (and the digest made again), as the handshake message without the record header.
    fn hello_for(u: &Users, id: UserId, ts: u32, grow: usize) -> Vec<u8> {
        let s = &u.get(id).unwrap().secret;
        let mut rng = XorShift64(id as u64 + 99);
        let mut rec = build_client_hello(&mut rng, &s.key, &s.host, ts);
        if grow > 0 {
            // The padding extension (0x0015) is the last one: grow it and every length.
            let n = rec.len();
            let p = (0..n - 9)
                .find(|&p| {
                    rec[n - p - 4..n - p - 2] == [0x00, 0x15]
                        && usize::from(u16::from_be_bytes([rec[n - p - 2], rec[n - p - 1]])) == p
                })
                .unwrap();
            rec.resize(n + grow, 0);
            let bump = |r: &mut Vec<u8>, at: usize| {
                let v = u16::from_be_bytes([r[at], r[at + 1]]) as usize + grow;
                r[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
            };
            bump(&mut rec, n - p - 2);
            bump(&mut rec, 5 + 107);
            bump(&mut rec, 5 + 2);
            bump(&mut rec, 3);
            rec[11..43].fill(0);
            let mut mac = HmacKey::new(&s.key).mac(&rec);
            for (d, t) in mac[28..].iter_mut().zip(ts.to_le_bytes()) {
                *d ^= t;
            }
            rec[11..43].copy_from_slice(&mac);
        }
        rec[5..].to_vec()
    }

    #[test]
    fn find_faketls_picks_the_user_whose_key_made_the_hello() {
        let u = users(30);
        let now = 1_700_000_000u64;
        for id in (0..30).filter(|i| i % 3 != 2) {
            for grow in [0, 3000] {
                let msg = hello_for(&u, id, now as u32, grow);
                assert_eq!(msg.len(), 512 + grow);
                let hello = parse_client_hello(&msg).unwrap();
                // Same verdict as the single-key check.
                let s = &u.get(id).unwrap().secret;
                assert_eq!(
                    verify_client_hello(&hello, &msg, &s.key, s.host.as_bytes(), now, 10),
                    Ok(now as u32)
                );
                let want = Ok(FakeTlsMatch {
                    user: id,
                    timestamp: now as u32,
                });
                for first in [None, Some(id), Some(0), Some(29), Some(1000)] {
                    assert_eq!(u.find_faketls(&hello, &msg, now, 10, first, true), want);
                }
                assert_eq!(
                    u.find_faketls(&hello, &msg, now + 11, 10, None, true),
                    Err(Reject::TimeSkew)
                );
            }
        }
    }

    #[test]
    fn find_faketls_refuses_unknown_keys_and_hosts() {
        let u = users(10);
        let now = 1_700_000_000u64;
        let stranger = user("x", SecretKind::FakeTls, "a.example", 777);
        let mut rng = XorShift64(5);
        let rec = build_client_hello(&mut rng, &stranger.secret.key, "a.example", now as u32);
        let msg = &rec[5..];
        let hello = parse_client_hello(msg).unwrap();
        assert_eq!(
            u.find_faketls(&hello, msg, now, 10, None, true),
            Err(Reject::Digest)
        );
        let rec = build_client_hello(&mut rng, &stranger.secret.key, "c.example", now as u32);
        let hello = parse_client_hello(&rec[5..]).unwrap();
        assert_eq!(
            u.find_faketls(&hello, &rec[5..], now, 10, None, true),
            Err(Reject::Sni)
        );
        // A user's own key with another user's host: that host's users do not match.
        let msg = hello_for(&u, 0, now as u32, 0);
        let mut h = parse_client_hello(&msg).unwrap();
        h.random[0] ^= 1;
        assert_eq!(
            u.find_faketls(&h, &msg, now, 10, None, true),
            Err(Reject::Digest)
        );
        assert_eq!(
            u.find_faketls(&h, &msg[..20], now, 10, None, true),
            Err(Reject::Malformed)
        );
        // Only dd users: nobody to match a hello.
        let dd = Users::new(vec![user("d", SecretKind::Secure, "", 1)]).unwrap();
        assert_eq!(
            dd.find_faketls(&h, &msg, now, 10, None, true),
            Err(Reject::Sni)
        );
    }

    #[test]
    fn find_obfs2_picks_the_user_and_applies_the_dd_tag_rule() {
        let mut specs: Vec<_> = (0..20)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    SecretKind::Secure
                } else {
                    SecretKind::Classic
                };
                user(&format!("o{i}"), kind, "", i + 1)
            })
            .collect();
        specs.push(user("tls", SecretKind::FakeTls, "a.example", 50));
        let u = Users::new(specs).unwrap();
        let mut rng = XorShift64(11);
        for id in 0..20 {
            let key = u.get(id).unwrap().secret.key;
            for tag in [Tag::Padded, Tag::Intermediate, Tag::Abridged] {
                let (frame, mut to_proxy, mut from_proxy) = client_frame(&mut rng, &key, tag, -3);
                let got = u.find_obfs2(&frame, None, true).map(|m| m.user);
                if id % 2 == 0 && tag != Tag::Padded {
                    assert_eq!(got, Err(Reject::ObfsTagNotAllowed), "{id} {tag:?}");
                    continue;
                }
                assert_eq!(got, Ok(id), "{id} {tag:?}");
                // The same streams as client_handshake's, continuing the client's.
                let mut m = u.find_obfs2(&frame, Some(id), true).unwrap();
                let mut reference = client_handshake(&frame, &key).unwrap();
                assert_eq!((m.handshake.tag, m.handshake.dc), (tag, -3));
                assert_eq!((reference.tag, reference.dc), (tag, -3));
                let mut up = *b"hello, proxy: bytes after the frame";
                to_proxy.apply_keystream(&mut up);
                let mut up2 = up;
                m.handshake.decrypt.apply_keystream(&mut up);
                reference.decrypt.apply_keystream(&mut up2);
                assert_eq!(&up, b"hello, proxy: bytes after the frame");
                assert_eq!(up, up2);
                let mut down = *b"bytes from the proxy to the client";
                m.handshake.encrypt.apply_keystream(&mut down);
                from_proxy.apply_keystream(&mut down);
                assert_eq!(&down, b"bytes from the proxy to the client");
            }
        }
        // The FakeTLS user's key is not an obfs2 user's.
        let key = u.get(20).unwrap().secret.key;
        let (frame, _, _) = client_frame(&mut rng, &key, Tag::Padded, 2);
        assert_eq!(
            u.find_obfs2(&frame, Some(20), true).err(),
            Some(Reject::ObfsTag)
        );
        assert_eq!(
            u.find_obfs2(&[0u8; 64], None, true).err(),
            Some(Reject::ObfsTag)
        );
    }
}
