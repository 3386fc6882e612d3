//! The handshake machine (`proto::handshake`) over arbitrary client bytes, fed whole and in
//! arbitrary pieces the way the I/O layer does: the decision (connect / front / close, the
//! reason, the user and DC), the server flights written and every byte passed on (to the DC
//! or the fronting site) must not depend on the split. The first input byte picks what is
//! expected (PROXY header, FakeTLS), whether EOF follows, whether a genuine ClientHello or
//! obfuscated2 frame is put first (a random one never verifies), and the split.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mtpx::proto::XorShift64;
use mtpx::proto::dc::{DcTable, PreferIp};
use mtpx::proto::faketls;
use mtpx::proto::handshake::{Env, Expect, Handshake, Step};
use mtpx::proto::users::{UserSpec, Users};
use mtpx::proto::obfs2::{self, Tag};
use mtpx::proto::replay::ReplayFilter;
use mtpx::proto::secret::{Secret, SecretKind};
use mtpx::proto::tlsprofile::FlightShape;
use mtpx::proto::x25519::KeyShares;

const NOW: u64 = 1_700_000_000;

fn secrets() -> Vec<Secret> {
    vec![
        Secret {
            kind: SecretKind::FakeTls,
            key: *b"0123456789abcdef",
            host: "example.com".into(),
        },
        Secret {
            kind: SecretKind::Secure,
            key: *b"fedcba9876543210",
            host: String::new(),
        },
    ]
}

/// Everything one run produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    end: String,
    flights: Vec<Vec<u8>>,
    peers: Vec<String>,
    /// Bytes passed on: to the DC (our frame, then the client's payload re-encrypted), or
    /// to the fronting site (the client's bytes since the PROXY header).
    out: Vec<u8>,
}

fn run(expect: Expect, input: &[u8], mut sizes: impl FnMut() -> usize, eof: bool) -> Outcome {
    let users = Users::new(
        secrets()
            .into_iter()
            .enumerate()
            .map(|(i, secret)| UserSpec {
                name: format!("u{i}"),
                secret,
                limits: Default::default(),
                ad_tag: None,
            })
            .collect(),
    )
    .expect("valid users");
    let dcs = DcTable::new(PreferIp::PreferIpv4, &[]);
    let mut rng = XorShift64(1);
    let mut replay = ReplayFilter::new(4096, 10, [1; 16]);
    let mut shape = FlightShape::default();
    let mut keys = KeyShares::new(&mut rng);
    let mut scratch = vec![0u8; 32 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut hs = Handshake::new(expect, Instant::now() + Duration::from_secs(10));
    let mut out = Outcome {
        end: String::new(),
        flights: Vec::new(),
        peers: Vec::new(),
        out: Vec::new(),
    };
    let mut pos = 0;
    let mut step = Step::NeedMore;
    loop {
        let mut env = Env {
            users: &users,
            hint: None,
            search_all: true,
            admission: &mut (),
            tolerance_secs: 300,
            dcs: &dcs,
            allow_unknown_dc: true,
            now_unix: NOW,
            rng: &mut rng,
            replay: &mut replay,
            shapes: &mut shape,
            hellos: &mut (),
            key_shares: &mut keys,
            scratch: &mut scratch,
        };
        step = match step {
            Step::NeedMore if pos < input.len() => {
                let n = sizes().clamp(1, input.len() - pos);
                let at = hs.filled();
                if at + n > buf.len() {
                    hs.fail(mtpx::proto::Reject::TooLarge)
                } else {
                    buf[at..at + n].copy_from_slice(&input[pos..pos + n]);
                    pos += n;
                    hs.received(&mut buf, n, &mut env)
                }
            }
            Step::NeedMore if eof => hs.handle_eof(&mut buf, &mut env),
            Step::NeedMore => {
                out.end = "need-more".into();
                return out;
            }
            Step::Peer(p) => {
                out.peers.push(format!("{p:?}"));
                hs.handle(&mut buf, &mut env)
            }
            Step::Write(n) => {
                assert!(n <= env.scratch.len());
                out.flights.push(env.scratch[..n].to_vec());
                hs.handle(&mut buf, &mut env)
            }
            Step::Connect(mut a) => {
                out.end = format!("connect {} {} {} {:?}", a.user, a.dc, a.dc_send, a.tag);
                assert!(a.early + a.records <= hs.filled());
                let taken = hs.filled() - a.records;
                let mut rest = [&buf[taken..hs.filled()], &input[pos..]].concat();
                if let Some(tls) = a.tls.as_mut() {
                    match tls.deframe_in_place(&mut rest) {
                        Ok(n) => rest.truncate(n),
                        Err(r) => rest = format!("bad records: {r}").into_bytes(),
                    }
                }
                a.ciphers.up(&mut rest);
                out.out = [&buf[..taken], &rest].concat();
                return out;
            }
            Step::Front(r) => {
                out.end = format!("front {r}");
                assert!(
                    hs.filled() <= pos,
                    "fronted bytes are the client's, never more"
                );
                out.out = [&buf[..hs.filled()], &input[pos..]].concat();
                return out;
            }
            Step::Close(c) => {
                out.end = format!("close {c:?}");
                return out;
            }
            // (No limits here: nobody is refused or waits.)
            Step::Refused { .. } | Step::Wait(_) => unreachable!("no limits"),
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let expect = Expect {
        proxy_header: ctl & 1 != 0,
        faketls: ctl & 2 != 0,
        obfs2: ctl & 2 == 0 || ctl & 16 != 0,
    };
    let eof = ctl & 4 != 0;
    let mut input = Vec::new();
    if ctl & 8 != 0 {
        // A genuine start, so that the fuzzer reaches what follows it.
        let s = &secrets()[if expect.faketls { 0 } else { 1 }];
        let mut rng = XorShift64(u64::from(ctl));
        if expect.faketls {
            input = faketls::build_client_hello(&mut rng, &s.key, &s.host, NOW as u32);
        } else {
            input = obfs2::client_frame(&mut rng, &s.key, Tag::Padded, 2).0.to_vec();
        }
    }
    input.extend_from_slice(rest);
    let whole = run(expect, &input, || usize::MAX, eof);
    let mut k = u32::from(ctl >> 4) | 1;
    let split = run(
        expect,
        &input,
        || {
            k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
            1 + (k >> 16) as usize % 64
        },
        eof,
    );
    assert_eq!(split, whole, "a split input changed the outcome");
    let bytewise = run(expect, &input, || 1, eof);
    assert_eq!(bytewise, whole, "byte-by-byte input changed the outcome");
});
