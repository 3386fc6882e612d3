//! `mtpx-bench users`: CPU per handshake check with many users (issue 15), in process, on one
//! thread (`CLOCK_THREAD_CPUTIME_ID`), side by side in one run:
//!
//! * `verify (1 key)`: what mtpx does today per FakeTLS hello: parse + `verify_client_hello`
//!   (the `hmac` crate, 12 SHA-256 compressions for a 517-byte Telegram hello);
//! * `handshake (1 key)`: the whole proxy-side handshake computation around it: parse, verify,
//!   ServerHello (its HMAC and an x25519 key share), the client's obfuscated2 keys and the DC's
//!   frame: the denominator of the goal (socket calls not included; the full bench's
//!   "mtpx CPU per handshake" has them);
//! * `find N, returning`: parse + `Users::find_faketls` with the matching user as the hint
//!   (what the recent-address table gives a returning client), the user being the last of N;
//! * `find N, new`: the same without a hint: the worst case, N keys tried;
//! * `machine N, returning/new`: the proxy's whole handshake machine (`proto::handshake`, as
//!   a connection runs it: hello found among N users, flight written, frame in a record, our
//!   frame toward the DC), the hint right or none;
//! * the same for obfuscated2 `dd` users: `client_handshake` alone vs `find_obfs2` (which
//!   gives the same streams).
//!
//! All users share one host (so the SNI rules nobody out: the worst case). Note: the bench
//! crate builds mtpx at opt-level 3; the shipped binary builds `sha2` at opt-level "s" (the
//! SHA-NI path is intrinsics either way).

use std::hint::black_box;

use mtpx::proto::XorShift64;
use mtpx::proto::dc::{DcTable, PreferIp};
use mtpx::proto::faketls::{
    parse_client_hello, record_header, telegram_hello, verify_client_hello, write_server_hello,
};
use mtpx::proto::handshake::{Env, Expect, Handshake, NoReplay, Step};
use mtpx::proto::obfs2::{Tag, client_frame, client_handshake, dc_handshake};
use mtpx::proto::secret::{Secret, SecretKind};
use mtpx::proto::tlsprofile::FlightShape;
use mtpx::proto::users::{Limits, UserSpec, Users};
use mtpx::proto::x25519::KeyShares;

use crate::common::thread_cpu;

const HOST: &str = "storage.googleapis.com";
const NOW: u64 = 1_750_000_000;

fn users(n: usize, kind: SecretKind) -> Users {
    Users::new(
        (0..n)
            .map(|i| UserSpec {
                name: format!("u{i}"),
                secret: Secret::generate(kind, HOST, &mut XorShift64(i as u64 + 1)),
                limits: Limits::default(),
                ad_tag: None,
            })
            .collect(),
    )
    .expect("valid users")
}

/// CPU microseconds per call of `f`, over at least `budget` CPU seconds (after a warm-up).
fn per_call(budget: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let t0 = thread_cpu();
    let mut n = 0u64;
    let mut batch = 1u64;
    loop {
        for _ in 0..batch {
            f();
        }
        n += batch;
        let dt = thread_cpu() - t0;
        if dt >= budget {
            return dt / n as f64 * 1e6;
        }
        batch = (batch * 2).min(4096);
    }
}

/// One measured case: a label and microseconds per call.
pub struct Case {
    pub name: String,
    pub us: f64,
}

/// Runs every case; `budget` CPU seconds each.
pub fn run(budget: f64) -> Vec<Case> {
    let mut out = Vec::new();
    let mut push = |name: String, us: f64| {
        println!("{name:<34} {us:>10.2} us");
        out.push(Case { name, us });
    };
    // ---- FakeTLS
    let one = users(1, SecretKind::FakeTls);
    let s = &one.get(0).unwrap().secret;
    let rec = telegram_hello(&mut XorShift64(9), &s.key, HOST, NOW as u32);
    let msg = rec[5..].to_vec();
    let verify = per_call(budget, || {
        let h = parse_client_hello(black_box(&msg)).unwrap();
        black_box(verify_client_hello(&h, &msg, &s.key, HOST.as_bytes(), NOW, 10).unwrap());
    });
    push("faketls verify (1 key)".into(), verify);
    let mut rng = XorShift64(5);
    let mut shares = KeyShares::new(&mut rng);
    let mut out_buf = vec![0u8; 20_000];
    let full = per_call(budget, || {
        let h = parse_client_hello(black_box(&msg)).unwrap();
        black_box(verify_client_hello(&h, &msg, &s.key, HOST.as_bytes(), NOW, 10).unwrap());
        let share = shares.next(&mut rng);
        black_box(write_server_hello(
            &mut out_buf,
            &h,
            &s.key,
            &mut rng,
            2500,
            &share,
        ));
        let (frame, _, _) = client_frame(&mut rng, &s.key, Tag::Padded, 2);
        black_box(client_handshake(&frame, &s.key).ok());
        black_box(dc_handshake(&mut rng, Tag::Padded, 2).frame);
    });
    push("faketls handshake (1 key)".into(), full);
    for n in [1usize, 100, 1000] {
        let u = users(n, SecretKind::FakeTls);
        let last = n - 1;
        let s = &u.get(last).unwrap().secret;
        let rec = telegram_hello(&mut XorShift64(9), &s.key, HOST, NOW as u32);
        let msg = rec[5..].to_vec();
        for (label, hint) in [("returning", Some(last)), ("new", None)] {
            let us = per_call(budget, || {
                let h = parse_client_hello(black_box(&msg)).unwrap();
                let m = u.find_faketls(&h, &msg, NOW, 10, hint, true).unwrap();
                assert_eq!(m.user, last);
            });
            push(format!("faketls find {n}, {label}"), us);
        }
    }
    // ---- the proxy's handshake machine (proto::handshake, as a connection runs it): hello,
    // flight, frame in a record, our frame toward the DC; no sockets, no replay table.
    for n in [1usize, 100, 1000] {
        let u = users(n, SecretKind::FakeTls);
        let last = n - 1;
        let s = &u.get(last).unwrap().secret;
        let mut rng = XorShift64(11);
        let mut input = telegram_hello(&mut rng, &s.key, HOST, NOW as u32);
        let (frame, _, _) = client_frame(&mut rng, &s.key, Tag::Padded, 2);
        input.extend_from_slice(&record_header(frame.len() as u16));
        input.extend_from_slice(&frame);
        let dcs = DcTable::new(PreferIp::PreferIpv4, &[]);
        let mut shares = KeyShares::new(&mut rng);
        let mut scratch = vec![0u8; 32 * 1024];
        let mut buf = vec![0u8; 4096];
        let mut shape = FlightShape::default();
        for (label, hint) in [("returning", Some(last)), ("new", None)] {
            let us = per_call(budget, || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                let expect = Expect {
                    proxy_header: false,
                    faketls: true,
                    obfs2: false,
                };
                let mut hs = Handshake::new(expect, deadline);
                buf[..input.len()].copy_from_slice(&input);
                let mut env = Env {
                    users: &u,
                    hint,
                    search_all: true,
                    admission: &mut (),
                    tolerance_secs: 10,
                    dcs: &dcs,
                    allow_unknown_dc: true,
                    now_unix: NOW,
                    rng: &mut rng,
                    replay: &mut NoReplay,
                    shapes: &mut shape,
                    hellos: &mut (),
                    key_shares: &mut shares,
                    scratch: &mut scratch,
                };
                let mut step = hs.received(&mut buf, input.len(), &mut env);
                if let Step::Write(_) = step {
                    step = hs.handle(&mut buf, &mut env);
                }
                match step {
                    Step::Connect(a) => assert_eq!(a.user, last),
                    other => panic!("{other:?}"),
                }
            });
            push(format!("faketls machine {n}, {label}"), us);
        }
    }
    // ---- obfuscated2 (dd)
    let one = users(1, SecretKind::Secure);
    let key = one.get(0).unwrap().secret.key;
    let (frame, _, _) = client_frame(&mut XorShift64(3), &key, Tag::Padded, 2);
    let base = per_call(budget, || {
        black_box(client_handshake(black_box(&frame), &key).ok());
    });
    push("dd client_handshake (1 key)".into(), base);
    for n in [1usize, 100, 1000] {
        let u = users(n, SecretKind::Secure);
        let last = n - 1;
        let key = u.get(last).unwrap().secret.key;
        let (frame, _, _) = client_frame(&mut XorShift64(3), &key, Tag::Padded, 2);
        for (label, hint) in [("returning", Some(last)), ("new", None)] {
            let us = per_call(budget, || {
                let m = u.find_obfs2(black_box(&frame), hint, true).unwrap();
                assert_eq!(m.user, last);
                black_box(m.handshake);
            });
            push(format!("dd find {n}, {label}"), us);
        }
    }
    out
}

/// Prints the ratios the issue sets goals for and returns them as a JSON object.
pub fn report(cases: &[Case]) -> String {
    let us = |name: &str| {
        cases
            .iter()
            .find(|c| c.name == name)
            .map_or(f64::NAN, |c| c.us)
    };
    let verify = us("faketls verify (1 key)");
    let full = us("faketls handshake (1 key)");
    let dd = us("dd client_handshake (1 key)");
    let mut json = String::from("{");
    println!(
        "\n{:<26} {:>12} {:>14} {:>12}",
        "FakeTLS users", "x verify", "x handshake", "goal"
    );
    for n in [1, 100, 1000] {
        for (label, goal) in [("returning", 1.2), ("new", 2.0)] {
            let t = us(&format!("faketls find {n}, {label}"));
            // The handshake with the search in place of the single-key check.
            let hs = (full - verify + t) / full;
            println!(
                "{:<26} {:>12.2} {:>14.2} {:>12}",
                format!("{n}, {label}"),
                t / verify,
                hs,
                format!("<= {goal}x")
            );
            json.push_str(&format!(
                "\"faketls_{n}_{label}\": {{\"us\": {t:.2}, \"x_verify\": {:.3}, \"x_handshake\": {hs:.3}}}, ",
                t / verify
            ));
        }
    }
    let machine1 = us("faketls machine 1, returning");
    println!(
        "\n{:<26} {:>12} {:>12}",
        "handshake machine", "us", "x 1 user"
    );
    for n in [1, 100, 1000] {
        for label in ["returning", "new"] {
            let t = us(&format!("faketls machine {n}, {label}"));
            println!(
                "{:<26} {:>12.2} {:>12.2}",
                format!("{n}, {label}"),
                t,
                t / machine1
            );
            json.push_str(&format!(
                "\"machine_{n}_{label}\": {{\"us\": {t:.2}, \"x_one_user\": {:.3}}}, ",
                t / machine1
            ));
        }
    }
    println!("\n{:<26} {:>12}", "dd users", "x 1 key");
    for n in [1, 100, 1000] {
        for label in ["returning", "new"] {
            let t = us(&format!("dd find {n}, {label}"));
            println!("{:<26} {:>12.2}", format!("{n}, {label}"), t / dd);
            json.push_str(&format!(
                "\"dd_{n}_{label}\": {{\"us\": {t:.2}, \"x_one_key\": {:.3}}}, ",
                t / dd
            ));
        }
    }
    json.push_str(&format!(
        "\"faketls_verify_us\": {verify:.2}, \"faketls_handshake_us\": {full:.2}, \"dd_handshake_us\": {dd:.2}}}"
    ));
    json
}
