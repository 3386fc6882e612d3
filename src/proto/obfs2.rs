//! obfuscated2: the 64-byte handshake frame, key derivation and the AES-256-CTR stream pair,
//! for all four roles (proxy facing a client, proxy facing a DC, and the client and DC ends used
//! by tests and the bench tool).
//!
//! Pure / no I/O: randomness is passed in as a [`Rng`]. Spec: PROTOCOL.md §3, §13.1 (all three
//! tags accepted here; policy per secret kind is the caller's) and §13.2 (DC frame sent TDLib
//! style: bytes 0..56 in clear, only 56..64 encrypted).
//!
//! Frame layout: `[0..8)` noise, `[8..40)` key material, `[40..56)` IV material, `[56..60)` tag,
//! `[60..62)` DC index (i16 little-endian), `[62..64)` noise.
//!
//! Invariants:
//! * every returned stream has consumed exactly the keystream documented on the function, so the
//!   caller continues with the next byte of the connection;
//! * generated frames never start with a forbidden prefix ([`is_valid_start`]);
//! * no input panics; an unknown tag is `Reject::ObfsTag`.

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use sha2::{Digest, Sha256};

use super::{Reject, Rng};

/// AES-256 in CTR mode with a 128-bit big-endian counter (the IV is the initial counter).
pub type AesCtr = ctr::Ctr128BE<aes::Aes256Enc>;

/// Length of the obfuscated2 handshake frame.
pub const FRAME_LEN: usize = 64;

/// The MTProto transport announced in the frame's bytes 56..60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// `ef ef ef ef`.
    Abridged,
    /// `ee ee ee ee`.
    Intermediate,
    /// `dd dd dd dd` (padded intermediate, "secure").
    Padded,
}

impl Tag {
    /// The four tag bytes as they appear in the decrypted frame.
    pub fn bytes(self) -> [u8; 4] {
        match self {
            Tag::Abridged => [0xef; 4],
            Tag::Intermediate => [0xee; 4],
            Tag::Padded => [0xdd; 4],
        }
    }

    /// The tag for these four bytes, if they are one.
    pub fn from_bytes(b: [u8; 4]) -> Option<Tag> {
        match b {
            [0xef, 0xef, 0xef, 0xef] => Some(Tag::Abridged),
            [0xee, 0xee, 0xee, 0xee] => Some(Tag::Intermediate),
            [0xdd, 0xdd, 0xdd, 0xdd] => Some(Tag::Padded),
            _ => None,
        }
    }

    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Abridged => "abridged",
            Tag::Intermediate => "intermediate",
            Tag::Padded => "padded",
        }
    }
}

/// The proxy's view of a client's handshake.
/// AES-256-CTR kept compact: key, IV and stream position (56 bytes instead of the 288 of an
/// expanded key schedule). The schedule is expanded on each [`CompactCtr::apply_keystream`]
/// call, which costs about as much as encrypting 200 bytes; the relay calls it once per
/// socket read of up to a buffer, so an idle connection carries only these 56 bytes.
#[derive(Clone)]
pub struct CompactCtr {
    key: [u8; 32],
    iv: [u8; 16],
    pos: u64,
}

impl CompactCtr {
    /// A stream at position `pos` (bytes of keystream already used).
    pub fn new(key: [u8; 32], iv: [u8; 16], pos: u64) -> CompactCtr {
        CompactCtr { key, iv, pos }
    }

    /// XORs the next `data.len()` bytes of keystream into `data`.
    pub fn apply_keystream(&mut self, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        mtpx_ctr::apply_keystream(&self.key, &self.iv, self.pos, data);
        self.pos += data.len() as u64;
    }

    /// XORs the next `data.len()` bytes of `a`'s keystream and then of `b`'s into `data`, in
    /// one pass over the data (the relay's decrypt with one peer's stream and re-encrypt with
    /// the other's).
    pub fn apply_pair(a: &mut CompactCtr, b: &mut CompactCtr, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        mtpx_ctr::apply_keystream2((&a.key, &a.iv, a.pos), (&b.key, &b.iv, b.pos), data);
        a.pos += data.len() as u64;
        b.pos += data.len() as u64;
    }

    /// The same stream `n` bytes back (to undo the last `n` bytes it was applied to).
    pub fn rewound(&self, n: u64) -> CompactCtr {
        CompactCtr {
            key: self.key,
            iv: self.iv,
            pos: self.pos.saturating_sub(n),
        }
    }

    /// The same stream as a cipher with its key schedule expanded, positioned at `pos` (for a
    /// caller that keeps one stream for long, e.g. the bench tool's floor relay).
    pub fn expand(&self) -> AesCtr {
        let mut c = cipher(&self.key, &self.iv);
        c.seek(self.pos);
        c
    }
}

impl std::fmt::Debug for CompactCtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactCtr")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

pub struct ClientHandshake {
    /// The transport the client announced.
    pub tag: Tag,
    /// The raw DC index (i16 little-endian at 60..62; negative = media, 0 = default).
    pub dc: i16,
    /// Client→proxy stream; 64 bytes of keystream already consumed.
    pub decrypt: CompactCtr,
    /// Proxy→client stream, at offset 0.
    pub encrypt: CompactCtr,
}

/// The proxy's handshake toward a Telegram DC.
pub struct DcHandshake {
    /// The 64 bytes to send to the DC, as they go on the wire.
    pub frame: [u8; FRAME_LEN],
    /// Proxy→DC stream; 64 bytes of keystream already consumed.
    pub encrypt: CompactCtr,
    /// DC→proxy stream, at offset 0.
    pub decrypt: CompactCtr,
}

fn cipher(key: &[u8; 32], iv: &[u8; 16]) -> AesCtr {
    AesCtr::new(&(*key).into(), &(*iv).into())
}

fn split_key_iv(m: &[u8; 48]) -> ([u8; 32], [u8; 16]) {
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&m[..32]);
    iv.copy_from_slice(&m[32..]);
    (key, iv)
}

/// Key material `frame[8..56)` in wire order and reversed.
fn material(frame: &[u8; FRAME_LEN]) -> ([u8; 48], [u8; 48]) {
    let mut fwd = [0u8; 48];
    fwd.copy_from_slice(&frame[8..56]);
    let mut rev = fwd;
    rev.reverse();
    (fwd, rev)
}

/// A stream keyed from 48 bytes of material, hashing the key with the secret when given.
fn stream(m: &[u8; 48], secret: Option<&[u8; 16]>) -> AesCtr {
    let (key, iv) = stream_key(m, secret);
    cipher(&key, &iv)
}

fn stream_key(m: &[u8; 48], secret: Option<&[u8; 16]>) -> ([u8; 32], [u8; 16]) {
    let (mut key, iv) = split_key_iv(m);
    if let Some(s) = secret {
        let mut h = Sha256::new();
        h.update(key);
        h.update(s);
        key = h.finalize().into();
    }
    (key, iv)
}

fn compact(m: &[u8; 48], secret: Option<&[u8; 16]>, pos: u64) -> CompactCtr {
    let (key, iv) = stream_key(m, secret);
    CompactCtr::new(key, iv, pos)
}

fn tag_and_dc(plain: &[u8; FRAME_LEN]) -> Result<(Tag, i16), Reject> {
    let tag =
        Tag::from_bytes([plain[56], plain[57], plain[58], plain[59]]).ok_or(Reject::ObfsTag)?;
    Ok((tag, i16::from_le_bytes([plain[60], plain[61]])))
}

/// Proxy side: the 64 bytes the client sent. decrypt key = SHA256(frame[8..40)‖key), iv =
/// frame[40..56); encrypt key = SHA256(R[0..32)‖key), iv = R[32..48), R = reverse(frame[8..56)).
/// After return, `decrypt` has consumed 64 bytes of keystream (continue with the client's next
/// bytes), `encrypt` is at offset 0. Accepts any of the three tags (the caller decides policy);
/// an unknown tag gives `Err(Reject::ObfsTag)`. `dc` is the raw i16le at 60..62.
pub fn client_handshake(
    frame: &[u8; FRAME_LEN],
    key: &[u8; 16],
) -> Result<ClientHandshake, Reject> {
    let (fwd, rev) = material(frame);
    let mut decrypt = compact(&fwd, Some(key), 0);
    let encrypt = compact(&rev, Some(key), 0);
    let mut plain = *frame;
    decrypt.apply_keystream(&mut plain);
    let (tag, dc) = tag_and_dc(&plain)?;
    Ok(ClientHandshake {
        tag,
        dc,
        decrypt,
        encrypt,
    })
}

/// True when `g` may start an obfuscated2 connection: `g[0] != 0xef`, `u32le(g[0..4))` is none
/// of `HEAD`, `POST`, `GET `, `OPTI`, `16 03 01 02`, `dd dd dd dd`, `ee ee ee ee`, and
/// `g[4..8)` is not all zero. (Such prefixes would be mistaken for another protocol.)
pub fn is_valid_start(g: &[u8; FRAME_LEN]) -> bool {
    let first = [g[0], g[1], g[2], g[3]];
    let forbidden: [[u8; 4]; 7] = [
        *b"HEAD",
        *b"POST",
        *b"GET ",
        *b"OPTI",
        [0x16, 0x03, 0x01, 0x02],
        [0xdd; 4],
        [0xee; 4],
    ];
    g[0] != 0xef && !forbidden.contains(&first) && g[4..8] != [0u8; 4]
}

/// True if the first bytes received from a would-be client already show it is not one: real
/// clients regenerate frames whose start breaks [`is_valid_start`]'s rules, so an HTTP request,
/// a TLS record or an abridged-only probe can be told apart after a few bytes. Works on any
/// prefix (an empty prefix is never forbidden).
pub fn is_forbidden_start(prefix: &[u8]) -> bool {
    const FORBIDDEN: [[u8; 4]; 7] = [
        *b"HEAD",
        *b"POST",
        *b"GET ",
        *b"OPTI",
        [0x16, 0x03, 0x01, 0x02],
        [0xdd; 4],
        [0xee; 4],
    ];
    match prefix {
        [] => false,
        [0xef, ..] => true,
        [a, b, c, d, rest @ ..] => {
            FORBIDDEN.contains(&[*a, *b, *c, *d]) || rest.get(..4) == Some(&[0u8; 4][..])
        }
        _ => false,
    }
}

/// Random frame material obeying [`is_valid_start`], with tag and DC filled in.
fn random_frame(rng: &mut impl Rng, tag: Tag, dc: i16) -> [u8; FRAME_LEN] {
    let mut g = [0u8; FRAME_LEN];
    loop {
        rng.fill(&mut g);
        if is_valid_start(&g) {
            break;
        }
    }
    g[56..60].copy_from_slice(&tag.bytes());
    g[60..62].copy_from_slice(&dc.to_le_bytes());
    g
}

/// Encrypts `g` with `encrypt` (which XORs 64 bytes of keystream in) and returns the wire
/// frame: `g[0..56)` in clear ‖ `E(g)[56..64)`.
fn seal(g: &[u8; FRAME_LEN], encrypt: impl FnOnce(&mut [u8])) -> [u8; FRAME_LEN] {
    let mut enc = *g;
    encrypt(&mut enc);
    let mut wire = *g;
    wire[56..].copy_from_slice(&enc[56..]);
    wire
}

/// Proxy side toward a Telegram DC (no secret): random G with a valid start
/// ([`is_valid_start`]); G[56..60) = tag, G[60..62) = dc (i16le); encrypt key = G[8..40),
/// iv = G[40..56); decrypt key/iv from reverse(G[8..56)). Wire frame = G[0..56) in clear ‖
/// E(G)[56..64) (TDLib style); `encrypt` has consumed 64 bytes of keystream, `decrypt` none.
pub fn dc_handshake(rng: &mut impl Rng, tag: Tag, dc: i16) -> DcHandshake {
    let g = random_frame(rng, tag, dc);
    let (fwd, rev) = material(&g);
    // The relay's own AES-CTR (the `ctr` crate's code stays out of the binary: 4 KiB).
    let frame = seal(&g, |b| compact(&fwd, None, 0).apply_keystream(b));
    DcHandshake {
        frame,
        encrypt: compact(&fwd, None, FRAME_LEN as u64),
        decrypt: compact(&rev, None, 0),
    }
}

/// Client side (tests, bench, fake clients): builds a frame as a Telegram client would for
/// `key` (same rules on G; G[0..56) in clear, E(G)[56..64)), with encrypt key =
/// SHA256(G[8..40)‖key), iv = G[40..56) and decrypt key = SHA256(R[0..32)‖key), iv = R[32..48).
/// Returns (wire frame, encrypt (client→proxy, 64 bytes consumed), decrypt (proxy→client, at 0)).
pub fn client_frame(
    rng: &mut impl Rng,
    key: &[u8; 16],
    tag: Tag,
    dc: i16,
) -> ([u8; FRAME_LEN], AesCtr, AesCtr) {
    let g = random_frame(rng, tag, dc);
    let (fwd, rev) = material(&g);
    let mut encrypt = stream(&fwd, Some(key));
    let decrypt = stream(&rev, Some(key));
    let wire = seal(&g, |b| encrypt.apply_keystream(b));
    (wire, encrypt, decrypt)
}

/// DC side (fake DCs in tests): parses the proxy's frame without a secret. Returns (tag, dc,
/// decrypt (proxy→DC, 64 bytes consumed), encrypt (DC→proxy, at 0)).
pub fn dc_accept(frame: &[u8; FRAME_LEN]) -> Result<(Tag, i16, AesCtr, AesCtr), Reject> {
    let (fwd, rev) = material(frame);
    let mut decrypt = stream(&fwd, None);
    let encrypt = stream(&rev, None);
    let mut plain = *frame;
    decrypt.apply_keystream(&mut plain);
    let (tag, dc) = tag_and_dc(&plain)?;
    Ok((tag, dc, decrypt, encrypt))
}

/// Replay-filter key for `dd`/classic secrets: frame bytes 8..56 (48 bytes).
pub fn replay_key(frame: &[u8; FRAME_LEN]) -> [u8; 48] {
    material(frame).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::encoding::base64_std_decode;
    use crate::proto::XorShift64;

    /// Value of `"field": "…"` at or after `from` in a tiny fixture JSON.
    fn json_str<'a>(json: &'a str, field: &str, from: usize) -> &'a str {
        let pat = format!("\"{field}\": \"");
        let start = json[from..].find(&pat).unwrap() + from + pat.len();
        let end = json[start..].find('"').unwrap() + start;
        &json[start..end]
    }

    fn b64(s: &str) -> Vec<u8> {
        base64_std_decode(s).unwrap()
    }

    const SNAPSHOTS: [&str; 2] = [
        include_str!(
            "../../tests/data/mtg/mtglib/internal/obfuscation/testdata/client-handshake-snapshot-585c944d672f60a2.json"
        ),
        include_str!(
            "../../tests/data/mtg/mtglib/internal/obfuscation/testdata/client-handshake-snapshot-4529d55776e2d427.json"
        ),
    ];

    #[test]
    fn accepts_mtg_snapshots() {
        for json in SNAPSHOTS {
            let key: [u8; 16] = b64(json_str(json, "secret", 0)).try_into().unwrap();
            let frame: [u8; 64] = b64(json_str(json, "frame", 0)).try_into().unwrap();
            assert!(json.contains("\"dc\": 2"));
            let enc_at = json.find("\"encrypted\"").unwrap();
            let dec_at = json.find("\"decrypted\"").unwrap();
            let mut hs = client_handshake(&frame, &key).unwrap();
            assert_eq!(hs.tag, Tag::Padded);
            assert_eq!(hs.dc, 2);

            let mut data = b64(json_str(json, "cipher", dec_at));
            hs.decrypt.apply_keystream(&mut data);
            assert_eq!(data, b64(json_str(json, "text", dec_at)));

            let mut data = b64(json_str(json, "text", enc_at));
            hs.encrypt.apply_keystream(&mut data);
            assert_eq!(data, b64(json_str(json, "cipher", enc_at)));

            assert_eq!(replay_key(&frame)[..], frame[8..56]);
        }
    }

    #[test]
    fn rejects_snapshot_with_wrong_key_or_flipped_bits() {
        let json = SNAPSHOTS[0];
        let key: [u8; 16] = b64(json_str(json, "secret", 0)).try_into().unwrap();
        let frame: [u8; 64] = b64(json_str(json, "frame", 0)).try_into().unwrap();
        let mut wrong = key;
        wrong[0] ^= 1;
        assert_eq!(
            client_handshake(&frame, &wrong).err(),
            Some(Reject::ObfsTag)
        );
        // Flipping a tag bit on the wire flips the decrypted tag bit (CTR mode).
        for i in 56..60 {
            let mut f = frame;
            f[i] ^= 0x10;
            assert_eq!(client_handshake(&f, &key).err(), Some(Reject::ObfsTag));
        }
        // Key material change → different keystream → tag garbage.
        let mut f = frame;
        f[8] ^= 1;
        assert_eq!(client_handshake(&f, &key).err(), Some(Reject::ObfsTag));
        // Noise bytes and DC bytes are not authenticated: DC changes, tag stays.
        let mut f = frame;
        f[60] ^= 1;
        assert_eq!(client_handshake(&f, &key).map(|h| h.dc).ok(), Some(3));
    }

    #[test]
    fn expanded_stream_continues_where_the_compact_one_is() {
        let mut compact = CompactCtr::new([3u8; 32], [5u8; 16], 0);
        let mut head = [0u8; 100];
        compact.apply_keystream(&mut head);
        let mut full = compact.expand();
        let (mut a, mut b) = ([0u8; 300], [0u8; 300]);
        compact.apply_keystream(&mut a);
        full.apply_keystream(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 300]);
    }

    #[test]
    fn a_pair_applies_both_streams() {
        let mut a = CompactCtr::new([1u8; 32], [2u8; 16], 7);
        let mut b = CompactCtr::new([3u8; 32], [4u8; 16], 100);
        let (mut a2, mut b2) = (a.clone(), b.clone());
        let mut want = [0x5au8; 1000];
        let mut got = want;
        a2.apply_keystream(&mut want);
        b2.apply_keystream(&mut want);
        CompactCtr::apply_pair(&mut a, &mut b, &mut got);
        assert_eq!(got, want);
        // Both streams moved on by the same amount.
        let (mut x, mut y) = ([0u8; 5], [0u8; 5]);
        a.apply_keystream(&mut x);
        a2.apply_keystream(&mut y);
        assert_eq!(x, y);
        b.apply_keystream(&mut x);
        b2.apply_keystream(&mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn accepts_tag_round_trip() {
        for t in [Tag::Abridged, Tag::Intermediate, Tag::Padded] {
            assert_eq!(Tag::from_bytes(t.bytes()), Some(t));
        }
        assert_eq!(Tag::from_bytes([0xdd, 0xdd, 0xdd, 0xde]), None);
        assert_eq!(Tag::Padded.as_str(), "padded");
    }

    #[test]
    fn accepts_client_frame_round_trip_both_directions() {
        let mut rng = XorShift64(42);
        for (i, tag) in [Tag::Abridged, Tag::Intermediate, Tag::Padded]
            .into_iter()
            .enumerate()
        {
            let dc = [-2i16, 4, 203][i];
            let key = [i as u8 + 1; 16];
            let (wire, mut c_enc, mut c_dec) = client_frame(&mut rng, &key, tag, dc);
            let mut hs = client_handshake(&wire, &key).unwrap();
            assert_eq!((hs.tag, hs.dc), (tag, dc));
            assert!(is_valid_start(&wire));
            for round in 0..5usize {
                let msg: Vec<u8> = (0..(round * 37 + 1)).map(|x| x as u8).collect();
                let mut up = msg.clone();
                c_enc.apply_keystream(&mut up);
                assert_ne!(up, msg);
                hs.decrypt.apply_keystream(&mut up);
                assert_eq!(up, msg);
                let mut down = msg.clone();
                hs.encrypt.apply_keystream(&mut down);
                c_dec.apply_keystream(&mut down);
                assert_eq!(down, msg);
            }
        }
    }

    #[test]
    fn accepts_dc_handshake_round_trip_both_directions() {
        let mut rng = XorShift64(9);
        for dc in [1i16, 2, 5, -4, 0] {
            let mut hs = dc_handshake(&mut rng, Tag::Intermediate, dc);
            // TDLib style: bytes 0..56 on the wire are the plaintext material.
            assert!(is_valid_start(&hs.frame));
            let (tag, got_dc, mut d_dec, mut d_enc) = dc_accept(&hs.frame).unwrap();
            assert_eq!((tag, got_dc), (Tag::Intermediate, dc));
            for n in [1usize, 63, 64, 1000] {
                let msg: Vec<u8> = (0..n).map(|x| (x * 7) as u8).collect();
                let mut up = msg.clone();
                hs.encrypt.apply_keystream(&mut up);
                d_dec.apply_keystream(&mut up);
                assert_eq!(up, msg);
                let mut down = msg.clone();
                d_enc.apply_keystream(&mut down);
                hs.decrypt.apply_keystream(&mut down);
                assert_eq!(down, msg);
            }
        }
    }

    #[test]
    fn accepts_dc_frame_layout_matches_spec() {
        // Recompute the expected wire bytes independently from the spec.
        let mut rng = XorShift64(3);
        let hs = dc_handshake(&mut rng, Tag::Padded, 2);
        let f = hs.frame;
        let mut key = [0u8; 32];
        key.copy_from_slice(&f[8..40]);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&f[40..56]);
        let mut plain = f;
        plain[56..60].copy_from_slice(&[0xdd; 4]);
        plain[60..62].copy_from_slice(&2i16.to_le_bytes());
        let mut enc = plain;
        cipher(&key, &iv).apply_keystream(&mut enc);
        // Bytes 62..64 are noise we cannot recover from the wire; tag and DC must match.
        assert_eq!(f[56..62], enc[56..62]);
    }

    #[test]
    fn rejects_forbidden_first_bytes_never_generated() {
        let mut rng = XorShift64(1234);
        for i in 0..3000 {
            let hs = dc_handshake(&mut rng, Tag::Padded, 1);
            assert!(is_valid_start(&hs.frame), "dc frame {i}");
            assert_ne!(hs.frame[0], 0xef);
            let (f, _, _) = client_frame(&mut rng, &[7; 16], Tag::Abridged, 1);
            assert!(is_valid_start(&f), "client frame {i}");
        }
        let mut g = [1u8; 64];
        assert!(is_valid_start(&g));
        for bad in [
            *b"HEAD",
            *b"POST",
            *b"GET ",
            *b"OPTI",
            [0x16, 3, 1, 2],
            [0xdd; 4],
            [0xee; 4],
            [0xef, 0, 0, 0],
        ] {
            g[..4].copy_from_slice(&bad);
            assert!(!is_valid_start(&g), "{bad:?}");
        }
        let mut g = [1u8; 64];
        g[4..8].copy_from_slice(&[0; 4]);
        assert!(!is_valid_start(&g));
    }

    /// An Rng that first yields frames with forbidden starts, to prove the retry loop runs.
    struct Scripted(Vec<[u8; 64]>, XorShift64);
    impl Rng for Scripted {
        fn fill(&mut self, buf: &mut [u8]) {
            match self.0.pop() {
                Some(f) if buf.len() == 64 => buf.copy_from_slice(&f),
                _ => self.1.fill(buf),
            }
        }
    }

    #[test]
    fn rejects_forbidden_candidates_by_regenerating() {
        let mut bad1 = [5u8; 64];
        bad1[..4].copy_from_slice(b"POST");
        let mut bad2 = [5u8; 64];
        bad2[0] = 0xef;
        let mut rng = Scripted(vec![bad1, bad2], XorShift64(1));
        let hs = dc_handshake(&mut rng, Tag::Padded, 2);
        assert!(rng.0.is_empty());
        assert_ne!(&hs.frame[..4], b"POST");
        assert_ne!(hs.frame[0], 0xef);
    }

    #[test]
    fn rejects_garbage_frames_with_definite_answer() {
        let mut rng = XorShift64(77);
        let mut accepted = 0;
        for _ in 0..2000 {
            let mut f = [0u8; 64];
            rng.fill(&mut f);
            if client_handshake(&f, &[1; 16]).is_ok() {
                accepted += 1;
            }
            let _ = dc_accept(&f);
        }
        // 3 tags out of 2^32: random frames essentially never pass.
        assert_eq!(accepted, 0);
    }

    #[test]
    fn forbidden_start_agrees_with_valid_start_on_full_frames() {
        let mut rng = XorShift64(99);
        for _ in 0..2000 {
            let mut g = [0u8; FRAME_LEN];
            rng.fill(&mut g);
            if rng.below(4) == 0 {
                g[..4].copy_from_slice(b"GET ");
            }
            if rng.below(8) == 0 {
                g[4..8].fill(0);
            }
            assert_eq!(is_forbidden_start(&g), !is_valid_start(&g));
        }
        assert!(is_forbidden_start(b"POST /"));
        assert!(is_forbidden_start(&[0xef]));
        assert!(is_forbidden_start(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!is_forbidden_start(b"GET"));
        assert!(!is_forbidden_start(b""));
        assert!(!is_forbidden_start(&[0x16, 0x03, 0x01, 0x00, 0x10]));
    }
}
