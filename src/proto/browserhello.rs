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
const SUITES: [u16; 15] = [
    0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
    0x009d, 0x002f, 0x0035,
];
/// Chrome's signature algorithms.
const SIG_ALGS: [u16; 8] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
];

fn grease(rng: &mut impl Rng) -> u16 {
    let g = (rng.below(16) as u16) << 4 | 0x0a;
    g << 8 | g
}

fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn u16s(v: &[u16]) -> Vec<u8> {
    let mut out = ((v.len() * 2) as u16).to_be_bytes().to_vec();
    for x in v {
        out.extend_from_slice(&x.to_be_bytes());
    }
    out
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
        g_ext2 ^= 0x1010;
    }
    let groups: &[u16] = if pq {
        &[g_group, 0x11ec, 0x001d, 0x0017, 0x0018]
    } else {
        &[g_group, 0x001d, 0x0017, 0x0018]
    };
    let mut shares = Vec::with_capacity(1300);
    shares.extend_from_slice(&g_group.to_be_bytes());
    shares.extend_from_slice(&[0x00, 0x01, 0x00]);
    let (_, x) = x25519::keypair(rng);
    if pq {
        shares.extend_from_slice(&[0x11, 0xec, 0x04, 0xc0]);
        let mut ek = [0u8; mlkem::ENCAPS_KEY_LEN];
        mlkem::fake_encaps_key(rng, &mut ek);
        shares.extend_from_slice(&ek);
        shares.extend_from_slice(&x);
    }
    shares.extend_from_slice(&[0x00, 0x1d, 0x00, 0x20]);
    shares.extend_from_slice(&x);
    let mut key_share = (shares.len() as u16).to_be_bytes().to_vec();
    key_share.extend_from_slice(&shares);
    let mut sni = ((host.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let alpn = b"\x00\x0c\x02h2\x08http/1.1";
    let mut versions = vec![6];
    versions.extend_from_slice(&g_ver.to_be_bytes());
    versions.extend_from_slice(&[0x03, 0x04, 0x03, 0x03]);

    // The extensions Chrome shuffles.
    let mut middle: Vec<(u16, Vec<u8>)> = vec![
        (0x0000, sni),
        (0x0017, vec![]),
        (0xff01, vec![0]),
        (0x000a, u16s(groups)),
        (0x000b, vec![1, 0]),
        (0x0023, vec![]),
        (0x0010, alpn.to_vec()),
        (0x0005, vec![1, 0, 0, 0, 0]),
        (0x000d, u16s(&SIG_ALGS)),
        (0x0012, vec![]),
        (0x0033, key_share),
        (0x002d, vec![1, 1]),
        (0x002b, versions),
        (0x001b, vec![2, 0, 2]),
        (if pq { 0x44cd } else { 0x4469 }, b"\x00\x03\x02h2".to_vec()),
    ];
    if pq {
        // ECH GREASE: outer, HKDF-SHA256, AES-128-GCM, a random config id, an X25519 "enc",
        // a random payload of one of BoringSSL's GREASE sizes.
        let mut ech = vec![0, 0, 1, 0, 1];
        let mut id = [0u8; 1];
        rng.fill(&mut id);
        ech.push(id[0]);
        ech.extend_from_slice(&[0, 32]);
        ech.extend_from_slice(&x25519::keypair(rng).1);
        let n = 144 + 32 * rng.below(4) as usize;
        ech.extend_from_slice(&(n as u16).to_be_bytes());
        let at = ech.len();
        ech.resize(at + n, 0);
        rng.fill(&mut ech[at..]);
        middle.push((0xfe0d, ech));
    }
    for i in (1..middle.len()).rev() {
        middle.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let mut exts = Vec::with_capacity(1800);
    ext(&mut exts, g_ext1, &[]);
    for (kind, data) in &middle {
        ext(&mut exts, *kind, data);
    }
    ext(&mut exts, g_ext2, &[0]);

    let mut body = Vec::with_capacity(2000);
    body.extend_from_slice(&[0x03, 0x03]);
    let mut random = [0u8; 32];
    rng.fill(&mut random);
    body.extend_from_slice(&random);
    body.push(32);
    let mut sid = [0u8; 32];
    rng.fill(&mut sid);
    body.extend_from_slice(&sid);
    let mut suites = vec![g_suite];
    suites.extend_from_slice(&SUITES);
    body.extend_from_slice(&u16s(&suites));
    body.extend_from_slice(&[1, 0]);
    // BoringSSL pads a hello whose handshake message would be 256..511 bytes to 512.
    let unpadded = 4 + body.len() + 2 + exts.len();
    if (0x100..0x200).contains(&unpadded) {
        let pad = (0x200 - unpadded).saturating_sub(4).max(1);
        ext(&mut exts, 0x0015, &vec![0u8; pad]);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let n = body.len();
    let mut rec = Vec::with_capacity(n + 9);
    rec.extend_from_slice(&[0x16, 0x03, 0x01]);
    rec.extend_from_slice(&((n + 4) as u16).to_be_bytes());
    rec.extend_from_slice(&[0x01, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    rec.extend_from_slice(&body);
    rec
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
