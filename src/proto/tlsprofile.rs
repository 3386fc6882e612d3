//! The fronted site's TLS handshake *shape*, learned without a TLS library.
//!
//! The scout (`background::scout`) sends the site a browser's ClientHello of each [`HelloKind`] and
//! reads its first flight; [`parse_server_flight`] turns those bytes into an [`Observation`]: the ServerHello's
//! shape (legacy version, cipher suite, session-id echo length, compression, extensions in order
//! with their lengths, key-share group, supported version), whether a ChangeCipherSpec record
//! followed, and the lengths of the encrypted records. Nothing is decrypted.
//!
//! A [`Profile`] keeps a bounded sample of observations and derives the [`FlightShape`] the
//! proxy's fake flight copies: the most common ServerHello template, and the range of the total
//! encrypted size (expressed as the payload of the one application-data record mtpx sends, so
//! that the bytes on the wire after the CCS match). Without a usable observation it gives the
//! built-in mtg-like default and says why. [`Profiles`] keeps one [`Profile`] per kind of hello
//! (x25519 only, X25519MLKEM768), so each client gets the site's answer to its own kind.
//!
//! Pure: no sockets, no clock, no OS randomness. Spec: PROTOCOL.md §2.4, §7.4, §13.5.
//!
//! Invariants:
//! * no input panics: any bytes give `NeedMore`, an observation or a definite error;
//! * a [`FlightShape`]'s noise range is within `1..=`[`MAX_CIPHERTEXT`];
//! * a [`ServerHelloTemplate`] has at most [`MAX_EXTENSIONS`] extensions.

use std::collections::VecDeque;
use std::fmt;

use super::Rng;
use super::codec::Reader;

/// Most ciphertext one TLS 1.3 record may carry (2^14 + 256, RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = 16384 + 256;
/// Most encrypted records kept per observation.
pub const MAX_RECORDS: usize = 16;
/// Most ServerHello extensions kept in a template.
pub const MAX_EXTENSIONS: usize = 8;
/// Longest "other" ServerHello extension reproduced (longer ones make the observation unusable).
pub const MAX_OTHER_EXTENSION: u16 = 64;
/// Observations a [`Profile`] keeps by default.
pub const SAMPLE_CAP: usize = 32;
/// Built-in noise range (mtg's uncalibrated `2500 + U[0, 2200)`), inclusive.
pub const DEFAULT_NOISE: (u16, u16) = (2500, 4699);

/// supported_versions extension type.
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// key_share extension type.
pub const EXT_KEY_SHARE: u16 = 0x0033;
/// The x25519 named group.
pub const GROUP_X25519: u16 = 0x001d;
/// The X25519MLKEM768 hybrid group (draft-ietf-tls-ecdhe-mlkem): what today's browsers and
/// TDLib ≥ 1.8.69 offer first.
pub const GROUP_X25519_MLKEM768: u16 = 0x11ec;
/// Key-share data length of an x25519 ServerHello share: group, length, 32-byte key.
pub const X25519_SHARE_EXT_LEN: u16 = 4 + 32;
/// Key-share data length of an X25519MLKEM768 ServerHello share: group, length, the 1,088-byte
/// ML-KEM-768 ciphertext and the 32-byte X25519 key.
pub const MLKEM_SHARE_EXT_LEN: u16 = 4 + 1088 + 32;

/// The kinds of ClientHello whose answers the scout learns and the fake flight mirrors: what
/// decides a site's ServerHello is mostly the key shares a hello carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HelloKind {
    /// An x25519 share only (older TDLib, third-party libraries).
    Classic,
    /// An X25519MLKEM768 share (and an x25519 one): TDLib ≥ 1.8.69, current browsers.
    PostQuantum,
}

impl HelloKind {
    /// Every kind, in index order.
    pub const ALL: [HelloKind; 2] = [HelloKind::Classic, HelloKind::PostQuantum];

    /// The position in [`HelloKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short stable label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HelloKind::Classic => "x25519",
            HelloKind::PostQuantum => "x25519mlkem768",
        }
    }
}
/// TLS 1.3 in supported_versions.
pub const TLS13: u16 = 0x0304;

/// The random of a HelloRetryRequest (SHA-256 of "HelloRetryRequest", RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// One ServerHello extension's shape: type, data length and, for supported_versions and
/// key_share, the version / the group (0 for others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Extension {
    /// Extension type.
    pub kind: u16,
    /// Length of the extension data.
    pub len: u16,
    /// supported_versions: the selected version; key_share: the group; else 0.
    pub value: u16,
}

impl Extension {
    /// Bytes this extension takes in a ServerHello (4-byte header + data).
    pub fn wire_len(&self) -> usize {
        4 + usize::from(self.len)
    }
}

/// The shape of a ServerHello: everything except the random, the session id bytes and the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerHelloTemplate {
    legacy_version: u16,
    cipher_suite: Option<u16>,
    session_id_len: u8,
    compression: u8,
    extensions: [Extension; MAX_EXTENSIONS],
    extension_count: u8,
    /// False when the ServerHello had no extensions block at all (pre-TLS 1.3 servers).
    has_extensions: bool,
    /// More than [`MAX_EXTENSIONS`] extensions were sent (the rest are not kept).
    extension_overflow: bool,
}

impl Default for ServerHelloTemplate {
    /// mtg's ServerHello: legacy 0x0303, the client's cipher suite, a 32-byte session-id echo,
    /// supported_versions (TLS 1.3) then key_share (x25519).
    fn default() -> Self {
        let mut extensions = [Extension::default(); MAX_EXTENSIONS];
        extensions[0] = Extension {
            kind: EXT_SUPPORTED_VERSIONS,
            len: 2,
            value: TLS13,
        };
        extensions[1] = Extension {
            kind: EXT_KEY_SHARE,
            len: 36,
            value: GROUP_X25519,
        };
        ServerHelloTemplate {
            legacy_version: 0x0303,
            cipher_suite: None,
            session_id_len: 32,
            compression: 0,
            extensions,
            extension_count: 2,
            has_extensions: true,
            extension_overflow: false,
        }
    }
}

impl ServerHelloTemplate {
    /// The ServerHello's legacy_version field.
    pub fn legacy_version(&self) -> u16 {
        self.legacy_version
    }

    /// The cipher suite the site chose; `None` = use the client's first non-GREASE suite.
    pub fn cipher_suite(&self) -> Option<u16> {
        self.cipher_suite
    }

    /// Length of the session id the site echoed.
    pub fn session_id_len(&self) -> u8 {
        self.session_id_len
    }

    /// The compression method byte.
    pub fn compression(&self) -> u8 {
        self.compression
    }

    /// The extensions in the site's order.
    pub fn extensions(&self) -> &[Extension] {
        let n = usize::from(self.extension_count).min(MAX_EXTENSIONS);
        self.extensions.get(..n).unwrap_or(&[])
    }

    /// The extension of this type, if present.
    pub fn extension(&self, kind: u16) -> Option<Extension> {
        self.extensions().iter().copied().find(|e| e.kind == kind)
    }

    /// The key-share group, if a key_share extension is present.
    pub fn key_share_group(&self) -> Option<u16> {
        self.extension(EXT_KEY_SHARE).map(|e| e.value)
    }

    /// The version selected in supported_versions, if present.
    pub fn supported_version(&self) -> Option<u16> {
        self.extension(EXT_SUPPORTED_VERSIONS).map(|e| e.value)
    }

    /// The extension types in order (for logs and comparisons).
    pub fn extension_types(&self) -> Vec<u16> {
        self.extensions().iter().map(|e| e.kind).collect()
    }

    /// Length of the ServerHello handshake message (4-byte header included) that this template
    /// gives with a session id of `sid_len` bytes, as the site itself sent it.
    pub fn message_len(&self, sid_len: usize) -> usize {
        let ext: usize = self.extensions().iter().map(Extension::wire_len).sum();
        let ext_block = if self.has_extensions { 2 + ext } else { 0 };
        4 + 2 + 32 + 1 + sid_len + 2 + 1 + ext_block
    }

    /// The same template answering with an x25519 key share (for a client that offered no
    /// X25519MLKEM768 share: a server never answers with a group the client did not offer).
    pub fn with_x25519_share(mut self) -> Self {
        let n = usize::from(self.extension_count).min(MAX_EXTENSIONS);
        for e in self.extensions.iter_mut().take(n) {
            if e.kind == EXT_KEY_SHARE {
                e.len = X25519_SHARE_EXT_LEN;
                e.value = GROUP_X25519;
            }
        }
        self
    }

    /// Why a fake ServerHello cannot copy this template (TLS 1.3 with x25519 or
    /// X25519MLKEM768 only).
    pub fn check(&self) -> Result<(), Unusable> {
        match self.supported_version() {
            Some(TLS13) => {}
            other => return Err(Unusable::NotTls13(other.unwrap_or(self.legacy_version))),
        }
        match self.extension(EXT_KEY_SHARE) {
            Some(e) if e.value == GROUP_X25519 && e.len == X25519_SHARE_EXT_LEN => {}
            Some(e) if e.value == GROUP_X25519_MLKEM768 && e.len == MLKEM_SHARE_EXT_LEN => {}
            Some(e) => return Err(Unusable::KeyShare(Some(e.value))),
            None => return Err(Unusable::KeyShare(None)),
        }
        if self.extension_overflow {
            return Err(Unusable::Odd("too many extensions"));
        }
        if self.legacy_version != 0x0303 || self.compression != 0 || !self.has_extensions {
            return Err(Unusable::Odd("legacy version or compression"));
        }
        if self
            .extension(EXT_SUPPORTED_VERSIONS)
            .is_some_and(|e| e.len != 2)
        {
            return Err(Unusable::Odd("supported_versions length"));
        }
        let mut seen = [0u16; MAX_EXTENSIONS];
        for (i, e) in self.extensions().iter().enumerate() {
            if seen.get(..i).unwrap_or(&[]).contains(&e.kind) {
                return Err(Unusable::Odd("duplicate extension"));
            }
            if let Some(s) = seen.get_mut(i) {
                *s = e.kind;
            }
            if e.kind != EXT_KEY_SHARE
                && e.kind != EXT_SUPPORTED_VERSIONS
                && e.len > MAX_OTHER_EXTENSION
            {
                return Err(Unusable::Odd("long extension"));
            }
        }
        Ok(())
    }
}

/// Why an observation (or a whole profile) cannot be copied; the fake flight then uses the
/// built-in default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// The site negotiated a version other than TLS 1.3 (the value: selected or legacy version).
    NotTls13(u16),
    /// The site asked for another key share (HelloRetryRequest).
    HelloRetry,
    /// The key share is not x25519 or X25519MLKEM768 (the group, if any).
    KeyShare(Option<u16>),
    /// No encrypted record followed the ServerHello.
    NoEncryptedRecords,
    /// More encrypted records than [`MAX_RECORDS`].
    TooManyRecords,
    /// Something no TLS 1.3 server sends.
    Odd(&'static str),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NotTls13(v) => write!(f, "the site negotiated version {v:#06x}, not TLS 1.3"),
            Unusable::HelloRetry => {
                f.write_str("the site asked for another key share (HelloRetryRequest)")
            }
            Unusable::KeyShare(Some(g)) => {
                write!(
                    f,
                    "the site's key share is group {g:#06x}, not x25519 or X25519MLKEM768"
                )
            }
            Unusable::KeyShare(None) => f.write_str("the site sent no key share"),
            Unusable::NoEncryptedRecords => {
                f.write_str("no encrypted records after the ServerHello")
            }
            Unusable::TooManyRecords => write!(f, "more than {MAX_RECORDS} encrypted records"),
            Unusable::Odd(what) => write!(f, "unusual ServerHello ({what})"),
        }
    }
}

/// What the site answered to one ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The ServerHello's shape.
    pub server_hello: ServerHelloTemplate,
    /// Length of the ServerHello record's payload.
    pub server_hello_record_len: u16,
    /// The ServerHello record's version field.
    pub record_version: u16,
    /// The ServerHello was a HelloRetryRequest.
    pub hello_retry: bool,
    /// A ChangeCipherSpec record followed the ServerHello.
    pub ccs: bool,
    /// Payload lengths of the encrypted (application-data) records, in order.
    pub encrypted_records: [u16; MAX_RECORDS],
    /// How many of `encrypted_records` are used.
    pub record_count: u8,
    /// More than [`MAX_RECORDS`] encrypted records were seen (the rest are not kept).
    pub overflow: bool,
}

impl Observation {
    /// The encrypted records' payload lengths.
    pub fn records(&self) -> &[u16] {
        let n = usize::from(self.record_count).min(MAX_RECORDS);
        self.encrypted_records.get(..n).unwrap_or(&[])
    }

    /// Sum of the encrypted records' payload lengths.
    pub fn encrypted_payload(&self) -> usize {
        self.records().iter().map(|&l| usize::from(l)).sum()
    }

    /// Bytes on the wire of the encrypted records, headers included.
    pub fn encrypted_wire_len(&self) -> usize {
        self.encrypted_payload() + 5 * self.records().len()
    }

    /// The payload of the ONE application-data record that puts the same number of bytes on the
    /// wire as the site's encrypted records: payloads + 5 × (n − 1) headers.
    pub fn one_record_len(&self) -> usize {
        self.encrypted_wire_len().saturating_sub(5)
    }

    /// True when the site negotiated TLS 1.3 (not a HelloRetryRequest).
    pub fn is_tls13(&self) -> bool {
        !self.hello_retry && self.server_hello.supported_version() == Some(TLS13)
    }

    /// True when the last record looks like an encrypted Finished (4-byte handshake header +
    /// the suite's hash + content-type byte + 16-byte tag: 53 bytes, 69 for SHA-384) after at
    /// least two other records: the flight is most likely over.
    pub fn looks_finished(&self) -> bool {
        let hash = if self.server_hello.cipher_suite() == Some(0x1302) {
            48
        } else {
            32
        };
        let r = self.records();
        r.len() >= 3
            && r.last()
                .is_some_and(|&l| usize::from(l) == 4 + hash + 1 + 16)
    }

    /// Whether a fake flight can copy this observation.
    pub fn check(&self) -> Result<(), Unusable> {
        if self.hello_retry {
            return Err(Unusable::HelloRetry);
        }
        self.server_hello.check()?;
        if self.record_version >> 8 != 3 {
            return Err(Unusable::Odd("record version"));
        }
        if self.overflow {
            return Err(Unusable::TooManyRecords);
        }
        if self.records().is_empty() {
            return Err(Unusable::NoEncryptedRecords);
        }
        if self
            .records()
            .iter()
            .any(|&l| usize::from(l) > MAX_CIPHERTEXT || l < 17)
        {
            return Err(Unusable::Odd("encrypted record length"));
        }
        Ok(())
    }
}

/// Why [`parse_server_flight`] gave no observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlightError {
    /// The flight is incomplete: read more (a record is cut, or no encrypted record yet).
    NeedMore,
    /// The site answered with a TLS alert.
    Alert {
        /// Alert level (1 warning, 2 fatal).
        level: u8,
        /// Alert description (e.g. 40 handshake_failure, 112 unrecognized_name).
        description: u8,
    },
    /// Not a TLS answer (wrong record type or version, not a ServerHello, bad lengths).
    Malformed(&'static str),
}

impl fmt::Display for FlightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlightError::NeedMore => f.write_str("incomplete server flight"),
            FlightError::Alert { level, description } => {
                write!(f, "TLS alert level {level} description {description}")
            }
            FlightError::Malformed(what) => write!(f, "not a TLS server flight: {what}"),
        }
    }
}

/// Parses a ServerHello handshake message (`02 | u24 | body`, exactly `msg`): the template and
/// whether it is a HelloRetryRequest.
fn parse_server_hello(msg: &[u8]) -> Option<(ServerHelloTemplate, bool)> {
    let mut r = Reader::new(msg);
    if r.u8()? != 0x02 {
        return None;
    }
    let body_len = r.u24()?;
    if body_len != r.left() {
        return None;
    }
    let legacy_version = r.u16()?;
    let random = r.take(32)?;
    let hello_retry = random == HRR_RANDOM;
    let session_id_len = r.u8()?;
    if session_id_len > 32 {
        return None;
    }
    r.take(usize::from(session_id_len))?;
    let cipher_suite = r.u16()?;
    let compression = r.u8()?;
    let mut t = ServerHelloTemplate {
        legacy_version,
        cipher_suite: Some(cipher_suite),
        session_id_len,
        compression,
        extensions: [Extension::default(); MAX_EXTENSIONS],
        extension_count: 0,
        has_extensions: false,
        extension_overflow: false,
    };
    if r.left() == 0 {
        return Some((t, hello_retry));
    }
    t.has_extensions = true;
    let ext_len = usize::from(r.u16()?);
    if ext_len != r.left() {
        return None;
    }
    while r.left() > 0 {
        let kind = r.u16()?;
        let len = r.u16()?;
        let data = r.take(usize::from(len))?;
        let value = match (kind, data) {
            (EXT_SUPPORTED_VERSIONS | EXT_KEY_SHARE, [a, b, ..]) => u16::from_be_bytes([*a, *b]),
            _ => 0,
        };
        if kind == EXT_KEY_SHARE && !hello_retry {
            // group u16, key length u16, key: the lengths must agree.
            let key_len = data
                .get(2..4)
                .map(|k| usize::from(u16::from_be_bytes([k[0], k[1]])));
            if key_len.map(|k| k + 4) != Some(data.len()) {
                return None;
            }
        }
        match t.extensions.get_mut(usize::from(t.extension_count)) {
            Some(slot) => {
                *slot = Extension { kind, len, value };
                t.extension_count += 1;
            }
            None => t.extension_overflow = true,
        }
    }
    Some((t, hello_retry))
}

/// Reads a server's first flight: the ServerHello record, an optional ChangeCipherSpec record,
/// then application-data records, all complete.
///
/// * `Err(NeedMore)`: the bytes end inside a record, or (TLS 1.3) no encrypted record yet;
/// * `Ok(obs)`: the observation over every complete record in `bytes` (call again with more
///   bytes to extend it; the caller decides the flight is over by a quiet period, or by
///   [`Observation::looks_finished`]). A ServerHello that is not TLS 1.3 (or is a
///   HelloRetryRequest) is returned at once: nothing encrypted follows it;
/// * `Err(Alert)` for an alert record, `Err(Malformed)` for anything that is not TLS.
pub fn parse_server_flight(bytes: &[u8]) -> Result<Observation, FlightError> {
    let mut pos = 0usize;
    let mut obs: Option<Observation> = None;
    loop {
        let rest = bytes.get(pos..).unwrap_or(&[]);
        let Some(hdr) = rest.get(..5) else {
            if !rest.is_empty() {
                return Err(FlightError::NeedMore);
            }
            return match obs {
                Some(o) if !o.records().is_empty() || o.overflow => Ok(o),
                _ => Err(FlightError::NeedMore),
            };
        };
        let (kind, version) = (hdr[0], u16::from_be_bytes([hdr[1], hdr[2]]));
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if version >> 8 != 3 {
            return Err(FlightError::Malformed("record version"));
        }
        if len > MAX_CIPHERTEXT + 2048 {
            return Err(FlightError::Malformed("record length"));
        }
        let Some(payload) = rest.get(5..5 + len) else {
            return Err(FlightError::NeedMore);
        };
        pos += 5 + len;
        match (kind, obs.as_mut()) {
            (0x15, _) => {
                return match payload {
                    [level, description, ..] => Err(FlightError::Alert {
                        level: *level,
                        description: *description,
                    }),
                    _ => Err(FlightError::Malformed("short alert")),
                };
            }
            (0x16, None) => {
                let msg_len = match payload {
                    [_, a, b, c, ..] => {
                        4 + (usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))
                    }
                    _ => return Err(FlightError::Malformed("short handshake record")),
                };
                if payload.first() != Some(&0x02) {
                    return Err(FlightError::Malformed("not a ServerHello"));
                }
                let Some(msg) = payload.get(..msg_len) else {
                    return Err(FlightError::Malformed("ServerHello split over records"));
                };
                let Some((server_hello, hello_retry)) = parse_server_hello(msg) else {
                    return Err(FlightError::Malformed("ServerHello"));
                };
                let o = Observation {
                    server_hello,
                    server_hello_record_len: len as u16,
                    record_version: version,
                    hello_retry,
                    ccs: false,
                    encrypted_records: [0; MAX_RECORDS],
                    record_count: 0,
                    overflow: false,
                };
                if !o.is_tls13() {
                    return Ok(o);
                }
                obs = Some(o);
            }
            (_, None) => return Err(FlightError::Malformed("first record is not a handshake")),
            (0x14, Some(o)) if !o.ccs && o.records().is_empty() => o.ccs = true,
            (0x17, Some(o)) => {
                let i = usize::from(o.record_count);
                match o.encrypted_records.get_mut(i) {
                    Some(slot) => {
                        *slot = len as u16;
                        o.record_count += 1;
                    }
                    None => o.overflow = true,
                }
            }
            (_, Some(_)) => {
                return Err(FlightError::Malformed(
                    "unexpected record after ServerHello",
                ));
            }
        }
    }
}

/// What the fake flight copies, derived by a [`Profile`]: cheap to copy (read once per
/// handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlightShape {
    /// The ServerHello to imitate.
    pub template: ServerHelloTemplate,
    /// Smallest payload of the application-data record (inclusive).
    pub noise_min: u16,
    /// Largest payload of the application-data record (inclusive), at most [`MAX_CIPHERTEXT`].
    pub noise_max: u16,
    /// Encrypted records the site sends (0 when nothing was learned).
    pub site_records: u8,
    /// True when learned from the site, false for the built-in default.
    pub learned: bool,
}

impl Default for FlightShape {
    fn default() -> Self {
        FlightShape {
            template: ServerHelloTemplate::default(),
            noise_min: DEFAULT_NOISE.0,
            noise_max: DEFAULT_NOISE.1,
            site_records: 0,
            learned: false,
        }
    }
}

impl FlightShape {
    /// A payload length for the application-data record, uniform in `noise_min..=noise_max`.
    pub fn noise_len(&self, rng: &mut impl Rng) -> usize {
        let lo = u32::from(self.noise_min.min(self.noise_max));
        let hi = u32::from(self.noise_max);
        let n = lo + rng.below(hi - lo + 1);
        (n as usize).clamp(1, MAX_CIPHERTEXT)
    }
}

/// A one-line account of what a [`Profile`] learned, for start-up logs and `doctor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Usable observations in the sample.
    pub samples: usize,
    /// Observations refused since the start.
    pub refused: u64,
    /// Why the last refused observation was refused.
    pub problem: Option<Unusable>,
    /// Encrypted records per flight (the most common count; 0 = nothing learned).
    pub records: u8,
    /// The site sends a ChangeCipherSpec (in every usable observation).
    pub ccs: bool,
    /// ServerHello record payload length (most common template).
    pub server_hello_len: usize,
    /// Mean of the one-record-equivalent encrypted size (M).
    pub mean: usize,
    /// Largest distance of a sample from the mean (J).
    pub jitter: usize,
    /// Smallest and largest sample.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// The learned size exceeded one record and was clamped to [`MAX_CIPHERTEXT`].
    pub clamped: bool,
    /// The key-share group of the most common template (None: nothing learned, or none).
    pub group: Option<u16>,
}

impl Summary {
    /// Advice when the site's flight differs in a way the fake one cannot copy.
    pub fn advice(&self) -> Option<&'static str> {
        if self.records > 1 {
            Some(
                "the site sends its encrypted handshake in several records, the proxy in one \
                 (Telegram clients require it): front a site whose servers send one",
            )
        } else if self.clamped {
            Some(
                "the site's handshake is larger than one record may carry: front a site with a smaller certificate chain",
            )
        } else {
            None
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.samples == 0 {
            f.write_str("nothing learned, built-in shape")?;
            if let Some(p) = self.problem {
                write!(f, " ({p})")?;
            }
            return Ok(());
        }
        write!(
            f,
            "{} samples: ServerHello {} bytes (key share {:#06x}), ccs {}, {} encrypted record(s), size {} ± {} ({}..{}){}",
            self.samples,
            self.server_hello_len,
            self.group.unwrap_or(0),
            self.ccs,
            self.records,
            self.mean,
            self.jitter,
            self.min,
            self.max,
            if self.clamped { ", clamped" } else { "" }
        )
    }
}

/// A bounded sample of usable observations and what they say.
#[derive(Clone, Debug)]
pub struct Profile {
    cap: usize,
    samples: VecDeque<Observation>,
    refused: u64,
    problem: Option<Unusable>,
    shape: FlightShape,
    summary: Summary,
}

impl Default for Profile {
    fn default() -> Self {
        Profile::new(SAMPLE_CAP)
    }
}

impl Profile {
    /// An empty profile keeping the last `cap` (at least 1) usable observations.
    pub fn new(cap: usize) -> Self {
        let mut p = Profile {
            cap: cap.max(1),
            samples: VecDeque::new(),
            refused: 0,
            problem: None,
            shape: FlightShape::default(),
            summary: Summary {
                samples: 0,
                refused: 0,
                problem: None,
                records: 0,
                ccs: true,
                server_hello_len: 0,
                mean: 0,
                jitter: 0,
                min: 0,
                max: 0,
                clamped: false,
                group: None,
            },
        };
        p.derive();
        p
    }

    /// Adds an observation (the oldest drops out beyond the cap); an unusable one is refused
    /// and remembered as the reason, the sample is unchanged.
    pub fn push(&mut self, obs: Observation) -> Result<(), Unusable> {
        if let Err(e) = obs.check() {
            self.refused += 1;
            self.problem = Some(e);
            self.derive();
            return Err(e);
        }
        if self.samples.len() >= self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(obs);
        self.derive();
        Ok(())
    }

    /// The shape the fake flight copies (the default when nothing usable was learned).
    pub fn shape(&self) -> FlightShape {
        self.shape
    }

    /// What was learned, for logs.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// The usable observations kept, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Observation> {
        self.samples.iter()
    }

    fn derive(&mut self) {
        let mut s = self.summary;
        s.refused = self.refused;
        s.problem = self.problem;
        s.samples = self.samples.len();
        let template = most_common(self.samples.iter().map(|o| o.server_hello));
        let (Some(template), false) = (template, self.samples.is_empty()) else {
            self.shape = FlightShape::default();
            self.summary = s;
            return;
        };
        let sizes = || self.samples.iter().map(Observation::one_record_len);
        let n = self.samples.len();
        let min = sizes().min().unwrap_or(0);
        let max = sizes().max().unwrap_or(0);
        let mean = sizes().sum::<usize>() / n.max(1);
        let jitter = sizes().map(|x| x.abs_diff(mean)).max().unwrap_or(0);
        let records = most_common(self.samples.iter().map(|o| o.record_count)).unwrap_or(0);
        let clamp = |x: usize| x.clamp(1, MAX_CIPHERTEXT) as u16;
        s.records = records;
        s.ccs = self.samples.iter().all(|o| o.ccs);
        s.server_hello_len = self
            .samples
            .iter()
            .find(|o| o.server_hello == template)
            .map_or(0, |o| usize::from(o.server_hello_record_len));
        s.mean = mean;
        s.jitter = jitter;
        s.min = min;
        s.max = max;
        s.clamped = max > MAX_CIPHERTEXT;
        s.group = template.key_share_group();
        self.summary = s;
        self.shape = FlightShape {
            template,
            noise_min: clamp(min),
            noise_max: clamp(max),
            site_records: records,
            learned: true,
        };
    }
}

/// What was learned for each [`HelloKind`], and whether post-quantum answers are mirrored
/// (`[defense.doppelganger] post-quantum`). The workers read [`Profiles::shape_for`] once per
/// handshake.
#[derive(Clone, Debug)]
pub struct Profiles {
    kinds: [Profile; 2],
    mirror_pq: bool,
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::new(true)
    }
}

impl Profiles {
    /// Empty profiles; `mirror_pq` false answers every hello as an x25519-only one.
    pub fn new(mirror_pq: bool) -> Self {
        Profiles {
            kinds: [Profile::default(), Profile::default()],
            mirror_pq,
        }
    }

    /// Whether X25519MLKEM768 hellos get the site's own answer to them.
    pub fn mirrors_pq(&self) -> bool {
        self.mirror_pq
    }

    /// What was learned for `kind`.
    pub fn get(&self, kind: HelloKind) -> &Profile {
        &self.kinds[kind.index()]
    }

    /// What was learned for `kind`, to add to.
    pub fn get_mut(&mut self, kind: HelloKind) -> &mut Profile {
        &mut self.kinds[kind.index()]
    }

    /// The shape to answer a hello of `kind` with: the site's answer to that kind; with
    /// post-quantum mirroring off, or nothing learned for the kind, the other kind's answer
    /// with an x25519 share (every client offers x25519); else the built-in default.
    pub fn shape_for(&self, kind: HelloKind) -> FlightShape {
        let kind = if self.mirror_pq {
            kind
        } else {
            HelloKind::Classic
        };
        let own = self.get(kind).shape();
        if own.learned {
            return own;
        }
        let other = HelloKind::ALL
            .iter()
            .map(|&k| self.get(k).shape())
            .find(|s| s.learned);
        match other {
            Some(s) => FlightShape {
                template: s.template.with_x25519_share(),
                ..s
            },
            None => FlightShape::default(),
        }
    }
}

/// The most frequent value (the latest among equals, so a changed site wins ties).
fn most_common<T: PartialEq + Copy>(items: impl Iterator<Item = T> + Clone) -> Option<T> {
    let mut best: Option<(T, usize)> = None;
    for x in items.clone() {
        let count = items.clone().filter(|y| *y == x).count();
        if best.is_none_or(|(_, c)| count >= c) {
            best = Some((x, count));
        }
    }
    best.map(|(x, _)| x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::XorShift64;

    pub(crate) const RSA: &[u8] = include_bytes!("../../tests/data/tls/nginx-rsa-flight.bin");
    const ECDSA: &[u8] = include_bytes!("../../tests/data/tls/nginx-ecdsa-flight.bin");
    const TLS12: &[u8] = include_bytes!("../../tests/data/tls/nginx-tls12-flight.bin");

    /// A ServerHello record (`16 03 03`) with these extensions, then a CCS and the given
    /// application-data record lengths.
    pub(crate) fn flight(
        random: [u8; 32],
        suite: u16,
        exts: &[(u16, Vec<u8>)],
        app: &[usize],
    ) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in exts {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.push(32);
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&suite.to_be_bytes());
        body.push(0);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut out = vec![0x16, 0x03, 0x03];
        out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        out.extend_from_slice(&[0x02, 0, (body.len() >> 8) as u8, body.len() as u8]);
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        for &n in app {
            out.extend_from_slice(&[0x17, 0x03, 0x03, (n >> 8) as u8, n as u8]);
            out.resize(out.len() + n, 0xee);
        }
        out
    }

    pub(crate) fn sv() -> (u16, Vec<u8>) {
        (EXT_SUPPORTED_VERSIONS, vec![0x03, 0x04])
    }

    pub(crate) fn ks(group: u16, key_len: usize) -> (u16, Vec<u8>) {
        let mut d = group.to_be_bytes().to_vec();
        d.extend_from_slice(&(key_len as u16).to_be_bytes());
        d.resize(4 + key_len, 0x42);
        (EXT_KEY_SHARE, d)
    }

    fn rsa() -> Observation {
        parse_server_flight(RSA).unwrap()
    }

    fn with_records(mut o: Observation, recs: &[u16]) -> Observation {
        o.encrypted_records = [0; MAX_RECORDS];
        o.encrypted_records[..recs.len()].copy_from_slice(recs);
        o.record_count = recs.len() as u8;
        o
    }

    #[test]
    fn accepts_nginx_rsa_capture() {
        let o = rsa();
        assert!(o.is_tls13() && o.ccs && !o.hello_retry && !o.overflow);
        assert_eq!(o.records(), [42, 825, 281, 53]);
        assert_eq!(o.server_hello_record_len, 122);
        assert_eq!(o.record_version, 0x0303);
        let t = o.server_hello;
        assert_eq!(t.legacy_version(), 0x0303);
        assert_eq!(t.cipher_suite(), Some(0x1301));
        assert_eq!(t.session_id_len(), 32);
        assert_eq!(t.compression(), 0);
        assert_eq!(t.extension_types(), [EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE]);
        assert_eq!(t.key_share_group(), Some(GROUP_X25519));
        assert_eq!(t.supported_version(), Some(TLS13));
        assert_eq!(t.message_len(32), 122);
        assert_eq!(o.encrypted_payload(), 1201);
        assert_eq!(o.encrypted_wire_len(), 1221);
        assert_eq!(o.one_record_len(), 1216);
        assert!(o.looks_finished());
        assert_eq!(o.check(), Ok(()));
        // nginx's ServerHello has mtg's (and the default template's) shape.
        let d = ServerHelloTemplate {
            cipher_suite: Some(0x1301),
            ..Default::default()
        };
        assert_eq!(t, d);
    }

    #[test]
    fn accepts_nginx_ecdsa_capture() {
        let o = parse_server_flight(ECDSA).unwrap();
        assert_eq!(o.records().len(), 4);
        // EncryptedExtensions, Certificate (its size varies with the certificate made),
        // CertificateVerify (a DER ECDSA signature: 70..72 bytes + 4 + 17), Finished.
        let r = o.records();
        assert_eq!((r[0], r[3]), (42, 53));
        assert!((400..460).contains(&r[1]), "{r:?}");
        assert!((95..=97).contains(&r[2]), "{r:?}");
        assert!(o.looks_finished());
        assert_eq!(o.check(), Ok(()));
    }

    #[test]
    fn accepts_every_prefix_as_need_more_or_complete_records() {
        let bounds: Vec<usize> = {
            let mut b = Vec::new();
            let mut p = 0;
            while p < RSA.len() {
                p += 5 + usize::from(u16::from_be_bytes([RSA[p + 3], RSA[p + 4]]));
                b.push(p);
            }
            b
        };
        assert_eq!(bounds.len(), 6);
        assert_eq!(*bounds.last().unwrap(), RSA.len());
        for i in 0..=RSA.len() {
            let r = parse_server_flight(&RSA[..i]);
            match bounds.iter().position(|&b| b == i) {
                // After the ServerHello and the CCS: no encrypted record yet.
                Some(k) if k >= 2 => {
                    let o = r.unwrap();
                    assert_eq!(o.records(), &[42, 825, 281, 53][..k - 1], "{i}");
                    assert_eq!(o.looks_finished(), k == 5);
                }
                _ => assert_eq!(r, Err(FlightError::NeedMore), "{i}"),
            }
        }
    }

    #[test]
    fn accepts_tls12_capture_as_unusable() {
        let o = parse_server_flight(TLS12).unwrap();
        // Returned at the ServerHello: nothing encrypted follows in TLS 1.2.
        assert!(!o.is_tls13());
        assert!(o.records().is_empty() && !o.ccs);
        assert_eq!(o.server_hello.supported_version(), None);
        assert_eq!(o.check(), Err(Unusable::NotTls13(0x0303)));
        // Its first record alone is enough.
        let first = 5 + usize::from(u16::from_be_bytes([TLS12[3], TLS12[4]]));
        assert_eq!(parse_server_flight(&TLS12[..first]), Ok(o));
        assert_eq!(
            parse_server_flight(&TLS12[..first - 1]),
            Err(FlightError::NeedMore)
        );
        let mut p = Profile::default();
        assert_eq!(p.push(o), Err(Unusable::NotTls13(0x0303)));
        assert!(!p.shape().learned);
        assert_eq!(p.summary().problem, Some(Unusable::NotTls13(0x0303)));
        assert!(p.summary().to_string().contains("not TLS 1.3"));
    }

    #[test]
    fn rejects_alerts_and_non_tls() {
        assert_eq!(
            parse_server_flight(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]),
            Err(FlightError::Alert {
                level: 2,
                description: 112
            })
        );
        assert_eq!(
            parse_server_flight(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02]),
            Err(FlightError::NeedMore)
        );
        assert!(matches!(
            parse_server_flight(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(FlightError::Malformed(_))
        ));
        assert!(matches!(
            parse_server_flight(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
            Err(FlightError::Malformed(_))
        ));
        // An alert after the ServerHello ends the flight too.
        let mut f = RSA[..133].to_vec();
        f.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        assert_eq!(
            parse_server_flight(&f),
            Err(FlightError::Alert {
                level: 2,
                description: 40
            })
        );
        // A handshake message that is not a ServerHello.
        let mut f = RSA.to_vec();
        f[5] = 0x0b;
        assert!(matches!(
            parse_server_flight(&f),
            Err(FlightError::Malformed(_))
        ));
        assert_eq!(parse_server_flight(&[]), Err(FlightError::NeedMore));
    }

    #[test]
    fn rejects_mutations_without_panic() {
        let mut rng = XorShift64(99);
        for i in 0..4000 {
            let src = [RSA, ECDSA, TLS12][i % 3];
            let mut f = src.to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(f.len() as u32) as usize;
                f[at] = rng.below(256) as u8;
            }
            f.truncate(rng.below(f.len() as u32 + 1) as usize);
            if let Ok(o) = parse_server_flight(&f) {
                assert!(o.records().len() <= MAX_RECORDS);
                let _ = o.check();
                let mut p = Profile::new(4);
                let _ = p.push(o);
                let s = p.shape();
                assert!(s.noise_min <= s.noise_max);
                assert!(usize::from(s.noise_max) <= MAX_CIPHERTEXT);
            }
            let mut junk = vec![0u8; rng.below(200) as usize];
            rng.fill(&mut junk);
            let _ = parse_server_flight(&junk);
        }
    }

    #[test]
    fn rejects_hello_retry_and_other_groups() {
        let hrr = flight(
            HRR_RANDOM,
            0x1301,
            &[sv(), (EXT_KEY_SHARE, vec![0, 0x17])],
            &[],
        );
        let o = parse_server_flight(&hrr).unwrap();
        assert!(o.hello_retry && !o.is_tls13());
        assert_eq!(o.check(), Err(Unusable::HelloRetry));

        let p256 = flight([1; 32], 0x1301, &[sv(), ks(0x0017, 65)], &[100, 53]);
        let o = parse_server_flight(&p256).unwrap();
        assert_eq!(o.records(), [100, 53]);
        assert_eq!(o.check(), Err(Unusable::KeyShare(Some(0x0017))));

        let no_ks = flight([1; 32], 0x1301, &[sv()], &[100]);
        let o = parse_server_flight(&no_ks).unwrap();
        assert_eq!(o.check(), Err(Unusable::KeyShare(None)));

        // Key length disagreeing with the extension length: malformed.
        let mut bad = ks(GROUP_X25519, 32);
        bad.1[3] = 31;
        assert!(matches!(
            parse_server_flight(&flight([1; 32], 0x1301, &[sv(), bad], &[100])),
            Err(FlightError::Malformed(_))
        ));
        // Nine extensions: more than a template holds.
        let mut many = vec![sv(), ks(29, 32)];
        many.extend((0..7u16).map(|k| (0x100 + k, vec![])));
        let o = parse_server_flight(&flight([1; 32], 0x1301, &many, &[100])).unwrap();
        assert_eq!(o.server_hello.extensions().len(), MAX_EXTENSIONS);
        assert_eq!(o.check(), Err(Unusable::Odd("too many extensions")));
        // A long unknown extension, a duplicate: unusable.
        let long = flight(
            [1; 32],
            0x1301,
            &[sv(), ks(29, 32), (0x29, vec![0; 65])],
            &[99],
        );
        let o = parse_server_flight(&long).unwrap();
        assert!(matches!(o.check(), Err(Unusable::Odd(_))));
        let dup = flight([1; 32], 0x1301, &[sv(), ks(29, 32), sv()], &[99]);
        let o = parse_server_flight(&dup).unwrap();
        assert_eq!(o.check(), Err(Unusable::Odd("duplicate extension")));
        // Too many encrypted records.
        let o =
            parse_server_flight(&flight([1; 32], 0x1301, &[sv(), ks(29, 32)], &[20; 17])).unwrap();
        assert!(o.overflow);
        assert_eq!(o.check(), Err(Unusable::TooManyRecords));
    }

    #[test]
    fn accepts_other_extensions_in_site_order() {
        let f = flight(
            [3; 32],
            0x1302,
            &[ks(29, 32), (0x0029, vec![0, 0]), sv()],
            &[3000],
        );
        let o = parse_server_flight(&f).unwrap();
        assert_eq!(o.check(), Ok(()));
        let t = o.server_hello;
        assert_eq!(
            t.extension_types(),
            [EXT_KEY_SHARE, 0x0029, EXT_SUPPORTED_VERSIONS]
        );
        assert_eq!(t.extension(0x0029).map(|e| e.len), Some(2));
        assert_eq!(usize::from(o.server_hello_record_len), t.message_len(32));
        assert_eq!(o.one_record_len(), 3000);
        // One record, not a Finished: the scout waits for the quiet period.
        assert!(!o.looks_finished());
        let fin384 = parse_server_flight(&flight(
            [3; 32],
            0x1302,
            &[sv(), ks(29, 32)],
            &[30, 900, 80, 69],
        ))
        .unwrap();
        assert!(fin384.looks_finished());
    }

    #[test]
    fn profile_learns_mean_jitter_and_range() {
        let mut p = Profile::default();
        assert_eq!(p.shape(), FlightShape::default());
        assert!(p.summary().to_string().starts_with("nothing learned"));
        for r in [281u16, 283, 280, 281] {
            p.push(with_records(rsa(), &[42, 825, r, 53])).unwrap();
        }
        let s = p.summary();
        // one-record sizes: 1216, 1218, 1215, 1216 -> mean 1216, J = 2.
        assert_eq!((s.samples, s.records, s.mean, s.jitter), (4, 4, 1216, 2));
        assert_eq!((s.min, s.max, s.server_hello_len), (1215, 1218, 122));
        assert!(s.ccs && !s.clamped);
        assert!(
            s.advice()
                .unwrap()
                .contains("front a site whose servers send one")
        );
        let shape = p.shape();
        assert!(shape.learned);
        assert_eq!(
            (shape.noise_min, shape.noise_max, shape.site_records),
            (1215, 1218, 4)
        );
        assert_eq!(shape.template, rsa().server_hello);
        let mut rng = XorShift64(5);
        let mut seen = [false; 4];
        for _ in 0..400 {
            let n = shape.noise_len(&mut rng);
            assert!((1215..=1218).contains(&n));
            seen[n - 1215] = true;
        }
        assert_eq!(seen, [true; 4]);
        // A refused observation keeps what was learned.
        assert!(p.push(parse_server_flight(TLS12).unwrap()).is_err());
        assert_eq!(p.shape(), shape);
        assert_eq!(p.summary().refused, 1);
        // One record: no advice.
        let mut q = Profile::default();
        q.push(with_records(rsa(), &[1221])).unwrap();
        assert_eq!(q.summary().records, 1);
        assert_eq!(q.summary().advice(), None);
        assert_eq!(q.shape().noise_min, 1221);
    }

    #[test]
    fn profile_is_bounded_and_follows_the_site() {
        let mut p = Profile::new(8);
        for _ in 0..20 {
            p.push(with_records(rsa(), &[1000])).unwrap();
        }
        assert_eq!(p.summary().samples, 8);
        // The site changes: after the sample turns over, only the new size is left.
        let other = flight([1; 32], 0x1303, &[ks(29, 32), sv()], &[2000]);
        for i in 0..8 {
            p.push(parse_server_flight(&other).unwrap()).unwrap();
            let t = p.shape().template;
            // Most common template wins; on a tie, the latest.
            assert_eq!(t.cipher_suite() == Some(0x1303), i >= 3, "{i}");
        }
        assert_eq!(p.samples().count(), 8);
        assert_eq!((p.shape().noise_min, p.shape().noise_max), (2000, 2000));
        assert_eq!(p.summary().jitter, 0);
    }

    #[test]
    fn profiles_answer_each_kind_as_the_site_did() {
        const PQ: &[u8] = include_bytes!("../../tests/data/tls/openssl35-pq-flight.bin");
        let pq = parse_server_flight(PQ).unwrap();
        assert_eq!(pq.check(), Ok(()));
        assert_eq!(pq.records(), [32, 415, 96, 69]);
        assert!(pq.looks_finished());
        let mut p = Profiles::default();
        assert!(p.mirrors_pq());
        assert_eq!(p.shape_for(HelloKind::PostQuantum), FlightShape::default());
        // Only the post-quantum answer learned: a classic hello gets it with x25519.
        p.get_mut(HelloKind::PostQuantum).push(pq).unwrap();
        let s = p.shape_for(HelloKind::PostQuantum);
        assert!(s.learned);
        assert_eq!(s.template.key_share_group(), Some(GROUP_X25519_MLKEM768));
        assert_eq!(s.template.message_len(32), 1210);
        let c = p.shape_for(HelloKind::Classic);
        assert!(c.learned);
        assert_eq!(c.template.key_share_group(), Some(GROUP_X25519));
        assert_eq!(c.template.message_len(32), 122);
        assert_eq!((c.noise_min, c.noise_max), (s.noise_min, s.noise_max));
        // Both learned: each its own.
        p.get_mut(HelloKind::Classic).push(rsa()).unwrap();
        assert_eq!(p.shape_for(HelloKind::Classic).template, rsa().server_hello);
        assert_eq!(p.shape_for(HelloKind::PostQuantum), s);
        assert_eq!(p.get(HelloKind::PostQuantum).summary().group, Some(0x11ec));
        // post-quantum = "off": the classic answer for everyone.
        let mut off = p.clone();
        off.mirror_pq = false;
        assert_eq!(
            off.shape_for(HelloKind::PostQuantum),
            p.shape_for(HelloKind::Classic)
        );
        // A key share of another length is not copied.
        let mut bad = pq;
        bad.server_hello.extensions[1].len = 1000;
        assert_eq!(
            bad.check(),
            Err(Unusable::KeyShare(Some(GROUP_X25519_MLKEM768)))
        );
        assert_eq!(HelloKind::PostQuantum.as_str(), "x25519mlkem768");
    }

    #[test]
    fn profile_clamps_to_one_record() {
        let mut p = Profile::default();
        p.push(with_records(rsa(), &[42, 16401, 16401, 53]))
            .unwrap();
        let s = p.summary();
        assert!(s.clamped);
        assert!(s.advice().is_some());
        assert_eq!(p.shape().noise_max, MAX_CIPHERTEXT as u16);
        assert_eq!(p.shape().noise_min, MAX_CIPHERTEXT as u16);
        assert!(p.shape().noise_len(&mut XorShift64(1)) == MAX_CIPHERTEXT);
        // A single record longer than TLS allows is refused.
        assert!(p.push(with_records(rsa(), &[16641])).is_err());
    }
}
