//! End-to-end tests: a real proxy (in-process, loopback) between test clients and fake DCs.
//!
//! Every test starts its own proxies on 127.0.0.1:0 and its own fake DCs; every built-in DC is
//! overridden to a refused loopback port, so nothing ever leaves the machine. Socket operations
//! have timeouts and waits have deadlines: a bug fails a test, it never hangs it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mtpx::config::Config;
use mtpx::io::{Proxy, Stats};
use mtpx::proto::XorShift64;
use mtpx::proto::faketls;
use mtpx::proto::obfs2::{self, Tag};
use mtpx::proto::secret::{Secret, SecretKind};

/// The empty-record flood runs real-time flooders (`SCHED_FIFO`) that take a core for up to
/// 20 s: it takes this lock to write, and the tests that time the proxy to within tens of ms
/// take it to read, so that they never run beside it.
static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A read guard of [`TIMING`] (a poisoned lock is someone else's failure).
fn timing() -> std::sync::RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|p| p.into_inner())
}

const ALL_KINDS: [SecretKind; 3] = [SecretKind::FakeTls, SecretKind::Secure, SecretKind::Classic];

fn start(config: Config) -> Proxy {
    mtpx::io::start(config).expect("start proxy")
}

fn load(v: &std::sync::atomic::AtomicU64) -> u64 {
    v.load(Ordering::SeqCst)
}

fn stats_line(s: &Stats) -> String {
    format!(
        "accepted={} limited={} handshakes={} rejected={} fronted={} dc_failures={} closed={} up={} down={}",
        load(&s.accepted),
        load(&s.limited),
        load(&s.handshakes),
        load(&s.rejected),
        load(&s.fronted),
        load(&s.dc_failures),
        load(&s.closed),
        load(&s.bytes_up),
        load(&s.bytes_down)
    )
}

/// The tag a client uses by default for a secret kind (dd requires padded).
fn default_tag(kind: SecretKind) -> Tag {
    match kind {
        SecretKind::Secure => Tag::Padded,
        SecretKind::FakeTls => Tag::Intermediate,
        SecretKind::Classic => Tag::Abridged,
    }
}

fn kind_name(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::FakeTls => "ee",
        SecretKind::Secure => "dd",
        SecretKind::Classic => "classic",
    }
}

/// One echo exchange of `len` pattern bytes through `proxy`; panics with `what` on failure.
fn echo_ok(proxy: SocketAddr, secret: &Secret, opts: &ClientOpts, len: usize, what: &str) {
    let mut c = TestClient::connect(proxy, secret, opts)
        .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
    let data = Pattern::new(opts.seed ^ 0x5555).take(len);
    let got = c
        .echo_round_trip(&data)
        .unwrap_or_else(|e| panic!("{what}: echo failed: {e}"));
    assert!(got == data, "{what}: echoed bytes differ");
    c.shutdown_write().expect("shutdown");
    c.rx.expect_eof()
        .unwrap_or_else(|e| panic!("{what}: no clean EOF after echo: {e}"));
}

// ------------------------------------------------------------------------------------------
// 1. happy paths

/// ee, dd and classic (all three tags) echo byte for byte; the fake DC sees the client's tag
/// and the DC number (|dc|; 0 means 2; -2 uses the override for 2).
#[test]
fn happy_path_all_kinds_tags_and_dcs() {
    for workers in [1, 4] {
        let refused = RefusedPort::new();
        let dc2 = FakeDc::start(DcMode::Echo);
        let dc4 = FakeDc::start(DcMode::Echo);
        // (kind, tag, requested dc, which fake DC, dc expected in the DC frame)
        let cases: &[(SecretKind, Tag, i16, u8, i16)] = &[
            (SecretKind::FakeTls, Tag::Intermediate, 2, 2, 2),
            (SecretKind::FakeTls, Tag::Padded, -2, 2, 2),
            (SecretKind::FakeTls, Tag::Abridged, 4, 4, 4),
            (SecretKind::Secure, Tag::Padded, 4, 4, 4),
            (SecretKind::Secure, Tag::Padded, -2, 2, 2),
            (SecretKind::Classic, Tag::Abridged, 2, 2, 2),
            (SecretKind::Classic, Tag::Intermediate, -2, 2, 2),
            (SecretKind::Classic, Tag::Padded, 4, 4, 4),
            (SecretKind::Classic, Tag::Abridged, 0, 2, 2),
        ];
        for (i, &(kind, tag, dc, which, frame_dc)) in cases.iter().enumerate() {
            let secret = secret(kind, 100 + i as u64);
            let mut cfg = test_config(secret.clone(), workers, &refused);
            cfg.dc_overrides.push((2, vec![dc2.addr]));
            cfg.dc_overrides.push((4, vec![dc4.addr]));
            let proxy = start(cfg);
            let fake = if which == 2 { &dc2 } else { &dc4 };
            let before = fake.count();
            let what = format!("workers={workers} {} {tag:?} dc={dc}", kind_name(kind));
            echo_ok(
                proxy.local_addr(),
                &secret,
                &ClientOpts::new(tag, dc, 1000 + i as u64),
                100_000,
                &what,
            );
            assert_eq!(fake.count(), before + 1, "{what}: one DC connection");
            let conn = fake.conn(before);
            assert_eq!(
                *conn.frame.lock().unwrap(),
                Some((tag, frame_dc)),
                "{what}: DC frame"
            );
            assert!(
                wait_until(Duration::from_secs(5), || conn.eof.load(Ordering::SeqCst)),
                "{what}: DC never saw EOF"
            );
            assert_eq!(load(&conn.received), 100_000, "{what}: DC received");
            // Byte counters are added at close.
            let st = proxy.stats();
            assert!(
                wait_until(Duration::from_secs(5), || load(&st.closed) == 1),
                "{what}: not closed: {}",
                stats_line(&st)
            );
            assert_eq!(load(&st.handshakes), 1, "{what}: {}", stats_line(&st));
            assert_eq!(load(&st.rejected), 0, "{what}: {}", stats_line(&st));
            assert_eq!(load(&st.bytes_up), 100_000, "{what}: {}", stats_line(&st));
            assert_eq!(load(&st.bytes_down), 100_000, "{what}: {}", stats_line(&st));
            assert_eq!(proxy.active(), 0, "{what}");
            proxy.shutdown();
        }
    }
}

/// FakeTLS clients that stress the record layer: frame in the hello's segment, a CCS record
/// first, odd record sizes, a hello split across TCP segments with a pause, a hello split into
/// several TLS records (up to the limit of 11), and all of these at once.
#[test]
fn faketls_client_variants() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 7);
    for workers in [1, 4] {
        let mut cfg = test_config(secret.clone(), workers, &refused);
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let base = ClientOpts::new(Tag::Padded, 2, 0);
        let variants: Vec<(&str, ClientOpts)> = vec![
            ("plain", base.clone()),
            (
                "frame with hello",
                ClientOpts {
                    frame_with_hello: true,
                    ..base.clone()
                },
            ),
            (
                "ccs first",
                ClientOpts {
                    ccs_first: true,
                    ..base.clone()
                },
            ),
            (
                "odd records",
                ClientOpts {
                    record_sizes: vec![1, 7, 63, 64, 65, 1000, 16379, 16384, 40000, 3],
                    ..base.clone()
                },
            ),
            (
                "hello split over TCP",
                ClientOpts {
                    hello_tcp_split: Some((3, Duration::from_millis(150))),
                    ..base.clone()
                },
            ),
            (
                "hello split 2 over TCP",
                ClientOpts {
                    hello_tcp_split: Some((300, Duration::from_millis(150))),
                    ..base.clone()
                },
            ),
            (
                "hello in 3 records",
                ClientOpts {
                    hello_records: 3,
                    ..base.clone()
                },
            ),
            (
                "hello in 11 records",
                ClientOpts {
                    hello_records: 11,
                    ..base.clone()
                },
            ),
            (
                "all at once",
                ClientOpts {
                    frame_with_hello: true,
                    ccs_first: true,
                    record_sizes: vec![5, 61, 2, 17000],
                    hello_records: 4,
                    hello_tcp_split: Some((100, Duration::from_millis(100))),
                    ..base.clone()
                },
            ),
        ];
        for (i, (name, mut opts)) in variants.into_iter().enumerate() {
            opts.seed = 50 + (workers as u64) * 100 + i as u64;
            echo_ok(
                proxy.local_addr(),
                &secret,
                &opts,
                70_000,
                &format!("workers={workers} {name}"),
            );
        }
        let st = proxy.stats();
        assert_eq!(load(&st.rejected), 0, "{}", stats_line(&st));
        proxy.shutdown();
    }
}

/// The proxy's records toward the client stay within 16379 payload bytes; the flight's HMAC
/// verifies (checked in the handshake) and nothing precedes the client's first data.
#[test]
fn faketls_records_from_proxy_are_bounded() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Sink {
        expect_seed: 1,
        reply_seed: 2,
        reply: 1 << 20,
        after_eof: false,
    });
    let secret = secret(SecretKind::FakeTls, 8);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 2, 3),
    )
    .expect("handshake");
    assert!(
        c.flight_len > 127 + 6 + 5 + 2500 - 1,
        "flight {}",
        c.flight_len
    );
    c.shutdown_write().expect("shutdown");
    let n =
        c.rx.recv_check_to_eof(&mut Pattern::new(2), 1 << 21)
            .expect("download");
    assert_eq!(n, 1 << 20);
    assert!(c.rx.max_record <= MAX_RECORD_PAYLOAD);
    assert!(c.rx.records >= 64, "1 MiB in {} records", c.rx.records);
    drop(proxy);
}

/// Starts a proxy whose fake DC sends `reply` bytes to an ee client; returns the client's
/// record sizes and arrival times after checking every byte.
fn shaped_download(
    reply: usize,
    tune: impl FnOnce(&mut Config),
) -> (Vec<usize>, Vec<Instant>, Duration) {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Sink {
        expect_seed: 1,
        reply_seed: 2,
        reply: reply as u64,
        after_eof: false,
    });
    let secret = secret(SecretKind::FakeTls, 9);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    tune(&mut cfg);
    let proxy = start(cfg);
    let t0 = Instant::now();
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 2, 4),
    )
    .expect("handshake");
    c.shutdown_write().expect("shutdown");
    let n =
        c.rx.recv_check_to_eof(&mut Pattern::new(2), reply as u64 * 2)
            .expect("download");
    assert_eq!(n, reply as u64);
    let took = t0.elapsed();
    drop(proxy);
    (c.rx.sizes.clone(), c.rx.arrivals.clone(), took)
}

/// `drs = true`: the download starts with MSS-sized records, then ~4 KiB ones, then full
/// ones, as TLS servers with dynamic record sizing do (PROTOCOL.md §7.3).
#[test]
fn faketls_dynamic_record_sizing_ramps_up() {
    let _timing = timing();
    let (sizes, _, _) = shaped_download(1 << 20, |c| c.doppelganger.drs = true);
    let sizes = &sizes;
    assert!(sizes.len() > 60, "{} records", sizes.len());
    assert!(sizes[..40].iter().all(|&l| l <= 1450), "{:?}", &sizes[..40]);
    assert!(
        sizes[40..60].iter().all(|&l| l <= 4096),
        "{:?}",
        &sizes[40..60]
    );
    assert!(
        sizes[..40].iter().filter(|&&l| l > 1300).count() >= 30,
        "{:?}",
        &sizes[..40]
    );
    assert!(
        sizes[60..].iter().any(|&l| l > 4096),
        "no full records after the ramp"
    );
}

/// `delays = true` (PROTOCOL.md §7.2): every record toward the client waits a gap after the
/// previous one, here from a nearly constant Weibull (k = 50, λ = 30 ms: gaps 26–32 ms), with
/// no throughput floor. Unshaped, the same download arrives in a burst.
#[test]
fn faketls_shaping_spaces_records() {
    let _timing = timing();
    let (sizes, arrivals, _) = shaped_download(16 * 16379, |c| {
        let d = &mut c.doppelganger;
        d.delays = true;
        d.delay_shape = 50.0;
        d.delay_scale = Duration::from_millis(30);
        d.min_rate = 0;
    });
    assert!(sizes.len() >= 16, "{} records", sizes.len());
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("shaped gaps: {gaps:?}");
    // Timers have 1 ms ticks: a record may leave up to 1 ms early, never 5 ms. The arrivals
    // are stamped by a client thread: one woken late stamps a long gap, then a short one, so
    // a single short gap is the harness's, and the median and the whole span are the proxy's.
    let ms = Duration::from_millis;
    let short = gaps.iter().filter(|g| **g < ms(20)).count();
    assert!(short <= 1, "{short} gaps shorter than 20 ms: {gaps:?}");
    let mut sorted = gaps.clone();
    sorted.sort();
    assert!(sorted[sorted.len() / 2] >= ms(25), "median gap: {gaps:?}");
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        span >= ms(24) * gaps.len() as u32,
        "span {span:?}: {gaps:?}"
    );

    // The same download unshaped: most records arrive together.
    let (_, arrivals, _) = shaped_download(16 * 16379, |_| {});
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread < Duration::from_millis(15 * 20),
        "unshaped took {spread:?}"
    );
}

/// Shaping never cuts a bulk download below `min-rate`: with gaps of about one second each
/// (k = 50, λ = 1 s), 2 MiB (128 full records) would take two minutes; with a 2 MiB/s floor a
/// record waits at most 16379 / 2 MiB = 7.8 ms.
#[test]
fn faketls_shaping_keeps_the_min_rate() {
    let (sizes, _, took) = shaped_download(2 << 20, |c| {
        let d = &mut c.doppelganger;
        d.delays = true;
        d.delay_shape = 50.0;
        d.delay_scale = Duration::from_secs(1);
        d.min_rate = 2 << 20;
        d.drs = true;
    });
    assert!(sizes.len() >= 128, "{} records", sizes.len());
    assert!(took < Duration::from_secs(40), "2 MiB took {took:?}");
    eprintln!("2 MiB with a 2 MiB/s floor: {took:?}");
}

/// Default shaping (mtg's Weibull, 4 MiB/s floor) with several clients at once, echoing both
/// ways: every byte arrives, in order.
#[test]
fn faketls_shaping_with_concurrent_echo_clients() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 9);
    let mut cfg = test_config(secret.clone(), 2, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    cfg.doppelganger.delays = true;
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    std::thread::scope(|s| {
        for k in 0..16u64 {
            let secret = &secret;
            s.spawn(move || {
                let mut c = TestClient::connect(addr, secret, &ClientOpts::new(Tag::Padded, 2, k))
                    .expect("handshake");
                let data = Pattern::new(k).take(256 * 1024);
                let back = c.echo_round_trip(&data).expect("echo");
                assert!(back == data, "client {k}: echo differs");
                c.shutdown_write().expect("shutdown");
                c.rx.expect_eof().expect("EOF");
            });
        }
    });
    drop(proxy);
}

// ------------------------------------------------------------------------------------------
// 2. many connections

/// 200 clients at once (a mix of kinds is impossible with one secret, so one proxy per kind is
/// not needed: ee, the heaviest), each 64 KiB each way, byte for byte; workers 1 and 4.
#[test]
fn many_concurrent_clients() {
    const CLIENTS: usize = 200;
    const THREADS: usize = 20;
    const LEN: usize = scaled(64 * 1024, 4 * 1024) as usize;
    for workers in [1, 4] {
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(SecretKind::FakeTls, 9);
        let mut cfg = test_config(secret.clone(), workers, &refused);
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let addr = proxy.local_addr();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let mut hs = Vec::new();
            for t in 0..THREADS {
                let secret = &secret;
                hs.push(s.spawn(move || {
                    // Each thread opens its clients first, so all 200 are open together.
                    let mut clients = Vec::new();
                    for k in 0..CLIENTS / THREADS {
                        let seed = (workers * 100_000 + t * 1000 + k) as u64;
                        let c = TestClient::connect(
                            addr,
                            secret,
                            &ClientOpts::new(Tag::Padded, 2, seed),
                        )
                        .unwrap_or_else(|e| panic!("client {t}/{k}: handshake: {e}"));
                        clients.push((seed, c));
                    }
                    for (seed, c) in &mut clients {
                        let data = Pattern::new(*seed).take(LEN);
                        let got = c
                            .echo_round_trip(&data)
                            .unwrap_or_else(|e| panic!("client seed {seed}: {e}"));
                        assert!(got == data, "client seed {seed}: bytes differ");
                    }
                    for (_, c) in &mut clients {
                        c.shutdown_write().expect("shutdown");
                        c.rx.expect_eof().expect("EOF");
                    }
                }));
            }
            for h in hs {
                h.join().expect("client thread");
            }
        });
        let st = proxy.stats();
        assert!(
            wait_until(Duration::from_secs(5), || load(&st.closed)
                == CLIENTS as u64),
            "workers={workers}: {}",
            stats_line(&st)
        );
        assert_eq!(load(&st.handshakes), CLIENTS as u64);
        assert_eq!(load(&st.bytes_up), (CLIENTS * LEN) as u64);
        assert_eq!(load(&st.bytes_down), (CLIENTS * LEN) as u64);
        assert_eq!(dc.count(), CLIENTS);
        eprintln!(
            "many_concurrent_clients workers={workers}: {:?}",
            t0.elapsed()
        );
        proxy.shutdown();
    }
}

// ------------------------------------------------------------------------------------------
// 3. large transfers

/// Uploads `up` bytes while downloading `down` bytes on one connection, concurrently.
fn bulk(kind: SecretKind, workers: usize, up: u64, down: u64) {
    bulk_with_buffers(kind, workers, up, down, None);
}

fn bulk_with_buffers(kind: SecretKind, workers: usize, up: u64, down: u64, size: Option<usize>) {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Sink {
        expect_seed: 11,
        reply_seed: 12,
        reply: down,
        after_eof: false,
    });
    let secret = secret(kind, 10);
    let mut cfg = test_config(secret.clone(), workers, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    if let Some(size) = size {
        cfg.buffer_size = size;
    }
    let proxy = start(cfg);
    let c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(default_tag(kind), 2, 13),
    )
    .expect("handshake");
    let (mut tx, mut rx) = c.split();
    let t0 = Instant::now();
    let received = std::thread::scope(|s| {
        s.spawn(move || {
            let mut p = Pattern::new(11);
            let mut left = up;
            while left > 0 {
                let n = left.min(48 * 1024) as usize;
                tx.send(&p.take(n)).expect("upload");
                left -= n as u64;
            }
            tx.shutdown_write().expect("shutdown");
        });
        rx.recv_check_to_eof(&mut Pattern::new(12), down + 1)
            .expect("download")
    });
    assert_eq!(received, down, "{}: downloaded bytes", kind_name(kind));
    let conn = dc.conn(0);
    assert!(
        wait_until(Duration::from_secs(10), || conn.eof.load(Ordering::SeqCst)),
        "DC did not see EOF; received {}",
        load(&conn.received)
    );
    assert_eq!(
        load(&conn.received),
        up,
        "{}: uploaded bytes",
        kind_name(kind)
    );
    assert_eq!(load(&conn.mismatch_at), u64::MAX, "upload corrupted");
    let st = proxy.stats();
    assert!(wait_until(Duration::from_secs(5), || load(&st.closed) == 1));
    assert_eq!(load(&st.bytes_up), up);
    assert_eq!(load(&st.bytes_down), down);
    eprintln!(
        "bulk {} workers={workers}: {} MiB up + {} MiB down in {:?}",
        kind_name(kind),
        up >> 20,
        down >> 20,
        t0.elapsed()
    );
}

#[test]
fn large_transfer_both_ways_ee() {
    bulk(
        SecretKind::FakeTls,
        2,
        scaled(32 << 20, 1 << 20),
        scaled(32 << 20, 1 << 20),
    );
}

/// Buffers larger than one TLS record: the proxy frames several records per read (readv).
#[test]
fn large_transfer_both_ways_ee_big_buffers() {
    for size in [64 * 1024, 40_000] {
        bulk_with_buffers(
            SecretKind::FakeTls,
            1,
            scaled(16 << 20, 1 << 20),
            scaled(16 << 20, 1 << 20),
            Some(size),
        );
    }
}

#[test]
fn large_transfer_both_ways_dd() {
    bulk(
        SecretKind::Secure,
        1,
        scaled(32 << 20, 1 << 20),
        scaled(32 << 20, 1 << 20),
    );
}

// ------------------------------------------------------------------------------------------
// 4. half-close

/// Client sends then shuts its write side: the DC sees every byte then EOF, and its answer
/// (sent only after that EOF) still reaches the client in full.
#[test]
fn half_close_client_first() {
    for kind in ALL_KINDS {
        for workers in [1, 4] {
            let what = format!("{} workers={workers}", kind_name(kind));
            let refused = RefusedPort::new();
            let dc = FakeDc::start(DcMode::Sink {
                expect_seed: 21,
                reply_seed: 22,
                reply: 300_000,
                after_eof: true,
            });
            let secret = secret(kind, 20);
            let mut cfg = test_config(secret.clone(), workers, &refused);
            cfg.dc_overrides.push((2, vec![dc.addr]));
            let proxy = start(cfg);
            let mut c = TestClient::connect(
                proxy.local_addr(),
                &secret,
                &ClientOpts::new(default_tag(kind), 2, 23),
            )
            .expect("handshake");
            c.send(&Pattern::new(21).take(200_000)).expect("send");
            c.shutdown_write().expect("shutdown");
            let conn = {
                assert!(
                    dc.wait_count(1, Duration::from_secs(5)),
                    "{what}: no DC conn"
                );
                dc.conn(0)
            };
            assert!(
                wait_until(Duration::from_secs(5), || conn.eof.load(Ordering::SeqCst)),
                "{what}: DC did not see EOF (received {})",
                load(&conn.received)
            );
            assert_eq!(load(&conn.received), 200_000, "{what}");
            assert_eq!(load(&conn.mismatch_at), u64::MAX, "{what}");
            let n =
                c.rx.recv_check_to_eof(&mut Pattern::new(22), 400_000)
                    .unwrap_or_else(|e| panic!("{what}: answer: {e}"));
            assert_eq!(n, 300_000, "{what}: answer length");
            let st = proxy.stats();
            assert!(
                wait_until(Duration::from_secs(5), || load(&st.closed) == 1),
                "{what}: {}",
                stats_line(&st)
            );
        }
    }
}

/// The DC answers then shuts its write side first: the client gets all of it and EOF, and can
/// still send afterwards; the DC receives every byte.
#[test]
fn half_close_dc_first() {
    for kind in ALL_KINDS {
        for workers in [1, 4] {
            let what = format!("{} workers={workers}", kind_name(kind));
            let refused = RefusedPort::new();
            let dc = FakeDc::start(DcMode::Sink {
                expect_seed: 31,
                reply_seed: 32,
                reply: 250_000,
                after_eof: false,
            });
            let secret = secret(kind, 30);
            let mut cfg = test_config(secret.clone(), workers, &refused);
            cfg.dc_overrides.push((2, vec![dc.addr]));
            let proxy = start(cfg);
            let mut c = TestClient::connect(
                proxy.local_addr(),
                &secret,
                &ClientOpts::new(default_tag(kind), 2, 33),
            )
            .expect("handshake");
            let n =
                c.rx.recv_check_to_eof(&mut Pattern::new(32), 400_000)
                    .unwrap_or_else(|e| panic!("{what}: DC data: {e}"));
            assert_eq!(n, 250_000, "{what}");
            // Our side is still open: send after the DC's EOF.
            c.send(&Pattern::new(31).take(150_000))
                .unwrap_or_else(|e| panic!("{what}: send after EOF: {e}"));
            c.shutdown_write().expect("shutdown");
            let conn = dc.conn(0);
            assert!(
                wait_until(Duration::from_secs(5), || conn.eof.load(Ordering::SeqCst)),
                "{what}: DC did not see EOF (received {}, error {:?})",
                load(&conn.received),
                conn.error.lock().unwrap()
            );
            assert_eq!(load(&conn.received), 150_000, "{what}");
            assert_eq!(load(&conn.mismatch_at), u64::MAX, "{what}");
            let st = proxy.stats();
            assert!(
                wait_until(Duration::from_secs(5), || load(&st.closed) == 1),
                "{what}: {}",
                stats_line(&st)
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// 5. DC refused

#[test]
fn dc_refused_closes_client_and_counts() {
    for kind in ALL_KINDS {
        let what = kind_name(kind);
        let refused = RefusedPort::new();
        let other = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(kind, 40);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        cfg.dc_overrides.push((3, vec![other.addr]));
        cfg.dc_overrides.push((2, vec![dc.addr]));
        // A refusal must end the connect at once, not after the connect timeout: far above
        // the bound below, so that a loaded machine's delays never reach it.
        cfg.timeouts.tcp = Duration::from_secs(10);
        let proxy = start(cfg);
        let st = proxy.stats();
        let mut c = TestClient::connect(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(default_tag(kind), 3, 41),
        )
        .expect("handshake");
        // Early data is fine to send; it goes nowhere.
        let _ = c.send(b"hello");
        let t0 = Instant::now();
        let mut buf = [0u8; 16];
        c.rx.set_read_timeout(Duration::from_secs(8));
        let r = c.rx.recv(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref().is_err_and(
                    |e| e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut
                ),
            "{what}: client not closed: {r:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            t0.elapsed()
        );
        assert!(
            wait_until(Duration::from_secs(3), || load(&st.dc_failures) == 1),
            "{what}: {}",
            stats_line(&st)
        );
        // Still serving.
        echo_ok(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(default_tag(kind), 2, 42),
            10_000,
            &format!("{what}: next client"),
        );
        assert_eq!(load(&st.dc_failures), 1, "{what}: {}", stats_line(&st));
    }
}

// ------------------------------------------------------------------------------------------
// 6. DC blackholed: connect timeout, and fallback to the next address

#[test]
fn dc_blackholed_times_out_then_falls_back() {
    let _timing = timing();
    let refused = RefusedPort::new();
    let hole = Blackhole::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 50);
    let mut cfg = test_config(secret.clone(), 2, &refused);
    cfg.timeouts.tcp = Duration::from_secs(1);
    cfg.dc_overrides.push((3, vec![hole.addr]));
    cfg.dc_overrides.push((4, vec![hole.addr, dc.addr]));
    let proxy = start(cfg);
    let st = proxy.stats();

    // Only the blackhole: closed after about the connect timeout.
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 3, 51),
    )
    .expect("handshake");
    let t0 = Instant::now();
    c.rx.set_read_timeout(Duration::from_secs(6));
    let mut buf = [0u8; 16];
    let r = c.rx.recv(&mut buf);
    let took = t0.elapsed();
    assert!(
        matches!(r, Ok(0))
            || r.as_ref().is_err_and(
                |e| e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut
            ),
        "client not closed after {took:?}: {r:?}"
    );
    // Without the connect timeout it would stay open (until the 6 s read timeout).
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(5),
        "closed after {took:?}, want about 1 s"
    );
    assert!(
        wait_until(Duration::from_secs(2), || load(&st.dc_failures) == 1),
        "{}",
        stats_line(&st)
    );

    // Blackhole first, then a live DC: the exchange succeeds after about 1 s.
    let t0 = Instant::now();
    echo_ok(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 4, 52),
        50_000,
        "fallback to the second address",
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "fallback too fast ({took:?})?"
    );
    assert!(took <= Duration::from_secs(4), "fallback took {took:?}");
    assert_eq!(dc.frames(), vec![(Tag::Padded, 4)]);
    assert_eq!(load(&st.dc_failures), 1, "{}", stats_line(&st));
}

/// With a fallback address after it, a silent address is given up after 3 s even when the
/// connect timeout is 10 s (a broken IPv6 route must not cost every client 10 s).
#[test]
fn dc_fallback_gives_up_a_silent_address_sooner() {
    let refused = RefusedPort::new();
    let hole = Blackhole::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 53);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.timeouts.tcp = Duration::from_secs(10);
    cfg.dc_overrides.push((4, vec![hole.addr, dc.addr]));
    let proxy = start(cfg);
    let t0 = Instant::now();
    echo_ok(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 4, 54),
        10_000,
        "fallback after the shortened timeout",
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "fallback too fast ({took:?})?"
    );
    assert!(took <= Duration::from_secs(7), "fallback took {took:?}");
    assert_eq!(dc.frames(), vec![(Tag::Padded, 4)]);
}

// ------------------------------------------------------------------------------------------
// 7. silent client: handshake timeout

#[test]
fn silent_client_handshake_timeout() {
    let _timing = timing();
    for kind in ALL_KINDS {
        let what = kind_name(kind);
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(kind, 60);
        let mut cfg = test_config(secret.clone(), 1, &refused);
        cfg.timeouts.handshake = Duration::from_secs(1);
        if kind != SecretKind::FakeTls {
            // No fronting site (dd/classic secrets have no host): a failed handshake closes.
            cfg.domain_fronting.ip = None;
        }
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let st = proxy.stats();

        // Says nothing at all.
        let mut s = connect(proxy.local_addr()).expect("connect");
        let closed = read_until_closed(&mut s, Duration::from_secs(4))
            .unwrap_or_else(|e| panic!("{what}: silent client: {e}"));
        assert!(
            closed.bytes.is_empty(),
            "{what}: proxy sent {:?}",
            closed.bytes
        );
        assert!(
            closed.after >= Duration::from_millis(900)
                && closed.after <= Duration::from_millis(2500),
            "{what}: closed after {:?}",
            closed.after
        );
        // Half a handshake: a partial frame (or, for ee, a complete hello and no frame).
        let mut s = connect(proxy.local_addr()).expect("connect");
        let mut rng = XorShift64(61);
        if kind == SecretKind::FakeTls {
            let hello =
                faketls::build_client_hello(&mut rng, &secret.key, &secret.host, unix_now());
            s.write_all(&hello).expect("hello");
        } else {
            let (frame, _, _) = obfs2::client_frame(&mut rng, &secret.key, default_tag(kind), 2);
            s.write_all(&frame[..40]).expect("partial frame");
        }
        let closed = read_until_closed(&mut s, Duration::from_secs(4))
            .unwrap_or_else(|e| panic!("{what}: stalled client: {e}"));
        assert!(
            closed.after <= Duration::from_millis(2500),
            "{what}: closed after {:?}",
            closed.after
        );
        if kind == SecretKind::FakeTls {
            // Before the server flight the silent client goes to the (unreachable) front;
            // after it, the only answer is to close.
            assert!(
                !closed.bytes.is_empty(),
                "{what}: expected the server flight before the close"
            );
            assert!(
                wait_until(Duration::from_secs(2), || load(&st.rejected) == 1
                    && load(&st.fronted) == 1),
                "{what}: {}",
                stats_line(&st)
            );
        } else {
            assert!(closed.bytes.is_empty(), "{what}: got {:?}", closed.bytes);
            assert!(
                wait_until(Duration::from_secs(2), || load(&st.rejected) == 2),
                "{what}: {}",
                stats_line(&st)
            );
            assert_eq!(load(&st.fronted), 0, "{what}: {}", stats_line(&st));
        }
        assert_eq!(load(&st.handshakes), 0);
        assert_eq!(dc.count(), 0, "{what}: something reached the DC");
    }
}

// ------------------------------------------------------------------------------------------
// 8. bad input

fn http_get() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
        .to_vec()
}

/// One bad input: raw bytes to send, whether to shut the write side after them.
struct Bad {
    name: &'static str,
    bytes: Vec<u8>,
    then_eof: bool,
}

fn bad_inputs(kind: SecretKind, secret: &Secret) -> Vec<Bad> {
    let other = match kind {
        SecretKind::FakeTls => common::secret(kind, 9999),
        _ => common::secret(kind, 8888),
    };
    let mut rng = XorShift64(77);
    let mut random = vec![0u8; 700];
    mtpx::proto::Rng::fill(&mut rng, &mut random);
    let mut v = vec![
        Bad {
            name: "random bytes",
            bytes: random.clone(),
            then_eof: false,
        },
        Bad {
            name: "HTTP GET",
            bytes: http_get(),
            then_eof: false,
        },
    ];
    match kind {
        SecretKind::FakeTls => {
            let now = unix_now();
            let wrong_key = faketls::build_client_hello(&mut rng, &other.key, HOST, now);
            let wrong_host =
                faketls::build_client_hello(&mut rng, &secret.key, "other.example.org", now);
            let old = faketls::build_client_hello(&mut rng, &secret.key, HOST, now - 3600);
            let future = faketls::build_client_hello(&mut rng, &secret.key, HOST, now + 3600);
            let good = faketls::build_client_hello(&mut rng, &secret.key, HOST, now);
            let mut flipped = faketls::build_client_hello(&mut rng, &secret.key, HOST, now);
            flipped[200] ^= 1;
            v.push(Bad {
                name: "ee hello with another key",
                bytes: wrong_key,
                then_eof: false,
            });
            v.push(Bad {
                name: "ee hello for another host",
                bytes: wrong_host,
                then_eof: false,
            });
            v.push(Bad {
                name: "ee hello an hour old",
                bytes: old,
                then_eof: false,
            });
            v.push(Bad {
                name: "ee hello an hour ahead",
                bytes: future,
                then_eof: false,
            });
            v.push(Bad {
                name: "ee hello with a flipped bit",
                bytes: flipped,
                then_eof: false,
            });
            v.push(Bad {
                name: "truncated ee hello then EOF",
                bytes: good[..300].to_vec(),
                then_eof: true,
            });
            let mut hdr_only = good[..5].to_vec();
            hdr_only[0] = 0x17;
            v.push(Bad {
                name: "app-data record instead of hello",
                bytes: hdr_only,
                then_eof: false,
            });
        }
        _ => {
            let tag = default_tag(kind);
            let (wrong, _, _) = obfs2::client_frame(&mut rng, &other.key, tag, 2);
            let (good, _, _) = obfs2::client_frame(&mut rng, &secret.key, tag, 2);
            v.push(Bad {
                name: "frame with another key",
                bytes: wrong.to_vec(),
                then_eof: false,
            });
            v.push(Bad {
                name: "truncated frame then EOF",
                bytes: good[..63].to_vec(),
                then_eof: true,
            });
            if kind == SecretKind::Secure {
                let (abridged, _, _) = obfs2::client_frame(&mut rng, &secret.key, Tag::Abridged, 2);
                v.push(Bad {
                    name: "dd secret with an abridged frame",
                    bytes: abridged.to_vec(),
                    then_eof: false,
                });
            }
            // A FakeTLS hello to a non-FakeTLS proxy.
            let hello = faketls::build_client_hello(&mut rng, &secret.key, HOST, unix_now());
            v.push(Bad {
                name: "ee hello to a non-ee proxy",
                bytes: hello,
                then_eof: false,
            });
        }
    }
    v
}

/// With a fronting site: every bad input is relayed to it byte for byte, its answer comes back
/// to the client, then the connection closes; nothing reaches the DC.
#[test]
fn bad_input_is_fronted_byte_for_byte() {
    for kind in ALL_KINDS {
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let front = FakeFront::start();
        let secret = secret(kind, 72);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        cfg.domain_fronting.port = front.addr.port();
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let st = proxy.stats();
        let cases = bad_inputs(kind, &secret);
        for (i, bad) in cases.iter().enumerate() {
            let what = format!("{}: {}", kind_name(kind), bad.name);
            let mut s = connect(proxy.local_addr()).expect("connect");
            s.write_all(&bad.bytes).expect("write");
            if bad.then_eof {
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            }
            let closed = read_until_closed(&mut s, Duration::from_secs(4))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                closed.bytes == FRONT_REPLY,
                "{what}: client got {:?}, want the front's reply",
                String::from_utf8_lossy(&closed.bytes)
            );
            // The front also gets the proxy's own scout probes (ee): find ours by content.
            let matching = || {
                (0..front.count())
                    .filter(|&j| front.received(j) == bad.bytes)
                    .count()
            };
            assert!(
                wait_until(Duration::from_secs(2), || matching() == 1),
                "{what}: no front connection received exactly the client's {} bytes; got {:?}",
                bad.bytes.len(),
                (0..front.count())
                    .map(|j| front.received(j).len())
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                load(&st.fronted),
                i as u64 + 1,
                "{what}: {}",
                stats_line(&st)
            );
        }
        assert_eq!(
            dc.count(),
            0,
            "{}: bad input reached the DC",
            kind_name(kind)
        );
        assert_eq!(load(&st.handshakes), 0, "{}", stats_line(&st));
        echo_ok(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(default_tag(kind), 2, 73),
            20_000,
            &format!("{}: valid client after bad input", kind_name(kind)),
        );
    }
}

/// A client that passes the FakeTLS hello check (it knows the secret) but follows its hello
/// with a malformed record in the same segment: closed, never spliced to the fronting site
/// (which would get the bytes after the hello, not what the client sent).
#[test]
fn authenticated_hello_with_a_bad_record_is_closed_not_fronted() {
    let refused = RefusedPort::new();
    let front = FakeFront::start();
    let secret = secret(SecretKind::FakeTls, 74);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.domain_fronting.port = front.addr.port();
    cfg.doppelganger.learn = false;
    let proxy = start(cfg);
    let st = proxy.stats();
    let mut rng = XorShift64(75);
    let mut bytes = faketls::build_client_hello(&mut rng, &secret.key, &secret.host, unix_now());
    // An application-data record with version 03 01 (only 03 03 is valid after the hello).
    bytes.extend_from_slice(&[0x17, 0x03, 0x01, 0x00, 0x02, 0xaa, 0xbb]);
    let mut s = connect(proxy.local_addr()).expect("connect");
    s.write_all(&bytes).expect("write");
    let closed = read_until_closed(&mut s, Duration::from_secs(4)).expect("closed");
    // The hello was answered (the bad record is taken in after the flight, as if it had come
    // in a later segment), then the connection closed: the client got our flight, not the
    // site's answer.
    let random: [u8; 32] = bytes[11..43].try_into().unwrap();
    assert_eq!(
        faketls::verify_server_flight(&closed.bytes, &random, &secret.key),
        Ok(Some(closed.bytes.len())),
        "got {} bytes",
        closed.bytes.len()
    );
    assert!(
        wait_until(Duration::from_secs(2), || load(&st.closed) == 1),
        "{}",
        stats_line(&st)
    );
    assert_eq!(load(&st.fronted), 0, "{}", stats_line(&st));
    assert_eq!(front.count(), 0, "spliced to the fronting site");
    assert_eq!(load(&st.rejected), 1, "{}", stats_line(&st));
}

/// With `proxy-protocol-listener`, a malformed PROXY header is a failed handshake like any
/// other: the bytes as received (header included) go to the fronting site, and the client
/// gets the site's answer, not a bare close.
#[test]
fn malformed_proxy_header_is_fronted_byte_for_byte() {
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]); // version 3: not PROXY v2
    v2.extend_from_slice(&[127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "v1 bad address",
            b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "v1 no CRLF",
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
        ),
        ("v2 bad version", v2),
    ];
    for kind in [SecretKind::FakeTls, SecretKind::Secure] {
        let refused = RefusedPort::new();
        let front = FakeFront::start();
        let secret = secret(kind, 92);
        let mut cfg = test_config(secret.clone(), 1, &refused);
        cfg.proxy_protocol_listener = true;
        cfg.domain_fronting.port = front.addr.port();
        let proxy = start(cfg);
        let st = proxy.stats();
        for (i, (name, bytes)) in cases.iter().enumerate() {
            let what = format!("{}: {name}", kind_name(kind));
            let mut s = connect(proxy.local_addr()).expect("connect");
            s.write_all(bytes).expect("write");
            let closed = read_until_closed(&mut s, Duration::from_secs(4))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                closed.bytes == FRONT_REPLY,
                "{what}: client got {:?}, want the front's reply",
                String::from_utf8_lossy(&closed.bytes)
            );
            let matching = || {
                (0..front.count())
                    .filter(|&j| front.received(j) == *bytes)
                    .count()
            };
            assert!(
                wait_until(Duration::from_secs(2), || matching() == 1),
                "{what}: the front did not get exactly the client's bytes"
            );
            assert_eq!(
                load(&st.fronted),
                i as u64 + 1,
                "{what}: {}",
                stats_line(&st)
            );
        }
    }
}

/// With the fronting site unreachable: every bad input is closed without a byte in answer.
#[test]
fn bad_input_is_closed_and_never_reaches_dc() {
    for kind in ALL_KINDS {
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(kind, 70);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let st = proxy.stats();
        let cases = bad_inputs(kind, &secret);
        for (i, bad) in cases.iter().enumerate() {
            let what = format!("{}: {}", kind_name(kind), bad.name);
            let mut s = connect(proxy.local_addr()).expect("connect");
            s.write_all(&bad.bytes).expect("write");
            if bad.then_eof {
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            }
            // Rejected on content, well before the 10 s handshake timeout.
            let closed = read_until_closed(&mut s, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                closed.bytes.is_empty(),
                "{what}: proxy answered {} bytes: {:02x?}",
                closed.bytes.len(),
                &closed.bytes[..closed.bytes.len().min(16)]
            );
            // Handed to the (unreachable) fronting site, hence closed.
            assert!(
                wait_until(Duration::from_secs(2), || load(&st.fronted) == i as u64 + 1),
                "{what}: {}",
                stats_line(&st)
            );
        }
        assert_eq!(
            dc.count(),
            0,
            "{}: bad input reached the DC",
            kind_name(kind)
        );
        assert_eq!(load(&st.handshakes), 0, "{}", stats_line(&st));
        echo_ok(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(default_tag(kind), 2, 71),
            20_000,
            &format!("{}: valid client after bad input", kind_name(kind)),
        );
        assert_eq!(dc.count(), 1);
    }
}

/// A loopback port nobody listens on right now (for a proxy that must know its port before
/// it starts).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

/// Fronting never reaches the proxy's own listener: neither a configured `[domain-fronting]`
/// address nor a DNS answer for the secret's host that points back at the proxy. A probe is
/// closed at once (no chain of connections through the proxy), the refusal is counted, and
/// clients are served as usual.
#[test]
fn fronting_to_our_own_listener_is_refused() {
    for via_dns in [false, true] {
        let what = if via_dns { "dns" } else { "ip" };
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let dns = DnsStub::start(&[(HOST, std::net::Ipv4Addr::LOCALHOST)]);
        let secret = secret(SecretKind::FakeTls, 90);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        let port = free_port();
        cfg.bind_to = SocketAddr::from(([127, 0, 0, 1], port));
        cfg.concurrency = 50;
        cfg.domain_fronting.port = port;
        if via_dns {
            // The secret's host resolves to this very proxy (a spoofed or careless answer).
            cfg.domain_fronting.ip = None;
            cfg.dns = Some(format!("udp://{}", dns.addr));
        }
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let st = proxy.stats();
        assert!(
            wait_until(Duration::from_secs(5), || load(&st.front_self_loops) >= 1),
            "{what}: the loop was not noticed: {}",
            stats_line(&st)
        );
        let mut probe = connect(proxy.local_addr()).expect("connect");
        probe.write_all(&http_get()).expect("probe");
        let closed = read_until_closed(&mut probe, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(closed.bytes.is_empty(), "{what}: the probe got an answer");
        // No hop through the proxy: the probe was the only connection it accepted.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(load(&st.accepted), 1, "{what}: {}", stats_line(&st));
        assert_eq!(load(&st.fronted), 0, "{what}: {}", stats_line(&st));
        echo_ok(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(Tag::Intermediate, 2, 91),
            10_000,
            &format!("{what}: client after the probe"),
        );
    }
}

/// The proxy's own socket connected to `peer` (this test process is the proxy): found among
/// the open descriptors by its peer address. Returns its TCP_USER_TIMEOUT, in milliseconds.
fn user_timeout_of_socket_to(peer: SocketAddr) -> Option<i32> {
    let SocketAddr::V4(peer) = peer else {
        return None;
    };
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(fd) = entry.ok()?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: plain getsockopt/getpeername on a descriptor number; a closed or non-socket
        // one yields an error. The outputs are live locals whose sizes are passed.
        unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getpeername(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) != 0
                || i32::from(sa.sin_family) != libc::AF_INET
                || u16::from_be(sa.sin_port) != peer.port()
                || sa.sin_addr.s_addr != u32::from_ne_bytes(peer.ip().octets())
            {
                continue;
            }
            let mut v: i32 = 0;
            let mut vlen = std::mem::size_of::<i32>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&mut v as *mut i32).cast(),
                &mut vlen,
            );
            return (rc == 0).then_some(v);
        }
    }
    None
}

/// The proxy's socket to a DC gets TCP_USER_TIMEOUT = keep-alive idle + interval × count, so
/// data a vanished DC never acknowledges does not hold the relay for ~15 minutes.
#[test]
fn dc_socket_has_a_user_timeout() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 93);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.keep_alive.idle = Duration::from_secs(21);
    cfg.keep_alive.interval = Duration::from_secs(3);
    cfg.keep_alive.count = 5;
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 2, 94),
    )
    .expect("handshake");
    let data = Pattern::new(94).take(1000);
    assert!(c.echo_round_trip(&data).expect("echo") == data);
    assert_eq!(user_timeout_of_socket_to(dc.addr), Some(36_000));
}

// ------------------------------------------------------------------------------------------
// 9. replay

/// Sends `first` (a hello stamped `at`, or a frame) on a fresh connection and reports whether
/// the proxy answered/relayed (`true`) or closed without a word (`false`).
fn replay_attempt(proxy: SocketAddr, secret: &Secret, seed: u64, at: u32, dc: &FakeDc) -> bool {
    let before = dc.count();
    let mut opts = ClientOpts::new(default_tag(secret.kind), 2, seed);
    opts.hello_time = Some(at);
    match TestClient::connect(proxy, secret, &opts) {
        Ok(mut c) => {
            let data = Pattern::new(seed).take(1000);
            match c.echo_round_trip(&data) {
                Ok(got) if got == data => {
                    assert_eq!(dc.count(), before + 1);
                    true
                }
                Ok(_) => panic!("replayed connection echoed wrong bytes"),
                Err(_) => {
                    assert!(dc.count() == before, "a rejected frame reached the DC");
                    false
                }
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                ),
                "unexpected handshake error: {e}"
            );
            assert_eq!(dc.count(), before, "a rejected hello reached the DC");
            false
        }
    }
}

#[test]
fn replayed_handshakes_are_rejected() {
    for kind in ALL_KINDS {
        for enabled in [true, false] {
            let what = format!("{} anti-replay={enabled}", kind_name(kind));
            let refused = RefusedPort::new();
            let dc = FakeDc::start(DcMode::Echo);
            let secret = secret(kind, 80);
            let mut cfg = test_config(secret.clone(), 2, &refused);
            cfg.anti_replay.enabled = enabled;
            cfg.dc_overrides.push((2, vec![dc.addr]));
            let proxy = start(cfg);
            let st = proxy.stats();
            // The same seed and time give the same hello (a second later it would differ in
            // the timestamp) and the same frame.
            let at = unix_now();
            assert!(
                replay_attempt(proxy.local_addr(), &secret, 81, at, &dc),
                "{what}: first"
            );
            let second = replay_attempt(proxy.local_addr(), &secret, 81, at, &dc);
            assert_eq!(second, !enabled, "{what}: second accepted = {second}");
            // A fresh handshake is fine either way.
            assert!(
                replay_attempt(proxy.local_addr(), &secret, 82, at, &dc),
                "{what}: fresh"
            );
            // A replay is answered like any failed handshake: handed to the fronting site
            // (here unreachable, so closed).
            assert!(
                wait_until(Duration::from_secs(2), || load(&st.fronted)
                    == u64::from(enabled)),
                "{what}: {}",
                stats_line(&st)
            );
        }
    }
}

/// The ee hello's replay identity is the hello itself, not the frame: the same hello with a
/// different frame is still a replay.
#[test]
fn replayed_ee_hello_with_new_frame_is_rejected() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 83);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let hello = faketls::build_client_hello(&mut XorShift64(84), &secret.key, HOST, unix_now());
    let mut first = connect(proxy.local_addr()).expect("connect");
    first.write_all(&hello).expect("hello");
    let mut flight = [0u8; 5];
    first.read_exact(&mut flight).expect("first hello answered");
    assert_eq!(&flight[..3], &[0x16, 0x03, 0x03]);
    let mut second = connect(proxy.local_addr()).expect("connect");
    second.write_all(&hello).expect("hello");
    let closed = read_until_closed(&mut second, Duration::from_secs(3)).expect("closed");
    assert!(
        closed.bytes.is_empty(),
        "replayed hello got {} bytes",
        closed.bytes.len()
    );
    drop(first);
}

/// dd and classic frames carry no timestamp: a frame replayed after the FakeTLS window
/// (2 × skew + 2 s) is still a replay (fronted, here closed), never relayed to a DC.
#[test]
fn replayed_obfs2_frame_is_rejected_after_the_skew_window() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let proxies: Vec<(Secret, Proxy)> = [SecretKind::Secure, SecretKind::Classic]
        .iter()
        .map(|&kind| {
            let secret = secret(kind, 85);
            let mut cfg = test_config(secret.clone(), 1, &refused);
            // Window 2 × 1 + 2 = 4 s.
            cfg.tolerate_time_skewness = Duration::from_secs(1);
            cfg.dc_overrides.push((2, vec![dc.addr]));
            (secret, start(cfg))
        })
        .collect();
    for (secret, proxy) in &proxies {
        let what = kind_name(secret.kind);
        assert!(
            replay_attempt(proxy.local_addr(), secret, 86, unix_now(), &dc),
            "{what}: first"
        );
    }
    // Whole seconds on the proxy's clock: 5.1 s later is at least 5 s > the 4 s window.
    std::thread::sleep(Duration::from_millis(5100));
    for (secret, proxy) in &proxies {
        let what = kind_name(secret.kind);
        let dcs = dc.count();
        assert!(
            !replay_attempt(proxy.local_addr(), secret, 86, unix_now(), &dc),
            "{what}: the same frame 5 s later was relayed"
        );
        assert_eq!(dc.count(), dcs, "{what}: the replay reached the DC");
        let st = proxy.stats();
        assert!(
            wait_until(Duration::from_secs(2), || load(&st.fronted) == 1),
            "{what}: {}",
            stats_line(&st)
        );
    }
}

// ------------------------------------------------------------------------------------------
// 9b. the turn budget counts raw bytes

/// Sends a valid ClientHello for `secret` on `s` and reads the whole server flight.
fn hello_only(s: &mut TcpStream, secret: &Secret, seed: u64) {
    let hello = faketls::build_client_hello(&mut XorShift64(seed), &secret.key, HOST, unix_now());
    let random: [u8; 32] = hello[11..43].try_into().expect("32 bytes");
    s.write_all(&hello).expect("hello");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match faketls::verify_server_flight(&got, &random, &secret.key) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(r) => panic!("bad server flight: {r:?}"),
        }
        let n = s.read(&mut buf).expect("server flight");
        assert!(n > 0, "EOF in the server flight");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Writes zero-length application-data records (valid TLS framing, no payload) as fast as
/// the proxy takes them, until `stop` (or 40 s); counts the bytes written in `sent`.
fn flood_empty_records(mut s: TcpStream, stop: &AtomicBool, sent: &AtomicU64) {
    // Real-time priority where allowed (root): woken the moment the proxy reads, the flooder
    // keeps the socket full however loaded the machine is. It sleeps whenever the socket is
    // full, and stops after 40 s at the latest.
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets this thread's (pid 0) policy from a valid, live sched_param.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    let chunk = [0x17u8, 0x03, 0x03, 0x00, 0x00].repeat((1 << 20) / 5);
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("set_write_timeout");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut at = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // A partial write goes on from where it stopped: the records stay whole.
        match s.write(&chunk[at..]) {
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::SeqCst);
                at = (at + n) % chunk.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A client with the secret streaming empty records (after the whole handshake, and after
/// only the hello) must not keep its worker from the other connections: the turn budget
/// counts bytes read, headers included, not payload. With one worker, another client's echo
/// comes back while the flood is still going (before the fix it waited for the flood to end).
#[test]
fn empty_record_flood_does_not_hold_the_worker() {
    let _timing = TIMING.write().unwrap_or_else(|p| p.into_inner());
    const FLOODERS: usize = 3;
    for after_frame in [true, false] {
        let what = if after_frame { "relay" } else { "handshake" };
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(SecretKind::FakeTls, 87);
        let mut cfg = test_config(secret.clone(), 1, &refused);
        cfg.timeouts.handshake = Duration::from_secs(60);
        // Small buffers: more reads per byte, so the worker drains the flood more slowly.
        cfg.buffer_size = 4096;
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let addr = proxy.local_addr();
        let opts = |seed| ClientOpts::new(Tag::Intermediate, 2, seed);
        let mut other = TestClient::connect(addr, &secret, &opts(88)).expect("other client");
        let data = Pattern::new(88).take(1000);
        assert!(other.echo_round_trip(&data).expect("echo before") == data);

        // Three flooders: before the fix a turn lasted until each of them in turn happened to
        // fall behind (the kernel stalls a loopback stream now and then), so the other client
        // waited for the sum of three such stalls.
        let mut raws = Vec::new();
        let mut clients = Vec::new();
        for k in 0..FLOODERS {
            let mut s = connect(addr).expect("connect flooder");
            raws.push(s.try_clone().expect("clone"));
            let seed = 89 + k as u64;
            if after_frame {
                clients.push(TestClient::handshake(s, &secret, &opts(seed)).expect("flooder"));
            } else {
                hello_only(&mut s, &secret, seed);
            }
        }
        let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
        std::thread::scope(|sc| {
            let floods: Vec<_> = raws
                .drain(..)
                .map(|raw| sc.spawn(|| flood_empty_records(raw, &stop, &sent)))
                .collect();
            // In full swing: many turn budgets' worth sent.
            let swing = wait_until(Duration::from_secs(20), || {
                sent.load(Ordering::SeqCst) >= 8 << 20
            });
            // Five echoes in a row, each within 5 s: milliseconds when the worker takes turns.
            let mut echo = Ok(());
            for i in 0..5 {
                let t = Instant::now();
                other.rx.set_read_timeout(Duration::from_secs(5));
                match other.echo_round_trip(&data) {
                    Ok(got) => assert!(got == data, "{what}: echoed bytes differ"),
                    Err(e) => {
                        echo = Err(format!("echo {i}: none after {:?}: {e}", t.elapsed()));
                        break;
                    }
                }
            }
            let flooding = floods.iter().all(|f| !f.is_finished());
            stop.store(true, Ordering::SeqCst);
            for f in floods {
                f.join().expect("flood thread");
            }
            assert!(swing, "{what}: flood did not start");
            if let Err(e) = echo {
                panic!("{what}: during the flood, {e}");
            }
            assert!(
                flooding,
                "{what}: the echoes came only after the flood ended"
            );
        });
        eprintln!(
            "{what}: {} MB of empty records flooded",
            sent.load(Ordering::SeqCst) >> 20
        );
    }
}

// ------------------------------------------------------------------------------------------
// 10. slow reader, bounded memory (measured in a child process so other tests' memory does
// not count)

const SLOW_TOTAL: u64 = scaled(64 << 20, 12 << 20);
const RSS_BOUND: u64 = scaled(8 << 20, 6 << 20);

#[test]
fn slow_reader_memory_is_bounded() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "slow_reader_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child test");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("slow_reader_child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    eprintln!("{err}");
    assert!(status.success(), "child failed:\n{out}\n{err}");
    assert!(
        out.contains("1 passed"),
        "child did not run the test:\n{out}"
    );
}

#[test]
#[ignore = "run in a child process by slow_reader_memory_is_bounded"]
fn slow_reader_child() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Sink {
        expect_seed: 91,
        reply_seed: 92,
        reply: SLOW_TOTAL,
        after_eof: false,
    });
    let secret = secret(SecretKind::FakeTls, 90);
    let mut cfg = test_config(secret.clone(), 2, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 2, 93),
    )
    .expect("handshake");
    c.send(b"x").ok();
    assert!(dc.wait_count(1, Duration::from_secs(5)));
    let conn = dc.conn(0);
    assert!(wait_until(Duration::from_secs(5), || load(&conn.sent) > 0));
    let base = rss_bytes();
    // Read nothing for 2 s.
    let mut peak = base;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        peak = peak.max(rss_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent_while_stalled = load(&conn.sent);
    eprintln!(
        "stalled 2 s: DC wrote {} KiB, RSS {} -> {} KiB",
        sent_while_stalled >> 10,
        base >> 10,
        peak >> 10
    );
    // Kernel socket buffers on loopback may hold several MiB; the proxy itself must not.
    if SLOW_TOTAL >= 64 << 20 {
        assert!(
            sent_while_stalled < 40 << 20,
            "DC could push {sent_while_stalled} bytes to a client that reads nothing"
        );
    }
    // Then read slowly (4 KiB reads, a pause every 256 KiB), verifying every byte.
    let mut p = Pattern::new(92);
    let mut buf = vec![0u8; 4096];
    let mut total = 0u64;
    let mut next_pause = 256 * 1024;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let n = c.rx.recv(&mut buf).expect("slow read");
        if n == 0 {
            break;
        }
        p.check(&buf[..n])
            .unwrap_or_else(|at| panic!("slow reader: data differs at offset {at}"));
        total += n as u64;
        if total >= next_pause {
            next_pause += 256 * 1024;
            peak = peak.max(rss_bytes());
            if total < 4 << 20 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(
            Instant::now() < deadline,
            "slow read too slow: {total} bytes"
        );
    }
    peak = peak.max(rss_bytes());
    eprintln!(
        "read {} MiB; RSS base {} KiB, peak {} KiB (+{} KiB)",
        total >> 20,
        base >> 10,
        peak >> 10,
        (peak.saturating_sub(base)) >> 10
    );
    assert_eq!(total, SLOW_TOTAL);
    assert!(
        peak.saturating_sub(base) < RSS_BOUND,
        "RSS grew by {} KiB (bound {} KiB)",
        (peak - base) >> 10,
        RSS_BOUND >> 10
    );
}

// ------------------------------------------------------------------------------------------
// 11. pool exhaustion

#[test]
fn tiny_pool_applies_backpressure() {
    const CLIENTS: usize = 30;
    const LEN: usize = scaled(200_000, 20_000) as usize;
    for kind in [SecretKind::Secure, SecretKind::Classic, SecretKind::FakeTls] {
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(kind, 100);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        cfg.buffer_count = 8;
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = start(cfg);
        let addr = proxy.local_addr();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let secret = &secret;
                    s.spawn(move || {
                        let seed = 1000 + i as u64;
                        let mut c = TestClient::connect(
                            addr,
                            secret,
                            &ClientOpts::new(default_tag(kind), 2, seed),
                        )
                        .unwrap_or_else(|e| panic!("client {i}: handshake: {e}"));
                        let data = Pattern::new(seed).take(LEN);
                        let got = c
                            .echo_round_trip(&data)
                            .unwrap_or_else(|e| panic!("client {i}: {e}"));
                        assert!(got == data, "client {i}: bytes differ");
                        c.shutdown_write().expect("shutdown");
                        c.rx.expect_eof().expect("EOF");
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("client");
            }
        });
        let st = proxy.stats();
        assert!(
            wait_until(Duration::from_secs(5), || load(&st.closed)
                == CLIENTS as u64),
            "{}",
            stats_line(&st)
        );
        assert_eq!(load(&st.rejected), 0, "{}", stats_line(&st));
        assert_eq!(load(&st.bytes_up), (CLIENTS * LEN) as u64);
        eprintln!("tiny pool {}: {:?}", kind_name(kind), t0.elapsed());
    }
}

/// Slowloris: many connections that send the start of a handshake and then nothing must not
/// starve new clients of pool buffers (partial handshakes wait in small handshake buffers,
/// not in relay buffers). The pool here has 8 relay buffers; 64 stalled handshakes, then real
/// clients and a fronted probe must be served long before the 60 s handshake timeout frees
/// anything.
#[test]
fn stalled_handshakes_do_not_starve_new_clients() {
    const STALLED: usize = 64;
    for kind in ALL_KINDS {
        let what = kind_name(kind);
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let front = FakeFront::start();
        let secret = secret(kind, 105);
        let mut cfg = test_config(secret.clone(), 1, &refused);
        cfg.buffer_count = 8;
        cfg.timeouts.handshake = Duration::from_secs(60);
        // All from 127.0.0.1: no per-source cap here (tests/hostile.rs tests it).
        cfg.concurrency_per_ip = Some(0);
        cfg.domain_fronting.port = front.addr.port();
        cfg.dc_overrides.push((2, vec![dc.addr]));
        cfg.prometheus.enabled = true;
        cfg.prometheus.bind_to = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.prometheus.http_path = "/metrics".into();
        let proxy = start(cfg);
        let metrics = proxy.metrics_addr().expect("metrics endpoint");
        let addr = proxy.local_addr();
        // A FakeTLS record header announcing a 512-byte hello, and 10 of its bytes; for
        // dd/classic 10 bytes of the 64-byte frame.
        let partial: &[u8] = if kind == SecretKind::FakeTls {
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00"
        } else {
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"
        };
        // And for FakeTLS, hellos too big for a handshake buffer: 3,000 bytes of a 16 KiB
        // record. At most a quarter of the relay buffers may hold those; the rest are fronted.
        let mut big = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03".to_vec();
        big.resize(3000, 0);
        let big_stalled: Vec<TcpStream> = (0..if kind == SecretKind::FakeTls { 16 } else { 0 })
            .map(|i| {
                let mut s = connect(addr).unwrap_or_else(|e| panic!("{what}: big {i}: {e}"));
                s.write_all(&big).expect("partial big hello");
                s
            })
            .collect();
        let stalled: Vec<TcpStream> = (0..STALLED)
            .map(|i| {
                let mut s = connect(addr).unwrap_or_else(|e| panic!("{what}: stalled {i}: {e}"));
                s.write_all(partial).expect("partial handshake");
                s
            })
            .collect();
        // A byte every 150 ms each: never quiet for the grace (500 ms) after which an
        // incomplete handshake is fronted; still far from complete when the test ends.
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let trickle = {
            let socks: Vec<TcpStream> = stalled
                .iter()
                .chain(&big_stalled)
                .map(|s| s.try_clone().expect("clone"))
                .collect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for mut s in &socks {
                        let _ = s.write_all(&[0]);
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        };
        let st = proxy.stats();
        assert!(
            wait_until(Duration::from_secs(5), || load(&st.accepted)
                >= STALLED as u64),
            "{what}: {}",
            stats_line(&st)
        );
        // The workers' sweep (every 250 ms) exports how many handshake buffers are held.
        let held = || {
            let (_, body) = scrape(metrics, "/metrics");
            sample(&body, "mtg_handshake_buffers_in_use").unwrap_or(-1.0)
        };
        if kind == SecretKind::FakeTls {
            assert!(
                wait_until(Duration::from_secs(5), || held() >= STALLED as f64),
                "{what}: handshake_buffers_in_use {} (want >= {STALLED})",
                held()
            );
        } else {
            // Part of a bare obfuscated2 frame is a prober's (every client writes its 64
            // bytes at once): fronted after 20 ms of quiet, trickle or not.
            assert!(
                wait_until(Duration::from_secs(5), || front.count() >= STALLED),
                "{what}: {} of {STALLED} partial frames fronted",
                front.count()
            );
        }
        for i in 0..3u64 {
            let seed = 500 + i;
            let mut c =
                TestClient::connect(addr, &secret, &ClientOpts::new(default_tag(kind), 2, seed))
                    .unwrap_or_else(|e| panic!("{what}: client {i} behind {STALLED} stalled: {e}"));
            let data = Pattern::new(seed).take(100_000);
            let got = c
                .echo_round_trip(&data)
                .unwrap_or_else(|e| panic!("{what}: client {i}: {e}"));
            assert!(got == data, "{what}: client {i}: bytes differ");
        }
        // A probe that is not a client is fronted at once, not after the stalled ones.
        let mut probe = connect(addr).expect("probe");
        probe
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("probe write");
        let mut reply = Vec::new();
        let _ = probe.read_to_end(&mut reply);
        assert_eq!(reply, FRONT_REPLY, "{what}: probe answer");
        stop.store(true, Ordering::SeqCst);
        trickle.join().expect("trickle");
        drop((stalled, big_stalled));
    }
}

/// Fronted connections that never read a big page from the site must not take every relay
/// buffer from our clients: fronted connections only get the spare half of the pool. Here 12
/// such readers on an 8-buffer pool, then real clients must be served long before the 60 s
/// idle timeout frees anything.
#[test]
fn fronted_slow_readers_do_not_starve_clients() {
    const READERS: usize = 12;
    let site = BigPageSite::start(Duration::from_secs(3));
    let (site_addr, written) = (site.addr, site.written);
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 106);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.buffer_count = 8;
    cfg.timeouts.idle = Duration::from_secs(60);
    cfg.domain_fronting.port = site_addr.port();
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    let readers: Vec<TcpStream> = (0..READERS)
        .map(|i| {
            let mut s = connect(addr).unwrap_or_else(|e| panic!("reader {i}: {e}"));
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("request");
            s
        })
        .collect();
    // Until the site's writes stall: every reader's path is full.
    let mut last = u64::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    eprintln!(
        "site wrote {} MiB to {READERS} readers that do not read",
        last >> 20
    );
    for i in 0..3u64 {
        let seed = 600 + i;
        let opts = ClientOpts::new(default_tag(SecretKind::FakeTls), 2, seed);
        let mut c = TestClient::connect(addr, &secret, &opts)
            .unwrap_or_else(|e| panic!("client {i} behind {READERS} slow readers: {e}"));
        let data = Pattern::new(seed).take(300_000);
        let got = c
            .echo_round_trip(&data)
            .unwrap_or_else(|e| panic!("client {i} behind {READERS} slow readers: {e}"));
        assert!(got == data, "client {i}: bytes differ");
    }
    drop(readers);
}

/// A client stuck on the pool does not hold up others, and is closed (issue 12). Pool of 2:
/// client A uploads to an echo DC and never reads, so both directions hold a relay buffer;
/// client B is then served at once on small buffers, and A, stuck on the relay buffers while
/// they run short, is closed after `STALL` (3 s), long before its 60 s idle timeout.
///
/// The set-up waits for states rather than sleeping:
/// * A's upload starts once the DC has A's frame, so that A's client-to-DC direction has
///   emptied its small handshake buffer and takes a relay buffer for the upload (a direction
///   that never empties keeps the small one, and A would pin only one relay buffer);
/// * B comes once the pool reports both relay buffers in use and the DC has received nothing
///   new for a second.
#[test]
fn a_client_stuck_on_the_pool_holds_up_nobody_and_is_closed() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 107);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.buffer_count = 2;
    cfg.timeouts.idle = Duration::from_secs(60);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    cfg.prometheus.enabled = true;
    cfg.prometheus.bind_to = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.prometheus.http_path = "/metrics".into();
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    let metrics = proxy.metrics_addr().expect("metrics endpoint");
    let st = proxy.stats();
    let opts = |seed| ClientOpts::new(default_tag(SecretKind::Secure), 2, seed);
    let a = TestClient::connect(addr, &secret, &opts(700)).expect("client A");
    assert!(
        wait_until(Duration::from_secs(10), || dc.frames().len() == 1),
        "A's frame never reached the DC"
    );
    let (mut a_tx, a_rx) = a.split();
    let writer = std::thread::spawn(move || {
        // Blocks once every buffer on the way is full; fails when mtpx closes A.
        let chunk = Pattern::new(700).take(1 << 20);
        for _ in 0..64 {
            if a_tx.send(&chunk).is_err() {
                break;
            }
        }
    });
    // Stuck: both relay buffers held (the sweep exports it every 250 ms) and nothing new at
    // the DC for a second.
    let a_dc = dc.conn(0);
    let (mut last, mut still_since) = (u64::MAX, Instant::now());
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = load(&a_dc.received);
            if now != last {
                (last, still_since) = (now, Instant::now());
            }
            let (_, body) = scrape(metrics, "/metrics");
            still_since.elapsed() >= Duration::from_secs(1)
                && sample(&body, "mtg_buffer_pool_in_use") == Some(2.0)
        }),
        "A never pinned the pool ({last} bytes at the DC)"
    );
    assert_eq!(load(&st.closed), 0, "A closed before B came");
    let t0 = Instant::now();
    let mut b = TestClient::connect(addr, &secret, &opts(701)).expect("client B");
    let data = Pattern::new(701).take(50_000);
    let got = b
        .echo_round_trip(&data)
        .unwrap_or_else(|e| panic!("client B behind a stuck client: {e}"));
    assert!(got == data, "client B: bytes differ");
    eprintln!(
        "client B served after {:?} (A stuck at {last} bytes)",
        t0.elapsed()
    );
    // A, stuck on the relay buffers while they run short, is closed.
    assert!(
        wait_until(Duration::from_secs(10), || load(&st.closed) == 1),
        "A not closed: {}",
        stats_line(&st)
    );
    drop(a_rx);
    writer.join().expect("writer");
}

// ------------------------------------------------------------------------------------------
// 12. unknown DC

#[test]
fn unknown_dc_closed_or_falls_back_to_dc2() {
    for fallback in [false, true] {
        for kind in ALL_KINDS {
            let what = format!("{} fallback={fallback}", kind_name(kind));
            let refused = RefusedPort::new();
            let dc2 = FakeDc::start(DcMode::Echo);
            let secret = secret(kind, 110);
            let mut cfg = test_config(secret.clone(), 1, &refused);
            cfg.allow_fallback_on_unknown_dc = fallback;
            cfg.dc_overrides.push((2, vec![dc2.addr]));
            let proxy = start(cfg);
            let opts = ClientOpts::new(default_tag(kind), 99, 111);
            if fallback {
                echo_ok(proxy.local_addr(), &secret, &opts, 30_000, &what);
                assert_eq!(dc2.frames(), vec![(default_tag(kind), 2)], "{what}");
            } else {
                let mut c = TestClient::connect(proxy.local_addr(), &secret, &opts)
                    .expect("handshake (the DC is only looked at after it)");
                let _ = c.send(b"ping");
                c.rx.set_read_timeout(Duration::from_secs(3));
                let mut buf = [0u8; 8];
                let r = c.rx.recv(&mut buf);
                assert!(
                    matches!(r, Ok(0))
                        || r.as_ref().is_err_and(|e| e.kind() != ErrorKind::WouldBlock
                            && e.kind() != ErrorKind::TimedOut),
                    "{what}: not closed: {r:?}"
                );
                assert_eq!(dc2.count(), 0, "{what}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// 13. graceful shutdown

#[test]
fn graceful_shutdown_lets_transfer_finish() {
    for workers in [1, 4] {
        const TOTAL: u64 = scaled(8 << 20, 1 << 20);
        const FIRST: u64 = TOTAL / 8;
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Sink {
            expect_seed: 121,
            reply_seed: 122,
            reply: TOTAL,
            after_eof: true,
        });
        let secret = secret(SecretKind::FakeTls, 120);
        let mut cfg = test_config(secret.clone(), workers, &refused);
        cfg.dc_overrides.push((2, vec![dc.addr]));
        let proxy = mtpx::io::start_with_grace(cfg, Duration::from_secs(5)).expect("start");
        let addr = proxy.local_addr();
        let st = proxy.stats();
        let mut c = TestClient::connect(addr, &secret, &ClientOpts::new(Tag::Padded, 2, 123))
            .expect("handshake");
        let mut p = Pattern::new(121);
        c.send(&p.take(FIRST as usize)).expect("first part");
        assert!(dc.wait_count(1, Duration::from_secs(5)));
        let conn = dc.conn(0);
        assert!(wait_until(Duration::from_secs(5), || load(&conn.received) >= FIRST));

        // A connection still in its handshake when shutdown starts.
        let mut idle = connect(addr).expect("connect idle");

        let t0 = Instant::now();
        let stopper = std::thread::spawn(move || {
            proxy.shutdown();
            Instant::now()
        });
        // The listener closes as soon as the workers see the stop flag.
        assert!(
            wait_until(Duration::from_secs(3), || {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Err(e) => e.kind() == ErrorKind::ConnectionRefused,
                    Ok(_) => false,
                }
            }),
            "workers={workers}: listener still accepting after shutdown()"
        );
        // The handshake-phase connection is closed promptly.
        let closed = read_until_closed(&mut idle, Duration::from_secs(3)).expect("idle closed");
        assert!(closed.bytes.is_empty());

        // The relay goes on: the rest of the upload, then the whole answer.
        let mut left = TOTAL - FIRST;
        while left > 0 {
            let n = left.min(64 * 1024);
            c.send(&p.take(n as usize)).expect("upload during shutdown");
            left -= n;
        }
        c.shutdown_write().expect("shutdown write");
        let n =
            c.rx.recv_check_to_eof(&mut Pattern::new(122), TOTAL + 1)
                .expect("download during shutdown");
        assert_eq!(n, TOTAL, "workers={workers}");
        assert_eq!(load(&conn.received), TOTAL);
        assert_eq!(load(&conn.mismatch_at), u64::MAX);
        let done_at = stopper.join().expect("shutdown thread");
        let took = done_at - t0;
        assert!(
            took < Duration::from_secs(5),
            "workers={workers}: shutdown took {took:?}"
        );
        assert!(
            matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)), Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "workers={workers}: connect after shutdown not refused"
        );
        assert_eq!(load(&st.closed), load(&st.accepted), "{}", stats_line(&st));
    }
}

/// After the grace period, connections still relaying are closed and shutdown returns.
#[test]
fn shutdown_grace_expires() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Silent);
    let secret = secret(SecretKind::Secure, 130);
    let mut cfg = test_config(secret.clone(), 2, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = mtpx::io::start_with_grace(cfg, Duration::from_secs(1)).expect("start");
    let mut c = TestClient::connect(
        proxy.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 2, 131),
    )
    .expect("handshake");
    c.send(b"keep me open").expect("send");
    assert!(dc.wait_count(1, Duration::from_secs(5)));
    // Relaying (the DC got the bytes): a connection still dialing its DC is closed at once.
    assert!(wait_until(Duration::from_secs(5), || dc
        .conn(0)
        .received
        .load(Ordering::SeqCst)
        >= 12));
    let t0 = Instant::now();
    proxy.shutdown();
    let took = t0.elapsed();
    assert!(
        // Without the grace limit it would wait for the relay, which never ends (silent DC).
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "shutdown took {took:?} with a 1 s grace"
    );
    c.rx.set_read_timeout(Duration::from_secs(3));
    let mut buf = [0u8; 8];
    let r = c.rx.recv(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref().is_err_and(
                |e| e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut
            ),
        "client not closed after the grace: {r:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Harness self-checks (so that a broken harness cannot make proxy tests pass)

#[test]
fn harness_blackhole_and_refused_port_behave() {
    let r = RefusedPort::new();
    let e = TcpStream::connect_timeout(&r.addr, Duration::from_secs(2)).expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    let hole = Blackhole::new();
    let t0 = Instant::now();
    let e = TcpStream::connect_timeout(&hole.addr, Duration::from_millis(500)).expect_err("hangs");
    assert!(t0.elapsed() >= Duration::from_millis(450), "{e}");
}

#[test]
fn harness_pattern_is_chunk_independent() {
    let whole = Pattern::new(5).take(1000);
    let mut p = Pattern::new(5);
    let mut parts = Vec::new();
    for n in [1, 7, 8, 3, 500, 481] {
        parts.extend(p.take(n));
    }
    assert_eq!(whole, parts);
    let mut q = Pattern::new(5);
    assert_eq!(q.check(&whole[..10]), Ok(()));
    let mut bad = whole[10..20].to_vec();
    bad[4] ^= 1;
    assert_eq!(q.check(&bad), Err(14));
    assert_ne!(Pattern::new(6).take(16), Pattern::new(5).take(16));
}

/// The fake DC's echo works with a direct (proxy-less) obfuscated2 client, so that echo tests
/// measure the proxy, not the harness.
#[test]
fn harness_fake_dc_echo_direct() {
    let dc = FakeDc::start(DcMode::Echo);
    let mut rng = XorShift64(140);
    let dch = obfs2::dc_handshake(&mut rng, Tag::Intermediate, -3);
    let mut enc = dch.encrypt;
    let mut dec = dch.decrypt;
    let mut s = connect(dc.addr).expect("connect DC");
    s.write_all(&dch.frame).expect("frame");
    let data = Pattern::new(141).take(5000);
    let mut wire = data.clone();
    enc.apply_keystream(&mut wire);
    s.write_all(&wire).expect("data");
    let mut back = vec![0u8; 5000];
    s.read_exact(&mut back).expect("echo");
    dec.apply_keystream(&mut back);
    assert_eq!(back, data);
    assert_eq!(dc.frames(), vec![(Tag::Intermediate, -3)]);
}
