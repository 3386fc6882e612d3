//! A minimal TLS 1.3 client that *observes* a website's traffic timing (PROTOCOL.md §7.4).
//!
//! Pure / sans-IO: the caller moves whole records between this state machine and a socket.
//! The scout uses it to fetch a page from the fronting site (or a `[defense.doppelganger]
//! urls` page) and time the response records, so that mtpx's inter-record gaps can be fitted
//! to the site's. It is **not a secure channel**: it offers exactly X25519 and
//! TLS_AES_128_GCM_SHA256 (mandatory in RFC 8446 §9.1), and it does not check the server's
//! certificate, because nothing it receives is trusted or used beyond record sizes and times.
//! It does check the server's Finished (the key exchange worked) and authenticates its own
//! records (AES-GCM written here from NIST SP 800-38D over the `aes` block cipher), so a real
//! server accepts them.
//!
//! Flow: [`Client::start`] → ClientHello record; [`Client::on_record`] for every record read:
//! ServerHello → keys; encrypted EncryptedExtensions / Certificate / CertificateVerify /
//! Finished → [`Step::Send`] (CCS, client Finished, the request); afterwards every
//! application-data record is [`Step::Data`] (not decrypted: only its size matters), or with
//! [`Options::decrypt`] its plaintext, [`Step::Plain`].
//!
//! The resolver also uses it for `[network] dns` over TLS / HTTPS: there the answers are
//! private from passive observers and safe from injected datagrams, but, with no certificate
//! check, not authenticated against an attacker who terminates TLS on the path (who could
//! forge plain DNS just as well).

use aes::Aes128Enc;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::proto::codec::Reader;
use crate::proto::x25519;

type HmacSha256 = Hmac<Sha256>;

/// TLS_AES_128_GCM_SHA256.
const SUITE: u16 = 0x1301;
const GROUP_X25519: u16 = 0x001d;
const TLS13: u16 = 0x0304;
/// SHA-256 of "HelloRetryRequest" (RFC 8446 §4.1.3): a ServerHello with this random is one.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// Largest record a server may send (header + 2^14 + 256 bytes, RFC 8446 §5.2).
pub const MAX_RECORD: usize = 5 + 16384 + 256;
/// Largest handshake data buffered before the server's Finished (certificate chains).
const MAX_HANDSHAKE: usize = 64 * 1024;

/// Why an observation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsError(pub &'static str);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn bad<T>(why: &'static str) -> Result<T, TlsError> {
    Err(TlsError(why))
}

// ----------------------------------------------------------------------------- AES-128-GCM

/// AES-128-GCM with 96-bit nonces (NIST SP 800-38D). Not constant-time in GHASH: it only
/// ever protects the scout's own request.
pub struct Gcm {
    aes: Aes128Enc,
    /// The hash key H = E(K, 0^128).
    h: u128,
}

/// Multiplication in GF(2^128) with GCM's bit order (SP 800-38D §6.3, Algorithm 1).
fn gf_mul(x: u128, y: u128) -> u128 {
    let mut z = 0u128;
    let mut v = y;
    for i in 0..128 {
        if (x >> (127 - i)) & 1 == 1 {
            z ^= v;
        }
        v = if v & 1 == 1 {
            (v >> 1) ^ (0xe1u128 << 120)
        } else {
            v >> 1
        };
    }
    z
}

impl Gcm {
    pub fn new(key: &[u8; 16]) -> Gcm {
        let aes = Aes128Enc::new(&(*key).into());
        let mut gcm = Gcm { aes, h: 0 };
        gcm.h = u128::from_be_bytes(gcm.block([0; 16]));
        gcm
    }

    fn block(&self, b: [u8; 16]) -> [u8; 16] {
        let mut b = b.into();
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    fn ghash(&self, aad: &[u8], ct: &[u8]) -> u128 {
        let mut y = 0u128;
        for part in [aad, ct] {
            for chunk in part.chunks(16) {
                let mut b = [0u8; 16];
                b[..chunk.len()].copy_from_slice(chunk);
                y = gf_mul(y ^ u128::from_be_bytes(b), self.h);
            }
        }
        let lens = (aad.len() as u128 * 8) << 64 | (ct.len() as u128 * 8);
        gf_mul(y ^ lens, self.h)
    }

    /// CTR from inc32(J0) over `data`; returns E(K, J0) for the tag.
    fn ctr(&self, nonce: &[u8; 12], data: &mut [u8]) -> u128 {
        let mut j = [0u8; 16];
        j[..12].copy_from_slice(nonce);
        j[15] = 1;
        let tag_mask = u128::from_be_bytes(self.block(j));
        for (i, chunk) in data.chunks_mut(16).enumerate() {
            j[12..].copy_from_slice(&(2 + i as u32).to_be_bytes());
            let ks = self.block(j);
            for (d, k) in chunk.iter_mut().zip(ks) {
                *d ^= k;
            }
        }
        tag_mask
    }

    /// Encrypts `data` in place; returns the 16-byte tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        let mask = self.ctr(nonce, data);
        (self.ghash(aad, data) ^ mask).to_be_bytes()
    }

    /// Checks `tag` and decrypts `data` in place; false (data untouched) if the tag is wrong.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
        let expect = self.ghash(aad, data);
        let mut j = [0u8; 16];
        j[..12].copy_from_slice(nonce);
        j[15] = 1;
        let want = (expect ^ u128::from_be_bytes(self.block(j))).to_be_bytes();
        // Constant-time compare (cheap; habit).
        if tag.len() != 16 || want.iter().zip(tag).fold(0, |a, (x, y)| a | (x ^ y)) != 0 {
            return false;
        }
        self.ctr(nonce, data);
        true
    }
}

// ----------------------------------------------------------------------------- key schedule

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// HKDF-Expand-Label (RFC 8446 §7.1) for outputs of at most 32 bytes.
pub fn expand_label(secret: &[u8; 32], label: &str, context: &[u8], len: usize) -> [u8; 32] {
    let full = [b"tls13 ", label.as_bytes()].concat();
    let info = [
        &(len as u16).to_be_bytes()[..],
        &[full.len() as u8],
        &full,
        &[context.len() as u8],
        context,
        &[1],
    ];
    let mut out = hmac(secret, &info);
    out[len.min(32)..].fill(0);
    out
}

/// Handshake-phase and application-phase secrets (RFC 8446 §7.1) for an (EC)DHE-only
/// handshake: `(client_hs, server_hs, master)`.
pub fn handshake_secrets(
    shared: &[u8; 32],
    hello_hash: &[u8; 32],
) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let empty: [u8; 32] = Sha256::digest([]).into();
    let early = hmac(&[0; 32], &[&[0; 32]]);
    let derived = expand_label(&early, "derived", &empty, 32);
    let hs = hmac(&derived, &[shared]);
    let c = expand_label(&hs, "c hs traffic", hello_hash, 32);
    let s = expand_label(&hs, "s hs traffic", hello_hash, 32);
    let derived = expand_label(&hs, "derived", &empty, 32);
    let master = hmac(&derived, &[&[0; 32]]);
    (c, s, master)
}

/// One direction's record protection.
struct Traffic {
    gcm: Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Traffic {
    fn new(secret: &[u8; 32]) -> Traffic {
        let key = expand_label(secret, "key", &[], 16);
        let iv = expand_label(secret, "iv", &[], 12);
        Traffic {
            gcm: Gcm::new(key[..16].try_into().expect("16")),
            iv: iv[..12].try_into().expect("12"),
            seq: 0,
        }
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        n
    }

    /// Appends one protected record carrying `content` of inner type `kind` to `out`.
    fn seal_into(&mut self, kind: u8, content: &[u8], out: &mut Vec<u8>) {
        let len = content.len() + 1 + 16;
        let header = [0x17, 0x03, 0x03, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        let at = out.len();
        out.extend_from_slice(content);
        out.push(kind);
        let nonce = self.nonce();
        let tag = self.gcm.seal(&nonce, &header, &mut out[at..]);
        out.extend_from_slice(&tag);
    }

    /// Decrypts a protected record in place: `(inner type, content)`.
    fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), TlsError> {
        if record.len() < 5 + 17 {
            return bad("protected record too short");
        }
        let (header, body) = record.split_at_mut(5);
        let (ct, tag) = body.split_at_mut(body.len() - 16);
        let nonce = self.nonce();
        if !self.gcm.open(&nonce, header, ct, tag) {
            return bad("record authentication failed");
        }
        // Inner plaintext: content ‖ type ‖ zero padding.
        let end = ct
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(TlsError("empty inner plaintext"))?;
        Ok((ct[end], &ct[..end]))
    }
}

// ----------------------------------------------------------------------------- client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ServerHello,
    ServerFlight,
    Established,
}

/// What the caller does after a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the next record.
    Wait,
    /// Write these bytes (CCS, client Finished and the request), then read on.
    Send(Vec<u8>),
    /// An application-data record of this many bytes (payload, as on the wire).
    Data(usize),
    /// The plaintext of an application-data record ([`Options::decrypt`]).
    Plain(Vec<u8>),
    /// The server closed the session (close_notify; [`Options::decrypt`]).
    Closed,
}

/// How a [`Client`] talks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    /// Server name for SNI (none when empty or an IP literal, RFC 6066 §3).
    pub host: &'a str,
    /// ALPN protocol to offer (none when empty).
    pub alpn: &'a [u8],
    /// Decrypt application data ([`Step::Plain`]) instead of reporting sizes.
    pub decrypt: bool,
}

/// One observing TLS 1.3 connection.
pub struct Client {
    state: State,
    secret: [u8; 32],
    transcript: Sha256,
    client_hs: [u8; 32],
    server_hs: [u8; 32],
    master: [u8; 32],
    server: Option<Traffic>,
    /// Decrypts application data (with [`Options::decrypt`]).
    server_app: Option<Traffic>,
    decrypt: bool,
    /// Handshake bytes decrypted but not yet a whole message.
    pending: Vec<u8>,
    request: Vec<u8>,
}

fn put16(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u16).to_be_bytes());
}

fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    put16(out, body.len());
    out.extend_from_slice(body);
}

impl Client {
    /// A client that sends `request` once the handshake is done. Returns the ClientHello
    /// record to write first.
    pub fn start(
        rng: &mut impl crate::proto::Rng,
        opts: Options<'_>,
        request: &[u8],
    ) -> (Client, Vec<u8>) {
        let (secret, public) = x25519::keypair(rng);
        let mut random = [0u8; 64];
        rng.fill(&mut random);
        let bare = opts.host.trim_start_matches('[').trim_end_matches(']');
        let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
        let host = opts
            .host
            .as_bytes()
            .get(..253)
            .unwrap_or(opts.host.as_bytes());

        let mut exts = Vec::with_capacity(256);
        if !host.is_empty() && !is_ip {
            let mut sni = Vec::with_capacity(host.len() + 5);
            put16(&mut sni, host.len() + 3);
            sni.push(0);
            put16(&mut sni, host.len());
            sni.extend_from_slice(host);
            ext(&mut exts, 0x0000, &sni);
        }
        ext(&mut exts, 0x000a, &[0, 2, 0x00, 0x1d]); // supported_groups: x25519
        // signature_algorithms: ecdsa P-256/P-384, rsa-pss, rsa-pkcs1, ed25519
        ext(
            &mut exts,
            0x000d,
            &[0, 16, 4, 3, 5, 3, 8, 4, 8, 5, 8, 6, 4, 1, 5, 1, 8, 7],
        );
        if !opts.alpn.is_empty() {
            let n = opts.alpn.len().min(255);
            let mut alpn = Vec::with_capacity(n + 3);
            put16(&mut alpn, n + 1);
            alpn.push(n as u8);
            alpn.extend_from_slice(&opts.alpn[..n]);
            ext(&mut exts, 0x0010, &alpn);
        }
        ext(&mut exts, 0x002b, &[2, 0x03, 0x04]); // supported_versions: TLS 1.3
        ext(&mut exts, 0x002d, &[1, 1]); // psk_key_exchange_modes: psk_dhe_ke
        let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
        share.extend_from_slice(&public);
        ext(&mut exts, 0x0033, &share);

        let mut body = Vec::with_capacity(exts.len() + 100);
        body.extend_from_slice(&[0x03, 0x03]);
        body.extend_from_slice(&random[..32]);
        body.push(32); // legacy_session_id (middlebox compatibility, RFC 8446 §D.4)
        body.extend_from_slice(&random[32..]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        put16(&mut body, exts.len());
        body.extend_from_slice(&exts);
        let mut msg = vec![1, 0];
        put16(&mut msg, body.len());
        msg.extend_from_slice(&body);

        let mut record = vec![0x16, 0x03, 0x01];
        put16(&mut record, msg.len());
        record.extend_from_slice(&msg);
        let mut transcript = Sha256::new();
        transcript.update(&msg);
        let client = Client {
            state: State::ServerHello,
            secret,
            transcript,
            client_hs: [0; 32],
            server_hs: [0; 32],
            master: [0; 32],
            server: None,
            server_app: None,
            decrypt: opts.decrypt,
            pending: Vec::new(),
            request: request.to_vec(),
        };
        (client, record)
    }

    /// Whether the handshake is done (application data flows).
    pub fn established(&self) -> bool {
        self.state == State::Established
    }

    /// Handles one whole record (header included).
    pub fn on_record(&mut self, record: &mut [u8]) -> Result<Step, TlsError> {
        if record.len() < 5
            || usize::from(u16::from_be_bytes([record[3], record[4]])) != record.len() - 5
        {
            return bad("malformed record");
        }
        match (record[0], self.state) {
            (0x15, _) => bad("alert from the server"),
            (0x14, _) if self.state != State::Established => Ok(Step::Wait), // compatibility CCS
            (0x16, State::ServerHello) => self.server_hello(&record[5..]),
            (0x17, State::ServerFlight) => self.server_flight(record),
            (0x17, State::Established) => match self.server_app.as_mut() {
                None => Ok(Step::Data(record.len() - 5)),
                Some(app) => match app.open(record)? {
                    (0x17, data) => Ok(Step::Plain(data.to_vec())),
                    (0x16, _) => Ok(Step::Wait), // NewSessionTicket
                    (0x15, [_, 0]) => Ok(Step::Closed),
                    _ => bad("alert or key update after the handshake"),
                },
            },
            _ => bad("unexpected record"),
        }
    }

    fn server_hello(&mut self, msg: &[u8]) -> Result<Step, TlsError> {
        // One ServerHello message in one record (what servers send).
        const SHORT: TlsError = TlsError("truncated ServerHello");
        let mut r = Reader::new(msg);
        let (kind, len) = (r.u8().ok_or(SHORT)?, r.u24().ok_or(SHORT)?);
        if kind != 2 || len != r.left() {
            return bad("not a ServerHello");
        }
        let _version = r.u16().ok_or(SHORT)?;
        if r.take(32).ok_or(SHORT)? == HRR_RANDOM {
            return bad("HelloRetryRequest (x25519 refused)");
        }
        let sid_len = r.u8().ok_or(SHORT)?;
        r.take(usize::from(sid_len)).ok_or(SHORT)?;
        let (suite, compression) = (r.u16().ok_or(SHORT)?, r.u8().ok_or(SHORT)?);
        if (suite, compression) != (SUITE, 0) {
            return bad("server chose another cipher suite");
        }
        let exts_len = r.u16().ok_or(SHORT)?;
        if usize::from(exts_len) != r.left() {
            return bad("bad extensions length");
        }
        let (mut version, mut share) = (0u16, None);
        while !r.is_empty() {
            let kind = r.u16().ok_or(SHORT)?;
            let n = usize::from(r.u16().ok_or(SHORT)?);
            let mut data = r.sub(n).ok_or(SHORT)?;
            match kind {
                0x002b if n == 2 => version = data.u16().ok_or(SHORT)?,
                0x0033 if n == 36 => {
                    if (data.u16(), data.u16()) != (Some(GROUP_X25519), Some(32)) {
                        return bad("key share is not x25519");
                    }
                    share = Some(data.take_array::<32>().ok_or(SHORT)?);
                }
                _ => {}
            }
        }
        if version != TLS13 {
            return bad("server did not choose TLS 1.3");
        }
        let peer = share.ok_or(TlsError("no key share"))?;
        let shared = x25519::x25519(&self.secret, &peer);
        if shared == [0; 32] {
            return bad("degenerate key share");
        }
        self.transcript.update(msg);
        let hash: [u8; 32] = self.transcript.clone().finalize().into();
        let (c, s, master) = handshake_secrets(&shared, &hash);
        self.client_hs = c;
        self.server_hs = s;
        self.master = master;
        self.server = Some(Traffic::new(&s));
        self.secret = [0; 32];
        self.state = State::ServerFlight;
        Ok(Step::Wait)
    }

    fn server_flight(&mut self, record: &mut [u8]) -> Result<Step, TlsError> {
        let server = self.server.as_mut().ok_or(TlsError("no keys"))?;
        let (kind, content) = server.open(record)?;
        if kind != 0x16 {
            return bad("unexpected content before Finished");
        }
        if self.pending.len() + content.len() > MAX_HANDSHAKE {
            return bad("server handshake too large");
        }
        self.pending.extend_from_slice(content);
        // Whole messages: hash each into the transcript; Finished ends the flight.
        loop {
            let buf = &self.pending[..];
            if buf.len() < 4 {
                return Ok(Step::Wait);
            }
            let len = usize::from(buf[1]) << 16 | usize::from(buf[2]) << 8 | usize::from(buf[3]);
            if buf.len() < 4 + len {
                return Ok(Step::Wait);
            }
            let msg_type = buf[0];
            if msg_type == 13 {
                return bad("server asked for a client certificate");
            }
            if msg_type == 20 {
                let hash: [u8; 32] = self.transcript.clone().finalize().into();
                let key = expand_label(&self.server_hs, "finished", &[], 32);
                let want = hmac(&key, &[&hash]);
                let msg = &self.pending[..4 + len];
                if len != 32 || msg[4..] != want {
                    return bad("server Finished does not verify");
                }
                self.transcript.update(msg);
                return Ok(Step::Send(self.finish()));
            }
            self.transcript.update(&self.pending[..4 + len]);
            self.pending.drain(..4 + len);
        }
    }

    /// After the server's Finished: our CCS, Finished and request.
    fn finish(&mut self) -> Vec<u8> {
        let hash: [u8; 32] = self.transcript.clone().finalize().into();
        let c_ap = expand_label(&self.master, "c ap traffic", &hash, 32);
        if self.decrypt {
            let s_ap = expand_label(&self.master, "s ap traffic", &hash, 32);
            self.server_app = Some(Traffic::new(&s_ap));
        }
        let key = expand_label(&self.client_hs, "finished", &[], 32);
        let mut fin = vec![20, 0, 0, 32];
        fin.extend_from_slice(&hmac(&key, &[&hash]));
        let mut out = vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
        Traffic::new(&self.client_hs).seal_into(0x16, &fin, &mut out);
        let mut app = Traffic::new(&c_ap);
        for chunk in self.request.chunks(16 * 1024) {
            app.seal_into(0x17, chunk, &mut out);
        }
        self.pending = Vec::new();
        self.state = State::Established;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::encoding::hex_decode;

    const OBSERVE: Options<'static> = Options {
        host: "site.test",
        alpn: b"http/1.1",
        decrypt: false,
    };

    fn h(s: &str) -> Vec<u8> {
        hex_decode(s).expect("hex")
    }

    #[test]
    fn gcm_matches_sp800_38d_test_cases() {
        // McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 1 and 2.
        let g = Gcm::new(&[0; 16]);
        let mut empty = [];
        assert_eq!(
            g.seal(&[0; 12], &[], &mut empty).to_vec(),
            h("58e2fccefa7e3061367f1d57a4e7455a")
        );
        let mut p = [0u8; 16];
        let tag = g.seal(&[0; 12], &[], &mut p);
        assert_eq!(p.to_vec(), h("0388dace60b6a392f328c2b971b2fe78"));
        assert_eq!(tag.to_vec(), h("ab6e47d42cec13bdf53a67b21257bddf"));
        assert!(g.open(&[0; 12], &[], &mut p, &tag));
        assert_eq!(p, [0; 16]);
    }

    #[test]
    fn gcm_with_aad_and_partial_blocks_matches_pyca_cryptography() {
        // AESGCM(bytes(range(16))).encrypt(bytes(range(100, 112)), pt, aad) in Python's
        // `cryptography` (OpenSSL), pt = bytes(i * 7 & 255 for i in range(40)).
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let nonce: [u8; 12] = core::array::from_fn(|i| 100 + i as u8);
        let aad = [0x17, 0x03, 0x03, 0x00, 0x39];
        let pt: Vec<u8> = (0..40u32).map(|i| (i * 7) as u8).collect();
        let want = h(
            "1a6540b0c72192cba301115dd291498540ff067a1e3a47fb5cc0072a7839252a\
                      5a1bbcd1771b2d80d26aa892f90df294fea07e672406f051",
        );
        let g = Gcm::new(&key);
        let mut data = pt.clone();
        let tag = g.seal(&nonce, &aad, &mut data);
        assert_eq!([&data[..], &tag[..]].concat(), want);
        // Any flipped bit is refused and leaves the data alone.
        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        assert!(!g.open(&nonce, &aad, &mut data, &bad_tag));
        assert!(!g.open(&nonce, &[0x17, 0x03, 0x03, 0x00, 0x38], &mut data, &tag));
        assert!(g.open(&nonce, &aad, &mut data, &tag));
        assert_eq!(data, pt);
    }

    #[test]
    fn key_schedule_matches_pyca_hkdf() {
        // HKDF from Python's `cryptography` with RFC 8446 §7.1 labels; shared secret
        // bytes(range(32, 64)), hello hash SHA-256(b"hello").
        let shared: [u8; 32] = core::array::from_fn(|i| 32 + i as u8);
        let hash: [u8; 32] = Sha256::digest(b"hello").into();
        let (c, s, m) = handshake_secrets(&shared, &hash);
        assert_eq!(
            c.to_vec(),
            h("a1a6ee84e40fdc2a6c9df9da5df890848af3aeb62e09f0dd5483bf587f0df0d2")
        );
        assert_eq!(
            s.to_vec(),
            h("5d10cfb890a48cd5f941bc30cf77aaa321a6de4a010986dcc4b59117961fdb78")
        );
        assert_eq!(
            m.to_vec(),
            h("fac3a76d2459761dd95711164dbdf69610f2d914055aeb86bc502bb635b6d676")
        );
        assert_eq!(
            expand_label(&m, "key", &[], 16)[..16],
            h("ed22a7b3c25abd3f4cc1f0d47f8e8630")[..]
        );
        assert_eq!(
            expand_label(&m, "iv", &[], 12)[..12],
            h("95649da6b78103bd25bc3dc2")[..]
        );
    }

    /// A server side written with the same primitives, to drive the client through a whole
    /// handshake in memory (the interop test against nginx is in tests/fidelity.rs).
    #[test]
    fn client_completes_a_handshake_and_reports_data_records() {
        use crate::proto::XorShift64;
        let mut rng = XorShift64(3);
        let (mut client, hello) = Client::start(&mut rng, OBSERVE, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&hello[..3], &[0x16, 0x03, 0x01]);
        // The server's key share and ServerHello.
        let (srv_secret, srv_public) = x25519::keypair(&mut rng);
        let client_public: [u8; 32] = hello[hello.len() - 32..].try_into().unwrap();
        let mut sh = vec![2, 0, 0, 0, 3, 3];
        sh.extend_from_slice(&[7; 32]);
        sh.push(32);
        sh.extend_from_slice(&hello[44..76]); // echo the session id
        sh.extend_from_slice(&[
            0x13, 0x01, 0, 0, 46, 0, 0x2b, 0, 2, 3, 4, 0, 0x33, 0, 36, 0, 0x1d, 0, 32,
        ]);
        sh.extend_from_slice(&srv_public);
        let n = sh.len() - 4;
        sh[3] = n as u8;
        let mut transcript = Sha256::new();
        transcript.update(&hello[5..]);
        transcript.update(&sh);
        let mut rec = vec![0x16, 3, 3, 0, sh.len() as u8];
        rec.extend_from_slice(&sh);
        assert_eq!(client.on_record(&mut rec), Ok(Step::Wait));
        let mut ccs = [0x14, 3, 3, 0, 1, 1];
        assert_eq!(client.on_record(&mut ccs), Ok(Step::Wait));

        let shared = x25519::x25519(&srv_secret, &client_public);
        let hash: [u8; 32] = transcript.clone().finalize().into();
        let (c_hs, s_hs, master) = handshake_secrets(&shared, &hash);
        let mut server = Traffic::new(&s_hs);
        // EncryptedExtensions, then a fake Certificate split over two records, then Finished.
        let ee = [8u8, 0, 0, 2, 0, 0];
        let cert = [[11u8, 0, 0, 100].as_slice(), &[0x55; 100]].concat();
        let mut flight = Vec::new();
        server.seal_into(0x16, &[&ee[..], &cert[..50]].concat(), &mut flight);
        server.seal_into(0x16, &cert[50..], &mut flight);
        transcript.update(ee);
        transcript.update(&cert);
        let fin_key = expand_label(&s_hs, "finished", &[], 32);
        let hash: [u8; 32] = transcript.clone().finalize().into();
        let fin = [&[20u8, 0, 0, 32][..], &hmac(&fin_key, &[&hash])].concat();
        transcript.update(&fin);
        server.seal_into(0x16, &fin, &mut flight);
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut rest = &flight[..];
        while !rest.is_empty() {
            let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            records.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        assert_eq!(client.on_record(&mut records[0]), Ok(Step::Wait));
        assert_eq!(client.on_record(&mut records[1]), Ok(Step::Wait));
        let Ok(Step::Send(out)) = client.on_record(&mut records[2]) else {
            panic!("no Finished sent");
        };
        assert!(client.established());
        // Our CCS, then Finished under the client handshake key, then the request.
        assert_eq!(&out[..6], &[0x14, 3, 3, 0, 1, 1]);
        let mut c = Traffic::new(&c_hs);
        let len = 5 + usize::from(u16::from_be_bytes([out[9], out[10]]));
        let mut fin_rec = out[6..6 + len].to_vec();
        let (kind, body) = c.open(&mut fin_rec).expect("client Finished decrypts");
        let hash: [u8; 32] = transcript.clone().finalize().into();
        let want = hmac(&expand_label(&c_hs, "finished", &[], 32), &[&hash]);
        assert_eq!((kind, &body[4..]), (0x16, &want[..]));
        let c_ap = expand_label(&master, "c ap traffic", &hash, 32);
        let mut app = Traffic::new(&c_ap);
        let mut req = out[6 + len..].to_vec();
        let (kind, body) = app.open(&mut req).expect("request decrypts");
        assert_eq!((kind, body), (0x17, &b"GET / HTTP/1.1\r\n\r\n"[..]));
        // Then application data is reported by size.
        let mut data = [0x17, 3, 3, 0, 3, 1, 2, 3];
        assert_eq!(client.on_record(&mut data), Ok(Step::Data(3)));
        let mut alert = [0x15, 3, 3, 0, 2, 1, 0];
        assert!(client.on_record(&mut alert).is_err());
    }

    #[test]
    fn hostile_server_records_are_errors_never_panics() {
        use crate::proto::XorShift64;
        let mut rng = XorShift64(9);
        for seed in 0..2000u64 {
            let (mut client, _) = Client::start(&mut rng, OBSERVE, b"");
            let mut r = XorShift64(seed);
            let len = (r.next_u64() % 120) as usize;
            let mut rec = vec![0u8; 5 + len];
            crate::proto::Rng::fill(&mut r, &mut rec);
            rec[0] = [0x14, 0x15, 0x16, 0x17][seed as usize % 4];
            rec[3..5].copy_from_slice(&(len as u16).to_be_bytes());
            if seed % 3 == 0 && len > 4 {
                rec[5] = 2; // looks like a ServerHello
            }
            let _ = client.on_record(&mut rec);
            let _ = client.on_record(&mut rec.clone());
        }
        let (mut client, _) = Client::start(&mut rng, OBSERVE, b"");
        assert!(client.on_record(&mut [0x16, 3, 3, 0, 9, 1]).is_err());
        assert!(client.on_record(&mut [0x16]).is_err());
    }
}
