//! Byte-vector tests of the handshake machine: real captured ClientHellos (mtg's fixtures, as
//! Telegram apps sent them), frames built as clients build them, and the same inputs fed whole,
//! byte by byte and in odd chunks (the decisions and bytes must not change).

use std::net::SocketAddr;
use std::time::Duration;

use aes::cipher::StreamCipher;

use super::*;
use crate::formats::encoding::{base64_std_decode, hex_decode};
use crate::proto::XorShift64;
use crate::proto::dc::{DcTable, PreferIp};
use crate::proto::secret::{Secret, SecretKind};

/// The key of mtg's captured hellos (`storage.googleapis.com`).
const MTG_KEY: &str = "367a189aee18fa31c190054efd4a8e95";
const MTG_HOST: &str = "storage.googleapis.com";

/// `"name": value` of a flat fixture JSON.
fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let pat = format!("\"{name}\": ");
    let rest = &json[json.find(&pat).expect(name) + pat.len()..];
    match rest.strip_prefix('"') {
        Some(r) => &r[..r.find('"').expect("quote")],
        None => rest[..rest.find([',', '\n', '}']).expect("end")].trim(),
    }
}

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            "../../../tests/data/mtg/mtglib/internal/tls/fake/testdata/client-hello-",
            $name,
            ".json"
        ))
    };
}

/// mtg's accepted captures: (hello bytes, their timestamp).
fn mtg_hellos() -> Vec<(Vec<u8>, u64)> {
    [
        fixture!("ok-48f8a72a56f3174a"),
        fixture!("ok-7a5569f05b118145"),
        fixture!("ok-grease-first"),
        fixture!("ok-79d01ef18a9d2621"),
        fixture!("ok-19dfe38384b9884b"),
        fixture!("ok-651054256093c6cd"),
    ]
    .into_iter()
    .map(|j| {
        let full = base64_std_decode(field(j, "full")).expect("base64");
        (full, field(j, "time").parse().expect("time"))
    })
    .collect()
}

fn mtg_secret() -> Secret {
    Secret {
        kind: SecretKind::FakeTls,
        key: hex_decode(MTG_KEY).unwrap().try_into().unwrap(),
        host: MTG_HOST.into(),
    }
}

fn secret(kind: SecretKind, seed: u64) -> Secret {
    Secret::generate(kind, "example.com", &mut XorShift64(seed))
}

/// Records whether each complete hello verified.
impl Hellos for Vec<bool> {
    fn seen(&mut self, _: &[u8], verified: bool) {
        self.push(verified);
    }
}

/// Users `u0`, `u1`, .. with these secrets.
fn users_of(secrets: Vec<Secret>) -> Users {
    let specs = secrets
        .into_iter()
        .enumerate()
        .map(|(i, secret)| crate::proto::users::UserSpec {
            name: format!("u{i}"),
            secret,
            limits: Default::default(),
            ad_tag: None,
        })
        .collect();
    Users::new(specs).expect("valid users")
}

/// Answers admissions with `answer`, recording who asked.
struct Gate {
    answer: Admit,
    asked: Vec<UserId>,
}

impl Admission for Gate {
    fn admit(&mut self, user: UserId) -> Admit {
        self.asked.push(user);
        self.answer
    }
}

/// Everything a handshake consults, deterministic.
struct World {
    users: Users,
    hint: Option<UserId>,
    search_all: bool,
    gate: Gate,
    dcs: DcTable,
    allow_unknown_dc: bool,
    tolerance: u64,
    now_unix: u64,
    rng: XorShift64,
    replay: ReplayFilter,
    shape: FlightShape,
    keys: KeyShares,
    hellos: Vec<bool>,
    scratch: Vec<u8>,
}

impl World {
    fn new(secrets: Vec<Secret>, now_unix: u64) -> World {
        let mut rng = XorShift64(99);
        let dc2: SocketAddr = "127.0.0.1:1".parse().unwrap();
        World {
            users: users_of(secrets),
            hint: None,
            search_all: true,
            gate: Gate {
                answer: Admit::Yes,
                asked: Vec::new(),
            },
            dcs: DcTable::new(PreferIp::PreferIpv4, &[(2, vec![dc2])]),
            allow_unknown_dc: true,
            tolerance: 3,
            now_unix,
            keys: KeyShares::new(&mut rng),
            rng,
            replay: ReplayFilter::new(1 << 16, 10, [7; 16]),
            shape: FlightShape::default(),
            hellos: Vec::new(),
            scratch: vec![0; 32 * 1024],
        }
    }

    fn env(&mut self) -> Env<'_, XorShift64> {
        Env {
            users: &self.users,
            hint: self.hint,
            search_all: self.search_all,
            admission: &mut self.gate,
            tolerance_secs: self.tolerance,
            dcs: &self.dcs,
            allow_unknown_dc: self.allow_unknown_dc,
            now_unix: self.now_unix,
            rng: &mut self.rng,
            replay: &mut self.replay,
            shapes: &mut self.shape,
            hellos: &mut self.hellos,
            key_shares: &mut self.keys,
            scratch: &mut self.scratch,
        }
    }
}

/// How a driven handshake ended.
#[derive(Debug, PartialEq)]
enum End {
    NeedMore,
    Connect {
        user: usize,
        dc: i16,
        dc_send: i16,
        tag: Tag,
    },
    Front(Reject),
    Refused(UserId, UserReject),
    Wait(UserId),
    Close(Close),
}

/// Everything a driven handshake produced.
#[derive(PartialEq)]
struct Outcome {
    end: End,
    peers: Vec<Option<SocketAddr>>,
    flights: Vec<Vec<u8>>,
    /// `buf[..filled()]` at the end; after `Connect`, followed by the rest of the input as the
    /// relay passes it on (out of its records, re-encrypted): all the DC gets.
    buf: Vec<u8>,
    /// Client payload bytes that were in the buffer at `Connect`.
    early: usize,
    ciphers: Option<Ciphers>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flights: Vec<usize> = self.flights.iter().map(Vec::len).collect();
        write!(
            f,
            "end {:?}, peers {:?}, flights {flights:?} bytes, buffer {} bytes {:02x?}..",
            self.end,
            self.peers,
            self.buf.len(),
            &self.buf[..self.buf.len().min(8)]
        )
    }
}

impl PartialEq for Ciphers {
    fn eq(&self, other: &Ciphers) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

/// Feeds `input` in chunks of `chunk` bytes (then EOF when `eof`), handling `Peer` and `Write`
/// steps as the proxy does.
fn drive(w: &mut World, expect: Expect, input: &[u8], chunk: usize, eof: bool) -> Outcome {
    let deadline = crate::testing::t0() + Duration::from_secs(10);
    let mut hs = Handshake::new(expect, deadline);
    let mut buf = vec![0u8; 4096];
    let mut out = Outcome {
        end: End::NeedMore,
        peers: Vec::new(),
        flights: Vec::new(),
        buf: Vec::new(),
        early: 0,
        ciphers: None,
    };
    let mut relayed = Vec::new();
    let mut pieces = input.chunks(chunk.max(1)).peekable();
    let mut step = Step::NeedMore;
    loop {
        step = match step {
            Step::NeedMore => match pieces.next() {
                Some(p) => {
                    let at = hs.filled();
                    buf[at..at + p.len()].copy_from_slice(p);
                    hs.received(&mut buf, p.len(), &mut w.env())
                }
                None if eof => hs.handle_eof(&mut buf, &mut w.env()),
                None => break,
            },
            Step::Peer(p) => {
                out.peers.push(p);
                hs.handle(&mut buf, &mut w.env())
            }
            Step::Write(n) => {
                out.flights.push(w.scratch[..n].to_vec());
                hs.handle(&mut buf, &mut w.env())
            }
            Step::Connect(mut a) => {
                out.end = End::Connect {
                    user: a.user,
                    dc: a.dc,
                    dc_send: a.dc_send,
                    tag: a.tag,
                };
                out.early = a.early;
                // The rest (records read but not taken in, then what comes) goes through the
                // relay's seam, as the relay passes it on.
                let taken = hs.filled() - a.records;
                relayed = buf[taken..hs.filled()].to_vec();
                relayed.extend(pieces.flatten().copied());
                hs.raw = 0;
                if let Some(tls) = a.tls.as_mut() {
                    let n = tls.deframe_in_place(&mut relayed).expect("records");
                    relayed.truncate(n);
                }
                a.ciphers.up(&mut relayed);
                out.ciphers = Some(a.ciphers);
                break;
            }
            Step::Front(r) => {
                // The rest is spliced to the site as it comes.
                out.end = End::Front(r);
                relayed = pieces.flatten().copied().collect();
                break;
            }
            Step::Refused { user, why } => {
                out.end = End::Refused(user, why);
                relayed = pieces.flatten().copied().collect();
                break;
            }
            Step::Wait(user) => {
                out.end = End::Wait(user);
                break;
            }
            Step::Close(c) => {
                out.end = End::Close(c);
                hs.len = 0;
                hs.raw = 0;
                break;
            }
        };
    }
    out.buf = [&buf[..hs.filled()], &relayed].concat();
    out
}

/// [`drive`] over fresh, identical worlds: whole, byte by byte, and in chunks of 7 and 100;
/// checks that all agree (but for how much early data came with the frame) and returns the
/// whole input's outcome.
fn drive_all(world: impl Fn() -> World, expect: Expect, input: &[u8], eof: bool) -> Outcome {
    let whole = drive(&mut world(), expect, input, input.len(), eof);
    for chunk in [1, 7, 100] {
        let mut split = drive(&mut world(), expect, input, chunk, eof);
        split.early = whole.early;
        assert!(
            split == whole,
            "chunks of {chunk} differ from the whole input:\n{split:?}\n{whole:?}"
        );
    }
    whole
}

const EE: Expect = Expect {
    proxy_header: false,
    faketls: true,
    obfs2: false,
};
const OBFS2: Expect = Expect {
    proxy_header: false,
    faketls: false,
    obfs2: true,
};

/// TLS application-data records carrying `data` (at most 1000 bytes each).
fn records(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(1000) {
        out.extend_from_slice(&faketls::record_header(c.len() as u16));
        out.extend_from_slice(c);
    }
    out
}

/// A client's obfuscated2 frame plus `early` payload bytes, as the client encrypts them.
fn client_bytes(key: &[u8; 16], tag: Tag, dc: i16, early: &[u8], seed: u64) -> Vec<u8> {
    let (frame, mut enc, _) = obfs2::client_frame(&mut XorShift64(seed), key, tag, dc);
    let mut data = early.to_vec();
    enc.apply_keystream(&mut data);
    [&frame[..], &data].concat()
}

/// What the DC reads from the buffer of a `Connect`: tag, dc and the early data decrypted.
fn dc_reads(buf: &[u8]) -> (Tag, i16, Vec<u8>) {
    let frame: [u8; FRAME_LEN] = buf[..FRAME_LEN].try_into().unwrap();
    let (tag, dc, mut dec, _) = obfs2::dc_accept(&frame).expect("our frame");
    let mut early = buf[FRAME_LEN..].to_vec();
    dec.apply_keystream(&mut early);
    (tag, dc, early)
}

#[test]
fn accepts_captured_telegram_hellos_then_the_frame_in_records() {
    let key = mtg_secret().key;
    for (i, (hello, time)) in mtg_hellos().into_iter().enumerate() {
        let early = b"early data, two records long".repeat(50);
        let client = client_bytes(&key, Tag::Intermediate, -2, &early, i as u64);
        let input = [hello.clone(), records(&client)].concat();
        let out = drive_all(|| World::new(vec![mtg_secret()], time), EE, &input, false);
        assert_eq!(
            out.end,
            End::Connect {
                user: 0,
                dc: -2,
                dc_send: 2,
                tag: Tag::Intermediate,
            },
            "hello {i}"
        );
        // Records are taken in up to the frame only; the relay takes in the rest.
        assert_eq!(out.early, 0, "hello {i}");
        assert_eq!(out.flights.len(), 1);
        let random: [u8; 32] = hello[11..43].try_into().unwrap();
        let flight = &out.flights[0];
        assert_eq!(
            faketls::verify_server_flight(flight, &random, &key),
            Ok(Some(flight.len())),
            "hello {i}: the client would not accept our flight"
        );
        assert_eq!(
            dc_reads(&out.buf),
            (Tag::Intermediate, 2, early.clone()),
            "hello {i}"
        );
    }
}

#[test]
fn accepts_the_ciphers_positioned_after_the_early_data() {
    let s = secret(SecretKind::Secure, 1);
    let early = b"abc";
    let (frame, mut enc, mut dec) = obfs2::client_frame(&mut XorShift64(5), &s.key, Tag::Padded, 4);
    let mut data = early.to_vec();
    enc.apply_keystream(&mut data);
    let input = [&frame[..], &data].concat();
    let mut w = World::new(vec![s], 0);
    let mut out = drive(&mut w, OBFS2, &input, input.len(), false);
    let (_, _, mut dc_dec, mut dc_enc) =
        obfs2::dc_accept(&out.buf[..FRAME_LEN].try_into().unwrap()).unwrap();
    let mut got = out.buf[FRAME_LEN..].to_vec();
    dc_dec.apply_keystream(&mut got);
    assert_eq!(got, early);
    // The next client bytes, through the relay's seam, reach the DC in order.
    let ciphers = out.ciphers.as_mut().unwrap();
    let mut more = b"more".to_vec();
    enc.apply_keystream(&mut more);
    ciphers.up(&mut more);
    dc_dec.apply_keystream(&mut more);
    assert_eq!(more, b"more");
    // And the DC's answer reaches the client.
    let mut answer = b"answer".to_vec();
    dc_enc.apply_keystream(&mut answer);
    ciphers.down(&mut answer);
    dec.apply_keystream(&mut answer);
    assert_eq!(answer, b"answer");
}

/// Middle-proxy mode: the early data the machine re-encrypted for a DC turns back into the
/// client's plaintext, and the client's streams go on from there.
#[test]
fn into_client_recovers_the_early_plaintext_and_keeps_the_client_streams() {
    let s = secret(SecretKind::Secure, 1);
    let early = b"early client packet bytes".to_vec();
    let (frame, mut enc, mut dec) = obfs2::client_frame(&mut XorShift64(6), &s.key, Tag::Padded, 2);
    let mut data = early.clone();
    enc.apply_keystream(&mut data);
    let input = [&frame[..], &data].concat();
    let mut w = World::new(vec![s], 0);
    let mut out = drive(&mut w, OBFS2, &input, input.len(), false);
    let mut buf = out.buf[FRAME_LEN..].to_vec();
    assert_ne!(buf, early, "re-encrypted for the DC");
    let mut client = out.ciphers.take().unwrap().into_client(&mut buf);
    assert_eq!(buf, early);
    let mut more = b"more".to_vec();
    enc.apply_keystream(&mut more);
    client.up(&mut more);
    assert_eq!(more, b"more");
    let mut answer = b"answer".to_vec();
    client.down(&mut answer);
    dec.apply_keystream(&mut answer);
    assert_eq!(answer, b"answer");
}

#[test]
fn rejects_mtg_bad_capture_wrong_sni_and_time_skew_by_fronting_unchanged() {
    let bad = base64_std_decode(field(fixture!("bad-fa2e46cdb33e2a1b"), "full")).unwrap();
    let (good, time) = mtg_hellos().remove(0);
    let mut other_host = mtg_secret();
    other_host.host = "example.com".into();
    let cases: [(&str, Vec<u8>, Secret, u64, Reject); 4] = [
        ("bad capture", bad, mtg_secret(), time, Reject::Digest),
        ("other host", good.clone(), other_host, time, Reject::Sni),
        (
            "clock ahead",
            good.clone(),
            mtg_secret(),
            time + 4,
            Reject::TimeSkew,
        ),
        (
            "clock behind",
            good,
            mtg_secret(),
            time - 4,
            Reject::TimeSkew,
        ),
    ];
    for (what, input, s, now, why) in cases {
        let out = drive_all(|| World::new(vec![s.clone()], now), EE, &input, false);
        assert_eq!(out.end, End::Front(why), "{what}");
        assert_eq!(out.buf, input, "{what}: fronted bytes must be the client's");
        assert!(out.flights.is_empty(), "{what}");
    }
}

#[test]
fn rejects_a_replayed_hello_and_a_replayed_frame() {
    let (hello, time) = mtg_hellos().remove(1);
    let mut w = World::new(vec![mtg_secret()], time);
    assert!(drive(&mut w, EE, &hello, 99, false).flights.len() == 1);
    let again = drive(&mut w, EE, &hello, 99, false);
    assert_eq!(again.end, End::Front(Reject::Replay));
    assert_eq!(again.buf, hello);
    // dd / classic: the frame is the nonce.
    for kind in [SecretKind::Secure, SecretKind::Classic] {
        let s = secret(kind, 3);
        let input = client_bytes(&s.key, Tag::Padded, 2, b"", 8);
        let mut w = World::new(vec![s], 0);
        assert!(matches!(
            drive(&mut w, OBFS2, &input, 64, false).end,
            End::Connect { .. }
        ));
        let again = drive(&mut w, OBFS2, &input, 64, false);
        assert_eq!(again.end, End::Front(Reject::Replay), "{kind:?}");
        assert_eq!(again.buf, input);
    }
}

#[test]
fn accepts_tags_by_secret_kind() {
    for (kind, tag, ok) in [
        (SecretKind::Secure, Tag::Padded, true),
        (SecretKind::Secure, Tag::Intermediate, false),
        (SecretKind::Secure, Tag::Abridged, false),
        (SecretKind::Classic, Tag::Abridged, true),
        (SecretKind::Classic, Tag::Intermediate, true),
        (SecretKind::Classic, Tag::Padded, true),
    ] {
        let s = secret(kind, 4);
        let input = client_bytes(&s.key, tag, 3, b"xyz", 9);
        let out = drive_all(|| World::new(vec![s.clone()], 0), OBFS2, &input, false);
        if ok {
            let want = End::Connect {
                user: 0,
                dc: 3,
                dc_send: 3,
                tag,
            };
            assert_eq!(out.end, want, "{kind:?} {tag:?}");
            assert_eq!(dc_reads(&out.buf), (tag, 3, b"xyz".to_vec()));
        } else {
            assert_eq!(
                out.end,
                End::Front(Reject::ObfsTagNotAllowed),
                "{kind:?} {tag:?}"
            );
            assert_eq!(out.buf, input);
        }
    }
}

#[test]
fn rejects_a_frame_under_another_key() {
    let s = secret(SecretKind::Secure, 5);
    let input = client_bytes(&secret(SecretKind::Secure, 6).key, Tag::Padded, 2, b"", 1);
    let out = drive_all(|| World::new(vec![s.clone()], 0), OBFS2, &input, false);
    assert_eq!(out.end, End::Front(Reject::ObfsTag));
    assert_eq!(out.buf, input);
}

#[test]
fn rejects_forbidden_starts_at_once() {
    let s = secret(SecretKind::Classic, 7);
    for start in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"POST",
        b"HEAD",
        b"OPTI",
        b"\x16\x03\x01\x02",
        b"\xdd\xdd\xdd\xdd",
        b"\xee\xee\xee\xee",
        b"\xef",
        b"\x01\x02\x03\x04\x00\x00\x00\x00",
    ] {
        let out = drive_all(|| World::new(vec![s.clone()], 0), OBFS2, start, false);
        assert_eq!(out.end, End::Front(Reject::ObfsTag), "{start:02x?}");
        assert_eq!(out.buf, start);
    }
    // For ee secrets the same bytes are not a TLS record.
    let out = drive_all(|| World::new(vec![mtg_secret()], 0), EE, b"GET ", false);
    assert_eq!(out.end, End::Front(Reject::RecordType));
}

#[test]
fn accepts_a_proxy_header_first_and_fronts_without_it() {
    let s = secret(SecretKind::Secure, 8);
    let expect = Expect {
        proxy_header: true,
        faketls: false,
        obfs2: true,
    };
    let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n";
    let client = client_bytes(&s.key, Tag::Padded, 2, b"hi", 2);
    let out = drive_all(
        || World::new(vec![s.clone()], 0),
        expect,
        &[&v1[..], &client].concat(),
        false,
    );
    assert_eq!(out.peers, vec![Some("192.0.2.7:5555".parse().unwrap())]);
    assert!(matches!(out.end, End::Connect { dc: 2, .. }));
    // A v2 LOCAL header, then garbage: fronted without the header.
    let mut v2 = [0u8; 16];
    assert_eq!(proxy_protocol::write_v2_local(&mut v2), 16);
    let out = drive_all(
        || World::new(vec![s.clone()], 0),
        expect,
        &[&v2[..], b"GET / HTTP/1.0\r\n\r\n"].concat(),
        false,
    );
    assert_eq!(out.peers, vec![None]);
    assert_eq!(out.end, End::Front(Reject::ObfsTag));
    assert_eq!(out.buf, b"GET / HTTP/1.0\r\n\r\n");
    // No header at all: the socket's address, and the bytes are the client's.
    let out = drive_all(|| World::new(vec![s.clone()], 0), expect, &client, false);
    assert_eq!(out.peers, vec![None]);
    assert!(matches!(out.end, End::Connect { .. }));
    // A broken header: fronted like any failed handshake, the bytes as received.
    let out = drive_all(
        || World::new(vec![s.clone()], 0),
        expect,
        b"PROXY TCP4 nonsense\r\n",
        false,
    );
    assert_eq!(out.end, End::Front(Reject::ProxyHeader));
    assert_eq!(out.buf, b"PROXY TCP4 nonsense\r\n", "fronted as received");
}

#[test]
fn unknown_dcs_fall_back_or_close() {
    let s = secret(SecretKind::Classic, 9);
    let input = client_bytes(&s.key, Tag::Abridged, 77, b"", 3);
    let out = drive_all(|| World::new(vec![s.clone()], 0), OBFS2, &input, false);
    assert!(matches!(
        out.end,
        End::Connect {
            dc: 77,
            dc_send: 2,
            ..
        }
    ));
    assert_eq!(dc_reads(&out.buf).1, 2);
    let strict = || {
        let mut w = World::new(vec![s.clone()], 0);
        w.allow_unknown_dc = false;
        w
    };
    let out = drive_all(strict, OBFS2, &input, false);
    assert_eq!(out.end, End::Close(Close::UnknownDc(77)));
}

#[test]
fn eof_and_timeout_front_before_the_flight_and_close_after() {
    let (hello, time) = mtg_hellos().remove(2);
    let half = &hello[..200];
    let out = drive_all(|| World::new(vec![mtg_secret()], time), EE, half, true);
    assert_eq!(out.end, End::Front(Reject::Eof));
    assert_eq!(out.buf, half);
    // EOF right after the hello: the flight went out, so the end is a close.
    let out = drive_all(|| World::new(vec![mtg_secret()], time), EE, &hello, true);
    assert_eq!(out.flights.len(), 1);
    assert_eq!(out.end, End::Close(Close::Rejected(Reject::Eof)));
    // Timeouts.
    let start = crate::testing::t0();
    let mut hs = Handshake::new(EE, start + Duration::from_secs(10));
    assert_eq!(hs.poll_timeout(), start + Duration::from_secs(10));
    assert!(hs.handle_timeout(start + Duration::from_secs(9)).is_none());
    assert!(matches!(
        hs.handle_timeout(start + Duration::from_secs(10)),
        Some(Step::Front(Reject::Timeout))
    ));
    assert!(hs.handle_timeout(start + Duration::from_secs(11)).is_none());
    let mut w = World::new(vec![mtg_secret()], time);
    let mut hs = Handshake::new(EE, start);
    let mut buf = hello.clone();
    assert!(matches!(
        hs.received(&mut buf, hello.len(), &mut w.env()),
        Step::Write(_)
    ));
    assert!(hs.answered());
    assert!(matches!(
        hs.handle_timeout(start),
        Some(Step::Close(Close::Rejected(Reject::Timeout)))
    ));
}

#[test]
fn rejects_a_bad_record_after_an_accepted_hello_by_closing() {
    let (hello, time) = mtg_hellos().remove(3);
    let input = [&hello[..], &[0x17, 0x03, 0x01, 0x00, 0x01, 0xaa]].concat();
    let out = drive_all(|| World::new(vec![mtg_secret()], time), EE, &input, false);
    assert_eq!(out.end, End::Close(Close::Rejected(Reject::RecordVersion)));
}

#[test]
fn accepts_the_secret_that_matches_among_several() {
    let (hello, time) = mtg_hellos().remove(4);
    let mut wrong = mtg_secret();
    wrong.key[0] ^= 1;
    let mut wrong_host = mtg_secret();
    wrong_host.host = "other.example".into();
    // (Users never share a key.)
    wrong_host.key[1] ^= 1;
    let key = mtg_secret().key;
    let client = records(&client_bytes(&key, Tag::Padded, 1, b"", 4));
    let input = [hello.clone(), client].concat();
    let users = vec![
        secret(SecretKind::Secure, 10),
        wrong.clone(),
        wrong_host.clone(),
        mtg_secret(),
    ];
    let out = drive_all(|| World::new(users.clone(), time), EE, &input, false);
    assert!(matches!(out.end, End::Connect { user: 3, dc: 1, .. }));
    // None matches: the most telling reason (a digest that matched with a bad time would win;
    // here one key was wrong and one host).
    let none = vec![wrong_host, wrong];
    let out = drive_all(|| World::new(none.clone(), time), EE, &hello, false);
    assert_eq!(out.end, End::Front(Reject::Digest));
    // obfuscated2: the first dd/classic secret whose key gives a valid tag.
    let users = vec![
        mtg_secret(),
        secret(SecretKind::Classic, 11),
        secret(SecretKind::Secure, 12),
    ];
    let input = client_bytes(&users[2].key, Tag::Padded, 5, b"", 5);
    let out = drive_all(|| World::new(users.clone(), 0), OBFS2, &input, false);
    assert!(matches!(out.end, End::Connect { user: 2, dc: 5, .. }));
}

#[test]
fn rejects_garbage_and_truncations_without_panic_and_split_independently() {
    let (hello, time) = mtg_hellos().remove(5);
    let key = mtg_secret().key;
    let full = [
        hello.clone(),
        records(&client_bytes(&key, Tag::Abridged, 2, b"0123456789", 6)),
    ]
    .concat();
    let mut rng = XorShift64(13);
    for n in (0..hello.len() + 5 + FRAME_LEN).step_by(37) {
        let out = drive_all(
            || World::new(vec![mtg_secret()], time),
            EE,
            &full[..n],
            false,
        );
        assert_eq!(out.end, End::NeedMore, "prefix {n}");
    }
    for round in 0..200 {
        let mut input = full.clone();
        for _ in 0..1 + round % 4 {
            let at = rng.below(input.len() as u32) as usize;
            input[at] ^= 1 << rng.below(8);
        }
        let proxy_header = round % 3 == 0;
        for faketls in [true, false] {
            let expect = Expect {
                proxy_header,
                faketls,
                obfs2: !faketls,
            };
            let users = vec![mtg_secret(), secret(SecretKind::Classic, 14)];
            let _ = drive_all(
                || World::new(users.clone(), time),
                expect,
                &input,
                round % 2 == 0,
            );
        }
    }
}

#[test]
fn rejects_a_hello_larger_than_the_scratch() {
    let (hello, time) = mtg_hellos().remove(0);
    let mut w = World::new(vec![mtg_secret()], time);
    w.scratch.truncate(300);
    let out = drive(&mut w, EE, &hello, hello.len(), false);
    assert_eq!(out.end, End::Front(Reject::TooLarge));
    assert_eq!(out.buf, hello);
}

#[test]
fn reports_each_complete_hello_once_with_its_verdict() {
    let (hello, time) = mtg_hellos().remove(0);
    let mut w = World::new(vec![mtg_secret()], time);
    let _ = drive(&mut w, EE, &hello[..300], 1, false);
    assert!(w.hellos.is_empty(), "an incomplete hello is not reported");
    let _ = drive(&mut w, EE, &hello, 1, false);
    let _ = drive(&mut w, EE, &hello, hello.len(), false);
    let mut other = mtg_secret();
    other.key[3] ^= 1;
    w.users = users_of(vec![other]);
    let _ = drive(&mut w, EE, &hello, 7, false);
    assert_eq!(w.hellos, [true, false, false], "ok, replay, wrong key");
}

/// Issue 12: an incomplete handshake is failed (fronted) once the client stays quiet for the
/// grace after its last byte, not at the deadline; each new byte restarts the grace; no grace
/// before the first byte nor after the flight (the deadline, as before).
#[test]
fn an_incomplete_handshake_fails_after_the_grace_of_quiet() {
    let start = crate::testing::t0();
    let grace = Duration::from_millis(500);
    let deadline = start + Duration::from_secs(10);
    let (hello, time) = mtg_hellos().remove(3);
    // A hello may come in two segments, one resent: the whole grace. A bare obfuscated2
    // frame is one segment of every client: part of one is a prober's, fronted at once.
    for (expect, input, g) in [
        (OBFS2, vec![0x42u8; 63], FRAME_GRACE),
        (EE, hello[..105].to_vec(), grace),
    ] {
        let mut w = World::new(vec![mtg_secret()], time);
        let mut hs = Handshake::new(expect, deadline);
        // Nothing yet: only the deadline.
        hs.heard(start, grace);
        assert_eq!(hs.poll_timeout(), deadline);
        let mut buf = vec![0u8; 4096];
        buf[..40].copy_from_slice(&input[..40]);
        assert!(matches!(
            hs.received(&mut buf, 40, &mut w.env()),
            Step::NeedMore
        ));
        hs.heard(start, grace);
        assert_eq!(hs.poll_timeout(), start + g);
        // More bytes before it ends restart it.
        let later = start + g * 4 / 5;
        let n = input.len() - 40;
        buf[40..input.len()].copy_from_slice(&input[40..]);
        assert!(matches!(
            hs.received(&mut buf, n, &mut w.env()),
            Step::NeedMore
        ));
        hs.heard(later, grace);
        assert!(hs.handle_timeout(start + g).is_none());
        assert!(matches!(
            hs.handle_timeout(later + g),
            Some(Step::Front(Reject::Timeout))
        ));
        assert_eq!(&buf[..hs.filled()], &input[..], "fronted with every byte");
    }
    // After the flight: no grace, the deadline closes.
    let mut w = World::new(vec![mtg_secret()], time);
    let mut hs = Handshake::new(EE, deadline);
    let mut buf = hello.clone();
    buf.resize(4096, 0);
    assert!(matches!(
        hs.received(&mut buf, hello.len(), &mut w.env()),
        Step::Write(_)
    ));
    buf[0..3].copy_from_slice(&[0x17, 0x03, 0x03]);
    hs.heard(start, grace);
    assert_eq!(hs.poll_timeout(), deadline);
    assert!(hs.handle_timeout(start + grace).is_none());
}

const MIXED: Expect = Expect {
    proxy_header: false,
    faketls: true,
    obfs2: true,
};

#[test]
fn accepts_ee_dd_and_classic_users_on_one_listener() {
    let (hello, time) = mtg_hellos().remove(0);
    let users = vec![
        secret(SecretKind::Secure, 20),
        mtg_secret(),
        secret(SecretKind::Classic, 21),
    ];
    let key = mtg_secret().key;
    let ee = [
        hello.clone(),
        records(&client_bytes(&key, Tag::Padded, 2, b"x", 1)),
    ]
    .concat();
    let out = drive_all(|| World::new(users.clone(), time), MIXED, &ee, false);
    assert!(
        matches!(out.end, End::Connect { user: 1, dc: 2, .. }),
        "{out:?}"
    );
    assert_eq!(out.flights.len(), 1);
    let dd = client_bytes(&users[0].key, Tag::Padded, 3, b"y", 2);
    let out = drive_all(|| World::new(users.clone(), time), MIXED, &dd, false);
    assert!(
        matches!(out.end, End::Connect { user: 0, dc: 3, .. }),
        "{out:?}"
    );
    assert!(out.flights.is_empty());
    let classic = client_bytes(&users[2].key, Tag::Abridged, 4, b"z", 3);
    let out = drive_all(|| World::new(users.clone(), time), MIXED, &classic, false);
    assert!(
        matches!(out.end, End::Connect { user: 2, dc: 4, .. }),
        "{out:?}"
    );
    // The same, with the hint on another user: same answers.
    let mut w = World::new(users.clone(), time);
    w.hint = Some(2);
    let out = drive(&mut w, MIXED, &dd, 5, false);
    assert!(matches!(out.end, End::Connect { user: 0, .. }));
    // A source over its share of handshake work: the hint alone is tried. Right, it relays;
    // wrong (or none), it is fronted as a wrong secret is, for hellos and frames alike.
    for (bytes, user) in [(&ee, 1), (&dd, 0), (&classic, 2)] {
        for (hint, ok) in [
            (Some(user), true),
            (Some((user + 1) % 3), false),
            (None, false),
        ] {
            let mut w = World::new(users.clone(), time);
            (w.hint, w.search_all) = (hint, false);
            let out = drive(&mut w, MIXED, bytes, 5, false);
            if ok {
                assert!(matches!(out.end, End::Connect { .. }), "{out:?}");
            } else {
                assert!(matches!(out.end, End::Front(_)), "{hint:?}: {out:?}");
                assert!(out.flights.is_empty());
            }
        }
    }
    // Only ee users: a dd client's frame is not a TLS record (fronted, as before).
    let out = drive_all(|| World::new(vec![mtg_secret()], time), EE, &dd, false);
    assert!(matches!(out.end, End::Front(_)), "{out:?}");
}

#[test]
fn refuses_a_user_over_its_limits_before_answering_and_fronts_to_its_site() {
    let (hello, time) = mtg_hellos().remove(1);
    let users = vec![secret(SecretKind::Secure, 30), mtg_secret()];
    let world = |answer| {
        let mut w = World::new(users.clone(), time);
        w.gate.answer = answer;
        w
    };
    for why in [UserReject::Expired, UserReject::Quota, UserReject::MaxIps] {
        let out = drive_all(|| world(Admit::No(why)), MIXED, &hello, false);
        assert_eq!(out.end, End::Refused(1, why));
        // Nothing answered: the site gets the hello exactly as sent.
        assert!(out.flights.is_empty());
        assert_eq!(out.buf, hello);
        let dd = client_bytes(&users[0].key, Tag::Padded, 2, b"early", 7);
        let out = drive_all(|| world(Admit::No(why)), MIXED, &dd, false);
        assert_eq!(out.end, End::Refused(0, why));
        assert_eq!(out.buf, dd);
    }
    let mut w = world(Admit::No(UserReject::Quota));
    let deadline = crate::testing::t0() + Duration::from_secs(10);
    let mut hs = Handshake::new(MIXED, deadline);
    let mut buf = hello.clone();
    let step = hs.received(&mut buf, hello.len(), &mut w.env());
    assert!(matches!(step, Step::Refused { user: 1, .. }));
    assert_eq!(hs.front_user(), Some(1));
    assert_eq!(w.gate.asked, [1]);
}

#[test]
fn waits_for_max_connections_then_goes_on_or_is_refused_at_the_deadline() {
    let (hello, time) = mtg_hellos().remove(2);
    let key = mtg_secret().key;
    let frame = records(&client_bytes(&key, Tag::Intermediate, 2, b"", 9));
    let t0 = crate::testing::t0();
    let deadline = t0 + Duration::from_secs(10);
    for kind in ["ee", "dd"] {
        let dd_secret = secret(SecretKind::Secure, 31);
        let dd = client_bytes(&dd_secret.key, Tag::Padded, 2, b"hi", 8);
        let mut w = World::new(vec![dd_secret, mtg_secret()], time);
        let (input, user) = if kind == "ee" { (&hello, 1) } else { (&dd, 0) };
        w.gate.answer = Admit::Wait;
        let mut hs = Handshake::new(MIXED, deadline);
        let mut buf = vec![0u8; 4096];
        buf[..input.len()].copy_from_slice(input);
        let step = hs.received(&mut buf, input.len(), &mut w.env());
        assert!(
            matches!(step, Step::Wait(u) if u == user),
            "{kind}: {step:?}"
        );
        assert_eq!(hs.waiting(), Some(user));
        assert!(!hs.answered());
        // No grace while it waits (issue 12): only the deadline refuses it.
        hs.heard(t0, Duration::from_millis(500));
        assert_eq!(hs.poll_timeout(), deadline, "{kind}");
        // Asked again: still full.
        assert!(matches!(hs.handle(&mut buf, &mut w.env()), Step::Wait(_)));
        // A slot came free: on with the handshake (no replay: it was checked once).
        w.gate.answer = Admit::Yes;
        let step = hs.handle(&mut buf, &mut w.env());
        assert_eq!(w.gate.asked, [user; 3], "{kind}");
        match kind {
            "ee" => {
                assert!(matches!(step, Step::Write(_)), "{step:?}");
                let at = hs.filled();
                buf[at..at + frame.len()].copy_from_slice(&frame);
                let step = hs.received(&mut buf, frame.len(), &mut w.env());
                assert!(
                    matches!(step, Step::Connect(Accepted { user: 1, .. })),
                    "{step:?}"
                );
            }
            _ => assert!(
                matches!(step, Step::Connect(Accepted { user: 0, .. })),
                "{step:?}"
            ),
        }
        // Still full at the deadline: refused (fronted to the user's site).
        let mut w = World::new(vec![secret(SecretKind::Secure, 31), mtg_secret()], time);
        w.gate.answer = Admit::Wait;
        let mut hs = Handshake::new(MIXED, deadline);
        let mut buf = input.clone();
        assert!(matches!(
            hs.received(&mut buf, input.len(), &mut w.env()),
            Step::Wait(_)
        ));
        assert!(hs.handle_timeout(t0 + Duration::from_secs(9)).is_none());
        let step = hs.handle_timeout(deadline);
        assert!(
            matches!(step, Some(Step::Refused { user: u, why: UserReject::MaxConnections }) if u == user),
            "{step:?}"
        );
        assert_eq!(&buf[..hs.filled()], &input[..]);
    }
}

#[test]
fn a_failed_hello_is_fronted_to_the_site_its_sni_names() {
    let (hello, time) = mtg_hellos().remove(0);
    let mut other = secret(SecretKind::FakeTls, 40);
    other.host = "a.example".into();
    let mut same_host = mtg_secret();
    same_host.key[0] ^= 0x55;
    // The hello names storage.googleapis.com but no key matches: that host's first user.
    let mut w = World::new(vec![other, secret(SecretKind::Secure, 41), same_host], time);
    let mut hs = Handshake::new(MIXED, crate::testing::t0() + Duration::from_secs(10));
    let mut buf = hello.clone();
    let step = hs.received(&mut buf, hello.len(), &mut w.env());
    assert!(matches!(step, Step::Front(Reject::Digest)), "{step:?}");
    assert_eq!(hs.front_user(), Some(2));
    // An SNI nobody serves: the default site.
    let mut w = World::new(vec![secret(SecretKind::FakeTls, 42)], time);
    let mut hs = Handshake::new(EE, crate::testing::t0() + Duration::from_secs(10));
    let mut buf = hello.clone();
    let step = hs.received(&mut buf, hello.len(), &mut w.env());
    assert!(matches!(step, Step::Front(Reject::Sni)), "{step:?}");
    assert_eq!(hs.front_user(), None);
}
