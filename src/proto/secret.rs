//! Proxy secrets: classic (16-byte key), secure (`dd` ‖ key) and FakeTLS (`ee` ‖ key ‖ host);
//! parsing from hex or URL-safe base64, printing, generation, and a constant-time compare.
//!
//! Pure / no I/O: randomness for [`Secret::generate`] is passed in as a [`Rng`].
//! Spec: PROTOCOL.md §1 (mtg's format) and §13.1 (mtpx also accepts classic and `dd` secrets).
//!
//! Invariants:
//! * a parsed or generated secret never has an all-zero key;
//! * a `FakeTls` secret has a host of 1..=253 bytes of UTF-8 without spaces or control
//!   characters; other kinds have an empty host;
//! * `Secret::parse(&s.to_hex())` and `Secret::parse(&s.to_base64())` give back `s`;
//! * `Debug` never prints the key.

use std::fmt;

use super::Rng;
use crate::formats::encoding::{base64url_decode, base64url_encode, hex_decode, hex_encode};

/// The key length of every secret kind.
pub const KEY_LEN: usize = 16;
/// Longest accepted FakeTLS host, in bytes (a DNS name's limit).
pub const MAX_HOST_LEN: usize = 253;

/// Which transport a secret selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// Bare 16-byte key: obfuscated2 with any tag.
    Classic,
    /// `dd` ‖ key: obfuscated2 with the padded-intermediate tag only.
    Secure,
    /// `ee` ‖ key ‖ host: FakeTLS in front of obfuscated2, fronting `host`.
    FakeTls,
}

impl SecretKind {
    /// The name in logs and metric labels: `faketls`, `dd` or `classic`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::FakeTls => "faketls",
            SecretKind::Secure => "dd",
            SecretKind::Classic => "classic",
        }
    }
}

/// A parsed proxy secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The transport selected by the secret's prefix.
    pub kind: SecretKind,
    /// The 16-byte key (never all zero).
    pub key: [u8; KEY_LEN],
    /// The fronting host name; empty unless `kind == FakeTls`.
    pub host: String,
}

/// Why a secret string was refused. Every message says what is wrong and what a valid secret
/// looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// The string is empty (after trimming whitespace).
    Empty,
    /// Neither hex nor URL-safe base64 without padding.
    Format,
    /// Standard-alphabet or padded base64 (`+`, `/`, `=`): looks like base64 but is not the
    /// URL-safe unpadded form.
    Base64Alphabet,
    /// A `dd`/`ee` prefix with too few bytes after it (fewer than 16 key bytes).
    Truncated,
    /// A prefix byte other than `dd` or `ee` on a secret that is not a bare 16-byte key.
    FirstByte(u8),
    /// A decoded length that matches no secret kind.
    Length(usize),
    /// An `ee` secret with no host after the key.
    EmptyHost,
    /// The key is 16 zero bytes.
    ZeroKey,
    /// The host bytes are not valid UTF-8.
    HostNotUtf8,
    /// The host is longer than 253 bytes.
    HostTooLong(usize),
    /// The host contains a space or a control character.
    HostChars,
}

const VALID_FORMS: &str = "a valid secret is 32 hex digits (classic), \"dd\" + 32 hex digits (secure), \
     or \"ee\" + 32 hex digits + the hex of a host name (FakeTLS), or the same bytes in URL-safe \
     base64 without padding; `mtpx generate-secret` makes one";

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SecretError::Empty => write!(f, "secret is empty; {VALID_FORMS}"),
            SecretError::Format => {
                write!(
                    f,
                    "secret is neither hex nor URL-safe base64; {VALID_FORMS}"
                )
            }
            SecretError::Base64Alphabet => write!(
                f,
                "secret uses standard base64 ('+', '/' or '=' padding); only URL-safe base64 \
                 ('-', '_', no padding) or hex is accepted; {VALID_FORMS}"
            ),
            SecretError::Truncated => write!(
                f,
                "secret is truncated: the dd/ee prefix must be followed by a full 16-byte key; \
                 {VALID_FORMS}"
            ),
            SecretError::FirstByte(b) => write!(
                f,
                "incorrect first byte of secret: 0x{b:02x} (expected 0xdd or 0xee, or a bare \
                 16-byte key); {VALID_FORMS}"
            ),
            SecretError::Length(n) => write!(
                f,
                "secret has an incorrect length ({n} bytes; classic is 16, dd is 17, ee is 18 or \
                 more); {VALID_FORMS}"
            ),
            SecretError::EmptyHost => write!(
                f,
                "FakeTLS (ee) secret has no host name after the key; {VALID_FORMS}"
            ),
            SecretError::ZeroKey => write!(
                f,
                "secret key is all zeros; generate a random one with `mtpx generate-secret`"
            ),
            SecretError::HostNotUtf8 => {
                write!(
                    f,
                    "FakeTLS secret host name is not valid UTF-8; {VALID_FORMS}"
                )
            }
            SecretError::HostTooLong(n) => write!(
                f,
                "FakeTLS secret host name is {n} bytes long (at most {MAX_HOST_LEN})"
            ),
            SecretError::HostChars => write!(
                f,
                "FakeTLS secret host name contains a space or a control character"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

/// Checks a FakeTLS host name: 1..=253 bytes of UTF-8, no spaces or control characters.
pub fn check_host(host: &[u8]) -> Result<&str, SecretError> {
    if host.is_empty() {
        return Err(SecretError::EmptyHost);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(SecretError::HostTooLong(host.len()));
    }
    let s = std::str::from_utf8(host).map_err(|_| SecretError::HostNotUtf8)?;
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SecretError::HostChars);
    }
    Ok(s)
}

fn key_from(bytes: &[u8]) -> Result<[u8; KEY_LEN], SecretError> {
    let key: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| SecretError::Length(bytes.len()))?;
    if key == [0u8; KEY_LEN] {
        return Err(SecretError::ZeroKey);
    }
    Ok(key)
}

impl Secret {
    /// Parses a secret from hex (tried first) or URL-safe unpadded base64, after trimming
    /// surrounding whitespace.
    ///
    /// 16 bytes → classic; `dd` + 16 → secure; `ee` + 16 + host → FakeTLS. A 16-byte value
    /// starting with `ee` is refused as a truncated FakeTLS secret (mtg's test list rejects
    /// `ee` + 15 bytes), so classic keys never start with `0xee`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty);
        }
        let bytes = match hex_decode(text).or_else(|| base64url_decode(text)) {
            Some(b) => b,
            None if crate::formats::encoding::base64_std_decode(text).is_some() => {
                return Err(SecretError::Base64Alphabet);
            }
            None => return Err(SecretError::Format),
        };
        Self::from_bytes(&bytes)
    }

    /// Interprets already-decoded secret bytes (see [`Secret::parse`] for the rules).
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, SecretError> {
        let (&first, rest) = bytes.split_first().ok_or(SecretError::Truncated)?;
        match (first, bytes.len()) {
            (0xee, n) if n <= KEY_LEN => Err(SecretError::Truncated),
            (0xdd, n) if n < KEY_LEN => Err(SecretError::Truncated),
            (_, KEY_LEN) => Ok(Secret {
                kind: SecretKind::Classic,
                key: key_from(bytes)?,
                host: String::new(),
            }),
            (0xdd, 17) => Ok(Secret {
                kind: SecretKind::Secure,
                key: key_from(rest)?,
                host: String::new(),
            }),
            (0xdd, n) => Err(SecretError::Length(n)),
            (0xee, _) => {
                let (key, host) = rest
                    .split_at_checked(KEY_LEN)
                    .ok_or(SecretError::Truncated)?;
                let key = key_from(key)?;
                let host = check_host(host)?.to_owned();
                Ok(Secret {
                    kind: SecretKind::FakeTls,
                    key,
                    host,
                })
            }
            (b, n) if n > KEY_LEN => Err(SecretError::FirstByte(b)),
            (_, n) => Err(SecretError::Length(n)),
        }
    }

    /// A fresh random secret of `kind`. `host` is used only for `FakeTls` (the caller validates
    /// it with [`check_host`]; it is stored verbatim). The key is never all zero and a classic
    /// key never starts with `0xee` (so that it parses back as classic).
    pub fn generate(kind: SecretKind, host: &str, rng: &mut impl Rng) -> Secret {
        let mut key = [0u8; KEY_LEN];
        loop {
            rng.fill(&mut key);
            let zero = key == [0u8; KEY_LEN];
            let ambiguous = kind == SecretKind::Classic && key[0] == 0xee;
            if !zero && !ambiguous {
                break;
            }
        }
        let host = if kind == SecretKind::FakeTls {
            host.to_owned()
        } else {
            String::new()
        };
        Secret { kind, key, host }
    }

    /// The binary form: classic = key; secure = `0xdd` ‖ key; FakeTLS = `0xee` ‖ key ‖ host.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + KEY_LEN + self.host.len());
        match self.kind {
            SecretKind::Classic => {}
            SecretKind::Secure => v.push(0xdd),
            SecretKind::FakeTls => v.push(0xee),
        }
        v.extend_from_slice(&self.key);
        if self.kind == SecretKind::FakeTls {
            v.extend_from_slice(self.host.as_bytes());
        }
        v
    }

    /// Lowercase hex of [`Secret::to_bytes`].
    pub fn to_hex(&self) -> String {
        hex_encode(&self.to_bytes())
    }

    /// URL-safe unpadded base64 of [`Secret::to_bytes`] (mtg's default text form).
    pub fn to_base64(&self) -> String {
        base64url_encode(&self.to_bytes())
    }

    /// True for FakeTLS secrets (the proxy fronts `host` for unrecognised clients).
    pub fn is_fronting(&self) -> bool {
        self.kind == SecretKind::FakeTls
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// Compares two byte strings in time that depends only on their lengths (constant time when
/// the lengths are equal; different lengths return `false` at once).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= x ^ y;
    }
    std::hint::black_box(acc) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    const KEY_HEX: &str = "d11c6cbbd9efe7fed5bc0db220b09665";

    fn key() -> [u8; 16] {
        hex_decode(KEY_HEX).unwrap().try_into().unwrap()
    }

    #[test]
    fn accepts_mtg_vector_hex_and_base64() {
        let hex = "eed11c6cbbd9efe7fed5bc0db220b09665676f6f676c652e636f6d";
        let b64 = "7tEcbLvZ7-f-1bwNsiCwlmVnb29nbGUuY29t";
        for text in [hex, b64, &hex.to_uppercase(), &format!("  {b64}\n")] {
            let s = Secret::parse(text).unwrap();
            assert_eq!(s.kind, SecretKind::FakeTls);
            assert_eq!(s.key, key());
            assert_eq!(s.host, "google.com");
            assert!(s.is_fronting());
            assert_eq!(s.to_hex(), hex);
            assert_eq!(s.to_base64(), b64);
        }
    }

    #[test]
    fn accepts_mtg_config_fixture_secrets() {
        for text in [
            "7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t",
            "7mqFMMq3P2Tvvt_rPx5qhmFnb29nbGUuY29t",
        ] {
            let s = Secret::parse(text).unwrap();
            assert_eq!(s.kind, SecretKind::FakeTls);
            assert_eq!(s.host, "google.com");
            assert_eq!(s.to_base64(), text);
        }
        let s = Secret::parse("7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t").unwrap();
        assert_eq!(hex_encode(&s.key), "87b51aa2f2e9305cdfc095de3c7bab4f");
    }

    #[test]
    fn accepts_classic_and_secure() {
        let c = Secret::parse(KEY_HEX).unwrap();
        assert_eq!(c.kind, SecretKind::Classic);
        assert_eq!(c.key, key());
        assert_eq!(c.host, "");
        assert!(!c.is_fronting());
        assert_eq!(c.to_hex(), KEY_HEX);
        assert_eq!(c.to_bytes(), key().to_vec());

        let d = Secret::parse(&format!("dd{KEY_HEX}")).unwrap();
        assert_eq!(d.kind, SecretKind::Secure);
        assert_eq!(d.key, key());
        assert_eq!(d.to_hex(), format!("dd{KEY_HEX}"));
        assert_eq!(Secret::parse(&d.to_base64()).unwrap(), d);
    }

    #[test]
    fn rejects_mtg_incorrect_secret_list() {
        let cases: &[(&str, SecretError)] = &[
            ("aaa", SecretError::Format),
            ("+ueJ0q91t5XOnFYP8Xac3A", SecretError::Base64Alphabet),
            ("eed11c6cbbd9efe7fed5bc0db220b09665", SecretError::EmptyHost),
            ("eed11c6cbbd9efe7fed5bc0db220b096", SecretError::Truncated),
            // 33 digits: odd-length hex, and not base64 either.
            ("ed11c6cbbd9efe7fed5bc0db220b09665", SecretError::Format),
            (
                "edd11c6cbbd9efe7fed5bc0db220b09665",
                SecretError::FirstByte(0xed),
            ),
            ("", SecretError::Empty),
            ("   ", SecretError::Empty),
            ("+**", SecretError::Format),
            (
                "7tEcbLvZ7+f+1bwNsiCwlmVnb29nbGUuY29t",
                SecretError::Base64Alphabet,
            ),
            (
                "7tEcbLvZ7-f-1bwNsiCwlmVnb29nbGUuY29t==",
                SecretError::Format,
            ),
            ("ee", SecretError::Truncated),
            (
                "efd11c6cbbd9efe7fed5bc0db220b09665",
                SecretError::FirstByte(0xef),
            ),
            ("dd", SecretError::Truncated),
            (
                "ddd11c6cbbd9efe7fed5bc0db220b0966500",
                SecretError::Length(18),
            ),
            ("d11c6cbbd9efe7fed5bc0db220b096", SecretError::Length(15)),
            ("00000000000000000000000000000000", SecretError::ZeroKey),
            ("dd00000000000000000000000000000000", SecretError::ZeroKey),
            (
                "ee00000000000000000000000000000000676f",
                SecretError::ZeroKey,
            ),
            (
                "eed11c6cbbd9efe7fed5bc0db220b09665ff",
                SecretError::HostNotUtf8,
            ),
            (
                "eed11c6cbbd9efe7fed5bc0db220b0966520",
                SecretError::HostChars,
            ),
            (
                "eed11c6cbbd9efe7fed5bc0db220b0966561620a",
                SecretError::HostChars,
            ),
            ("zz", SecretError::Format),
        ];
        for &(text, want) in cases {
            assert_eq!(Secret::parse(text), Err(want), "{text:?}");
            // Every error has a helpful message.
            assert!(want.to_string().len() > 20);
        }
    }

    #[test]
    fn rejects_overlong_host() {
        let mut b = vec![0xee];
        b.extend_from_slice(&key());
        b.extend(std::iter::repeat_n(b'a', 254));
        assert_eq!(Secret::from_bytes(&b), Err(SecretError::HostTooLong(254)));
        b.pop();
        assert_eq!(Secret::from_bytes(&b).unwrap().host.len(), 253);
    }

    #[test]
    fn accepts_generated_secrets_round_trip() {
        let mut rng = XorShift64(5);
        for kind in [SecretKind::Classic, SecretKind::Secure, SecretKind::FakeTls] {
            for _ in 0..300 {
                let s = Secret::generate(kind, "example.com", &mut rng);
                assert_eq!(s.kind, kind);
                assert_ne!(s.key, [0; 16]);
                assert_eq!(Secret::parse(&s.to_hex()).unwrap(), s);
                assert_eq!(Secret::parse(&s.to_base64()).unwrap(), s);
                if kind == SecretKind::FakeTls {
                    assert_eq!(s.host, "example.com");
                    assert!(s.to_base64().starts_with('7'));
                } else {
                    assert_eq!(s.host, "");
                }
            }
        }
    }

    #[test]
    fn accepts_debug_without_key() {
        let s = Secret::parse("7tEcbLvZ7-f-1bwNsiCwlmVnb29nbGUuY29t").unwrap();
        let d = format!("{s:?}");
        assert_eq!(
            d,
            r#"Secret { kind: FakeTls, host: "google.com", key: <redacted> }"#
        );
        assert!(!d.to_lowercase().contains("d11c"));
    }

    #[test]
    fn accepts_ct_eq_semantics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(&[0x80], &[0x00]));
    }

    #[test]
    fn rejects_garbage_without_panic() {
        let mut rng = XorShift64(11);
        for _ in 0..5000 {
            let len = rng.below(40) as usize;
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            if rng.below(2) == 0 && !b.is_empty() {
                b[0] = [0xdd, 0xee][rng.below(2) as usize];
            }
            // Both through bytes and through text forms.
            let r = Secret::from_bytes(&b);
            if let Ok(s) = &r {
                assert_eq!(s.to_bytes(), b);
            }
            assert_eq!(
                Secret::parse(&hex_encode(&b)),
                if b.is_empty() {
                    Err(SecretError::Empty)
                } else {
                    r.clone()
                }
            );
            let text: String = b.iter().map(|&x| char::from(x % 128)).collect();
            let _ = Secret::parse(&text);
        }
    }
}
