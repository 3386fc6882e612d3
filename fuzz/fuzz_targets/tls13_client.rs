//! The scout's TLS 1.3 client (`tls13::Client`) against an arbitrary server.
//!
//! Two modes, chosen by the first input byte:
//! * raw (even): the rest is cut into records by their own 5-byte headers (the last one
//!   shortened to what is left) and each is handed to `on_record`;
//! * server (odd): this target plays a real TLS 1.3 server (x25519, AES-128-GCM-SHA256) so the
//!   encrypted part of the client is reached too: a genuine ServerHello answers the client's
//!   key share, then the rest is a list of operations `op, u16be len, bytes`: a plaintext
//!   record, handshake bytes protected under the server handshake keys (appended to the
//!   transcript), a correct server Finished, or an application-data record under the server
//!   application keys.
//!
//! The crypto a server needs that mtpx does not export (SHA-256, HMAC) is written out below.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mtpx::proto::XorShift64;
use mtpx::formats::tls13::{self, Client, Gcm, Options, Step};
use mtpx::proto::x25519;

// --------------------------------------------------------------------------- SHA-256 / HMAC

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg: Vec<u8> = parts.concat();
    let bits = (msg.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..32 {
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    let inner = sha256(&[&ipad, msg]);
    sha256(&[&opad, &inner])
}

// --------------------------------------------------------------------------- the server

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n";

struct Protect {
    gcm: Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Protect {
    fn new(secret: &[u8; 32]) -> Protect {
        let key = tls13::expand_label(secret, "key", &[], 16);
        let iv = tls13::expand_label(secret, "iv", &[], 12);
        Protect {
            gcm: Gcm::new(key[..16].try_into().expect("16")),
            iv: iv[..12].try_into().expect("12"),
            seq: 0,
        }
    }

    fn seal(&mut self, kind: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len() + 1 + 16;
        let mut rec = vec![0x17, 0x03, 0x03, (len >> 8) as u8, len as u8];
        rec.extend_from_slice(content);
        rec.push(kind);
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        let (header, body) = rec.split_at_mut(5);
        let tag = self.gcm.seal(&nonce, header, body);
        rec.extend_from_slice(&tag);
        rec
    }
}

/// Feeds one record; false once the client has failed.
fn deliver(client: &mut Client, mut record: Vec<u8>) -> bool {
    match client.on_record(&mut record) {
        Ok(Step::Send(out)) => {
            assert!(client.established());
            assert_eq!(&out[..6], &[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
            true
        }
        Ok(_) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

fn raw(data: &[u8], decrypt: bool) {
    let mut rng = XorShift64(1);
    let opts = Options {
        host: "site.test",
        alpn: b"http/1.1",
        decrypt,
    };
    let (mut client, _hello) = Client::start(&mut rng, opts, REQUEST);
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let len = match rest {
            [_, _, _, a, b, ..] => 5 + usize::from(u16::from_be_bytes([*a, *b])),
            _ => rest.len(),
        }
        .min(rest.len());
        pos += len;
        if !deliver(&mut client, rest[..len].to_vec()) {
            return;
        }
    }
}

fn server(data: &[u8], decrypt: bool) {
    let mut rng = XorShift64(1);
    let opts = Options {
        host: "site.test",
        alpn: b"",
        decrypt,
    };
    let (mut client, hello) = Client::start(&mut rng, opts, REQUEST);
    // The client's key share: ext 0x0033, list 36, x25519, 32 bytes.
    const SHARE: [u8; 10] = [0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    let at = hello
        .windows(SHARE.len())
        .position(|w| w == SHARE)
        .expect("the ClientHello has an x25519 share")
        + SHARE.len();
    let client_pub: [u8; 32] = hello[at..at + 32].try_into().expect("32");
    // The client's randomness is fixed, so is its key share: the server's key pair and the
    // shared secret are computed once (x25519 dominates the cost of an execution).
    static KEYS: OnceLock<([u8; 32], [u8; 32], [u8; 32])> = OnceLock::new();
    let &(client_pub_then, public, shared) = KEYS.get_or_init(|| {
        let (secret, public) = x25519::keypair(&mut XorShift64(2));
        (client_pub, public, x25519::x25519(&secret, &client_pub))
    });
    assert_eq!(client_pub, client_pub_then);
    let mut sh = vec![2, 0, 0, 0, 0x03, 0x03];
    sh.extend_from_slice(&[0x5a; 32]); // server random
    sh.push(32);
    sh.extend_from_slice(&hello[44..76]); // echo the session id
    sh.extend_from_slice(&[0x13, 0x01, 0]);
    let mut exts = vec![
        0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x33, 0x00, 0x24, 0x00, 0x1d,
    ];
    exts.extend_from_slice(&[0x00, 0x20]);
    exts.extend_from_slice(&public);
    sh.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    sh.extend_from_slice(&exts);
    let body = sh.len() - 4;
    sh[2..4].copy_from_slice(&(body as u16).to_be_bytes());

    let mut transcript = hello[5..].to_vec();
    transcript.extend_from_slice(&sh);
    let (_c_hs, s_hs, master) = tls13::handshake_secrets(&shared, &sha256(&[&transcript]));
    let mut rec = vec![0x16, 0x03, 0x03];
    rec.extend_from_slice(&(sh.len() as u16).to_be_bytes());
    rec.extend_from_slice(&sh);
    if !deliver(&mut client, rec) {
        panic!("a genuine ServerHello was refused");
    }

    let mut hs = Protect::new(&s_hs);
    let mut app: Option<Protect> = None;
    let mut ops = data;
    while let [op, a, b, rest @ ..] = ops {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (bytes, next) = rest.split_at(len);
        ops = next;
        let record = match op % 4 {
            0 => {
                // Plaintext record, type from the op's high bits.
                let kind = [0x14, 0x15, 0x16, 0x17][usize::from(op >> 6)];
                let mut r = vec![kind, 0x03, 0x03];
                r.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                r.extend_from_slice(bytes);
                r
            }
            1 => {
                transcript.extend_from_slice(bytes);
                hs.seal(0x16, bytes)
            }
            2 => {
                let key = tls13::expand_label(&s_hs, "finished", &[], 32);
                let mut fin = vec![20, 0, 0, 32];
                fin.extend_from_slice(&hmac(&key, &sha256(&[&transcript])));
                transcript.extend_from_slice(&fin);
                let hash = sha256(&[&transcript]);
                let s_ap = tls13::expand_label(&master, "s ap traffic", &hash, 32);
                app = Some(Protect::new(&s_ap));
                hs.seal(0x16, &fin)
            }
            _ => {
                // Inner type from the op's high bits: data, handshake (ticket), alert.
                let kind = [0x17, 0x16, 0x15, 0x14][usize::from(op >> 6)];
                match app.as_mut() {
                    Some(p) => p.seal(kind, bytes),
                    None => hs.seal(kind, bytes),
                }
            }
        };
        if !deliver(&mut client, record) {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let decrypt = mode & 2 != 0;
    if mode & 1 == 0 {
        raw(rest, decrypt);
    } else {
        server(rest, decrypt);
    }
});
