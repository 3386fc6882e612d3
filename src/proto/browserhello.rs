//! The ClientHellos the scout sends to the fronted site: a common browser's, never Telegram's.
//!
//! The scout runs on the proxy's server and talks to the site from there. A hello fingerprinted
//! as TDLib's leaving a server every few hours is itself a tell (issue 12), so the scout sends
//! what a current Chrome (BoringSSL) sends — the most common TLS client there is — for each
//! [`HelloKind`]:
//!
//! * [`HelloKind::PostQuantum`]: Chrome 131+: X25519MLKEM768 then x25519 key shares, ECH GREASE,
//!   ALPS under its new code point 0x44cd;
//! * [`HelloKind::Classic`]: Chrome 110–116: an x25519 share only, ALPS 0x4469, no ECH GREASE,
//!   BoringSSL's padding to 512 bytes.
//!
//! Both shuffle their extensions as Chrome does (GREASE first and last).
//!
//! Why the site's answer is the one Telegram clients get: a TLS 1.3 server's first flight
//! depends on what the hello offers, not on its byte order. These hellos offer what TDLib 1.8.69
//! (for the first kind; `tests/data/tls/tdlib-1.8.69-client-hello.bin`) and the older TDLib
//! hellos (second kind) offer wherever it changes the answer: the cipher suites (same list, so
//! the same choice), supported_groups and key shares (ServerHello group and length), ALPN h2 +
//! http/1.1 (EncryptedExtensions), status_request and signed_certificate_timestamp (OCSP
//! staple and SCTs in the Certificate message), compress_certificate brotli (a compressed
//! Certificate), ALPS, ECH GREASE (retry configs in EncryptedExtensions), session tickets and
//! PSK modes, supported_versions. What differs from TDLib 1.8.69 is what makes its fingerprint
//! its own: its signature_algorithms start with the ML-DSA code points 0x0904..0x0906 that no
//! browser sends (they only matter to a site with an ML-DSA certificate, which no public CA
//! issues), so its JA4 differs from Chrome's; older TDLib hellos keep one fixed extension
//! order, which Chrome stopped doing in version 110.
//!
//! Pure: randomness comes in through [`Rng`].

use super::Rng;
use super::mlkem;
use super::tlsprofile::HelloKind;
use super::x25519;

/// Chrome's cipher suites after its GREASE value.
const SUITES: [u8; 30] = [
    0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30, 0xcc, 0xa9,
    0xcc, 0xa8, 0xc0, 0x13, 0xc0, 0x14, 0x00, 0x9c, 0x00, 0x9d, 0x00, 0x2f, 0x00, 0x35,
];

/// The extensions Chrome shuffles whose data never changes: type, data.
const FIXED: [(u16, &[u8]); 11] = [
    (0x0017, &[]),
    (0xff01, &[0]),
    (0x000b, &[1, 0]),
    (0x0023, &[]),
    (0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
    (0x0005, &[1, 0, 0, 0, 0]),
    // Chrome's signature algorithms.
    (
        0x000d,
        &[
            0, 16, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01, 0x08,
            0x06, 0x06, 0x01,
        ],
    ),
    (0x0012, &[]),
    (0x002d, &[1, 1]),
    (0x001b, &[2, 0, 2]),
    // ALPS (application_settings) for h2; its code point depends on the kind.
    (0, b"\x00\x03\x02h2"),
];
/// Extensions with data made per hello, after [`FIXED`] in the shuffled index space: SNI,
/// supported_groups, key_share, supported_versions, ECH GREASE (post-quantum kind only).
const MADE: usize = 5;

fn grease(rng: &mut impl Rng) -> [u8; 2] {
    let g = (rng.below(16) as u8) << 4 | 0x0a;
    [g, g]
}

/// Appends `b` (one out-of-line copy: the many small appends stay small in the binary).
#[inline(never)]
fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b);
}

fn put16(out: &mut Vec<u8>, v: usize) {
    put(out, &(v as u16).to_be_bytes());
}

/// Writes a u16 length at `at` covering everything after it.
fn patch16(out: &mut [u8], at: usize) {
    let n = (out.len() - at - 2) as u16;
    if let Some(l) = out.get_mut(at..at + 2) {
        l.copy_from_slice(&n.to_be_bytes());
    }
}

/// A complete ClientHello record (`16 03 01 …`) for `host` (clamped to 253 bytes) as a current
/// Chrome sends it for `kind` (see the module doc). Random, session id, GREASE values, key
/// shares (a genuine X25519 point; a fake ML-KEM-768 encapsulation key) and the extension
/// order are fresh each call.
pub fn browser_hello(rng: &mut impl Rng, host: &str, kind: HelloKind) -> Vec<u8> {
    let host = host.as_bytes();
    let host = host.get(..253).unwrap_or(host);
    let pq = kind == HelloKind::PostQuantum;
    let (g_suite, g_ext1, g_group, g_ver) = (grease(rng), grease(rng), grease(rng), grease(rng));
    let mut g_ext2 = grease(rng);
    if g_ext2 == g_ext1 {
        g_ext2 = [g_ext2[0] ^ 0x10; 2];
    }
    let mut out = Vec::with_capacity(2048);
    put(
        &mut out,
        &[0x16, 0x03, 0x01, 0, 0, 0x01, 0, 0, 0, 0x03, 0x03],
    );
    let at = out.len();
    out.resize(at + 65, 32); // random, session id length 32, session id
    rng.fill(&mut out[at..at + 32]);
    rng.fill(&mut out[at + 33..at + 65]);
    put16(&mut out, 32);
    put(&mut out, &g_suite);
    put(&mut out, &SUITES);
    put(&mut out, &[1, 0]);
    let ext_at = out.len();
    put(&mut out, &[0, 0]);
    put(&mut out, &g_ext1);
    put(&mut out, &[0, 0]);

    // Chrome's permutation of everything between the two GREASE extensions.
    let n = FIXED.len() + MADE - usize::from(!pq);
    let mut order = [0u8; FIXED.len() + MADE];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u8;
    }
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let x = x25519::keypair(rng).1;
    for &i in order.get(..n).unwrap_or(&[]) {
        let i = usize::from(i);
        let kind = match FIXED.get(i) {
            Some(&(0, _)) if pq => 0x44cd,
            Some(&(0, _)) => 0x4469,
            Some(&(k, _)) => k,
            None => [0x0000, 0x000a, 0x0033, 0x002b, 0xfe0d][i - FIXED.len()],
        };
        put16(&mut out, kind.into());
        let len_at = out.len();
        put16(&mut out, 0);
        match (FIXED.get(i), kind) {
            (Some(&(_, data)), _) => put(&mut out, data),
            (None, 0x0000) => {
                put16(&mut out, host.len() + 3);
                put(&mut out, &[0]);
                put16(&mut out, host.len());
                put(&mut out, host);
            }
            (None, 0x000a) => {
                put16(&mut out, if pq { 10 } else { 8 });
                put(&mut out, &g_group);
                if pq {
                    put(&mut out, &[0x11, 0xec]);
                }
                put(&mut out, &[0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
            }
            (None, 0x0033) => {
                let list = out.len();
                put16(&mut out, 0);
                put(&mut out, &g_group);
                put(&mut out, &[0x00, 0x01, 0x00]);
                if pq {
                    put(&mut out, &[0x11, 0xec, 0x04, 0xc0]);
                    let mut ek = [0u8; mlkem::ENCAPS_KEY_LEN];
                    mlkem::fake_encaps_key(rng, &mut ek);
                    put(&mut out, &ek);
                    put(&mut out, &x);
                }
                put(&mut out, &[0x00, 0x1d, 0x00, 0x20]);
                put(&mut out, &x);
                patch16(&mut out, list);
            }
            (None, 0x002b) => {
                put(&mut out, &[6]);
                put(&mut out, &g_ver);
                put(&mut out, &[0x03, 0x04, 0x03, 0x03]);
            }
            _ => {
                // ECH GREASE: outer, HKDF-SHA256, AES-128-GCM, a random config id, an X25519
                // "enc", a random payload of one of BoringSSL's GREASE sizes.
                put(&mut out, &[0, 0, 1, 0, 1, 0, 0, 32]);
                let id = out.len() - 3;
                rng.fill(&mut out[id..id + 1]);
                put(&mut out, &x25519::keypair(rng).1);
                let len = 144 + 32 * rng.below(4) as usize;
                put16(&mut out, len);
                let at = out.len();
                out.resize(at + len, 0);
                rng.fill(&mut out[at..]);
            }
        }
        patch16(&mut out, len_at);
    }
    put(&mut out, &g_ext2);
    put(&mut out, &[0, 1, 0]);
    // BoringSSL pads a hello whose handshake message would be 256..511 bytes to 512.
    let unpadded = out.len() - 5;
    if (0x100..0x200).contains(&unpadded) {
        let pad = (0x200 - unpadded).saturating_sub(4).max(1);
        put16(&mut out, 0x0015);
        put16(&mut out, pad);
        out.resize(out.len() + pad, 0);
    }
    patch16(&mut out, ext_at);
    let n = out.len() - 9;
    out[3..5].copy_from_slice(&((n + 4) as u16).to_be_bytes());
    out[6..9].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;
    use crate::proto::faketls::{
        HelloRead, SHARE_MLKEM, SHARE_X25519, parse_client_hello, read_client_hello,
    };

    fn ext_types(rec: &[u8]) -> Vec<u16> {
        let b = &rec[9..];
        let mut p = 2 + 32 + 1 + 32;
        p += 2 + usize::from(u16::from_be_bytes([b[p], b[p + 1]]));
        p += 1 + usize::from(b[p]);
        p += 2;
        let mut out = Vec::new();
        while p + 4 <= b.len() {
            out.push(u16::from_be_bytes([b[p], b[p + 1]]));
            p += 4 + usize::from(u16::from_be_bytes([b[p + 2], b[p + 3]]));
        }
        out
    }

    #[test]
    fn hellos_parse_and_carry_their_kinds_shares() {
        let mut rng = XorShift64(11);
        for kind in HelloKind::ALL {
            let rec = browser_hello(&mut rng, "site.example", kind);
            let mut scratch = [0u8; 4096];
            let HelloRead::Complete { msg_len, consumed } = read_client_hello(&rec, &mut scratch)
            else {
                panic!("incomplete");
            };
            assert_eq!(consumed, rec.len());
            let h = parse_client_hello(&scratch[..msg_len]).unwrap();
            assert_eq!(h.kind(), kind);
            assert!(h.has_sni(&scratch[..msg_len], b"site.example"));
            assert_eq!(h.cipher_suite, 0x1301);
            let want = if kind == HelloKind::PostQuantum {
                SHARE_X25519 | SHARE_MLKEM
            } else {
                SHARE_X25519
            };
            assert_eq!(h.shares, want);
            let types = ext_types(&rec);
            // GREASE first (and last before any padding).
            assert_eq!(types[0] & 0x0f0f, 0x0a0a);
            if kind == HelloKind::Classic {
                assert_eq!(rec.len(), 517, "padded like BoringSSL");
                assert_eq!(*types.last().unwrap(), 0x0015);
                assert!(!types.contains(&0xfe0d) && types.contains(&0x4469));
            } else {
                assert!(rec.len() > 1700);
                assert_eq!(types.last().unwrap() & 0x0f0f, 0x0a0a);
                assert!(types.contains(&0xfe0d) && types.contains(&0x44cd));
            }
        }
    }

    #[test]
    fn extension_order_changes_between_hellos() {
        let mut rng = XorShift64(12);
        let a = ext_types(&browser_hello(
            &mut rng,
            "a.example",
            HelloKind::PostQuantum,
        ));
        let b = ext_types(&browser_hello(
            &mut rng,
            "a.example",
            HelloKind::PostQuantum,
        ));
        let strip = |v: &[u16]| -> Vec<u16> {
            let mut v: Vec<u16> = v.iter().copied().filter(|t| t & 0x0f0f != 0x0a0a).collect();
            v.sort_unstable();
            v
        };
        assert_ne!(a, b);
        assert_eq!(strip(&a), strip(&b));
    }
}
