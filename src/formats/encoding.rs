//! Text encodings for secrets, links and fixtures: hex, base64 (URL-safe without padding, and
//! the standard alphabet), and percent-encoding for URL query values.
//!
//! Pure / no I/O. Spec: PROTOCOL.md §1.2 (secrets are hex or RFC 4648 §5 "raw URL" base64).
//!
//! Invariants:
//! * decoders never panic and return `None` for anything that is not a canonical encoding
//!   (wrong alphabet, bad length, non-zero trailing bits, misplaced padding);
//! * `decode(encode(x)) == x` for every byte string, for each encoding pair.

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Lowercase hex of `data`.
pub fn hex_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for &b in data {
        s.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
        s.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex (either case, even length). `None` for anything else. The empty string decodes
/// to an empty vector.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if t.len() % 2 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() / 2);
    for pair in t.chunks_exact(2) {
        let hi = hex_val(pair[0])?;
        let lo = hex_val(pair[1])?;
        out.push(hi << 4 | lo);
    }
    Some(out)
}

fn b64_encode(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    let sym = |v: u32| char::from(alphabet[(v & 63) as usize]);
    for chunk in data.chunks(3) {
        let b0 = u32::from(chunk[0]);
        let b1 = chunk.get(1).copied().map_or(0, u32::from);
        let b2 = chunk.get(2).copied().map_or(0, u32::from);
        let n = b0 << 16 | b1 << 8 | b2;
        s.push(sym(n >> 18));
        s.push(sym(n >> 12));
        if chunk.len() > 1 {
            s.push(sym(n >> 6));
        } else if pad {
            s.push('=');
        }
        if chunk.len() > 2 {
            s.push(sym(n));
        } else if pad {
            s.push('=');
        }
    }
    s
}

fn b64_val(c: u8, alphabet: &[u8; 64]) -> Option<u32> {
    alphabet.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Decodes unpadded base64 symbols (no '=' allowed in `t`), strictly: a final group of one
/// symbol is invalid and unused trailing bits must be zero.
fn b64_decode_unpadded(t: &[u8], alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    if t.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() / 4 * 3 + 2);
    for group in t.chunks(4) {
        let mut n: u32 = 0;
        for &c in group {
            n = n << 6 | b64_val(c, alphabet)?;
        }
        match group.len() {
            4 => {
                out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
            }
            3 => {
                // 18 bits: 16 data bits, 2 trailing bits that must be zero.
                if n & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
            }
            2 => {
                // 12 bits: 8 data bits, 4 trailing bits that must be zero.
                if n & 0b1111 != 0 {
                    return None;
                }
                out.push((n >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// URL-safe base64 (RFC 4648 §5: `-` and `_`), without padding.
pub fn base64url_encode(data: &[u8]) -> String {
    b64_encode(data, B64_URL, false)
}

/// Decodes URL-safe base64 without padding. Rejects `+`, `/`, `=`, whitespace, a dangling single
/// symbol and non-zero trailing bits (only the canonical encoding is accepted).
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    b64_decode_unpadded(text.as_bytes(), B64_URL)
}

/// Standard base64 (`+`, `/`) with `=` padding.
pub fn base64_std_encode(data: &[u8]) -> String {
    b64_encode(data, B64_STD, true)
}

/// Decodes standard-alphabet base64. Padding is optional, but if present it must be exactly
/// what the length calls for (so both `"QQ=="` and `"QQ"` decode, `"QQ="` does not). Trailing
/// bits must be zero.
pub fn base64_std_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    let pads = t.iter().rev().take_while(|&&c| c == b'=').count();
    let body = t.get(..t.len() - pads)?;
    if pads > 0 && (pads > 2 || t.len() % 4 != 0 || (body.len() % 4) + pads != 4) {
        return None;
    }
    b64_decode_unpadded(body, B64_STD)
}

/// Percent-encodes `s` for use as a URL query value: unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) are kept, every other UTF-8 byte becomes `%XX` (uppercase).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            const UP: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(UP[usize::from(b >> 4)]));
            out.push(char::from(UP[usize::from(b & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Rng, XorShift64};

    #[test]
    fn accepts_hex_either_case() {
        assert_eq!(hex_decode("00ff10Ab"), Some(vec![0x00, 0xff, 0x10, 0xab]));
        assert_eq!(hex_decode(""), Some(vec![]));
        assert_eq!(hex_encode(&[0x00, 0xff, 0x10, 0xab]), "00ff10ab");
    }

    #[test]
    fn rejects_bad_hex() {
        for bad in ["a", "abc", "0g", "zz", " 00", "00 ", "+0", "é0"] {
            assert_eq!(hex_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_base64url_vectors() {
        // RFC 4648 §10 vectors, unpadded, plus URL-safe symbols.
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "-_-_"),
        ];
        for &(raw, enc) in cases {
            assert_eq!(base64url_encode(raw), enc);
            assert_eq!(base64url_decode(enc).as_deref(), Some(raw));
        }
        // The mtg secret vector.
        let raw = hex_decode("eed11c6cbbd9efe7fed5bc0db220b09665676f6f676c652e636f6d").unwrap();
        assert_eq!(
            base64url_encode(&raw),
            "7tEcbLvZ7-f-1bwNsiCwlmVnb29nbGUuY29t"
        );
    }

    #[test]
    fn rejects_non_canonical_base64url() {
        for bad in [
            "Zg==", "Zg=", "+_-_", "/_-_", "Z", "Zm9vY", "Zh", "Zm9", "Zm8 ", " Zm8", "Zm\n8",
            "Zm9vYmF=", "Zm.v",
        ] {
            // "Zh": 'h' leaves non-zero trailing bits; "Zm9": '9' likewise.
            assert_eq!(base64url_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_base64_std_padded_and_unpadded() {
        assert_eq!(base64_std_decode("Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_std_decode("Zg").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_std_decode("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(
            base64_std_decode("+/+/").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
        assert_eq!(base64_std_encode(b"fo"), "Zm8=");
        assert_eq!(base64_std_encode(b"f"), "Zg==");
    }

    #[test]
    fn rejects_bad_base64_std() {
        for bad in [
            "Zg=", "Zg===", "Z===", "=", "==", "Zm8==", "-_-_", "Zh==", "Zg==Zg==", "Z",
        ] {
            assert_eq!(base64_std_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_round_trips_of_random_bytes() {
        let mut rng = XorShift64(7);
        for len in 0..100 {
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            assert_eq!(hex_decode(&hex_encode(&b)).as_deref(), Some(&b[..]));
            assert_eq!(
                hex_decode(&hex_encode(&b).to_uppercase()).as_deref(),
                Some(&b[..])
            );
            assert_eq!(
                base64url_decode(&base64url_encode(&b)).as_deref(),
                Some(&b[..])
            );
            assert_eq!(
                base64_std_decode(&base64_std_encode(&b)).as_deref(),
                Some(&b[..])
            );
        }
    }

    #[test]
    fn rejects_nothing_by_panicking_on_garbage() {
        let mut rng = XorShift64(99);
        for _ in 0..5000 {
            let len = rng.below(12) as usize;
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            // Map into a small alphabet rich in edge symbols so decoders see interesting input.
            let alpha = b"Aa0-_+/=Zz9\n ";
            let s: String = b
                .iter()
                .map(|&x| char::from(alpha[usize::from(x) % alpha.len()]))
                .collect();
            let _ = hex_decode(&s);
            if let Some(v) = base64url_decode(&s) {
                assert_eq!(base64url_encode(&v), s, "url decode must be canonical");
            }
            if let Some(v) = base64_std_decode(&s) {
                let enc = base64_std_encode(&v);
                assert!(enc == s || enc.trim_end_matches('=') == s, "{s:?}");
            }
        }
    }

    #[test]
    fn accepts_percent_encoding() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(percent_encode("+"), "%2B");
        assert_eq!(percent_encode(""), "");
    }
}
