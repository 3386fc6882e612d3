//! Handshake and codec tests against a reference middle proxy written here plainly (whole
//! packets in `Vec`s, no streaming), plus byte vectors, truncation sweeps and split sweeps.

use std::net::SocketAddr;

use super::codec::{Decoded, Decoder, Encoder, HEADROOM, Link, MIN_OUT_ROOM, SessionParams};
use super::handshake::{HsParams, HsStep, MeHandshake, OUT_MAX};
use super::*;
use crate::formats::encoding::hex_encode;
use crate::proto::hash::crc32;
use crate::proto::obfs2::Tag;
use crate::proto::{Rng, XorShift64};

const TS: u32 = 1_700_000_000;
const AD_TAG: [u8; 16] = *b"0123456789abcdef";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secret() -> Vec<u8> {
    (0..128u32).map(|i| (i * 37 + 11) as u8).collect()
}

fn params(secret: &[u8]) -> HsParams<'_> {
    HsParams {
        secret,
        ours: sa("203.0.113.5:41000"),
        theirs: sa("149.154.175.50:8888"),
        now_unix: TS,
        nonce: [0x5a; 16],
        pid: process_id("203.0.113.5".parse().unwrap(), 4242, TS - 100),
    }
}

/// The middle proxy's side, done the simple way.
struct RefServer {
    secret: Vec<u8>,
    /// Our (the proxy's) address and the server's, as in [`HsParams`].
    ours: SocketAddr,
    theirs: SocketAddr,
    nonce: [u8; 16],
    ts: u32,
    /// (read, write) once keyed.
    keys: Option<(CompactCbc, CompactCbc)>,
    in_seq: i32,
    out_seq: i32,
    cipher: Vec<u8>,
    plain: Vec<u8>,
}

impl RefServer {
    fn new(p: &HsParams<'_>) -> RefServer {
        RefServer {
            secret: p.secret.to_vec(),
            ours: p.ours,
            theirs: p.theirs,
            nonce: [0xa5; 16],
            ts: p.now_unix + 3,
            keys: None,
            in_seq: -2,
            out_seq: -2,
            cipher: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Complete packets from the client so far: (seq, payload), padding words skipped.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(i32, Vec<u8>)> {
        match self.keys.as_mut() {
            None => self.plain.extend_from_slice(bytes),
            Some((read, _)) => {
                self.cipher.extend_from_slice(bytes);
                let n = self.cipher.len() / 16 * 16;
                let mut c: Vec<u8> = self.cipher.drain(..n).collect();
                read.decrypt(&mut c);
                self.plain.extend_from_slice(&c);
            }
        }
        let mut out = Vec::new();
        loop {
            if self.plain.len() >= 4 && le32(&self.plain) == 4 {
                self.plain.drain(..4);
                continue;
            }
            if self.plain.len() < 4 {
                break;
            }
            let len = le32(&self.plain) as usize;
            assert!(len >= 16 && len % 4 == 0, "bad length {len}");
            if self.plain.len() < len {
                break;
            }
            let p: Vec<u8> = self.plain.drain(..len).collect();
            assert_eq!(le32(&p[len - 4..]), crc32(&p[..len - 4]), "crc");
            let seq = le32(&p[4..]) as i32;
            assert_eq!(seq, self.in_seq, "seq");
            self.in_seq += 1;
            out.push((seq, p[8..len - 4].to_vec()));
        }
        out
    }

    /// One packet from the server (encrypted and padded once keyed).
    fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; payload.len() + 12 + 16];
        let n = write_packet(&mut out, self.out_seq, payload);
        self.out_seq += 1;
        let n = match self.keys.as_mut() {
            None => n,
            Some((_, write)) => {
                let n = pad_to_block(&mut out, n);
                write.encrypt(&mut out[..n]);
                n
            }
        };
        out.truncate(n);
        out
    }

    /// Answers the client's nonce packet and keys itself.
    fn answer_nonce(&mut self, nonce_payload: &[u8]) -> Vec<u8> {
        assert_eq!(le32(nonce_payload), RPC_NONCE);
        assert_eq!(&nonce_payload[4..8], &self.secret[..4]);
        assert_eq!(le32(&nonce_payload[8..]), CRYPTO_AES);
        let clt_ts = le32(&nonce_payload[12..]);
        let clt_nonce: [u8; 16] = nonce_payload[16..32].try_into().unwrap();
        let mut p = [0u8; 32];
        p[..4].copy_from_slice(&RPC_NONCE.to_le_bytes());
        p[4..8].copy_from_slice(&self.secret[..4]);
        p[8..12].copy_from_slice(&CRYPTO_AES.to_le_bytes());
        p[12..16].copy_from_slice(&self.ts.to_le_bytes());
        p[16..].copy_from_slice(&self.nonce);
        let out = self.packet(&p);
        let k = derive_keys(
            &self.nonce,
            &clt_nonce,
            clt_ts,
            self.ours,
            self.theirs,
            &self.secret,
        )
        .unwrap();
        // The server reads with the client's write key and writes with its read key.
        self.keys = Some((k.write, k.read));
        out
    }

    /// Answers the client's handshake packet (echoing its pid).
    fn answer_handshake(&mut self, h: &[u8]) -> Vec<u8> {
        assert_eq!(h.len(), 32);
        assert_eq!(le32(h), RPC_HANDSHAKE);
        let mut a = [0u8; 32];
        a[..4].copy_from_slice(&RPC_HANDSHAKE.to_le_bytes());
        a[8..20].copy_from_slice(&[7; 12]); // the server's own pid
        a[20..32].copy_from_slice(&h[8..20]);
        self.packet(&a)
    }
}

/// Runs a handshake between `MeHandshake` and the reference server; returns the link, the
/// server, and the client's handshake payload as the server saw it.
fn connect(p: &HsParams<'_>) -> (Box<Link>, RefServer, Vec<u8>) {
    let mut hs = MeHandshake::new(p).unwrap();
    let mut srv = RefServer::new(p);
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    let got = srv.feed(&out[..n]);
    assert_eq!(got.len(), 1);
    let answer = srv.answer_nonce(&got[0].1);
    let HsStep::Send { consumed, len } = hs.handle(&answer, &mut out) else {
        panic!("expected Send");
    };
    assert_eq!(consumed, answer.len());
    let got = srv.feed(&out[..len]);
    assert_eq!(got.len(), 1, "the handshake packet");
    let h = got[0].1.clone();
    let answer = srv.answer_handshake(&h);
    match hs.handle(&answer, &mut out) {
        HsStep::Connected { consumed, link } => {
            assert_eq!(consumed, answer.len());
            (link, srv, h)
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn session(tag: Tag, ad_tag: Option<[u8; 16]>) -> (Encoder, Decoder, RefServer) {
    let s = secret();
    let (link, srv, _) = connect(&params(&s));
    let (enc, dec) = link.session(&SessionParams {
        tag,
        conn_id: 0x1122_3344_5566_7788,
        client: sa("198.51.100.9:50123"),
        ours: sa("203.0.113.5:443"),
        ad_tag,
    });
    (enc, dec, srv)
}

// ------------------------------------------------------------------------------ handshake

#[test]
fn writes_the_nonce_packet_byte_for_byte() {
    let s = secret();
    let mut hs = MeHandshake::new(&params(&s)).unwrap();
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    // len 44, seq -2, RPC_NONCE, key_select = secret[..4], schema 1, ts, nonce, crc.
    let mut want = String::from("2c000000feffffffaa87cb7a");
    want += &hex_encode(&s[..4]);
    want += "01000000";
    want += &hex_encode(&TS.to_le_bytes());
    want += &"5a".repeat(16);
    want += &hex_encode(&crc32(&out[..40]).to_le_bytes());
    assert_eq!(hex_encode(&out[..n]), want);
    // Once only.
    assert_eq!(hs.start(&mut out), 0);
}

#[test]
fn accepts_a_reference_middle_proxy() {
    let s = secret();
    let p = params(&s);
    let (_, _, h) = connect(&p);
    // RPC_HANDSHAKE, flags 0, our pid, the peer pid (its IPv4 and port).
    assert_eq!(le32(&h[4..]), 0);
    assert_eq!(&h[8..20], &p.pid);
    assert_eq!(&h[20..32], &peer_process_id(p.theirs));
}

#[test]
fn accepts_padding_words_and_answers_split_anywhere() {
    let s = secret();
    let p = params(&s);
    let mut srv = RefServer::new(&p);
    let mut hs = MeHandshake::new(&p).unwrap();
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    let got = srv.feed(&out[..n]);
    let mut nonce = PAD_WORD.to_vec();
    nonce.extend(srv.answer_nonce(&got[0].1));
    // Every prefix of the nonce answer needs more; nothing is consumed but padding.
    for cut in 0..nonce.len() {
        let mut probe = MeHandshake::new(&p).unwrap();
        probe.start(&mut [0u8; OUT_MAX]);
        match probe.handle(&nonce[..cut], &mut out) {
            HsStep::NeedMore { consumed } => assert!(consumed <= 4, "cut {cut}"),
            other => panic!("cut {cut}: {other:?}"),
        }
    }
    let HsStep::Send { consumed, len } = hs.handle(&nonce, &mut out) else {
        panic!()
    };
    assert_eq!(consumed, nonce.len());
    let got = srv.feed(&out[..len]);
    let answer = srv.answer_handshake(&got[0].1);
    // Fed in pieces of every size: blocks are consumed as they complete.
    for piece in 1..=answer.len() {
        let mut hs2 = MeHandshake::new(&p).unwrap();
        let mut srv2 = RefServer::new(&p);
        let n = hs2.start(&mut out);
        let got = srv2.feed(&out[..n]);
        let a1 = srv2.answer_nonce(&got[0].1);
        let HsStep::Send { len, .. } = hs2.handle(&a1, &mut out) else {
            panic!()
        };
        let got = srv2.feed(&out[..len]);
        let a2 = srv2.answer_handshake(&got[0].1);
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut connected = false;
        while fed < a2.len() {
            let k = piece.min(a2.len() - fed);
            pending.extend_from_slice(&a2[fed..fed + k]);
            fed += k;
            match hs2.handle(&pending, &mut out) {
                HsStep::NeedMore { consumed } => {
                    pending.drain(..consumed);
                }
                HsStep::Connected { consumed, .. } => {
                    pending.drain(..consumed);
                    connected = true;
                    break;
                }
                other => panic!("piece {piece}: {other:?}"),
            }
        }
        assert!(connected, "piece {piece}");
        assert!(pending.is_empty());
    }
}

#[test]
fn truncation_sweep_never_panics_or_connects() {
    let s = secret();
    let p = params(&s);
    let mut srv = RefServer::new(&p);
    let mut hs = MeHandshake::new(&p).unwrap();
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    let got = srv.feed(&out[..n]);
    let a1 = srv.answer_nonce(&got[0].1);
    let HsStep::Send { len, .. } = hs.handle(&a1, &mut out) else {
        panic!()
    };
    let got = srv.feed(&out[..len]);
    let a2 = srv.answer_handshake(&got[0].1);
    for cut in 0..a2.len() {
        let mut probe = MeHandshake::new(&p).unwrap();
        probe.start(&mut out);
        let HsStep::Send { .. } = probe.handle(&a1, &mut out) else {
            panic!()
        };
        match probe.handle(&a2[..cut], &mut out) {
            HsStep::NeedMore { consumed } => assert_eq!(consumed, cut / 16 * 16, "cut {cut}"),
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

/// Drives a handshake to the nonce answer and returns what `handle` makes of `answer`.
fn nonce_verdict(p: &HsParams<'_>, answer: &[u8]) -> HsStep {
    let mut hs = MeHandshake::new(p).unwrap();
    let mut out = [0u8; OUT_MAX];
    hs.start(&mut out);
    hs.handle(answer, &mut out)
}

#[test]
fn rejects_bad_nonce_answers() {
    let s = secret();
    let p = params(&s);
    let good = {
        let mut srv = RefServer::new(&p);
        let mut hs = MeHandshake::new(&p).unwrap();
        let mut out = [0u8; OUT_MAX];
        let n = hs.start(&mut out);
        let got = srv.feed(&out[..n]);
        srv.answer_nonce(&got[0].1)
    };
    let fail = |bytes: &[u8]| match nonce_verdict(&p, bytes) {
        HsStep::Failed(e) => e,
        other => panic!("{other:?}"),
    };
    let recrc = |mut b: Vec<u8>| {
        let c = crc32(&b[..40]);
        b[40..44].copy_from_slice(&c.to_le_bytes());
        b
    };
    let mut b = good.clone();
    b[43] ^= 1;
    assert_eq!(fail(&b), MeError::BadCrc);
    let mut b = good.clone();
    b[4] = 0;
    assert_eq!(fail(&recrc(b)), MeError::BadSeq);
    let mut b = good.clone();
    b[12] ^= 1; // key_select
    assert_eq!(fail(&recrc(b)), MeError::BadNonce);
    let mut b = good.clone();
    b[16] = 2; // schema
    assert_eq!(fail(&recrc(b)), MeError::BadNonce);
    let mut b = good.clone();
    b[20..24].copy_from_slice(&(TS + 31).to_le_bytes());
    assert_eq!(fail(&recrc(b)), MeError::ClockSkew);
    let mut b = good.clone();
    b[20..24].copy_from_slice(&(TS - 31).to_le_bytes());
    assert_eq!(fail(&recrc(b)), MeError::ClockSkew);
    let mut b = good.clone();
    b[20..24].copy_from_slice(&(TS - 30).to_le_bytes());
    assert!(matches!(nonce_verdict(&p, &recrc(b)), HsStep::Send { .. }));
    let mut b = good.clone();
    b[0] = 48; // a longer (DH) nonce we did not offer
    assert_eq!(fail(&b), MeError::BadNonce);
    let mut b = good.clone();
    b[0] = 45;
    assert_eq!(fail(&b), MeError::BadLength);
    assert_eq!(
        MeHandshake::new(&HsParams {
            secret: &s[..31],
            ..p
        })
        .unwrap_err(),
        MeError::BadSecret
    );
}

/// The handshake up to the encrypted answer, which `edit` may change before it is packed.
fn answer_verdict(edit: impl FnOnce(&mut [u8; 32], &mut RefServer) -> Option<Vec<u8>>) -> HsStep {
    let s = secret();
    let p = params(&s);
    let mut srv = RefServer::new(&p);
    let mut hs = MeHandshake::new(&p).unwrap();
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    let got = srv.feed(&out[..n]);
    let a1 = srv.answer_nonce(&got[0].1);
    let HsStep::Send { len, .. } = hs.handle(&a1, &mut out) else {
        panic!()
    };
    let got = srv.feed(&out[..len]);
    let h = &got[0].1;
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&RPC_HANDSHAKE.to_le_bytes());
    a[20..32].copy_from_slice(&h[8..20]);
    let bytes = match edit(&mut a, &mut srv) {
        Some(b) => b,
        None => srv.packet(&a),
    };
    hs.handle(&bytes, &mut out)
}

#[test]
fn rejects_bad_handshake_answers() {
    let fail = |s: HsStep| match s {
        HsStep::Failed(e) => e,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        answer_verdict(|_, _| None),
        HsStep::Connected { .. }
    ));
    assert_eq!(
        fail(answer_verdict(|a, _| {
            a[20] ^= 1;
            None
        })),
        MeError::BadHandshake
    );
    assert_eq!(
        fail(answer_verdict(|a, _| {
            a[4] = 1; // unknown flag
            None
        })),
        MeError::BadHandshake
    );
    assert_eq!(
        fail(answer_verdict(|a, _| {
            a[5] = 8; // CRC32-C (2048), never asked for
            None
        })),
        MeError::BadHandshake
    );
    assert_eq!(
        fail(answer_verdict(|_, srv| {
            let mut e = [0u8; 20];
            e[..4].copy_from_slice(&RPC_HANDSHAKE_ERROR.to_le_bytes());
            e[4..8].copy_from_slice(&(-4i32).to_le_bytes());
            Some(srv.packet(&e))
        })),
        MeError::HandshakeRefused
    );
    assert_eq!(
        fail(answer_verdict(|a, srv| {
            srv.out_seq = 0;
            Some(srv.packet(a))
        })),
        MeError::BadSeq
    );
    // Wrong keys (another secret): garbage after decryption.
    let e = fail(answer_verdict(|a, srv| {
        let (_, w) = srv.keys.as_mut().unwrap();
        *w = CompactCbc::new([9; 32], [9; 16]);
        Some(srv.packet(a))
    }));
    assert!(
        matches!(e, MeError::BadLength | MeError::BadSeq | MeError::BadCrc),
        "{e:?}"
    );
}

// ------------------------------------------------------------------------------ encoder

/// Client transport framing of `payload` for `tag` (`pad` bytes appended for padded).
fn frame(tag: Tag, payload: &[u8], quickack: bool, pad: usize) -> Vec<u8> {
    let mut out = Vec::new();
    match tag {
        Tag::Abridged => {
            let words = payload.len() / 4;
            let q = if quickack { 0x80 } else { 0 };
            if words < 0x7f {
                out.push(words as u8 | q);
            } else {
                out.push(0x7f | q);
                out.extend_from_slice(&(words as u32).to_le_bytes()[..3]);
            }
        }
        _ => {
            let n = (payload.len() + pad) as u32 | if quickack { 0x8000_0000 } else { 0 };
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    out.extend(std::iter::repeat_n(0xee, pad));
    out
}

/// Encodes all of `input` in pieces of `piece` bytes with `room` bytes of output each time.
fn encode_all(enc: &mut Encoder, input: &[u8], piece: usize, room: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut out = vec![0u8; room];
    loop {
        let k = piece.min(input.len() - fed);
        pending.extend_from_slice(&input[fed..fed + k]);
        fed += k;
        let e = enc.encode(&pending, &mut out).expect("encode");
        assert_eq!(e.written % 16, 0);
        wire.extend_from_slice(&out[..e.written]);
        pending.drain(..e.consumed);
        if fed == input.len() && e.consumed == 0 && e.written == 0 {
            break;
        }
    }
    assert!(pending.is_empty(), "{} bytes left", pending.len());
    wire
}

/// A parsed `RPC_PROXY_REQ`.
#[derive(Debug, PartialEq)]
struct Req {
    flags: u32,
    conn_id: u64,
    client: [u8; 20],
    ours: [u8; 20],
    ad_tag: Option<[u8; 16]>,
    data: Vec<u8>,
}

fn parse_req(p: &[u8]) -> Req {
    assert_eq!(le32(p), RPC_PROXY_REQ);
    let flags = le32(&p[4..]);
    let mut r = Req {
        flags,
        conn_id: le64(&p[8..]),
        client: p[16..36].try_into().unwrap(),
        ours: p[36..56].try_into().unwrap(),
        ad_tag: None,
        data: Vec::new(),
    };
    let mut at = 56;
    if flags & FLAG_HAS_AD_TAG != 0 {
        assert_eq!(le32(&p[56..]), 24, "extra size");
        assert_eq!(le32(&p[60..]), TL_PROXY_TAG);
        assert_eq!(p[64], 16);
        r.ad_tag = Some(p[65..81].try_into().unwrap());
        assert_eq!(&p[81..84], &[0, 0, 0]);
        at = 84;
    }
    r.data = p[at..].to_vec();
    r
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift64(seed).fill(&mut v);
    v
}

#[test]
fn encodes_client_packets_of_every_transport() {
    for tag in [Tag::Abridged, Tag::Intermediate, Tag::Padded] {
        let (mut enc, _, mut srv) = session(tag, Some(AD_TAG));
        let mut zero_key = payload(1, 64);
        zero_key[..8].fill(0);
        let packets = [
            (payload(2, 8), false, 0),
            (zero_key, false, 3),
            (payload(3, 0x7e * 4), true, 1),
            (payload(4, 0x7f * 4), false, 2),
            (payload(5, 70_000), true, 0),
        ];
        let mut input = Vec::new();
        for (p, q, pad) in &packets {
            let pad = if tag == Tag::Padded { *pad } else { 0 };
            input.extend(frame(tag, p, *q, pad));
        }
        let wire = encode_all(&mut enc, &input, input.len(), 200_000);
        let got = srv.feed(&wire);
        assert_eq!(got.len(), packets.len(), "{tag:?}");
        let transport = match tag {
            Tag::Abridged => FLAG_ABRIDGED,
            Tag::Intermediate => FLAG_INTERMEDIATE,
            Tag::Padded => FLAG_INTERMEDIATE | FLAG_PAD,
        };
        for (i, ((seq, pl), (p, q, _))) in got.iter().zip(&packets).enumerate() {
            assert_eq!(*seq, i as i32);
            let r = parse_req(pl);
            let mut want = FLAG_HAS_AD_TAG | FLAG_MAGIC | FLAG_EXTMODE2 | transport;
            if *q {
                want |= FLAG_QUICKACK;
            }
            if p[..8] == [0; 8] {
                want |= FLAG_NOT_ENCRYPTED;
            }
            assert_eq!(r.flags, want, "{tag:?} packet {i}");
            assert_eq!(r.conn_id, 0x1122_3344_5566_7788);
            assert_eq!(r.client, addr_field(sa("198.51.100.9:50123")));
            assert_eq!(r.ours, addr_field(sa("203.0.113.5:443")));
            assert_eq!(r.ad_tag, Some(AD_TAG));
            assert_eq!(&r.data, p, "{tag:?} packet {i}");
        }
    }
}

#[test]
fn encodes_without_an_ad_tag() {
    let (mut enc, _, mut srv) = session(Tag::Intermediate, None);
    let p = payload(9, 40);
    let wire = encode_all(&mut enc, &frame(Tag::Intermediate, &p, false, 0), 100, 4096);
    let got = srv.feed(&wire);
    let r = parse_req(&got[0].1);
    assert_eq!(r.flags & FLAG_HAS_AD_TAG, 0);
    assert_eq!(r.ad_tag, None);
    assert_eq!(r.data, p);
}

#[test]
fn encodes_the_same_bytes_however_the_input_is_split_and_the_output_sized() {
    let tag = Tag::Padded;
    let mut input = Vec::new();
    for (i, n) in [16usize, 4, 200, 1000, 36].into_iter().enumerate() {
        input.extend(frame(tag, &payload(i as u64 + 20, n), i % 2 == 0, i % 4));
    }
    let (mut enc, _, _) = session(tag, Some(AD_TAG));
    let want = encode_all(&mut enc, &input, input.len(), 1 << 16);
    for piece in [1, 2, 3, 5, 7, 16, 17, 100] {
        for room in [MIN_OUT_ROOM, 129, 160, 333] {
            let (mut enc, _, _) = session(tag, Some(AD_TAG));
            assert_eq!(
                encode_all(&mut enc, &input, piece, room),
                want,
                "piece {piece}, room {room}"
            );
        }
    }
}

#[test]
fn rejects_bad_client_framing() {
    let bad = |tag: Tag, bytes: &[u8]| {
        let (mut enc, _, _) = session(tag, None);
        enc.encode(bytes, &mut [0u8; 4096]).unwrap_err()
    };
    assert_eq!(bad(Tag::Abridged, &[0]), MeError::BadClientPacket);
    assert_eq!(
        bad(Tag::Abridged, &[0x7f, 0x7e, 0, 0]),
        MeError::BadClientPacket
    );
    assert_eq!(
        bad(Tag::Abridged, &[0x7f, 0xff, 0xff, 0xff]),
        MeError::ClientPacketTooLarge
    );
    assert_eq!(
        bad(Tag::Intermediate, &[0, 0, 0, 0]),
        MeError::BadClientPacket
    );
    assert_eq!(
        bad(Tag::Intermediate, &[6, 0, 0, 0]),
        MeError::BadClientPacket
    );
    assert_eq!(
        bad(Tag::Intermediate, &[0, 0, 0, 0x40]),
        MeError::BadClientPacket
    );
    let big = (MAX_CLIENT_PACKET_FOR_TEST + 4).to_le_bytes();
    assert_eq!(bad(Tag::Intermediate, &big), MeError::ClientPacketTooLarge);
    // Padded: fewer than 4 bytes is only padding, which is no packet.
    assert_eq!(bad(Tag::Padded, &[3, 0, 0, 0]), MeError::BadClientPacket);
    // The largest packet is fine.
    let (mut enc, _, _) = session(Tag::Intermediate, None);
    let ok = MAX_CLIENT_PACKET_FOR_TEST.to_le_bytes();
    assert!(enc.encode(&ok, &mut [0u8; 4096]).is_ok());
}

const MAX_CLIENT_PACKET_FOR_TEST: u32 = super::codec::MAX_CLIENT_PACKET;

#[test]
fn sends_control_packets_between_client_packets() {
    let (mut enc, _, mut srv) = session(Tag::Intermediate, None);
    let p = payload(30, 100);
    let f = frame(Tag::Intermediate, &p, false, 0);
    let mut out = vec![0u8; 4096];
    // Half a packet: the ping waits for its end.
    let e = enc.encode(&f[..50], &mut out).unwrap();
    enc.queue_ping(0xabcd);
    assert_eq!(enc.close(&mut out[e.written..]), 0, "mid-packet");
    let mut wire = out[..e.written].to_vec();
    let e = enc.encode(&f[50..], &mut out).unwrap();
    wire.extend_from_slice(&out[..e.written]);
    enc.queue_pong(0x1234);
    let e = enc.encode(&[], &mut out).unwrap();
    wire.extend_from_slice(&out[..e.written]);
    let n = enc.close(&mut out);
    assert_eq!(n, 32);
    wire.extend_from_slice(&out[..n]);
    let got = srv.feed(&wire);
    let kinds: Vec<u32> = got.iter().map(|(_, p)| le32(p)).collect();
    assert_eq!(kinds, [RPC_PROXY_REQ, RPC_PING, RPC_PONG, RPC_CLOSE_CONN]);
    assert_eq!(le64(&got[1].1[4..]), 0xabcd);
    assert_eq!(le64(&got[2].1[4..]), 0x1234);
    assert_eq!(le64(&got[3].1[4..]), 0x1122_3344_5566_7788);
}

// ------------------------------------------------------------------------------ decoder

/// An `RPC_PROXY_ANS` payload for `conn` carrying `data`.
fn ans(conn: u64, data: &[u8]) -> Vec<u8> {
    let mut p = RPC_PROXY_ANS.to_le_bytes().to_vec();
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&conn.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn ctl(kind: u32, v: u64, extra: &[u8]) -> Vec<u8> {
    let mut p = kind.to_le_bytes().to_vec();
    p.extend_from_slice(&v.to_le_bytes());
    p.extend_from_slice(extra);
    p
}

/// Decodes `wire` fed in pieces of `piece` bytes; returns the client bytes and the reports.
fn decode_all(dec: &mut Decoder, wire: &[u8], piece: usize) -> (Vec<u8>, Vec<Decoded>) {
    let mut rng = XorShift64(77);
    let mut client = Vec::new();
    let mut reports = Vec::new();
    for chunk in wire.chunks(piece.max(1)) {
        // Something already sits before `at`, as pending output would in a relay buffer.
        let at = 5;
        let mut buf = vec![0xcc; at + HEADROOM + chunk.len()];
        buf[at + HEADROOM..].copy_from_slice(chunk);
        let d = dec
            .decode(&mut buf, at, chunk.len(), &mut rng)
            .expect("decode");
        assert!(buf[..at].iter().all(|&b| b == 0xcc), "wrote before `at`");
        assert!(d.out <= chunk.len() + HEADROOM);
        client.extend_from_slice(&buf[at..at + d.out]);
        reports.push(d);
    }
    (client, reports)
}

const CONN: u64 = 0x1122_3344_5566_7788;

#[test]
fn decodes_answers_for_every_transport() {
    for tag in [Tag::Abridged, Tag::Intermediate, Tag::Padded] {
        let (_, mut dec, mut srv) = session(tag, Some(AD_TAG));
        let datas = [
            payload(40, 8),
            payload(41, 0x7e * 4),
            payload(42, 0x7f * 4),
            payload(43, 100_000),
        ];
        let mut wire = Vec::new();
        for d in &datas {
            wire.extend(srv.packet(&ans(CONN, d)));
        }
        wire.extend(srv.packet(&ctl(RPC_SIMPLE_ACK, CONN, &[1, 2, 3, 0x84])));
        let (client, _) = decode_all(&mut dec, &wire, wire.len());
        // Parse the client transport back.
        let mut at = 0;
        for d in &datas {
            let (hlen, len) = match tag {
                Tag::Abridged if client[at] < 0x7f => (1, usize::from(client[at]) * 4),
                Tag::Abridged => {
                    assert_eq!(client[at], 0x7f);
                    (
                        4,
                        le32(&[client[at + 1], client[at + 2], client[at + 3], 0]) as usize * 4,
                    )
                }
                _ => (4, le32(&client[at..]) as usize),
            };
            assert_eq!(
                &client[at + hlen..at + hlen + d.len()],
                d.as_slice(),
                "{tag:?}"
            );
            let pad = len - d.len();
            assert!(
                pad < 4 && (tag == Tag::Padded || pad == 0),
                "{tag:?} pad {pad}"
            );
            at += hlen + len;
        }
        // The quick ack: raw 4 bytes, byte-swapped for abridged.
        let ack = if tag == Tag::Abridged {
            [0x84, 3, 2, 1]
        } else {
            [1, 2, 3, 0x84]
        };
        assert_eq!(&client[at..], &ack, "{tag:?}");
    }
}

#[test]
fn decodes_the_same_bytes_however_the_input_is_split() {
    let (_, dec, mut srv) = session(Tag::Intermediate, None);
    let mut wire = Vec::new();
    for i in 0..6u64 {
        wire.extend(srv.packet(&ans(CONN, &payload(50 + i, (i as usize * 97 + 4) / 4 * 4))));
        wire.extend(srv.packet(&ctl(RPC_SIMPLE_ACK, CONN, &[i as u8; 4])));
        wire.extend(srv.packet(&ctl(RPC_PONG, 5, &[])));
    }
    wire.extend(srv.packet(&ans(CONN, &[])));
    let (want, _) = decode_all(&mut dec.clone(), &wire, wire.len());
    assert!(want.len() > 1000);
    for piece in (1..=40).chain([63, 64, 65, 1000]) {
        let (got, reports) = decode_all(&mut dec.clone(), &wire, piece);
        assert_eq!(got, want, "piece {piece}");
        assert_eq!(reports.iter().map(|d| d.pongs).sum::<u32>(), 6);
    }
}

#[test]
fn reports_close_ping_and_pong_and_skips_unknown_packets() {
    let (mut enc, mut dec, mut srv) = session(Tag::Abridged, None);
    let mut wire = srv.packet(&ctl(0x1234_5678, 1, &[0; 20]));
    wire.extend(srv.packet(&ctl(RPC_PING, 0xfeed, &[])));
    wire.extend(srv.packet(&ctl(RPC_PONG, 1, &[])));
    wire.extend(srv.packet(&ctl(RPC_CLOSE_EXT, CONN, &[])));
    let (client, reports) = decode_all(&mut dec, &wire, wire.len());
    assert!(client.is_empty());
    let d = reports[0];
    assert!(d.closed);
    assert_eq!(d.ping, Some(0xfeed));
    assert_eq!(d.pongs, 1);
    // The pong goes back through the encoder.
    enc.queue_pong(0xfeed);
    let mut out = [0u8; 256];
    let e = enc.encode(&[], &mut out).unwrap();
    let got = srv.feed(&out[..e.written]);
    assert_eq!(le32(&got[0].1), RPC_PONG);
    assert_eq!(le64(&got[0].1[4..]), 0xfeed);
}

#[test]
fn rejects_bad_answers() {
    let verdict = |build: &dyn Fn(&mut RefServer) -> Vec<u8>| {
        let (_, mut dec, mut srv) = session(Tag::Intermediate, None);
        let wire = build(&mut srv);
        let mut buf = vec![0u8; HEADROOM + wire.len()];
        buf[HEADROOM..].copy_from_slice(&wire);
        dec.decode(&mut buf, 0, wire.len(), &mut XorShift64(1))
    };
    assert_eq!(
        verdict(&|s| s.packet(&ans(CONN + 1, &[0; 8]))).unwrap_err(),
        MeError::BadConnId
    );
    assert_eq!(
        verdict(&|s| s.packet(&ctl(RPC_SIMPLE_ACK, CONN + 1, &[0; 4]))).unwrap_err(),
        MeError::BadConnId
    );
    assert_eq!(
        verdict(&|s| s.packet(&ctl(RPC_CLOSE_EXT, 9, &[]))).unwrap_err(),
        MeError::BadConnId
    );
    assert_eq!(
        verdict(&|s| s.packet(&RPC_PROXY_ANS.to_le_bytes())).unwrap_err(),
        MeError::BadAnswer
    );
    assert_eq!(
        verdict(&|s| {
            s.out_seq += 1;
            s.packet(&ans(CONN, &[0; 8]))
        })
        .unwrap_err(),
        MeError::BadSeq
    );
    // A flipped plaintext bit (the reference encrypts what it is given, so flip before).
    assert_eq!(
        verdict(&|s| {
            let mut raw = vec![0u8; 64];
            let n = write_packet(&mut raw, s.out_seq, &ans(CONN, &[0; 8]));
            raw[28] ^= 1; // a data byte: streamed out, then the CRC fails
            let n = pad_to_block(&mut raw, n);
            raw.truncate(n);
            s.keys.as_mut().unwrap().1.encrypt(&mut raw);
            raw
        })
        .unwrap_err(),
        MeError::BadCrc
    );
    for len in [8u32, 17, (1 << 24) + 4] {
        assert_eq!(
            verdict(&|s| {
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&len.to_le_bytes());
                s.keys.as_mut().unwrap().1.encrypt(&mut raw);
                raw.to_vec()
            })
            .unwrap_err(),
            MeError::BadLength,
            "len {len}"
        );
    }
}

#[test]
fn round_trips_a_conversation_through_the_reference() {
    // Client packets up through the encoder to the reference, answers back through the
    // decoder: the client gets exactly what the reference sent.
    let tag = Tag::Intermediate;
    let (mut enc, mut dec, mut srv) = session(tag, Some(AD_TAG));
    let mut client_in = Vec::new();
    let mut want_back = Vec::new();
    let mut wire_down = Vec::new();
    for i in 0..20u64 {
        let p = payload(100 + i, 4 * (1 + (i as usize * 131) % 900));
        client_in.extend(frame(tag, &p, false, 0));
        let reply = payload(200 + i, 4 * (1 + (i as usize * 71) % 2000));
        want_back.extend(frame(tag, &reply, false, 0));
        wire_down.extend(srv.packet(&ans(CONN, &reply)));
    }
    let wire_up = encode_all(&mut enc, &client_in, 777, 1500);
    let got = srv.feed(&wire_up);
    assert_eq!(got.len(), 20);
    let (back, _) = decode_all(&mut dec, &wire_down, 1000);
    assert_eq!(back, want_back);
}

#[test]
fn decode_truncation_sweep_never_panics() {
    // Every prefix of valid traffic decodes without error (more bytes may follow).
    let (_, dec, mut srv) = session(Tag::Padded, None);
    let mut wire = srv.packet(&ans(CONN, &payload(1, 64)));
    wire.extend(srv.packet(&ctl(RPC_SIMPLE_ACK, CONN, &[0; 4])));
    for cut in 0..wire.len() {
        let (client, _) = decode_all(&mut dec.clone(), &wire[..cut], cut.max(1));
        assert!(client.len() <= cut + HEADROOM);
    }
}
