//! FakeTLS: the TLS 1.3 look-alike handshake that `ee` secrets put in front of obfuscated2.
//!
//! * [`read_client_hello`] reassembles the client's first handshake message from up to 11 TLS
//!   records, deciding on non-TLS input as soon as the header bytes show it;
//! * [`parse_client_hello`] walks the ClientHello (random, session id, first non-GREASE cipher
//!   suite, SNI);
//! * [`verify_client_hello`] checks SNI, the HMAC hidden in the client random, and its timestamp;
//! * [`write_server_hello`] writes the ServerHello + ChangeCipherSpec + one application-data
//!   record, with the server random set to the HMAC Telegram clients check;
//!   [`write_server_hello_as`] does the same shaped like the fronted site's answer (a template
//!   learned by [`crate::proto::tlsprofile`]), its one record up to [`MAX_CIPHERTEXT`];
//! * [`RecordReader`] strips record headers from the post-handshake client stream, in place;
//! * [`build_client_hello`] and [`verify_server_flight`] are the client's side, for tests and
//!   the bench tool.
//!
//! Pure / no I/O: the clock (`now_unix`) and randomness ([`Rng`]) are parameters.
//! Spec: PROTOCOL.md §2 (from mtg v2.2.8), §13.5 (the noise record never exceeds one record).
//!
//! Invariants:
//! * no input panics: every byte string gives `NeedMore`, a result, or a definite [`Reject`];
//! * the HMAC is computed with streaming updates over the caller's bytes, never over a copy;
//! * digest comparisons are constant time;
//! * the server flight is always exactly three records, the last one at most
//!   [`MAX_RECORD_PAYLOAD`] bytes of payload.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::codec::Reader;
use super::mlkem;
use super::secret::ct_eq;
use super::tlsprofile::{
    EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS, Extension, GROUP_X25519, GROUP_X25519_MLKEM768,
    HelloKind, MAX_OTHER_EXTENSION, MLKEM_SHARE_EXT_LEN, ServerHelloTemplate, X25519_SHARE_EXT_LEN,
};
use super::{Reject, Rng};

pub use super::tlsprofile::MAX_CIPHERTEXT;

type HmacSha256 = Hmac<Sha256>;

/// Length of a TLS record header: type, version (2), length (u16be).
pub const RECORD_HEADER_LEN: usize = 5;
/// Most records a ClientHello may be split over (1 + 10 continuations, as mtg).
pub const MAX_HELLO_RECORDS: usize = 11;
/// Largest application-data payload the proxy sends per record (mtg's figure, 16384 - 5).
pub const MAX_RECORD_PAYLOAD: usize = 16379;

/// TLS record content types used here.
const TYPE_CCS: u8 = 0x14;
const TYPE_HANDSHAKE: u8 = 0x16;
const TYPE_APP_DATA: u8 = 0x17;
/// Handshake message types.
const HS_CLIENT_HELLO: u8 = 0x01;
const HS_SERVER_HELLO: u8 = 0x02;
/// Offset of the 32-byte random inside a hello handshake message (type, u24 len, version).
const MSG_RANDOM: usize = 6;
/// Offset of the random inside a one-record hello (record header + the above).
const RECORD_RANDOM: usize = RECORD_HEADER_LEN + MSG_RANDOM;
/// The ChangeCipherSpec record of the server flight.
const CCS_RECORD: [u8; 6] = [TYPE_CCS, 0x03, 0x03, 0x00, 0x01, 0x01];

fn hmac(key: &[u8; 16]) -> Option<HmacSha256> {
    <HmacSha256 as KeyInit>::new_from_slice(key).ok()
}

/// Outcome of [`read_client_hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloRead {
    /// Not enough bytes yet; call again with more (the whole input so far).
    NeedMore,
    /// The handshake message is complete and copied to `scratch[..msg_len]`; `consumed` raw
    /// input bytes (whole records) belong to the hello.
    Complete {
        /// Raw input bytes used, record headers included.
        consumed: usize,
        /// Length of the handshake message (4 + body) at the start of `scratch`.
        msg_len: usize,
    },
    /// Not a FakeTLS ClientHello.
    Invalid(Reject),
}

/// Reads the client's first bytes: TLS records of type 0x16, version 03 01 (anything else is
/// `Invalid(RecordType)` / `Invalid(RecordVersion)` as soon as the header bytes show it, so a
/// plain-HTTP probe or random bytes is decided after at most 3 bytes), concatenating record
/// payloads into `scratch` until the handshake message (type 0x01, u24 length) is complete.
///
/// Stateless: pass the whole input received so far on every call. `consumed` = raw input bytes
/// used (whole records; bytes of the last record past the message are consumed and ignored);
/// `msg_len` = the handshake message length (4 + body), now at `scratch[..msg_len]`. More than
/// 11 records → `TooManyFragments`; a message larger than `scratch` → `TooLarge`; a handshake
/// type other than 1 → `Malformed`. Zero-length records are legal and count.
pub fn read_client_hello(input: &[u8], scratch: &mut [u8]) -> HelloRead {
    let mut pos = 0usize;
    // Handshake-stream bytes seen so far (copied into scratch as far as it reaches).
    let mut stream = 0usize;
    let mut hs_hdr = [0u8; 4];
    let mut msg_len: Option<usize> = None;
    for _ in 0..MAX_HELLO_RECORDS {
        let rest = input.get(pos..).unwrap_or(&[]);
        if rest.first().is_some_and(|&t| t != TYPE_HANDSHAKE) {
            return HelloRead::Invalid(Reject::RecordType);
        }
        if rest.get(1).is_some_and(|&v| v != 0x03) || rest.get(2).is_some_and(|&v| v != 0x01) {
            return HelloRead::Invalid(Reject::RecordVersion);
        }
        let Some(hdr) = rest.get(..RECORD_HEADER_LEN) else {
            return HelloRead::NeedMore;
        };
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        let body = rest.get(RECORD_HEADER_LEN..).unwrap_or(&[]);
        let avail = body.get(..len).unwrap_or(body);

        for (i, &b) in avail.iter().enumerate() {
            if let Some(h) = hs_hdr.get_mut(stream + i) {
                *h = b;
            }
        }
        let room = scratch.len().saturating_sub(stream);
        let n = room.min(avail.len());
        if let (Some(dst), Some(src)) = (scratch.get_mut(stream..stream + n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        stream += avail.len();

        if stream >= 1 && hs_hdr[0] != HS_CLIENT_HELLO {
            return HelloRead::Invalid(Reject::Malformed);
        }
        if msg_len.is_none() && stream >= 4 {
            let n = 4
                + (usize::from(hs_hdr[1]) << 16 | usize::from(hs_hdr[2]) << 8)
                + usize::from(hs_hdr[3]);
            if n > scratch.len() {
                return HelloRead::Invalid(Reject::TooLarge);
            }
            msg_len = Some(n);
        }
        if avail.len() < len {
            return HelloRead::NeedMore;
        }
        pos += RECORD_HEADER_LEN + len;
        if let Some(n) = msg_len.filter(|&n| stream >= n) {
            return HelloRead::Complete {
                consumed: pos,
                msg_len: n,
            };
        }
    }
    HelloRead::Invalid(Reject::TooManyFragments)
}

/// The fields of a ClientHello the proxy needs.
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// The 32-byte client random (carries HMAC ⊕ timestamp for Telegram clients).
    pub random: [u8; 32],
    /// The legacy session id, zero-padded to 32 bytes; see `session_id_len`.
    pub session_id: [u8; 32],
    /// Length of the session id (0..=32).
    pub session_id_len: u8,
    /// The first non-GREASE cipher suite offered.
    pub cipher_suite: u16,
    /// Which TLS 1.3 suites 0x1301..=0x1305 were offered (bit `i` = 0x1301 + i).
    pub tls13_suites: u8,
    /// `(offset, len)` of the server_name_list contents inside the message, if an SNI extension
    /// was present (already validated by [`parse_client_hello`]).
    pub sni: Option<(usize, usize)>,
    /// Key shares offered with their proper length: [`SHARE_X25519`], [`SHARE_MLKEM`] (the
    /// latter only when supported_groups lists X25519MLKEM768 too). A hello that lists the
    /// group without a share is a classic one here (a server preferring the group might ask
    /// for a share with a HelloRetryRequest, which no Telegram client expects).
    pub shares: u8,
}

/// [`ClientHello::shares`]: a 32-byte x25519 share.
pub const SHARE_X25519: u8 = 1;
/// [`ClientHello::shares`]: a 1,216-byte X25519MLKEM768 share.
pub const SHARE_MLKEM: u8 = 2;

/// The key_share groups of a ClientHello's extension data (`u16 list length`, then `group u16,
/// length u16, key` entries) that carry a share of their proper length, as [`SHARE_X25519`] |
/// [`SHARE_MLKEM`] bits. A malformed list gives what was read before the fault.
fn offered_shares(data: &[u8]) -> u8 {
    let mut c = Reader::new(data);
    let mut bits = 0;
    if c.u16().is_none() {
        return 0;
    }
    while !c.is_empty() {
        let (Some(group), Some(len)) = (c.u16(), c.u16()) else {
            break;
        };
        if c.take(usize::from(len)).is_none() {
            break;
        }
        bits |= match (group, len) {
            (GROUP_X25519, 32) => SHARE_X25519,
            (GROUP_X25519_MLKEM768, 1216) => SHARE_MLKEM,
            _ => 0,
        };
    }
    bits
}

impl ClientHello {
    /// True when the client offered `suite` (known for its first non-GREASE suite and for the
    /// TLS 1.3 suites 0x1301..=0x1305).
    pub fn offers(&self, suite: u16) -> bool {
        suite == self.cipher_suite
            || suite
                .checked_sub(0x1301)
                .filter(|&i| i < 5)
                .is_some_and(|i| self.tls13_suites & (1 << i) != 0)
    }

    /// The kind of hello: [`HelloKind::PostQuantum`] when it carries an X25519MLKEM768 share.
    pub fn kind(&self) -> HelloKind {
        if self.shares & SHARE_MLKEM != 0 {
            HelloKind::PostQuantum
        } else {
            HelloKind::Classic
        }
    }

    /// The session id bytes (as echoed in the ServerHello and used by anti-replay).
    pub fn session_id(&self) -> &[u8] {
        self.session_id
            .get(..usize::from(self.session_id_len))
            .unwrap_or(&self.session_id)
    }

    /// The host names in the SNI extension of `msg` (the message this hello was parsed from).
    pub fn sni_names<'a>(&self, msg: &'a [u8]) -> SniNames<'a> {
        let list = self
            .sni
            .and_then(|(off, len)| msg.get(off..off.checked_add(len)?))
            .unwrap_or(&[]);
        SniNames(Reader::new(list))
    }

    /// True when `host` is (byte-exact) one of the SNI host names in `msg`.
    pub fn has_sni(&self, msg: &[u8], host: &[u8]) -> bool {
        self.sni_names(msg).any(|n| n == host)
    }
}

/// Iterator over the host_name entries of an SNI list (see [`ClientHello::sni_names`]).
#[derive(Clone, Debug)]
pub struct SniNames<'a>(Reader<'a>);

impl<'a> Iterator for SniNames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.0.is_empty() {
            let kind = self.0.u8()?;
            let len = self.0.u16()?;
            let name = self.0.take(usize::from(len))?;
            if kind == 0 {
                return Some(name);
            }
        }
        None
    }
}

/// A short read in a hello: `Malformed`.
const SHORT: Reject = Reject::Malformed;

pub(super) fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a
}

/// Validates an SNI extension body; returns the (offset, len) of its name list within the
/// message, given the extension data's offset.
fn parse_sni(data: &[u8], data_off: usize) -> Result<(usize, usize), Reject> {
    let mut c = Reader::new(data);
    let list_len = usize::from(c.u16().ok_or(SHORT)?);
    if list_len == 0 {
        return Err(Reject::Malformed);
    }
    let list = c.take(list_len).ok_or(SHORT)?;
    let mut names = Reader::new(list);
    while !names.is_empty() {
        names.u8().ok_or(SHORT)?;
        let len = names.u16().ok_or(SHORT)?;
        names.take(usize::from(len)).ok_or(SHORT)?;
    }
    Ok((data_off + 2, list_len))
}

/// Parses a ClientHello handshake message (`01 | u24 len | body`, exactly `msg.len()` bytes).
/// Session ids longer than 32 bytes are `Malformed` (real TLS caps them at 32); a cipher list
/// of only GREASE values is `NoCipherSuite`; the extensions block must be complete (bytes after
/// it are ignored, as mtg does); the first server_name extension, if any, must be well formed.
pub fn parse_client_hello(msg: &[u8]) -> Result<ClientHello, Reject> {
    let mut c = Reader::new(msg);
    if c.u8().ok_or(SHORT)? != HS_CLIENT_HELLO {
        return Err(Reject::Malformed);
    }
    if c.u24().ok_or(SHORT)? != msg.len() - 4 {
        return Err(Reject::Malformed);
    }
    c.take(2).ok_or(SHORT)?; // legacy_version, not checked
    let mut random = [0u8; 32];
    random.copy_from_slice(c.take(32).ok_or(SHORT)?);
    let sid_len = c.u8().ok_or(SHORT)?;
    if sid_len > 32 {
        return Err(Reject::Malformed);
    }
    let mut session_id = [0u8; 32];
    if let Some(dst) = session_id.get_mut(..usize::from(sid_len)) {
        dst.copy_from_slice(c.take(usize::from(sid_len)).ok_or(SHORT)?);
    }
    let suites_len = usize::from(c.u16().ok_or(SHORT)?);
    if suites_len % 2 != 0 {
        return Err(Reject::Malformed);
    }
    let suites = c.take(suites_len).ok_or(SHORT)?;
    let cipher_suite = suites
        .chunks_exact(2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .find(|&s| !is_grease(s));
    let tls13_suites = suites
        .chunks_exact(2)
        .filter_map(|s| u16::from_be_bytes([s[0], s[1]]).checked_sub(0x1301))
        .filter(|&i| i < 5)
        .fold(0u8, |m, i| m | 1 << i);
    let comp_len = usize::from(c.u8().ok_or(SHORT)?);
    c.take(comp_len).ok_or(SHORT)?;
    let ext_len = usize::from(c.u16().ok_or(SHORT)?);
    let ext_off = c.pos();
    let mut exts = Reader::new(c.take(ext_len).ok_or(SHORT)?);
    let mut sni = None;
    let mut shares = 0;
    let mut mlkem_listed = false;
    while !exts.is_empty() {
        let kind = exts.u16().ok_or(SHORT)?;
        let len = usize::from(exts.u16().ok_or(SHORT)?);
        let data_off = ext_off + exts.pos();
        let data = exts.take(len).ok_or(SHORT)?;
        if kind == 0x0000 && sni.is_none() {
            sni = Some(parse_sni(data, data_off)?);
        }
        if kind == EXT_KEY_SHARE {
            shares |= offered_shares(data);
        }
        if kind == 0x000a {
            // supported_groups: an X25519MLKEM768 share counts only if the group is listed.
            mlkem_listed |= data
                .get(2..)
                .unwrap_or(&[])
                .chunks_exact(2)
                .any(|g| g == GROUP_X25519_MLKEM768.to_be_bytes());
        }
    }
    if !mlkem_listed {
        shares &= !SHARE_MLKEM;
    }
    Ok(ClientHello {
        random,
        session_id,
        session_id_len: sid_len,
        cipher_suite: cipher_suite.ok_or(Reject::NoCipherSuite)?,
        tls13_suites,
        sni,
        shares,
    })
}

/// Checks a parsed hello against the secret: the SNI must name `host`; then
/// HMAC-SHA256(key, `16 03 01 ‖ u16be(msg.len()) ‖ msg` with the random zeroed), computed with
/// streaming updates, XOR the random must give 28 zero bytes (constant-time check) then a u32le
/// timestamp with |now - ts| <= tolerance. Returns the timestamp. Order of checks: `Sni`,
/// `Digest`, `TimeSkew`. A message too long for one record can never match: `Digest`.
pub fn verify_client_hello(
    hello: &ClientHello,
    msg: &[u8],
    key: &[u8; 16],
    host: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> Result<u32, Reject> {
    if !hello.has_sni(msg, host) {
        return Err(Reject::Sni);
    }
    let len = u16::try_from(msg.len()).map_err(|_| Reject::Digest)?;
    let (head, tail) = match (msg.get(..MSG_RANDOM), msg.get(MSG_RANDOM + 32..)) {
        (Some(h), Some(t)) => (h, t),
        _ => return Err(Reject::Malformed),
    };
    let mut m = hmac(key).ok_or(Reject::Digest)?;
    m.update(&[TYPE_HANDSHAKE, 0x03, 0x01]);
    m.update(&len.to_be_bytes());
    m.update(head);
    m.update(&[0u8; 32]);
    m.update(tail);
    let mac: [u8; 32] = m.finalize().into_bytes().into();
    let mut x = [0u8; 32];
    for (o, (a, b)) in x.iter_mut().zip(mac.iter().zip(&hello.random)) {
        *o = a ^ b;
    }
    if !ct_eq(&x[..28], &[0u8; 28]) {
        return Err(Reject::Digest);
    }
    let ts = u32::from_le_bytes([x[28], x[29], x[30], x[31]]);
    if now_unix.abs_diff(u64::from(ts)) > tolerance_secs {
        return Err(Reject::TimeSkew);
    }
    Ok(ts)
}

/// Most bytes of ServerHello extensions a template can produce (bounded by the template's
/// extension count and [`MAX_OTHER_EXTENSION`]).
fn template_ext_len(t: &ServerHelloTemplate) -> usize {
    let mut n: usize = t
        .extensions()
        .iter()
        .map(|e| 4 + template_ext_data_len(e))
        .sum();
    if t.extension(EXT_SUPPORTED_VERSIONS).is_none() {
        n += 6;
    }
    if t.extension(EXT_KEY_SHARE).is_none() {
        n += 40;
    }
    n
}

/// The data length written for one template extension: supported_versions is always TLS 1.3,
/// key_share X25519MLKEM768 or else x25519; other extensions keep the site's length (at most
/// [`MAX_OTHER_EXTENSION`]).
fn template_ext_data_len(e: &Extension) -> usize {
    match e.kind {
        EXT_SUPPORTED_VERSIONS => 2,
        EXT_KEY_SHARE if e.value == GROUP_X25519_MLKEM768 => usize::from(MLKEM_SHARE_EXT_LEN),
        EXT_KEY_SHARE => usize::from(X25519_SHARE_EXT_LEN),
        _ => usize::from(e.len.min(MAX_OTHER_EXTENSION)),
    }
}

/// Length of the ServerHello handshake body for a session id of `sid_len` bytes.
fn server_hello_body_len(t: &ServerHelloTemplate, sid_len: usize) -> usize {
    2 + 32 + 1 + sid_len + 2 + 1 + 2 + template_ext_len(t)
}

/// Total bytes [`write_server_hello`] writes for this session-id length and noise length
/// (after clamping `noise_len` to 1..=[`MAX_RECORD_PAYLOAD`]).
pub fn server_hello_len(session_id_len: u8, noise_len: usize) -> usize {
    server_hello_len_as(
        &ServerHelloTemplate::default(),
        session_id_len,
        noise_len.clamp(1, MAX_RECORD_PAYLOAD),
    )
}

/// Total bytes [`write_server_hello_as`] writes for this template, session-id length and noise
/// length (after clamping `noise_len` to 1..=[`MAX_CIPHERTEXT`]).
pub fn server_hello_len_as(
    template: &ServerHelloTemplate,
    session_id_len: u8,
    noise_len: usize,
) -> usize {
    let noise = noise_len.clamp(1, MAX_CIPHERTEXT);
    RECORD_HEADER_LEN
        + 4
        + server_hello_body_len(template, usize::from(session_id_len.min(32)))
        + CCS_RECORD.len()
        + RECORD_HEADER_LEN
        + noise
}

/// The largest noise length whose flight (this template and session-id length) fits in
/// `out_len` bytes, at most [`MAX_CIPHERTEXT`]; 0 when not even a 1-byte record fits.
pub fn noise_room(template: &ServerHelloTemplate, session_id_len: u8, out_len: usize) -> usize {
    let fixed = server_hello_len_as(template, session_id_len, 1) - 1;
    out_len.saturating_sub(fixed).min(MAX_CIPHERTEXT)
}

/// Writes the server flight into `out`: a ServerHello record (`16 03 03`), the
/// ChangeCipherSpec record `14 03 03 00 01 01`, and one application-data record of `noise_len`
/// random bytes (clamped to 1..=[`MAX_RECORD_PAYLOAD`]). The ServerHello echoes the session id
/// and the chosen cipher suite, has compression 0 and the extensions supported_versions (0x0304)
/// then key_share (x25519, `key_share`). The server random (offset 11) is
/// HMAC-SHA256(key, client_random ‖ the three records with the random zeroed).
/// Returns the bytes written, or 0 if `out` is too small. Layout: PROTOCOL.md §2.4.
pub fn write_server_hello(
    out: &mut [u8],
    hello: &ClientHello,
    key: &[u8; 16],
    rng: &mut impl Rng,
    noise_len: usize,
    key_share: &[u8; 32],
) -> usize {
    write_server_hello_as(
        out,
        hello,
        key,
        rng,
        &ServerHelloTemplate::default(),
        noise_len.clamp(1, MAX_RECORD_PAYLOAD),
        key_share,
    )
}

/// Like [`write_server_hello`], shaped like the fronted site's ServerHello (`template`, from
/// [`crate::proto::tlsprofile`]): its extensions in the site's order — supported_versions is
/// always TLS 1.3; key_share is X25519MLKEM768 when the template has it AND the client offered
/// an X25519MLKEM768 share (a fake ML-KEM-768 ciphertext from [`mlkem::fake_ciphertext`], then
/// `key_share`), else x25519 with `key_share` (a genuine public key); any other
/// extension the site sent is reproduced by type and length (zero content, at most
/// [`MAX_OTHER_EXTENSION`] bytes); supported_versions and key_share are appended if the
/// template lacks them. The cipher suite is the site's if the client offered it, else the
/// client's first non-GREASE suite. The session id is the client's, echoed. Then the CCS record
/// and ONE application-data record of `noise_len` random bytes, clamped to
/// 1..=[`MAX_CIPHERTEXT`] (what one TLS record may carry). Server random as in
/// [`write_server_hello`]. Returns the bytes written, or 0 if `out` is too small.
pub fn write_server_hello_as(
    out: &mut [u8],
    hello: &ClientHello,
    key: &[u8; 16],
    rng: &mut impl Rng,
    template: &ServerHelloTemplate,
    noise_len: usize,
    key_share: &[u8; 32],
) -> usize {
    let sid = hello.session_id();
    let noise = noise_len.clamp(1, MAX_CIPHERTEXT);
    // Never answer with a group the client did not offer.
    let pq = template.key_share_group() == Some(GROUP_X25519_MLKEM768)
        && hello.shares & SHARE_MLKEM != 0;
    let x25519_only = template.with_x25519_share();
    let template = if pq { template } else { &x25519_only };
    let body = server_hello_body_len(template, sid.len());
    let total = server_hello_len_as(template, hello.session_id_len, noise);
    let Some(out) = out.get_mut(..total) else {
        return 0;
    };
    let Some(mut m) = hmac(key) else {
        return 0;
    };
    let suite = template
        .cipher_suite()
        .filter(|&s| hello.offers(s))
        .unwrap_or(hello.cipher_suite);
    // The lengths below are all < 2^16 by construction (body <= ~1,800, noise <= 16640).
    let body16 = body as u16;
    let mut w = Writer { out, pos: 0 };
    w.put(&[TYPE_HANDSHAKE, 0x03, 0x03]);
    w.put(&(body16 + 4).to_be_bytes());
    w.put(&[HS_SERVER_HELLO, 0x00]);
    w.put(&body16.to_be_bytes());
    w.put(&[0x03, 0x03]);
    w.put(&[0u8; 32]);
    w.put(&[sid.len() as u8]);
    w.put(sid);
    w.put(&suite.to_be_bytes());
    w.put(&[0x00]);
    w.put(&(template_ext_len(template) as u16).to_be_bytes());
    let supported_versions = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
    let share_header = [0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    for e in template.extensions() {
        match e.kind {
            EXT_SUPPORTED_VERSIONS => w.put(&supported_versions),
            EXT_KEY_SHARE if pq => {
                let [l0, l1] = MLKEM_SHARE_EXT_LEN.to_be_bytes();
                let [k0, k1] = (MLKEM_SHARE_EXT_LEN - 4).to_be_bytes();
                w.put(&[0x00, 0x33, l0, l1, 0x11, 0xec, k0, k1]);
                let mut ct = [0u8; mlkem::CIPHERTEXT_LEN];
                mlkem::fake_ciphertext(rng, &mut ct);
                w.put(&ct);
                w.put(key_share);
            }
            EXT_KEY_SHARE => {
                w.put(&share_header);
                w.put(key_share);
            }
            kind => {
                let len = template_ext_data_len(e);
                w.put(&kind.to_be_bytes());
                w.put(&(len as u16).to_be_bytes());
                w.put(&[0u8; MAX_OTHER_EXTENSION as usize][..len]);
            }
        }
    }
    if template.extension(EXT_SUPPORTED_VERSIONS).is_none() {
        w.put(&supported_versions);
    }
    if template.extension(EXT_KEY_SHARE).is_none() {
        w.put(&share_header);
        w.put(key_share);
    }
    w.put(&CCS_RECORD);
    w.put(&[TYPE_APP_DATA, 0x03, 0x03]);
    w.put(&(noise as u16).to_be_bytes());
    let start = w.pos;
    let out = w.out;
    if let Some(n) = out.get_mut(start..) {
        rng.fill(n);
    }
    m.update(&hello.random);
    m.update(out);
    let mac: [u8; 32] = m.finalize().into_bytes().into();
    if let Some(r) = out.get_mut(RECORD_RANDOM..RECORD_RANDOM + 32) {
        r.copy_from_slice(&mac);
    }
    total
}

/// Sequential writer into a slice already checked to be large enough (writes past the end are
/// dropped, never a panic).
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + b.len()) {
            dst.copy_from_slice(b);
        }
        self.pos += b.len();
    }
}

/// The header of an application-data record carrying `len` payload bytes: `17 03 03 len`.
pub fn record_header(len: u16) -> [u8; 5] {
    let l = len.to_be_bytes();
    [TYPE_APP_DATA, 0x03, 0x03, l[0], l[1]]
}

/// Post-handshake client→proxy deframer, streaming across calls.
///
/// Records of type 0x17 with version 03 03 are data; 0x14 (ChangeCipherSpec) and any other
/// type are dropped silently; a version other than 03 03 is `Reject::RecordVersion` (the
/// connection must then be closed: the reader's state is unspecified after an error). Any
/// payload length (0..=65535) is accepted. Partial headers and payloads at the end of a buffer
/// are remembered, so the next call continues correctly.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordReader {
    hdr: [u8; RECORD_HEADER_LEN],
    hdr_len: u8,
    remaining: u16,
    keep: bool,
}

impl RecordReader {
    /// A reader positioned at a record boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the reader is between records (no partial header or payload pending).
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }

    /// Strips record headers (and dropped records) from `buf` in place; returns `n`, the number
    /// of data payload bytes now compacted at `buf[..n]`.
    pub fn deframe_in_place(&mut self, buf: &mut [u8]) -> Result<usize, Reject> {
        let mut r = 0usize;
        let mut w = 0usize;
        while r < buf.len() {
            if self.remaining > 0 {
                let n = usize::from(self.remaining).min(buf.len() - r);
                if self.keep {
                    buf.copy_within(r..r + n, w);
                    w += n;
                }
                r += n;
                // n <= remaining, so this fits.
                self.remaining -= n as u16;
                continue;
            }
            let i = usize::from(self.hdr_len);
            if let (Some(h), Some(&b)) = (self.hdr.get_mut(i), buf.get(r)) {
                *h = b;
            }
            r += 1;
            self.hdr_len += 1;
            if usize::from(self.hdr_len) == RECORD_HEADER_LEN {
                self.hdr_len = 0;
                if self.hdr[1..3] != [0x03, 0x03] {
                    return Err(Reject::RecordVersion);
                }
                self.keep = self.hdr[0] == TYPE_APP_DATA;
                self.remaining = u16::from_be_bytes([self.hdr[3], self.hdr[4]]);
            }
        }
        Ok(w)
    }
}

/// Client side, for tests and the bench tool: a one-record ClientHello shaped like Telegram's
/// (SNI = `host`, clamped to 253 bytes; a random 32-byte session id; cipher suites starting
/// with a GREASE value then 0x1301, 0x1302, 0x1303, …; a key_share; a padding extension so the
/// handshake message is 512 bytes when the host fits), whose random carries
/// HMAC-SHA256(key, record with zero random) ⊕ (0^28 ‖ u32le(now_unix)) as a real client
/// computes it. The client random is at bytes 11..43 of the result.
pub fn build_client_hello(
    rng: &mut impl Rng,
    key: &[u8; 16],
    host: &str,
    now_unix: u32,
) -> Vec<u8> {
    let hb = host.as_bytes();
    let host = hb.get(..253).unwrap_or(hb);
    let hlen = host.len() as u16; // <= 253
    let mut grease = || {
        let g = (rng.below(16) as u8) << 4 | 0x0a;
        [g, g]
    };
    let (g_suite, g_ext1, g_group, g_ver) = (grease(), grease(), grease(), grease());
    let mut g_ext2 = grease();
    if g_ext2 == g_ext1 {
        g_ext2[0] ^= 0x10;
        g_ext2[1] ^= 0x10;
    }

    let mut ext: Vec<u8> = Vec::with_capacity(512);
    ext.extend_from_slice(&g_ext1);
    ext.extend_from_slice(&[0, 0]);
    // server_name
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&(hlen + 5).to_be_bytes());
    ext.extend_from_slice(&(hlen + 3).to_be_bytes());
    ext.push(0x00);
    ext.extend_from_slice(&hlen.to_be_bytes());
    ext.extend_from_slice(host);
    ext.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]); // extended_master_secret
    ext.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]); // renegotiation_info
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0a, 0x00, 0x08]); // supported_groups
    ext.extend_from_slice(&g_group);
    ext.extend_from_slice(&[0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
    ext.extend_from_slice(&[0x00, 0x23, 0x00, 0x00]); // session_ticket
    ext.extend_from_slice(&[0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c, 0x02, b'h', b'2', 0x08]); // ALPN
    ext.extend_from_slice(b"http/1.1");
    ext.extend_from_slice(&[0x00, 0x05, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00]); // status_request
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x12, 0x00, 0x10]); // signature_algorithms
    ext.extend_from_slice(&[
        0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01, 0x08, 0x06, 0x06,
        0x01,
    ]);
    ext.extend_from_slice(&[0x00, 0x12, 0x00, 0x00]); // signed_certificate_timestamp
    ext.extend_from_slice(&[0x00, 0x33, 0x00, 0x2b, 0x00, 0x29]); // key_share
    ext.extend_from_slice(&g_group);
    ext.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x1d, 0x00, 0x20]);
    let mut share = [0u8; 32];
    rng.fill(&mut share);
    ext.extend_from_slice(&share);
    ext.extend_from_slice(&[0x00, 0x2d, 0x00, 0x02, 0x01, 0x01]); // psk_key_exchange_modes
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x0b, 0x0a]); // supported_versions
    ext.extend_from_slice(&g_ver);
    ext.extend_from_slice(&[0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01]);
    ext.extend_from_slice(&[0x00, 0x1b, 0x00, 0x03, 0x02, 0x00, 0x02]); // compress_certificate
    ext.extend_from_slice(&g_ext2);
    ext.extend_from_slice(&[0x00, 0x01, 0x00]);

    let suites: [u16; 15] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
        0x009c, 0x009d, 0x002f, 0x0035,
    ];
    let mut body: Vec<u8> = Vec::with_capacity(512);
    body.extend_from_slice(&[0x03, 0x03]);
    body.extend_from_slice(&[0u8; 32]);
    body.push(32);
    let mut sid = [0u8; 32];
    rng.fill(&mut sid);
    body.extend_from_slice(&sid);
    body.extend_from_slice(&(2 * (suites.len() as u16 + 1)).to_be_bytes());
    body.extend_from_slice(&g_suite);
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]);

    // Pad the handshake message to 512 bytes: 4 (msg header) + body + 2 (ext len) + ext +
    // 4 (padding ext header) + pad.
    let unpadded = 4 + body.len() + 2 + ext.len() + 4;
    if let Some(pad) = 512usize.checked_sub(unpadded) {
        ext.extend_from_slice(&[0x00, 0x15]);
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.resize(ext.len() + pad, 0);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let blen = body.len();
    let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + 4 + blen);
    rec.extend_from_slice(&[TYPE_HANDSHAKE, 0x03, 0x01]);
    rec.extend_from_slice(&((blen + 4) as u16).to_be_bytes());
    rec.extend_from_slice(&[
        HS_CLIENT_HELLO,
        (blen >> 16) as u8,
        (blen >> 8) as u8,
        blen as u8,
    ]);
    rec.extend_from_slice(&body);

    if let Some(mut m) = hmac(key) {
        m.update(&rec);
        let mut mac: [u8; 32] = m.finalize().into_bytes().into();
        for (d, t) in mac[28..].iter_mut().zip(now_unix.to_le_bytes()) {
            *d ^= t;
        }
        if let Some(r) = rec.get_mut(RECORD_RANDOM..RECORD_RANDOM + 32) {
            r.copy_from_slice(&mac);
        }
    }
    rec
}

/// A ClientHello captured from a real Telegram app (mtg's fixture `client-hello-ok-19dfe…`,
/// 517 bytes, SNI `storage.googleapis.com`): the template for [`telegram_hello`].
const TELEGRAM_HELLO: &[u8; 517] = include_bytes!("data/telegram-hello.bin");

/// A ClientHello exactly shaped like the captured Telegram one: same record, suites,
/// extensions and order, same total size (the padding extension absorbs a longer or shorter
/// host name while it can), with a fresh session id, a fresh key share, SNI = `host`, and a
/// random carrying HMAC-SHA256(key, …) ⊕ (0^28 ‖ u32le(now_unix)) as a real client computes it.
/// Tests and the bench tool use it as a realistic (older) Telegram client; the scout sends
/// browser hellos instead ([`crate::proto::browserhello`]).
pub fn telegram_hello(rng: &mut impl Rng, key: &[u8; 16], host: &str, now_unix: u32) -> Vec<u8> {
    let t = &TELEGRAM_HELLO[..];
    let host = &host.as_bytes()[..host.len().min(253)];
    // Walk the template: header(5) type(1) len(3) version(2) random(32) sid(1+32).
    let mut off = RECORD_HEADER_LEN + 4 + 2 + 32;
    let sid_len = usize::from(t[off]);
    off += 1 + sid_len;
    let suites = usize::from(u16::from_be_bytes([t[off], t[off + 1]]));
    off += 2 + suites;
    off += 1 + usize::from(t[off]);
    let head_end = off; // start of the extensions length
    let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut i = head_end + 2;
    while i + 4 <= t.len() {
        let ty = u16::from_be_bytes([t[i], t[i + 1]]);
        let len = usize::from(u16::from_be_bytes([t[i + 2], t[i + 3]]));
        let data = t.get(i + 4..i + 4 + len).unwrap_or(&[]).to_vec();
        exts.push((ty, data));
        i += 4 + len;
    }
    let hl = host.len() as u16;
    for (ty, data) in exts.iter_mut() {
        match *ty {
            0x0000 => {
                let mut d = Vec::with_capacity(host.len() + 5);
                d.extend_from_slice(&(hl + 3).to_be_bytes());
                d.push(0);
                d.extend_from_slice(&hl.to_be_bytes());
                d.extend_from_slice(host);
                *data = d;
            }
            0x0033 => {
                // One x25519 share: list len(2) group(2) len(2) key(32).
                if let Some(k) = data.get_mut(6..38) {
                    rng.fill(k);
                }
            }
            _ => {}
        }
    }
    let size = |exts: &[(u16, Vec<u8>)]| exts.iter().map(|(_, d)| 4 + d.len()).sum::<usize>();
    let want = TELEGRAM_HELLO.len() - head_end - 2;
    let now = size(&exts);
    if let Some((_, pad)) = exts.iter_mut().find(|(ty, _)| *ty == 0x0015) {
        let other = now - pad.len();
        pad.clear();
        pad.resize(want.saturating_sub(other), 0);
    }
    let ext_len = size(&exts);
    let mut rec = Vec::with_capacity(head_end + 2 + ext_len);
    rec.extend_from_slice(&t[..head_end]);
    rec.extend_from_slice(&(ext_len as u16).to_be_bytes());
    for (ty, data) in &exts {
        rec.extend_from_slice(&ty.to_be_bytes());
        rec.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rec.extend_from_slice(data);
    }
    let msg_len = rec.len() - RECORD_HEADER_LEN;
    rec[3..5].copy_from_slice(&(msg_len as u16).to_be_bytes());
    let body = msg_len - 4;
    rec[6..9].copy_from_slice(&[(body >> 16) as u8, (body >> 8) as u8, body as u8]);
    // Fresh session id, zero random, then the HMAC-and-timestamp random.
    let sid_at = RECORD_HEADER_LEN + 4 + 2 + 32 + 1;
    rng.fill(&mut rec[sid_at..sid_at + sid_len]);
    rec[RECORD_RANDOM..RECORD_RANDOM + 32].fill(0);
    if let Some(mut m) = hmac(key) {
        m.update(&rec);
        let mut mac: [u8; 32] = m.finalize().into_bytes().into();
        for (d, t) in mac[28..].iter_mut().zip(now_unix.to_le_bytes()) {
            *d ^= t;
        }
        rec[RECORD_RANDOM..RECORD_RANDOM + 32].copy_from_slice(&mac);
    }
    rec
}

/// Client side, for tests and the bench tool: checks the proxy's server flight (ServerHello
/// record, the ChangeCipherSpec record, one application-data record) and the server random
/// HMAC over `client_random ‖ flight` with the random zeroed.
///
/// Returns `Ok(Some(len))` with the flight's length once it is complete and valid (bytes after
/// it belong to the next stream), `Ok(None)` when more bytes are needed, and an error for a
/// wrong record type/version (`RecordType`/`RecordVersion`), a malformed flight (`Malformed`)
/// or a wrong server random (`Digest`).
pub fn verify_server_flight(
    flight: &[u8],
    client_random: &[u8; 32],
    key: &[u8; 16],
) -> Result<Option<usize>, Reject> {
    // Record 1: ServerHello.
    let check_hdr = |at: usize, kind: u8| -> Result<Option<usize>, Reject> {
        let h = flight.get(at..).unwrap_or(&[]);
        if h.first().is_some_and(|&t| t != kind) {
            return Err(Reject::RecordType);
        }
        if h.get(1).is_some_and(|&v| v != 3) || h.get(2).is_some_and(|&v| v != 3) {
            return Err(Reject::RecordVersion);
        }
        Ok(h.get(3..5)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))))
    };
    let Some(len1) = check_hdr(0, TYPE_HANDSHAKE)? else {
        return Ok(None);
    };
    if len1 < 4 + 2 + 32 {
        return Err(Reject::Malformed);
    }
    if flight.get(5).is_some_and(|&t| t != HS_SERVER_HELLO) {
        return Err(Reject::Malformed);
    }
    let p2 = RECORD_HEADER_LEN + len1;
    // Record 2: exactly the CCS record.
    let ccs = flight.get(p2..).unwrap_or(&[]);
    if ccs.iter().zip(CCS_RECORD).any(|(a, b)| *a != b) {
        return Err(Reject::Malformed);
    }
    let p3 = p2 + CCS_RECORD.len();
    // Record 3: application data.
    let Some(len3) = check_hdr(p3, TYPE_APP_DATA)? else {
        return Ok(None);
    };
    let total = p3 + RECORD_HEADER_LEN + len3;
    let Some(all) = flight.get(..total) else {
        return Ok(None);
    };
    let (Some(head), Some(got), Some(tail)) = (
        all.get(..RECORD_RANDOM),
        all.get(RECORD_RANDOM..RECORD_RANDOM + 32),
        all.get(RECORD_RANDOM + 32..),
    ) else {
        return Err(Reject::Malformed);
    };
    let mut m = hmac(key).ok_or(Reject::Digest)?;
    m.update(client_random);
    m.update(head);
    m.update(&[0u8; 32]);
    m.update(tail);
    let mac: [u8; 32] = m.finalize().into_bytes().into();
    if !ct_eq(&mac, got) {
        return Err(Reject::Digest);
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::encoding::{base64_std_decode, hex_decode};
    use crate::proto::XorShift64;
    use crate::proto::tlsprofile;

    const KEY_HEX: &str = "367a189aee18fa31c190054efd4a8e95";
    const HOST: &[u8] = b"storage.googleapis.com";

    fn key() -> [u8; 16] {
        hex_decode(KEY_HEX).unwrap().try_into().unwrap()
    }

    struct Fixture {
        name: &'static str,
        full: Vec<u8>,
        random: Vec<u8>,
        session_id: Vec<u8>,
        host: String,
        suite: u16,
        time: u32,
    }

    fn field<'a>(json: &'a str, name: &str) -> &'a str {
        let pat = format!("\"{name}\": ");
        let start = json.find(&pat).unwrap() + pat.len();
        let rest = &json[start..];
        if let Some(r) = rest.strip_prefix('"') {
            &r[..r.find('"').unwrap()]
        } else {
            let end = rest.find([',', '\n', '}']).unwrap();
            rest[..end].trim()
        }
    }

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_str!(concat!(
                    "../../tests/data/mtg/mtglib/internal/tls/fake/testdata/client-hello-",
                    $name,
                    ".json"
                )),
            )
        };
    }

    /// The six accepted captures (five plus the GREASE-first variant).
    const OK: [(&str, &str); 6] = [
        fixture!("ok-48f8a72a56f3174a"),
        fixture!("ok-7a5569f05b118145"),
        fixture!("ok-grease-first"),
        fixture!("ok-79d01ef18a9d2621"),
        fixture!("ok-19dfe38384b9884b"),
        fixture!("ok-651054256093c6cd"),
    ];
    const BAD: (&str, &str) = fixture!("bad-fa2e46cdb33e2a1b");

    fn load((name, json): (&'static str, &str)) -> Fixture {
        Fixture {
            name,
            full: base64_std_decode(field(json, "full")).unwrap(),
            random: base64_std_decode(field(json, "random")).unwrap(),
            session_id: base64_std_decode(field(json, "sessionId")).unwrap(),
            host: field(json, "host").to_owned(),
            suite: field(json, "cipherSuite").parse().unwrap(),
            time: field(json, "time").parse().unwrap(),
        }
    }

    fn ok_fixtures() -> Vec<Fixture> {
        OK.into_iter().map(load).collect()
    }

    /// Re-frames a one-record hello as several records, cutting the payload at `cuts`.
    fn split(full: &[u8], cuts: &[usize]) -> Vec<u8> {
        let payload = &full[5..];
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&payload.len())) {
            let part = &payload[prev..c];
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
            prev = c;
        }
        out
    }

    /// read + parse + verify at the fixture's own time.
    fn accept(input: &[u8], f: &Fixture) -> Result<(usize, ClientHello, u32), Reject> {
        let mut scratch = [0u8; 4096];
        let (consumed, msg_len) = match read_client_hello(input, &mut scratch) {
            HelloRead::Complete { consumed, msg_len } => (consumed, msg_len),
            HelloRead::Invalid(r) => return Err(r),
            HelloRead::NeedMore => return Err(Reject::Eof),
        };
        let msg = &scratch[..msg_len];
        let hello = parse_client_hello(msg)?;
        let ts = verify_client_hello(&hello, msg, &key(), f.host.as_bytes(), f.time.into(), 0)?;
        Ok((consumed, hello, ts))
    }

    #[test]
    fn accepts_mtg_ok_fixtures() {
        for f in ok_fixtures() {
            let (consumed, hello, ts) =
                accept(&f.full, &f).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            assert_eq!(consumed, f.full.len(), "{}", f.name);
            assert_eq!(hello.random[..], f.random[..], "{}", f.name);
            assert_eq!(hello.session_id(), &f.session_id[..], "{}", f.name);
            assert_eq!(hello.session_id_len, 32);
            assert_eq!(hello.cipher_suite, f.suite, "{}", f.name);
            assert_eq!(hello.cipher_suite, 0x1303);
            assert_eq!(ts, f.time, "{}", f.name);
            assert!(ts == 1617181352 || ts == 1617181365);
            assert_eq!(f.host.as_bytes(), HOST);
            let msg = &f.full[5..];
            assert_eq!(hello.sni_names(msg).collect::<Vec<_>>(), vec![HOST]);
        }
    }

    #[test]
    fn accepts_grease_first_choosing_1303() {
        let f = load(OK[2]);
        assert_eq!(f.full.len(), 5 + 514);
        let msg = &f.full[5..];
        let hello = parse_client_hello(msg).unwrap();
        assert_eq!(hello.cipher_suite, 0x1303);
    }

    #[test]
    fn rejects_mtg_bad_fixture_digest() {
        let f = load(BAD);
        let msg = &f.full[5..];
        let hello = parse_client_hello(msg).unwrap();
        assert!(hello.has_sni(msg, HOST));
        assert_ne!(hello.session_id(), &f.session_id[..]);
        assert_eq!(accept(&f.full, &f).err(), Some(Reject::Digest));
    }

    #[test]
    fn rejects_in_order_sni_digest_time() {
        let f = load(OK[0]);
        let msg = &f.full[5..];
        let hello = parse_client_hello(msg).unwrap();
        let k = key();
        let t = u64::from(f.time);
        let mut wrong_key = k;
        wrong_key[15] ^= 1;
        // Wrong host wins over wrong key and wrong time.
        assert_eq!(
            verify_client_hello(&hello, msg, &wrong_key, b"storage.googleapis.co", 0, 0),
            Err(Reject::Sni)
        );
        assert_eq!(
            verify_client_hello(&hello, msg, &k, b"STORAGE.googleapis.com", t, 0),
            Err(Reject::Sni)
        );
        // Wrong key wins over wrong time.
        assert_eq!(
            verify_client_hello(&hello, msg, &wrong_key, HOST, 0, 0),
            Err(Reject::Digest)
        );
        // Tolerance is symmetric and inclusive.
        assert_eq!(
            verify_client_hello(&hello, msg, &k, HOST, t + 3, 3),
            Ok(f.time)
        );
        assert_eq!(
            verify_client_hello(&hello, msg, &k, HOST, t - 3, 3),
            Ok(f.time)
        );
        assert_eq!(
            verify_client_hello(&hello, msg, &k, HOST, t + 4, 3),
            Err(Reject::TimeSkew)
        );
        assert_eq!(
            verify_client_hello(&hello, msg, &k, HOST, t - 4, 3),
            Err(Reject::TimeSkew)
        );
        // mtg's tests use a 30-year tolerance against a current clock.
        let thirty_years = 30 * 365 * 86400;
        assert_eq!(
            verify_client_hello(&hello, msg, &k, HOST, 1_900_000_000, thirty_years),
            Ok(f.time)
        );
    }

    #[test]
    fn accepts_fixture_split_over_records() {
        for f in ok_fixtures() {
            let n = f.full.len() - 5;
            for cuts in [
                vec![n / 2],
                vec![n / 3, 2 * n / 3],
                vec![1],
                vec![3],
                vec![1, 2, 3],
                (1..11).map(|i| i * n / 11).collect(),
                vec![0, 0, 4],
            ] {
                let input = split(&f.full, &cuts);
                let (consumed, hello, ts) = accept(&input, &f).unwrap();
                assert_eq!(consumed, input.len(), "{} {cuts:?}", f.name);
                assert_eq!(hello.cipher_suite, f.suite);
                assert_eq!(ts, f.time);
            }
        }
    }

    #[test]
    fn rejects_twelve_records() {
        let f = load(OK[0]);
        let n = f.full.len() - 5;
        let input = split(&f.full, &(1..12).map(|i| i * n / 12).collect::<Vec<_>>());
        let mut scratch = [0u8; 4096];
        assert_eq!(
            read_client_hello(&input, &mut scratch),
            HelloRead::Invalid(Reject::TooManyFragments)
        );
        // Zero-length records count too: 10 empty + the hello = 11 is fine, 11 empty is not.
        let empty = [0x16, 0x03, 0x01, 0x00, 0x00];
        let mut ok = empty.repeat(10);
        ok.extend_from_slice(&f.full);
        assert!(matches!(
            read_client_hello(&ok, &mut scratch),
            HelloRead::Complete { .. }
        ));
        let mut bad = empty.repeat(11);
        bad.extend_from_slice(&f.full);
        assert_eq!(
            read_client_hello(&bad, &mut scratch),
            HelloRead::Invalid(Reject::TooManyFragments)
        );
    }

    #[test]
    fn accepts_every_prefix_as_need_more() {
        let mut scratch = [0u8; 4096];
        for f in ok_fixtures().into_iter().chain([load(BAD)]) {
            let n = f.full.len() - 5;
            for input in [
                f.full.clone(),
                split(&f.full, &[1, n / 2]),
                split(&f.full, &[3]),
            ] {
                for i in 0..input.len() {
                    assert_eq!(
                        read_client_hello(&input[..i], &mut scratch),
                        HelloRead::NeedMore,
                        "{} {i}",
                        f.name
                    );
                }
            }
        }
    }

    #[test]
    fn accepts_trailing_bytes_past_message_consumed() {
        let f = load(OK[1]);
        // One record whose payload is the message plus 3 extra bytes; then unrelated bytes.
        let mut input = f.full.clone();
        let len = (f.full.len() - 5 + 3) as u16;
        input[3..5].copy_from_slice(&len.to_be_bytes());
        input.extend_from_slice(&[9, 9, 9]);
        let record_end = input.len();
        input.extend_from_slice(&[0x17, 0x03, 0x03]);
        let mut scratch = [0u8; 4096];
        assert_eq!(
            read_client_hello(&input, &mut scratch),
            HelloRead::Complete {
                consumed: record_end,
                msg_len: f.full.len() - 5
            }
        );
        assert_eq!(&scratch[..f.full.len() - 5], &f.full[5..]);
    }

    #[test]
    fn rejects_non_tls_within_three_bytes() {
        let mut scratch = [0u8; 4096];
        assert_eq!(
            read_client_hello(b"G", &mut scratch),
            HelloRead::Invalid(Reject::RecordType)
        );
        assert_eq!(
            read_client_hello(b"GET / HTTP/1.1\r\n", &mut scratch),
            HelloRead::Invalid(Reject::RecordType)
        );
        assert_eq!(
            read_client_hello(&[0x16, 0x02], &mut scratch),
            HelloRead::Invalid(Reject::RecordVersion)
        );
        assert_eq!(
            read_client_hello(&[0x16, 0x03, 0x03], &mut scratch),
            HelloRead::Invalid(Reject::RecordVersion)
        );
        assert_eq!(
            read_client_hello(&[0x16, 0x03, 0x01], &mut scratch),
            HelloRead::NeedMore
        );
        assert_eq!(read_client_hello(&[], &mut scratch), HelloRead::NeedMore);
        let mut rng = XorShift64(5);
        for _ in 0..2000 {
            let mut b = [0u8; 3];
            rng.fill(&mut b);
            let r = read_client_hello(&b, &mut scratch);
            if b == [0x16, 0x03, 0x01] {
                assert_eq!(r, HelloRead::NeedMore);
            } else {
                assert!(
                    matches!(
                        r,
                        HelloRead::Invalid(Reject::RecordType | Reject::RecordVersion)
                    ),
                    "{b:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_continuation_and_handshake_type() {
        let f = load(OK[0]);
        let mut scratch = [0u8; 4096];
        let mut input = split(&f.full, &[100]);
        let second = 5 + 100;
        input[second] = 0x17;
        assert_eq!(
            read_client_hello(&input, &mut scratch),
            HelloRead::Invalid(Reject::RecordType)
        );
        input[second] = 0x16;
        input[second + 2] = 0x03;
        assert_eq!(
            read_client_hello(&input, &mut scratch),
            HelloRead::Invalid(Reject::RecordVersion)
        );
        let mut input = f.full.clone();
        input[5] = 0x02;
        // Decided as soon as the handshake type byte arrives.
        assert_eq!(
            read_client_hello(&input[..6], &mut scratch),
            HelloRead::Invalid(Reject::Malformed)
        );
        // Message larger than scratch: decided from the handshake header.
        let mut small = [0u8; 100];
        assert_eq!(
            read_client_hello(&f.full[..9], &mut small),
            HelloRead::Invalid(Reject::TooLarge)
        );
        assert_eq!(
            read_client_hello(&f.full[..8], &mut small),
            HelloRead::NeedMore
        );
        let mut tiny = [0u8; 2];
        assert_eq!(
            read_client_hello(&f.full, &mut tiny),
            HelloRead::Invalid(Reject::TooLarge)
        );
    }

    /// A minimal ClientHello message with the given session id length, suites and extensions.
    fn hello_msg(sid_len: u8, suites: &[u16], ext: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(sid_len);
        body.extend(std::iter::repeat_n(1u8, usize::from(sid_len)));
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(ext);
        let n = body.len();
        let mut msg = vec![1, (n >> 16) as u8, (n >> 8) as u8, n as u8];
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn rejects_malformed_hellos() {
        let sni = [0, 0, 0, 6, 0, 4, 0, 0, 1, b'a'];
        assert!(parse_client_hello(&hello_msg(32, &[0x1301], &sni)).is_ok());
        let h = parse_client_hello(&hello_msg(0, &[0x0a0a, 0x1a1a, 0xc02b], &sni)).unwrap();
        assert_eq!(
            (h.session_id_len, h.session_id(), h.cipher_suite),
            (0, &[][..], 0xc02b)
        );
        assert!(h.has_sni(&hello_msg(0, &[0x0a0a, 0x1a1a, 0xc02b], &sni), b"a"));
        assert_eq!(
            parse_client_hello(&hello_msg(33, &[0x1301], &sni)).err(),
            Some(Reject::Malformed)
        );
        assert_eq!(
            parse_client_hello(&hello_msg(32, &[0x0a0a, 0xfafa], &sni)).err(),
            Some(Reject::NoCipherSuite)
        );
        assert_eq!(
            parse_client_hello(&hello_msg(32, &[], &sni)).err(),
            Some(Reject::NoCipherSuite)
        );
        // Empty SNI list.
        assert_eq!(
            parse_client_hello(&hello_msg(32, &[0x1301], &[0, 0, 0, 2, 0, 0])).err(),
            Some(Reject::Malformed)
        );
        // Name longer than the list.
        assert_eq!(
            parse_client_hello(&hello_msg(
                32,
                &[0x1301],
                &[0, 0, 0, 6, 0, 4, 0, 0, 9, b'a']
            ))
            .err(),
            Some(Reject::Malformed)
        );
        // Extension longer than the block.
        assert_eq!(
            parse_client_hello(&hello_msg(32, &[0x1301], &[0, 5, 0, 9, 1])).err(),
            Some(Reject::Malformed)
        );
        // No SNI: parses, but never matches a host.
        let msg = hello_msg(32, &[0x1301], &[0, 5, 0, 0]);
        let h = parse_client_hello(&msg).unwrap();
        assert!(h.sni.is_none());
        assert_eq!(
            verify_client_hello(&h, &msg, &key(), b"a", 0, 0),
            Err(Reject::Sni)
        );
        // Odd suites length.
        let mut msg = hello_msg(32, &[0x1301], &sni);
        msg[4 + 2 + 32 + 1 + 32 + 1] = 3;
        assert!(parse_client_hello(&msg).is_err());
        // Length field disagreeing with the message.
        let mut msg = hello_msg(32, &[0x1301], &sni);
        msg.push(0);
        assert_eq!(parse_client_hello(&msg).err(), Some(Reject::Malformed));
        assert_eq!(parse_client_hello(&[]).err(), Some(Reject::Malformed));
        assert_eq!(
            parse_client_hello(&[1, 0, 0, 0]).err(),
            Some(Reject::Malformed)
        );
    }

    #[test]
    fn rejects_garbage_and_mutations_without_panic() {
        let mut rng = XorShift64(2024);
        let fixtures = ok_fixtures();
        let mut scratch = [0u8; 2048];
        for i in 0..3000 {
            let f = &fixtures[i % fixtures.len()];
            let mut input = f.full.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(input.len() as u32) as usize;
                input[at] ^= 1 << rng.below(8);
            }
            if rng.below(4) == 0 {
                input.truncate(rng.below(input.len() as u32) as usize);
            }
            if let HelloRead::Complete { msg_len, .. } = read_client_hello(&input, &mut scratch) {
                let msg = &scratch[..msg_len];
                if let Ok(h) = parse_client_hello(msg) {
                    let _ = verify_client_hello(&h, msg, &key(), HOST, f.time.into(), 0);
                }
            }
            // The message alone, mutated, through the parser directly.
            let mut msg = f.full[5..].to_vec();
            let at = rng.below(msg.len() as u32) as usize;
            msg[at] = rng.below(256) as u8;
            if let Ok(h) = parse_client_hello(&msg) {
                let r = verify_client_hello(&h, &msg, &key(), HOST, f.time.into(), 0);
                // Any change breaks the SNI, the digest, or (inside random[28..32]) the time.
                if msg[..] != f.full[5..] {
                    assert!(
                        matches!(r, Err(Reject::Digest | Reject::Sni | Reject::TimeSkew)),
                        "{at} {r:?}"
                    );
                }
            }
            let len = rng.below(300) as usize;
            let mut junk = vec![0u8; len];
            rng.fill(&mut junk);
            let _ = parse_client_hello(&junk);
            let _ = read_client_hello(&junk, &mut scratch);
            let _ = verify_server_flight(&junk, &[0; 32], &key());
        }
    }

    #[test]
    fn accepts_built_client_hello_round_trip() {
        let mut rng = XorShift64(31);
        let k = [0x42; 16];
        for (i, host) in ["example.com", "a", "storage.googleapis.com"]
            .into_iter()
            .enumerate()
        {
            let now = 1_700_000_000u32 + i as u32;
            let rec = build_client_hello(&mut rng, &k, host, now);
            assert_eq!(rec.len(), 5 + 512);
            let mut scratch = [0u8; 1024];
            let HelloRead::Complete { consumed, msg_len } = read_client_hello(&rec, &mut scratch)
            else {
                panic!("not complete");
            };
            assert_eq!((consumed, msg_len), (rec.len(), 512));
            let msg = &scratch[..msg_len];
            let h = parse_client_hello(msg).unwrap();
            assert_eq!(h.cipher_suite, 0x1301);
            assert!(is_grease(u16::from_be_bytes([
                msg[4 + 2 + 32 + 1 + 32 + 2],
                msg[4 + 2 + 32 + 1 + 32 + 3]
            ])));
            assert_eq!(h.session_id_len, 32);
            assert_eq!(h.random[..], rec[11..43]);
            assert_eq!(h.sni_names(msg).collect::<Vec<_>>(), vec![host.as_bytes()]);
            let t = u64::from(now);
            assert_eq!(
                verify_client_hello(&h, msg, &k, host.as_bytes(), t, 0),
                Ok(now)
            );
            assert_eq!(
                verify_client_hello(&h, msg, &k, host.as_bytes(), t + 5, 5),
                Ok(now)
            );
            assert_eq!(
                verify_client_hello(&h, msg, &k, host.as_bytes(), t - 5, 5),
                Ok(now)
            );
            assert_eq!(
                verify_client_hello(&h, msg, &k, host.as_bytes(), t + 6, 5),
                Err(Reject::TimeSkew)
            );
            assert_eq!(
                verify_client_hello(&h, msg, &k, host.as_bytes(), t - 6, 5),
                Err(Reject::TimeSkew)
            );
            assert_eq!(
                verify_client_hello(&h, msg, &[0x43; 16], host.as_bytes(), t, 5),
                Err(Reject::Digest)
            );
        }
        // A host too long for the padding still builds a valid (unpadded) hello.
        let long = "x".repeat(300);
        let rec = build_client_hello(&mut rng, &k, &long, 5);
        let h = parse_client_hello(&rec[5..]).unwrap();
        assert_eq!(
            verify_client_hello(&h, &rec[5..], &k, &long.as_bytes()[..253], 5, 0),
            Ok(5)
        );
    }

    fn sample_hello(sid_len: u8) -> ClientHello {
        let mut session_id = [0u8; 32];
        for (i, b) in session_id.iter_mut().enumerate().take(usize::from(sid_len)) {
            *b = i as u8 + 1;
        }
        ClientHello {
            random: [0x55; 32],
            session_id,
            session_id_len: sid_len,
            cipher_suite: 0x1302,
            tls13_suites: 0b111,
            sni: None,
            shares: SHARE_X25519,
        }
    }

    #[test]
    fn accepts_server_flight_round_trip_and_layout() {
        let k = key();
        let mut rng = XorShift64(8);
        let share = [0x99; 32];
        for (sid_len, noise) in [(32u8, 2500usize), (0, 1), (16, MAX_RECORD_PAYLOAD)] {
            let hello = sample_hello(sid_len);
            let mut out = vec![0u8; 20_000];
            let n = write_server_hello(&mut out, &hello, &k, &mut rng, noise, &share);
            assert_eq!(n, server_hello_len(sid_len, noise));
            let l = usize::from(sid_len);
            let r1 = 5 + 4 + 86 + l;
            assert_eq!(n, r1 + 6 + 5 + noise);
            let out = &out[..n];
            assert_eq!(out[..3], [0x16, 0x03, 0x03]);
            assert_eq!(
                usize::from(u16::from_be_bytes([out[3], out[4]])),
                4 + 86 + l
            );
            assert_eq!(out[5..9], [0x02, 0x00, 0x00, 86 + sid_len]);
            assert_eq!(out[9..11], [0x03, 0x03]);
            assert_eq!(out[43], sid_len);
            assert_eq!(out[44..44 + l], hello.session_id[..l]);
            let p = 44 + l;
            assert_eq!(out[p..p + 2], [0x13, 0x02]);
            assert_eq!(out[p + 2..p + 5], [0x00, 0x00, 0x2e]);
            assert_eq!(out[p + 5..p + 11], [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
            assert_eq!(
                out[p + 11..p + 19],
                [0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]
            );
            assert_eq!(out[p + 19..p + 51], share);
            assert_eq!(p + 51, r1);
            assert_eq!(out[r1..r1 + 6], CCS_RECORD);
            assert_eq!(
                out[r1 + 6..r1 + 11],
                [0x17, 0x03, 0x03, (noise >> 8) as u8, noise as u8]
            );
            // Independent check of the server random.
            let mut zeroed = out.to_vec();
            zeroed[11..43].fill(0);
            let mut m = hmac(&k).unwrap();
            m.update(&hello.random);
            m.update(&zeroed);
            let mac: [u8; 32] = m.finalize().into_bytes().into();
            assert_eq!(out[11..43], mac);

            assert_eq!(verify_server_flight(out, &hello.random, &k), Ok(Some(n)));
            let mut more = out.to_vec();
            more.extend_from_slice(b"next");
            assert_eq!(verify_server_flight(&more, &hello.random, &k), Ok(Some(n)));
            if noise < 100 {
                for i in 0..n {
                    assert_eq!(
                        verify_server_flight(&out[..i], &hello.random, &k),
                        Ok(None),
                        "{i}"
                    );
                }
            }
            assert_eq!(
                verify_server_flight(out, &[0x56; 32], &k),
                Err(Reject::Digest)
            );
            let mut bad = out.to_vec();
            bad[n - 1] ^= 1;
            assert_eq!(
                verify_server_flight(&bad, &hello.random, &k),
                Err(Reject::Digest)
            );
            let mut bad = out.to_vec();
            bad[r1 + 5] = 2;
            assert_eq!(
                verify_server_flight(&bad, &hello.random, &k),
                Err(Reject::Malformed)
            );
        }
    }

    #[test]
    fn accepts_every_prefix_of_large_flight_as_need_more() {
        let hello = sample_hello(32);
        let mut out = vec![0u8; 4000];
        let n = write_server_hello(&mut out, &hello, &key(), &mut XorShift64(1), 2600, &[1; 32]);
        for i in (0..n).step_by(7).chain([n - 1]) {
            assert_eq!(
                verify_server_flight(&out[..i], &hello.random, &key()),
                Ok(None)
            );
        }
    }

    #[test]
    fn rejects_small_output_buffer_and_clamps_noise() {
        let hello = sample_hello(32);
        let mut rng = XorShift64(3);
        let need = server_hello_len(32, 10);
        let mut out = vec![0u8; need - 1];
        assert_eq!(
            write_server_hello(&mut out, &hello, &key(), &mut rng, 10, &[0; 32]),
            0
        );
        let mut out = vec![0u8; need];
        assert_eq!(
            write_server_hello(&mut out, &hello, &key(), &mut rng, 10, &[0; 32]),
            need
        );
        let mut out = vec![0u8; 40_000];
        assert_eq!(
            write_server_hello(&mut out, &hello, &key(), &mut rng, 0, &[0; 32]),
            server_hello_len(32, 1)
        );
        let n = write_server_hello(&mut out, &hello, &key(), &mut rng, 100_000, &[0; 32]);
        assert_eq!(n, 127 + 6 + 5 + MAX_RECORD_PAYLOAD);
        assert_eq!(
            verify_server_flight(&out[..n], &hello.random, &key()),
            Ok(Some(n))
        );
    }

    #[test]
    fn accepts_default_template_same_bytes_as_write_server_hello() {
        let share = [0x77; 32];
        for (sid_len, noise) in [(32u8, 2600usize), (0, 1), (16, 16_000)] {
            let hello = sample_hello(sid_len);
            let mut a = vec![0u8; 20_000];
            let mut b = vec![0u8; 20_000];
            let na = write_server_hello(&mut a, &hello, &key(), &mut XorShift64(4), noise, &share);
            let nb = write_server_hello_as(
                &mut b,
                &hello,
                &key(),
                &mut XorShift64(4),
                &ServerHelloTemplate::default(),
                noise,
                &share,
            );
            assert_eq!(a[..na], b[..nb]);
            assert_eq!(
                nb,
                server_hello_len_as(&ServerHelloTemplate::default(), sid_len, noise)
            );
        }
    }

    const NGINX_RSA: &[u8] = include_bytes!("../../tests/data/tls/nginx-rsa-flight.bin");
    const NGINX_RSA_HELLO: &[u8] =
        include_bytes!("../../tests/data/tls/nginx-rsa-client-hello.bin");

    #[test]
    fn accepts_nginx_capture_reproduced_byte_for_byte() {
        // The ClientHello nginx answered, and the fake answer to the same hello.
        let hello = parse_client_hello(&NGINX_RSA_HELLO[5..]).unwrap();
        let site = tlsprofile::parse_server_flight(NGINX_RSA).unwrap();
        let share = crate::proto::x25519::public_key(&[9; 32]);
        let mut out = vec![0u8; 4000];
        let noise = site.one_record_len();
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(6),
            &site.server_hello,
            noise,
            &share,
        );
        let fake = &out[..n];
        let sh = 5 + usize::from(site.server_hello_record_len);
        // ServerHello + CCS identical except the random (11..43) and the key (last 32 bytes).
        assert_eq!(fake[..11], NGINX_RSA[..11]);
        assert_eq!(fake[43..sh - 32], NGINX_RSA[43..sh - 32]);
        assert_eq!(fake[sh - 32..sh], share);
        assert_eq!(fake[sh..sh + 6], NGINX_RSA[sh..sh + 6]);
        // Same bytes on the wire in total: four records vs one.
        assert_eq!(n, NGINX_RSA.len());
        assert_eq!(
            verify_server_flight(fake, &hello.random, &key()),
            Ok(Some(n))
        );
        let o = tlsprofile::parse_server_flight(fake).unwrap();
        assert_eq!(o.records(), [1216]);
        assert_eq!(o.server_hello, site.server_hello);
    }

    const TDLIB_HELLO: &[u8] = include_bytes!("../../tests/data/tls/tdlib-1.8.69-client-hello.bin");
    const PQ_FLIGHT: &[u8] = include_bytes!("../../tests/data/tls/openssl35-pq-flight.bin");

    #[test]
    fn accepts_tdlib_1_8_69_hello_as_post_quantum() {
        let h = parse_client_hello(&TDLIB_HELLO[5..]).unwrap();
        assert_eq!(h.kind(), HelloKind::PostQuantum);
        assert_eq!(h.shares, SHARE_X25519 | SHARE_MLKEM);
        assert!(h.has_sni(&TDLIB_HELLO[5..], b"www.example.com"));
        // The 0x11ec share alone, or a share of the wrong length, does not count.
        let mut ks = vec![0, 8, 0x11, 0xec, 0, 4, 1, 2, 3, 4];
        assert_eq!(offered_shares(&ks), 0);
        ks = vec![0, 36, 0, 0x1d, 0, 32];
        ks.resize(40, 9);
        assert_eq!(offered_shares(&ks), SHARE_X25519);
        assert_eq!(offered_shares(&ks[..20]), 0);
        assert_eq!(
            parse_client_hello(&NGINX_RSA_HELLO[5..]).unwrap().kind(),
            HelloKind::Classic
        );
        // The share without the group in supported_groups: not a post-quantum hello.
        let mut m = TDLIB_HELLO[5..].to_vec();
        let at = m
            .windows(4)
            .position(|w| w == [0x11, 0xec, 0x00, 0x1d])
            .unwrap();
        m[at..at + 2].copy_from_slice(&[0x00, 0x19]);
        let h = parse_client_hello(&m).unwrap();
        assert_eq!((h.kind(), h.shares), (HelloKind::Classic, SHARE_X25519));
    }

    /// The site (OpenSSL 3.5, a capture) answered TDLib 1.8.69's hello with X25519MLKEM768; the
    /// fake answer to the same hello has the same ServerHello record (length, extensions, group)
    /// and the same bytes on the wire, and its HMAC verifies. A classic hello gets x25519.
    #[test]
    fn accepts_post_quantum_site_capture_reproduced() {
        let site = tlsprofile::parse_server_flight(PQ_FLIGHT).unwrap();
        assert_eq!(site.check(), Ok(()));
        assert_eq!(
            site.server_hello.key_share_group(),
            Some(GROUP_X25519_MLKEM768)
        );
        assert_eq!(site.server_hello_record_len, 1210);
        let hello = parse_client_hello(&TDLIB_HELLO[5..]).unwrap();
        let share = crate::proto::x25519::public_key(&[3; 32]);
        let mut out = vec![0u8; 4000];
        let noise = site.one_record_len();
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(6),
            &site.server_hello,
            noise,
            &share,
        );
        assert_eq!(n, PQ_FLIGHT.len());
        assert_eq!(n, server_hello_len_as(&site.server_hello, 32, noise));
        let fake = &out[..n];
        assert_eq!(
            verify_server_flight(fake, &hello.random, &key()),
            Ok(Some(n))
        );
        let o = tlsprofile::parse_server_flight(fake).unwrap();
        assert_eq!(o.server_hello, site.server_hello);
        assert_eq!(o.server_hello_record_len, 1210);
        let sh = 5 + 1210;
        // Same bytes but the random, the session id echo (another hello) and the key share.
        assert_eq!(fake[..11], PQ_FLIGHT[..11]);
        assert_eq!(fake[76..sh - 1120], PQ_FLIGHT[76..sh - 1120]);
        assert_eq!(
            fake[sh - 1128..sh - 1120],
            [0x00, 0x33, 0x04, 0x64, 0x11, 0xec, 0x04, 0x60]
        );
        assert_eq!(fake[sh - 32..sh], share);
        assert_eq!(fake[sh..sh + 6], PQ_FLIGHT[sh..sh + 6]);
        // Every 10-bit coefficient of the fake ciphertext is a possible Compress_10 output.
        assert_ne!(fake[sh - 1120..sh - 32], [0u8; 1088]);

        // A hello without an X25519MLKEM768 share gets x25519 from the same template.
        let classic = sample_hello(32);
        let n = write_server_hello_as(
            &mut out,
            &classic,
            &key(),
            &mut XorShift64(6),
            &site.server_hello,
            noise,
            &share,
        );
        let o = tlsprofile::parse_server_flight(&out[..n]).unwrap();
        assert_eq!(o.server_hello.key_share_group(), Some(GROUP_X25519));
        assert_eq!(o.server_hello_record_len, 122);
        assert_eq!(
            verify_server_flight(&out[..n], &classic.random, &key()),
            Ok(Some(n))
        );
        assert!(n <= server_hello_len_as(&site.server_hello, 32, noise));
    }

    #[test]
    fn accepts_site_extension_order_and_suite() {
        use tlsprofile::tests::{flight, ks, sv};
        let site = tlsprofile::parse_server_flight(&flight(
            [1; 32],
            0x1303,
            &[ks(0x1d, 32), (0x0029, vec![0, 0]), sv()],
            &[900],
        ))
        .unwrap();
        let t = site.server_hello;
        let share = [0x31; 32];
        let mut out = vec![0u8; 2000];
        // The client offered 0x1303: the site's choice is copied.
        let hello = sample_hello(32);
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(1),
            &t,
            900,
            &share,
        );
        assert_eq!(n, server_hello_len_as(&t, 32, 900));
        let o = tlsprofile::parse_server_flight(&out[..n]).unwrap();
        assert_eq!(o.server_hello, t);
        assert_eq!(o.server_hello_record_len, site.server_hello_record_len);
        assert_eq!(o.records(), [900]);
        assert_eq!(
            verify_server_flight(&out[..n], &hello.random, &key()),
            Ok(Some(n))
        );
        // The key share is ours, right after its header.
        let p = 44 + 32 + 2 + 1 + 2;
        assert_eq!(
            out[p..p + 8],
            [0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]
        );
        assert_eq!(out[p + 8..p + 40], share);
        assert_eq!(out[p + 40..p + 46], [0x00, 0x29, 0x00, 0x02, 0x00, 0x00]);
        assert_eq!(out[p + 46..p + 52], [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
        // A client that did not offer 0x1303 gets its own first suite.
        let mut h = sample_hello(32);
        h.tls13_suites = 0b001;
        h.cipher_suite = 0x1301;
        assert!(!h.offers(0x1303) && h.offers(0x1301));
        let n = write_server_hello_as(&mut out, &h, &key(), &mut XorShift64(1), &t, 900, &share);
        assert_eq!(out[44 + 32..44 + 34], [0x13, 0x01]);
        assert_eq!(
            verify_server_flight(&out[..n], &h.random, &key()),
            Ok(Some(n))
        );
    }

    #[test]
    fn accepts_template_without_key_share_and_clamps_to_one_record() {
        // A TLS 1.2 template (no extensions): the fake still says TLS 1.3 with x25519.
        const TLS12: &[u8] = include_bytes!("../../tests/data/tls/nginx-tls12-flight.bin");
        let t = tlsprofile::parse_server_flight(TLS12).unwrap().server_hello;
        let hello = sample_hello(32);
        let mut out = vec![0u8; 40_000];
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(2),
            &t,
            100_000,
            &[5; 32],
        );
        assert_eq!(n, server_hello_len_as(&t, 32, MAX_CIPHERTEXT));
        let o = tlsprofile::parse_server_flight(&out[..n]).unwrap();
        assert!(o.is_tls13());
        // nginx's TLS 1.2 extensions are kept in order, TLS 1.3's two are appended.
        let mut types = t.extension_types();
        assert!(!types.is_empty() && !types.contains(&0x33));
        types.extend([0x2b, 0x33]);
        assert_eq!(o.server_hello.extension_types(), types);
        assert_eq!(o.server_hello.key_share_group(), Some(0x1d));
        assert_eq!(o.records(), [MAX_CIPHERTEXT as u16]);
        assert_eq!(
            verify_server_flight(&out[..n], &hello.random, &key()),
            Ok(Some(n))
        );
        let need = server_hello_len_as(&t, 32, 10);
        assert_eq!(
            write_server_hello_as(
                &mut out[..need - 1],
                &hello,
                &key(),
                &mut XorShift64(2),
                &t,
                10,
                &[5; 32]
            ),
            0
        );
    }

    #[test]
    fn accepts_noise_room_as_the_exact_fit() {
        let t = ServerHelloTemplate::default();
        let hello = sample_hello(32);
        let mut out = vec![0u8; 16_384];
        let room = noise_room(&t, 32, out.len());
        assert_eq!(room, 16_384 - 138);
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(1),
            &t,
            room,
            &[1; 32],
        );
        assert_eq!(n, 16_384);
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &key(),
            &mut XorShift64(1),
            &t,
            room + 1,
            &[1; 32],
        );
        assert_eq!(n, 0);
        assert_eq!(noise_room(&t, 32, 100), 0);
        assert_eq!(noise_room(&t, 32, 1 << 20), MAX_CIPHERTEXT);
    }

    #[test]
    fn accepts_offered_tls13_suites_from_parse() {
        let k = [1; 16];
        let rec = build_client_hello(&mut XorShift64(3), &k, "a.example", 1);
        let h = parse_client_hello(&rec[5..]).unwrap();
        assert_eq!(h.tls13_suites, 0b111);
        assert!(h.offers(0x1301) && h.offers(0x1302) && h.offers(0x1303));
        assert!(!h.offers(0x1304) && !h.offers(0x1305) && !h.offers(0x1306));
        assert!(h.offers(h.cipher_suite));
        assert!(!h.offers(0xc02b));
    }

    #[test]
    fn accepts_record_header() {
        assert_eq!(record_header(0x1234), [0x17, 0x03, 0x03, 0x12, 0x34]);
        assert_eq!(record_header(0), [0x17, 0x03, 0x03, 0, 0]);
    }

    /// CCS, app data, alert (dropped), empty app data, app data.
    fn post_handshake_stream() -> (Vec<u8>, Vec<u8>) {
        let p1: Vec<u8> = (0..40u8).collect();
        let p2: Vec<u8> = (100..130u8).collect();
        let mut s = CCS_RECORD.to_vec();
        s.extend_from_slice(&record_header(p1.len() as u16));
        s.extend_from_slice(&p1);
        s.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
        s.extend_from_slice(&record_header(0));
        s.extend_from_slice(&record_header(p2.len() as u16));
        s.extend_from_slice(&p2);
        let mut want = p1;
        want.extend_from_slice(&p2);
        (s, want)
    }

    fn feed(reader: &mut RecordReader, chunks: &[&[u8]]) -> Result<Vec<u8>, Reject> {
        let mut got = Vec::new();
        for c in chunks {
            let mut buf = c.to_vec();
            let n = reader.deframe_in_place(&mut buf)?;
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    }

    #[test]
    fn accepts_records_split_at_every_position() {
        let (s, want) = post_handshake_stream();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let mut r = RecordReader::new();
                let got = feed(&mut r, &[&s[..i], &s[i..j], &s[j..]]).unwrap();
                assert_eq!(got, want, "{i} {j}");
                assert!(r.at_boundary());
            }
        }
        // One byte at a time.
        let mut r = RecordReader::new();
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(feed(&mut r, &chunks).unwrap(), want);
        // Reader state is Copy: a copy taken mid-record continues identically.
        let mut r = RecordReader::new();
        let mut head = s[..20].to_vec();
        let n = r.deframe_in_place(&mut head).unwrap();
        let mut r2 = r;
        let mut t1 = s[20..].to_vec();
        let mut t2 = s[20..].to_vec();
        assert_eq!(r.deframe_in_place(&mut t1), r2.deframe_in_place(&mut t2));
        assert_eq!(n, 20 - 6 - 5);
        assert!(
            !RecordReader {
                hdr_len: 2,
                ..RecordReader::new()
            }
            .at_boundary()
        );
    }

    #[test]
    fn rejects_bad_record_version() {
        let mut r = RecordReader::new();
        assert_eq!(
            r.deframe_in_place(&mut [0x17, 0x03, 0x01, 0x00, 0x01, 0x00]),
            Err(Reject::RecordVersion)
        );
        let mut r = RecordReader::new();
        let mut s = record_header(2).to_vec();
        s.extend_from_slice(&[1, 2]);
        s.extend_from_slice(&[0x17, 0x02, 0x03]);
        assert_eq!(
            feed(&mut r, &[&s[..4], &s[4..], &[0, 0]]),
            Err(Reject::RecordVersion)
        );
        // Even a dropped record type must carry 03 03.
        let mut r = RecordReader::new();
        assert_eq!(
            r.deframe_in_place(&mut [0x14, 0x03, 0x01, 0x00, 0x01, 0x01]),
            Err(Reject::RecordVersion)
        );
    }

    #[test]
    fn rejects_nothing_by_panicking_in_deframer_garbage() {
        let mut rng = XorShift64(17);
        for _ in 0..2000 {
            let mut r = RecordReader::new();
            for _ in 0..4 {
                let mut buf = vec![0u8; rng.below(64) as usize];
                rng.fill(&mut buf);
                // Make versions valid often enough to go deep.
                for (i, b) in buf.iter_mut().enumerate() {
                    if i % 5 == 1 || i % 5 == 2 {
                        *b = 3;
                    }
                }
                let len = buf.len();
                match r.deframe_in_place(&mut buf) {
                    Ok(n) => assert!(n <= len),
                    Err(e) => {
                        assert_eq!(e, Reject::RecordVersion);
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn accepts_telegram_hello_shaped_like_the_capture() {
        let mut rng = crate::proto::XorShift64(8);
        let key = [7u8; 16];
        for host in [
            "storage.googleapis.com",
            "a.io",
            "www.some-longer-host-name.example.org",
        ] {
            let rec = telegram_hello(&mut rng, &key, host, 1_700_000_000);
            assert_eq!(rec.len(), 517, "{host}");
            let mut scratch = [0u8; 4096];
            let HelloRead::Complete { msg_len, .. } = read_client_hello(&rec, &mut scratch) else {
                panic!("{host}: not a complete hello");
            };
            let msg = &scratch[..msg_len];
            let h = parse_client_hello(msg).unwrap();
            assert_eq!(
                verify_client_hello(&h, msg, &key, host.as_bytes(), 1_700_000_000, 5),
                Ok(1_700_000_000)
            );
            assert_eq!(h.cipher_suite, 0x1303);
        }
        // Same host as the capture: everything but random, session id and key share is equal.
        let rec = telegram_hello(&mut rng, &key, "storage.googleapis.com", 1);
        let t = &TELEGRAM_HELLO[..];
        assert_eq!(&rec[..11], &t[..11]);
        assert_eq!(
            &rec[76..300],
            &t[76..300]
                .iter()
                .zip(&rec[76..300])
                .map(|(a, b)| if a == b { *a } else { *b })
                .collect::<Vec<_>>()[..]
        );
        let differing = rec.iter().zip(t.iter()).filter(|(a, b)| a != b).count();
        assert!(
            differing <= 32 + 32 + 32,
            "{differing} bytes differ from the capture"
        );
    }
}
