//! Operator features end to end: IP blocklist / allowlist (files, http:// URLs, live reloads)
//! and the metrics exporters (a Prometheus scrape over a real socket, StatsD datagrams on a
//! test UDP socket), against a real proxy started in-process on loopback.
//!
//! Only 127.0.0.1 is used. A client cannot pick another loopback source address with std
//! alone (no bind-before-connect without `unsafe`), so per-address decisions for addresses
//! other than 127.0.0.1 go through the PROXY protocol listener, which announces them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mtpx::config::Config;
use mtpx::io::Proxy;
use mtpx::proto::obfs2::Tag;
use mtpx::proto::secret::{Secret, SecretKind};

/// How long a list change may take to reach the workers (mtime checks run every 2 s).
const LIST_SETTLE: Duration = Duration::from_secs(15);

fn start(config: Config) -> Proxy {
    mtpx::io::start(config).expect("start proxy")
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mtpx-operators-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }

    /// Writes `name` atomically (write + rename, as an operator's cron job should).
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write list");
        std::fs::rename(&tmp, &p).expect("rename list");
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A proxy config for `secret` with a fake DC for DC 2 and nothing reachable elsewhere.
fn config(secret: &Secret, refused: &RefusedPort, dc: &FakeDc) -> Config {
    let mut c = test_config(secret.clone(), 2, refused);
    c.dc_overrides.push((2, vec![dc.addr]));
    c
}

fn opts(seed: u64) -> ClientOpts {
    ClientOpts::new(Tag::Padded, 2, seed)
}

/// Connects and reports whether the proxy closed the connection at once (within 3 s) without
/// sending anything, as it does for a listed address; an admitted client is left waiting for
/// its handshake instead.
fn closed_at_once(proxy: SocketAddr, preamble: &[u8]) -> bool {
    let mut s = connect(proxy).expect("connect");
    if !preamble.is_empty() {
        s.write_all(preamble).expect("write preamble");
    }
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("a refused client must get nothing, got {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

/// One echo exchange of `len` bytes on a fresh connection, then a clean close.
fn echo(proxy: SocketAddr, secret: &Secret, seed: u64, len: usize) {
    let mut c = TestClient::connect(proxy, secret, &opts(seed)).expect("handshake");
    let data = Pattern::new(seed).take(len);
    assert!(
        c.echo_round_trip(&data).expect("echo") == data,
        "echo differs"
    );
    c.shutdown_write().expect("shutdown");
    c.rx.expect_eof().expect("eof");
}

fn metric(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// Turns the Prometheus endpoint on, on a port the kernel picks when it binds (no race with
/// other tests for a "free" port); read it back with `Proxy::metrics_addr`.
fn prometheus_on(c: &mut Config) {
    c.prometheus.enabled = true;
    c.prometheus.bind_to = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.prometheus.http_path = "/metrics".into();
}

/// A tiny HTTP server serving `bodies` in turn (the last one again and again); counts requests.
struct ListServer {
    url: String,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl ListServer {
    fn start(bodies: Vec<&'static str>) -> ListServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind list server");
        let url = format!(
            "http://{}/lists/block.netset",
            l.local_addr().expect("addr")
        );
        let requests: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                set_timeouts(&s, Duration::from_secs(5));
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let n = {
                    let mut r = reqs.lock().unwrap();
                    r.push((Instant::now(), String::from_utf8_lossy(&req).into_owned()));
                    r.len()
                };
                let body = bodies[(n - 1).min(bodies.len() - 1)];
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ListServer { url, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

// ------------------------------------------------------------------------------------------
// Lists

#[test]
fn blocklisted_client_is_closed_at_once_and_counted() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let dir = TempDir::new("block");
    let secret = secret(SecretKind::Secure, 1);
    let mut c = config(&secret, &refused, &dc);
    c.blocklist.enabled = true;
    c.blocklist.urls = vec![dir.write("block.netset", "# test\n192.0.2.0/24\n127.0.0.1/32\n")];
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    // The list is in force from the first accept on (files load before the proxy starts).
    for _ in 0..3 {
        assert!(
            closed_at_once(proxy.local_addr(), b""),
            "blocked client kept open"
        );
    }
    let stats = proxy.stats();
    assert_eq!(
        stats.accepted.load(Ordering::SeqCst),
        0,
        "refused before accept counting"
    );
    assert_eq!(dc.count(), 0);
    let (status, body) = scrape(metrics, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        metric(&body, "mtg_ip_blocklisted{ip_list=\"blocklist\"}"),
        3.0
    );
    assert_eq!(metric(&body, "mtg_iplist_size{ip_list=\"blocklist\"}"), 2.0);
    assert_eq!(
        sample(&body, "mtg_iplist_size{ip_list=\"allowlist\"}"),
        None
    );
}

#[test]
fn allowlist_without_the_client_closes_it() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let dir = TempDir::new("allow");
    let secret = secret(SecretKind::Secure, 2);
    let mut c = config(&secret, &refused, &dc);
    c.allowlist.enabled = true;
    c.allowlist.urls = vec![dir.write("allow.netset", "127.0.0.2\n")];
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    assert!(
        closed_at_once(proxy.local_addr(), b""),
        "127.0.0.1 is not on the allowlist"
    );
    assert_eq!(proxy.stats().accepted.load(Ordering::SeqCst), 0);
    let (_, body) = scrape(metrics, "/metrics");
    assert_eq!(
        metric(&body, "mtg_ip_blocklisted{ip_list=\"allowlist\"}"),
        1.0
    );
    // The blocklist is disabled: no series for it.
    assert_eq!(
        sample(&body, "mtg_ip_blocklisted{ip_list=\"blocklist\"}"),
        None
    );
    assert_eq!(metric(&body, "mtg_iplist_size{ip_list=\"allowlist\"}"), 1.0);
}

#[test]
fn lists_judge_the_address_a_proxy_protocol_header_announces() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let dir = TempDir::new("pp");
    let secret = secret(SecretKind::Secure, 3);
    let mut c = config(&secret, &refused, &dc);
    c.proxy_protocol_listener = true;
    c.allowlist.enabled = true;
    c.allowlist.urls = vec![dir.write("allow", "127.0.0.0/24\n")];
    c.blocklist.enabled = true;
    c.blocklist.urls = vec![dir.write("block", "127.0.0.2/32\n")];
    let proxy = start(c);
    let addr = proxy.local_addr();
    // 127.0.0.3 is allowed and not blocked: the proxy waits for its handshake.
    assert!(!closed_at_once(
        addr,
        b"PROXY TCP4 127.0.0.3 127.0.0.1 40000 443\r\n"
    ));
    // 127.0.0.2 is blocked, 10.0.0.1 is not on the allowlist.
    assert!(closed_at_once(
        addr,
        b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 443\r\n"
    ));
    assert!(closed_at_once(
        addr,
        b"PROXY TCP4 10.0.0.1 127.0.0.1 40002 443\r\n"
    ));
    // An admitted announced address relays normally.
    let mut s = connect(addr).expect("connect");
    s.write_all(b"PROXY TCP4 127.0.0.3 127.0.0.1 40003 443\r\n")
        .expect("header");
    let mut client = TestClient::handshake(s, &secret, &opts(30)).expect("handshake");
    let data = Pattern::new(30).take(5000);
    assert!(client.echo_round_trip(&data).expect("echo") == data);
}

#[test]
fn list_file_rewrite_takes_effect_without_dropping_relays() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let dir = TempDir::new("rewrite");
    let secret = secret(SecretKind::Secure, 4);
    let mut c = config(&secret, &refused, &dc);
    c.blocklist.enabled = true;
    let list = dir.write("block.netset", "10.0.0.0/8\n");
    c.blocklist.urls = vec![list];
    let proxy = start(c);
    let addr = proxy.local_addr();
    let mut relay = TestClient::connect(addr, &secret, &opts(40)).expect("handshake");
    let first = Pattern::new(41).take(3000);
    assert!(relay.echo_round_trip(&first).expect("echo") == first);

    dir.write("block.netset", "10.0.0.0/8\n127.0.0.1/32 # now blocked\n");
    assert!(
        wait_until(LIST_SETTLE, || closed_at_once(addr, b"")),
        "rewritten blocklist never took effect"
    );
    // The relay established before the change goes on.
    let second = Pattern::new(42).take(3000);
    assert!(relay.echo_round_trip(&second).expect("echo after reload") == second);

    dir.write("block.netset", "10.0.0.0/8\n");
    assert!(
        wait_until(LIST_SETTLE, || !closed_at_once(addr, b"")),
        "unblocking never took effect"
    );
    echo(addr, &secret, 43, 1000);
    relay.shutdown_write().expect("shutdown");
    relay.rx.expect_eof().expect("eof");
}

#[test]
fn http_list_is_fetched_in_the_background_and_every_update_each() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let server = ListServer::start(vec!["198.51.100.0/24\n", "198.51.100.0/24\n127.0.0.1\n"]);
    let secret = secret(SecretKind::Secure, 5);
    let mut c = config(&secret, &refused, &dc);
    c.blocklist.enabled = true;
    c.blocklist.urls = vec![server.url.clone()];
    c.blocklist.update_each = Duration::from_secs(3);
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    let size = || {
        sample(
            &scrape(metrics, "/metrics").1,
            "mtg_iplist_size{ip_list=\"blocklist\"}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || size() == Some(1.0)),
        "downloaded list never loaded (size {:?})",
        size()
    );
    assert!(server.count() >= 1);
    assert!(
        server.requests.lock().unwrap()[0]
            .1
            .starts_with("GET /lists/block.netset HTTP/1.1\r\n"),
        "{:?}",
        server.requests.lock().unwrap()
    );
    // The first version does not list us; the second (next update) does.
    echo(proxy.local_addr(), &secret, 50, 100);
    assert!(
        wait_until(Duration::from_secs(15), || size() == Some(2.0)),
        "the list was not downloaded again"
    );
    let gap = {
        let r = server.requests.lock().unwrap();
        r[1].0.duration_since(r[0].0)
    };
    assert!(
        // (3 s counted from the start of the first download, which may be slow to arrive.)
        gap >= Duration::from_millis(2000),
        "downloaded again after {gap:?}, before update-each"
    );
    assert!(server.count() >= 2);
    assert!(closed_at_once(proxy.local_addr(), b""));
}

// ------------------------------------------------------------------------------------------
// Metrics

/// Bytes of a relay still open show in a scrape (counted by the worker's 250 ms sweep, not
/// only at close), with the open relay in `telegram_connections{dc}`.
#[test]
fn prometheus_counts_a_relay_while_it_is_open() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 6);
    let mut c = config(&secret, &refused, &dc);
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    let mut client = TestClient::connect(proxy.local_addr(), &secret, &opts(7)).expect("handshake");
    let data = Pattern::new(7).take(30_000);
    assert!(client.echo_round_trip(&data).expect("echo") == data);
    let series = "mtg_telegram_traffic{dc=\"2\",direction=\"to_client\"}";
    let mut body = String::new();
    let seen = wait_until(Duration::from_secs(5), || {
        body = scrape(metrics, "/metrics").1;
        sample(&body, series) == Some(30_000.0)
    });
    assert!(seen, "open relay's bytes not counted:\n{body}");
    assert_eq!(metric(&body, "mtg_telegram_connections{dc=\"2\"}"), 1.0);
    assert_eq!(metric(&body, "mtg_client_connections"), 1.0);
    client.shutdown_write().expect("shutdown");
    client.rx.expect_eof().expect("eof");
    let closed = wait_until(Duration::from_secs(5), || {
        body = scrape(metrics, "/metrics").1;
        sample(&body, "mtg_telegram_connections{dc=\"2\"}") == Some(0.0)
    });
    assert!(closed, "the relay's close was not counted:\n{body}");
    // Counted once, not again at close.
    assert_eq!(metric(&body, series), 30_000.0);
}

#[test]
fn prometheus_scrape_matches_the_traffic() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let front = FakeFront::start();
    let secret = secret(SecretKind::Secure, 6);
    let mut c = config(&secret, &refused, &dc);
    c.domain_fronting.port = front.addr.port();
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    let addr = proxy.local_addr();
    let sizes = [1000usize, 20_000, 70_000];
    for (i, &len) in sizes.iter().enumerate() {
        echo(addr, &secret, 60 + i as u64, len);
    }
    // One probe that is not a proxy client: it is fronted.
    let mut probe = connect(addr).expect("connect");
    let probe_bytes = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    probe.write_all(probe_bytes).expect("probe");
    let closed = read_until_closed(&mut probe, Duration::from_secs(5)).expect("front closes");
    assert!(
        closed.bytes == FRONT_REPLY,
        "the probe must get the front's reply"
    );
    // Half-closed by the front; the probe's own close ends the connection.
    drop(probe);
    let stats = proxy.stats();
    assert!(
        wait_until(Duration::from_secs(5), || stats
            .closed
            .load(Ordering::SeqCst)
            == 4),
        "connections did not all close: closed {} accepted {}",
        stats.closed.load(Ordering::SeqCst),
        stats.accepted.load(Ordering::SeqCst)
    );
    let (status, body) = scrape(metrics, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let total: usize = sizes.iter().sum();
    assert_eq!(metric(&body, "mtg_accepted_connections"), 4.0);
    assert_eq!(metric(&body, "mtg_handshakes"), 3.0);
    assert_eq!(metric(&body, "mtg_domain_fronting"), 1.0);
    assert_eq!(metric(&body, "mtg_client_connections"), 0.0);
    assert_eq!(metric(&body, "mtg_fronted_connections"), 0.0);
    assert_eq!(
        metric(
            &body,
            "mtg_telegram_traffic{dc=\"2\",direction=\"from_client\"}"
        ),
        total as f64
    );
    assert_eq!(
        metric(
            &body,
            "mtg_telegram_traffic{dc=\"2\",direction=\"to_client\"}"
        ),
        total as f64
    );
    assert_eq!(
        metric(
            &body,
            "mtg_domain_fronting_traffic{direction=\"to_client\"}"
        ),
        FRONT_REPLY.len() as f64
    );
    // The probe's request, replayed to the site, counts as its traffic.
    assert_eq!(
        metric(
            &body,
            "mtg_domain_fronting_traffic{direction=\"from_client\"}"
        ),
        probe_bytes.len() as f64
    );
    assert_eq!(metric(&body, "mtg_connections{secret_kind=\"dd\"}"), 3.0);
    assert_eq!(metric(&body, "mtg_telegram_connections{dc=\"2\"}"), 0.0);
    assert_eq!(metric(&body, "mtg_concurrency_limited"), 0.0);
    assert_eq!(metric(&body, "mtg_replay_attacks"), 0.0);
    assert_eq!(metric(&body, "mtg_dc_connect_failures"), 0.0);
    assert!(metric(&body, "mtg_buffer_pool_capacity") > 0.0);
    assert_eq!(metric(&body, "mtg_buffer_pool_in_use"), 0.0);
    let failures: f64 = body
        .lines()
        .filter(|l| l.starts_with("mtg_handshake_failures{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 1.0, "one failed handshake (the probe):\n{body}");
    // Same numbers as the proxy's own counters.
    assert_eq!(
        metric(&body, "mtg_accepted_connections") as u64,
        stats.accepted.load(Ordering::SeqCst)
    );
    // Other paths and methods.
    assert!(scrape(metrics, "/").0.starts_with("HTTP/1.1 404"));
    let mut s = connect(metrics).expect("connect");
    s.write_all(b"DELETE /metrics HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[test]
fn replays_are_counted() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 7);
    let mut c = config(&secret, &refused, &dc);
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    echo(proxy.local_addr(), &secret, 70, 100);
    // The same client randomness again: the same frame, a replay.
    let mut again = connect(proxy.local_addr()).expect("connect");
    let frame = {
        let mut rng = mtpx::proto::XorShift64(70);
        mtpx::proto::obfs2::client_frame(&mut rng, &secret.key, Tag::Padded, 2).0
    };
    again.write_all(&frame).expect("write");
    let _ = read_until_closed(&mut again, Duration::from_secs(5));
    let (_, body) = scrape(metrics, "/metrics");
    assert_eq!(metric(&body, "mtg_replay_attacks"), 1.0, "{body}");
    assert_eq!(
        metric(&body, "mtg_handshake_failures{reason=\"replay\"}"),
        1.0
    );
}

/// JA4 fingerprints are counted per class: valid clients (mtpx's own Telegram-like hello) and
/// fronted connections (TDLib 1.8.69's captured hello under another key, twice), bounded to
/// `[stats] ja4-top` rows plus "other".
#[test]
fn ja4_fingerprints_are_counted_for_clients_and_fronted_connections() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::FakeTls, 8);
    let mut c = config(&secret, &refused, &dc);
    c.ja4_top = 1;
    prometheus_on(&mut c);
    let proxy = start(c);
    let metrics = proxy.metrics_addr().expect("the metrics endpoint runs");
    echo(proxy.local_addr(), &secret, 80, 100);
    let fp = |rec: &[u8]| {
        let f = mtpx::proto::ja4::fingerprint(&rec[5..]).expect("a fingerprint");
        String::from_utf8(f.to_vec()).unwrap()
    };
    let ours = mtpx::proto::faketls::build_client_hello(
        &mut mtpx::proto::XorShift64(1),
        &secret.key,
        &secret.host,
        unix_now(),
    );
    let tdlib = include_bytes!("data/tls/tdlib-1.8.69-client-hello.bin");
    let mut junk = ours.clone();
    junk[5 + 4 + 2 + 32 + 1 + 32 + 2 + 2 + 1] ^= 0x55; // another cipher suite: another JA4
    // One table slot: the second fingerprint takes the first one's place (Space-Saving).
    for hello in [&junk[..], &tdlib[..], &tdlib[..]] {
        let mut s = connect(proxy.local_addr()).expect("connect");
        s.write_all(hello).expect("write");
        let _ = read_until_closed(&mut s, Duration::from_secs(5));
    }
    let (_, body) = scrape(metrics, "/metrics");
    let series =
        |class: &str, ja4: &str| format!("mtg_client_hello_ja4{{class=\"{class}\",ja4=\"{ja4}\"}}");
    assert_eq!(metric(&body, &series("client", &fp(&ours))), 1.0, "{body}");
    assert_eq!(metric(&body, &series("client", "other")), 0.0, "{body}");
    assert_eq!(
        metric(
            &body,
            &series("fronted", "t13d1516h2_8daaf6152771_806a8c22fdea")
        ),
        2.0,
        "{body}"
    );
    assert_eq!(metric(&body, &series("fronted", "other")), 1.0, "{body}");
    assert_eq!(body.matches("mtg_client_hello_ja4{").count(), 4, "{body}");
}

/// Parses a StatsD line `name:value|type[|#tags]` into (name, value, type, tags).
fn statsd_line(l: &str) -> (&str, f64, &str, &str) {
    let (name, rest) = l
        .split_once(':')
        .unwrap_or_else(|| panic!("bad line {l:?}"));
    let mut parts = rest.split('|');
    let value = parts.next().and_then(|v| v.parse().ok());
    let kind = parts.next().unwrap_or("");
    let tags = parts.next().and_then(|t| t.strip_prefix('#')).unwrap_or("");
    let value = value.unwrap_or_else(|| panic!("bad value in {l:?}"));
    assert!(kind == "c" || kind == "g", "bad type in {l:?}");
    (name, value, kind, tags)
}

#[test]
fn statsd_datagrams_carry_the_counters() {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 8);
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind statsd sink");
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut c = config(&secret, &refused, &dc);
    c.statsd.enabled = true;
    c.statsd.address = Some(sink.local_addr().expect("addr"));
    c.statsd.metric_prefix = "mtg".into();
    let proxy = start(c);
    echo(proxy.local_addr(), &secret, 80, 4000);
    echo(proxy.local_addr(), &secret, 81, 6000);
    let stats = proxy.stats();
    assert!(wait_until(Duration::from_secs(5), || stats
        .closed
        .load(Ordering::SeqCst)
        == 2));
    // Stopping flushes what was not sent yet.
    proxy.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sums = std::collections::HashMap::<String, f64>::new();
    let mut buf = [0u8; 4096];
    let mut datagrams = 0;
    while Instant::now() < deadline {
        let n = match sink.recv(&mut buf) {
            Ok(n) => n,
            Err(_) if datagrams > 0 => break,
            Err(_) => continue,
        };
        datagrams += 1;
        assert!(n <= 1432, "datagram of {n} bytes");
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        for l in text.lines() {
            let (name, value, kind, tags) = statsd_line(l);
            assert!(name.starts_with("mtg."), "{l}");
            let key = format!("{name}|{kind}|{tags}");
            if kind == "c" {
                *sums.entry(key).or_default() += value;
            } else {
                sums.insert(key, value);
            }
        }
    }
    assert!(datagrams > 0, "no StatsD datagram arrived");
    let get = |k: &str| sums.get(k).copied().unwrap_or(0.0);
    assert_eq!(get("mtg.accepted_connections|c|"), 2.0, "{sums:?}");
    assert_eq!(get("mtg.handshakes|c|"), 2.0, "{sums:?}");
    assert_eq!(
        get("mtg.telegram_traffic|c|dc:2,direction:from_client"),
        10_000.0,
        "{sums:?}"
    );
    assert_eq!(
        get("mtg.telegram_traffic|c|dc:2,direction:to_client"),
        10_000.0,
        "{sums:?}"
    );
    assert_eq!(get("mtg.client_connections|g|"), 0.0, "{sums:?}");
    assert!(sums.contains_key("mtg.client_connections|g|"), "{sums:?}");
}
