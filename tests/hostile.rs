//! Issue 12, under a capable adversary: timing of incomplete handshakes (grace fronting),
//! buffers nobody can pin, per-source caps on unauthenticated connections. Loopback only, each
//! test with its own proxy, fake DC and stand-in site.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mtpx::config::Config;
use mtpx::io::Proxy;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls;
use mtpx::proto::obfs2::Tag;
use mtpx::proto::secret::SecretKind;

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

fn start(config: Config) -> Proxy {
    mtpx::io::start(config).expect("start proxy")
}

fn tag(kind: SecretKind) -> Tag {
    match kind {
        SecretKind::Secure => Tag::Padded,
        SecretKind::FakeTls => Tag::Intermediate,
        SecretKind::Classic => Tag::Abridged,
    }
}

/// Sends `bytes` to `addr` and times until the connection closes; returns what came back.
fn timed_close(addr: SocketAddr, bytes: &[u8]) -> Closed {
    let mut s = connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    read_until_closed(&mut s, Duration::from_secs(20)).expect("closed")
}

// ------------------------------------------------------------------------------------------
// Grace fronting (item 6)

/// An incomplete handshake (63 random bytes on dd and classic secrets, a ClientHello cut at
/// 105 bytes on ee) is spliced to the site once the client stays quiet for the grace, not
/// after the handshake timeout (10 s here). A hello may come in two segments, one resent: the
/// grace is 500 ms. Part of a bare obfuscated2 frame is never a client's (every client writes
/// its 64 bytes at once): 20 ms, within the jitter of the path to the site. The answer through
/// mtpx comes that much after the stand-in site's own (which answers after 300 ms of quiet).
/// Without the grace: 10 s; with 500 ms for frames too, dd/classic fail the upper bound.
#[test]
fn incomplete_handshakes_are_fronted_after_a_short_grace() {
    let mut rng = XorShift64(1201);
    for kind in [SecretKind::Secure, SecretKind::Classic, SecretKind::FakeTls] {
        let refused = RefusedPort::new();
        let front = FakeFront::start();
        let secret = secret(kind, 1200);
        let mut cfg = test_config(secret.clone(), 1, &refused);
        cfg.domain_fronting.port = front.addr.port();
        cfg.timeouts.handshake = Duration::from_secs(10);
        cfg.doppelganger.learn = false; // no scout connections to the site
        let proxy = start(cfg);
        let probe = if kind == SecretKind::FakeTls {
            faketls::build_client_hello(&mut rng, &secret.key, &secret.host, unix_now())[..105]
                .to_vec()
        } else {
            let mut b = vec![0u8; 63];
            mtpx::proto::Rng::fill(&mut rng, &mut b);
            b[0] = 0x01; // not one of the starts fronted at once
            b
        };
        let site = timed_close(front.addr, &probe);
        let via = timed_close(proxy.local_addr(), &probe);
        eprintln!(
            "{kind:?}: {} bytes: site {:?}, through mtpx {:?}",
            probe.len(),
            site.after,
            via.after
        );
        assert_eq!(via.bytes, FRONT_REPLY, "{kind:?}: the site's answer");
        assert_eq!(site.bytes, FRONT_REPLY);
        // Upper bounds with room for a loaded machine (a 500 ms grace for frames would put
        // dd/classic 500 ms after the site). The lower bound is absolute: the site answers
        // 300 ms after the last byte it got, which mtpx sends after its grace, so nothing
        // before 500 + 300 ms (less a timer tick) is the grace's; a slow direct measurement
        // must not move it.
        let (early, late) = if kind == SecretKind::FakeTls {
            (Duration::from_millis(790), Duration::from_millis(1200))
        } else {
            (Duration::ZERO, Duration::from_millis(400))
        };
        assert!(
            via.after < site.after + late,
            "{kind:?}: fronted after {:?} (site {:?})",
            via.after,
            site.after
        );
        assert!(
            via.after >= early,
            "{kind:?}: fronted before the grace: {:?} (site {:?})",
            via.after,
            site.after
        );
        // The site got exactly the probe's bytes.
        assert!(wait_until(Duration::from_secs(2), || front.count() == 2));
        assert_eq!(front.received(1), probe);
    }
}

/// A real client whose hello arrives in two parts 250 ms apart (a lost second segment,
/// resent after Linux's minimum RTO of 200 ms) still gets through: the grace (500 ms) is
/// above one retransmission, and restarts with each byte.
#[test]
fn a_hello_in_two_segments_250ms_apart_authenticates() {
    let refused = RefusedPort::new();
    let front = FakeFront::start();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 1202);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.domain_fronting.port = front.addr.port();
    cfg.dc_overrides.push((2, vec![dc.addr]));
    cfg.doppelganger.learn = false; // no scout connections to the site
    let proxy = start(cfg);
    for (i, at) in [100usize, 300].into_iter().enumerate() {
        let mut opts = ClientOpts::new(Tag::Intermediate, 2, 1203 + i as u64);
        opts.hello_tcp_split = Some((at, Duration::from_millis(250)));
        let mut c = TestClient::connect(proxy.local_addr(), &secret, &opts)
            .unwrap_or_else(|e| panic!("hello split at {at}: {e}"));
        let data = Pattern::new(1203).take(10_000);
        assert!(c.echo_round_trip(&data).expect("echo") == data);
    }
    assert_eq!(front.count(), 0, "a client was fronted");
}

// ------------------------------------------------------------------------------------------
// Per-source caps and the reserve (item 7)

/// Opens `n` sockets from `src` that send nothing.
fn idle_sockets(src: Ipv4Addr, proxy: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| connect_from(src, proxy).unwrap_or_else(|e| panic!("idle {i}: {e}")))
        .collect()
}

/// How many of `socks` the proxy closed (it never sends them a byte).
fn closed_count(socks: &[TcpStream]) -> usize {
    socks
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 1];
            let r = (&**s).read(&mut b);
            s.set_nonblocking(false).expect("blocking");
            match r {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// Waits until the proxy closed `want` of `socks` (and gives it a moment to close more);
/// returns how many it closed.
fn turned_away(socks: &[TcpStream], want: usize) -> usize {
    wait_until(Duration::from_secs(10), || closed_count(socks) >= want);
    std::thread::sleep(Duration::from_millis(200));
    closed_count(socks)
}

fn echo_from(
    src: Ipv4Addr,
    proxy: SocketAddr,
    secret: &mtpx::proto::secret::Secret,
    seed: u64,
) -> Result<(), String> {
    let s = connect_from(src, proxy).map_err(|e| e.to_string())?;
    let opts = ClientOpts::new(tag(secret.kind), 2, seed);
    let mut c = TestClient::handshake(s, secret, &opts).map_err(|e| format!("handshake: {e}"))?;
    let data = Pattern::new(seed).take(20_000);
    let got = c.echo_round_trip(&data).map_err(|e| format!("echo: {e}"))?;
    if got != data {
        return Err("bytes differ".into());
    }
    Ok(())
}

/// 50 idle sockets from one address with `concurrency = 50` took every slot, and a valid
/// client from elsewhere was closed at once. Now, once half of `concurrency` is in use, one
/// address holds at most `concurrency-per-ip` unauthenticated connections (default: a quarter
/// of concurrency, 12 here): the rest are turned away, and the client relays. Below half,
/// a burst from one address past the cap is let in (as the site would).
#[test]
fn one_source_cannot_take_every_slot() {
    for kind in [SecretKind::FakeTls, SecretKind::Secure] {
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(kind, 1210);
        let mut cfg = test_config(secret.clone(), 2, &refused);
        cfg.concurrency = 50;
        cfg.dc_overrides.push((2, vec![dc.addr]));
        cfg.doppelganger.learn = false;
        let proxy = start(cfg);
        // A flooder outside the client's bucket (a keyed hash: 1 in 4,096 would share it).
        let client = Ipv4Addr::new(127, 0, 0, 1);
        let src = (2..=250u8)
            .map(|i| Ipv4Addr::new(127, 0, 0, i))
            .find(|ip| proxy.source_bucket((*ip).into()) != proxy.source_bucket(client.into()))
            .expect("an address in another bucket");
        let first = idle_sockets(src, proxy.local_addr(), 20);
        assert_eq!(
            turned_away(&first, 0),
            0,
            "{kind:?}: 20 from one address, the proxy under half full: all let in"
        );
        // 5 more fill half of concurrency; from there the address is over its cap.
        let more = idle_sockets(src, proxy.local_addr(), 30);
        let closed = turned_away(&more, 25);
        eprintln!("{kind:?}: {closed} of 50 idle sockets from one address turned away");
        assert_eq!(
            closed, 25,
            "{kind:?}: the per-source cap from half of concurrency"
        );
        echo_from(client, proxy.local_addr(), &secret, 1211)
            .unwrap_or_else(|e| panic!("{kind:?}: a client behind 50 idle sockets: {e}"));
        drop((first, more));
    }
}

/// The last eighth of `concurrency` is kept for addresses that completed a handshake: with
/// the proxy that full of idle sockets from several addresses, a client seen before still
/// relays, a new address is turned away.
#[test]
fn a_reserve_of_concurrency_is_kept_for_known_clients() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 1220);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.concurrency = 16;
    cfg.concurrency_per_ip = Some(0);
    // Longer than `turned_away` waits: the flood must be turned away, not timed out.
    cfg.timeouts.handshake = Duration::from_secs(30);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    let known = Ipv4Addr::new(127, 0, 0, 1);
    // Addresses whose bucket (a keyed hash, keys from the OS) is not the known client's: one
    // that shared it would count as known (1 in 4,096 per address; it failed a run once).
    let mut others = (10..=250u8)
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .filter(|ip| proxy.source_bucket((*ip).into()) != proxy.source_bucket(known.into()));
    let flood: Vec<Ipv4Addr> = others.by_ref().take(4).collect();
    let newcomer = others.next().expect("a fifth address");
    echo_from(known, addr, &secret, 1221).expect("known client, before the flood");
    let st = proxy.stats();
    assert!(wait_until(Duration::from_secs(5), || st
        .closed
        .load(Ordering::SeqCst)
        == 1));
    // 20 idle sockets from 4 other addresses: 14 fit (16 minus the reserve of 2).
    let idle: Vec<TcpStream> = (0..4)
        .flat_map(|i| idle_sockets(flood[i], addr, 5))
        .collect();
    assert_eq!(
        turned_away(&idle, 20 - 14),
        20 - 14,
        "the flood stops at the reserve"
    );
    assert!(
        echo_from(newcomer, addr, &secret, 1222).is_err(),
        "a new address used the reserve"
    );
    echo_from(known, addr, &secret, 1223).expect("known client, during the flood");
    drop(idle);
}

/// With 1,000 users a hello that matches nobody costs a search over every key. A flood of
/// them from one address took as much of the worker as it sent; now an address past its share
/// of handshake work (an eighth of a worker, give or take a 50 ms burst) gets only its hint
/// tried, for as long as it sends more than its share. Its returning client (the hint) still
/// relays, and so does another user from another address. (That a user who is not the hint
/// is then fronted is `proto::handshake` tests' and `io::sources` tests' to show: here the
/// flood's own rate decides when a full search is allowed again.)
#[test]
fn hellos_that_match_nobody_cannot_pin_a_worker_from_one_address() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secrets: Vec<_> = (0..1000)
        .map(|i| secret(SecretKind::FakeTls, 1300 + i))
        .collect();
    // (Fronting to a refused port: each flood connection is closed once its hello failed.)
    let mut cfg = test_config(secrets[0].clone(), 1, &refused);
    cfg.users = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| mtpx::proto::users::UserSpec {
            name: format!("u{i}"),
            secret: secret.clone(),
            limits: Default::default(),
            ad_tag: None,
        })
        .collect();
    cfg.dc_overrides.push((2, vec![dc.addr]));
    cfg.doppelganger.learn = false;
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    let st = proxy.stats();
    let (alice, bob) = (&secrets[999], &secrets[998]);
    let flooder = Ipv4Addr::new(127, 0, 0, 7);
    let other = (8..=250u8)
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .find(|ip| proxy.source_bucket((*ip).into()) != proxy.source_bucket(flooder.into()))
        .expect("an address in another bucket");
    // Alice's address learns her (the hint).
    echo_from(flooder, addr, alice, 1301).expect("alice before the flood");
    assert_eq!(load(&st.search_limited), 0);
    // Hellos for the users' host under a key nobody has, from alice's address, 32 at a time
    // (each next one once the proxy closed the oldest): the worker is never idle.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let flood = sc.spawn(|| {
            let mut rng = XorShift64(1302);
            let stranger = secret(SecretKind::FakeTls, 13_000);
            let mut open = std::collections::VecDeque::new();
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if open.len() >= 32 {
                    let mut s: TcpStream = open.pop_front().expect("32 open");
                    let _ = s.read(&mut [0u8; 1]);
                }
                let Ok(mut s) = connect_from(flooder, addr) else {
                    continue;
                };
                let hello = faketls::build_client_hello(&mut rng, &stranger.key, HOST, unix_now());
                if s.write_all(&hello).is_ok() {
                    sent += 1;
                    open.push_back(s);
                }
            }
            sent
        });
        let limited = wait_until(Duration::from_secs(20), || load(&st.search_limited) > 0);
        let during = || -> Result<(), String> {
            // Over its share: alice (the hint) relays, and bob from elsewhere.
            echo_from(flooder, addr, alice, 1304).map_err(|e| format!("alice: {e}"))?;
            echo_from(other, addr, bob, 1305).map_err(|e| format!("bob elsewhere: {e}"))?;
            // Still limited while the flood goes on.
            let before = load(&st.search_limited);
            if !wait_until(Duration::from_secs(10), || {
                load(&st.search_limited) > before
            }) {
                return Err("no longer limited during the flood".into());
            }
            Ok(())
        };
        let result = if limited {
            during()
        } else {
            Err("never limited".into())
        };
        stop.store(true, Ordering::SeqCst);
        let sent = flood.join().expect("flood thread");
        eprintln!(
            "{sent} hellos; {} handshake steps limited; {:?}",
            load(&st.search_limited),
            mtpx::proto::Reject::ALL
                .iter()
                .map(|r| (r, st.failures(*r)))
                .filter(|x| x.1 > 0)
                .collect::<Vec<_>>()
        );
        result.unwrap_or_else(|e| panic!("{e} ({sent} hellos)"));
    });
}

// ------------------------------------------------------------------------------------------
// Buffers nobody can pin (item 2)

/// Sends a request and times the first byte of the answer (`None`: nothing within `limit`).
fn first_byte(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let mut s = connect(addr).expect("connect");
    let t0 = std::time::Instant::now();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(t0.elapsed()),
        _ => None,
    }
}

/// Six fronted connections that fetch a big page and never read held every buffer fronted
/// connections could take (pool of 8): new probes then got nothing while the site answered
/// at once. Now a probe past the spare half runs on a small buffer: answered as the site.
#[test]
fn fronted_slow_readers_do_not_silence_new_probes() {
    let site = BigPageSite::start(Duration::from_secs(20)).addr;
    let refused = RefusedPort::new();
    let secret = secret(SecretKind::Secure, 1230);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.buffer_count = 8;
    cfg.timeouts.idle = Duration::from_secs(60);
    cfg.domain_fronting.port = site.port();
    let proxy = start(cfg);
    let readers: Vec<TcpStream> = (0..6)
        .map(|i| {
            let mut s = connect(proxy.local_addr()).unwrap_or_else(|e| panic!("reader {i}: {e}"));
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("request");
            s
        })
        .collect();
    // Their paths fill up.
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..3 {
        let direct = first_byte(site, Duration::from_secs(3)).expect("the site answers");
        let via = first_byte(proxy.local_addr(), Duration::from_secs(3));
        eprintln!("probe {i}: site {direct:?}, through mtpx {via:?}");
        let via = via.unwrap_or_else(|| panic!("probe {i}: nothing in 3 s behind 6 slow readers"));
        assert!(
            via < direct + Duration::from_secs(1),
            "probe {i}: {via:?} (site {direct:?})"
        );
    }
    drop(readers);
}

/// Eight clients with the secret that download and never read held every relay buffer of a
/// pool of 8: a new client and an existing one got no echo in 5 s. Now they run on small
/// buffers at once (each echo must come within 2 s, before any download is closed), and
/// stuck downloads are closed once they held their buffers for `STALL` (3 s) while the pool
/// ran short (until a quarter of it is free).
#[test]
fn unread_downloads_do_not_stall_other_clients() {
    let refused = RefusedPort::new();
    let echo = FakeDc::start(DcMode::Echo);
    let sink = FakeDc::start(DcMode::Sink {
        expect_seed: 0,
        reply_seed: 1240,
        reply: 64 << 20,
        after_eof: false,
    });
    let secret = secret(SecretKind::Secure, 1241);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.buffer_count = 8;
    cfg.timeouts.idle = Duration::from_secs(60);
    cfg.dc_overrides.push((2, vec![echo.addr]));
    cfg.dc_overrides.push((3, vec![sink.addr]));
    let proxy = start(cfg);
    let addr = proxy.local_addr();
    let st = proxy.stats();
    let mut existing = TestClient::connect(addr, &secret, &ClientOpts::new(Tag::Padded, 2, 1242))
        .expect("existing client");
    existing.rx.set_read_timeout(Duration::from_secs(2));
    let downloads: Vec<TestClient> = (0..8)
        .map(|i| {
            TestClient::connect(addr, &secret, &ClientOpts::new(Tag::Padded, 3, 1250 + i))
                .unwrap_or_else(|e| panic!("download {i}: {e}"))
        })
        .collect();
    assert!(sink.wait_count(8, Duration::from_secs(5)));
    // Until their paths are full: the DC's writes stop for 300 ms (the downloads' stall
    // clocks started before; they are closed 3 s after, after the echoes' 2 s).
    let sent = || {
        (0..8)
            .map(|i| sink.conn(i).sent.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    let (mut last, mut since) = (u64::MAX, Instant::now());
    assert!(wait_until(Duration::from_secs(20), || {
        let now = sent();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        since.elapsed() >= Duration::from_millis(300)
    }));
    let closed_before = st.closed.load(Ordering::SeqCst);
    assert_eq!(closed_before, 0, "a download closed early");
    let data = Pattern::new(1243).take(50_000);
    let t0 = Instant::now();
    let mut fresh = TestClient::connect(addr, &secret, &ClientOpts::new(Tag::Padded, 2, 1244))
        .expect("new client");
    fresh.rx.set_read_timeout(Duration::from_secs(2));
    assert!(fresh.echo_round_trip(&data).expect("new client's echo") == data);
    assert!(
        existing
            .echo_round_trip(&data)
            .expect("existing client's echo")
            == data
    );
    eprintln!(
        "both echoed in {:?} behind 8 unread downloads",
        t0.elapsed()
    );
    // Downloads stuck on relay buffers are closed while the pool is short: until a quarter
    // of it is free again (2 of 8).
    assert!(
        wait_until(Duration::from_secs(8), || st.closed.load(Ordering::SeqCst)
            >= 2),
        "closed {}",
        st.closed.load(Ordering::SeqCst)
    );
    drop(downloads);
}
