//! mtg v2.2.8's example config (`tests/data/config/mtg-example.toml`) run by the real binary,
//! with every section in effect. Only addresses change, by text substitution, so that nothing
//! leaves loopback:
//!
//! * `bind-to` and `[stats.prometheus] bind-to`: free ports on 127.0.0.1;
//! * `dns = "https://1.1.1.1"` -> `https://127.0.0.1:<port>`, a local DNS-over-HTTPS server
//!   (tests/data/dns/tls_server.py, Python's ssl) that answers the secret's host
//!   (storage.googleapis.com) with 127.0.0.1;
//! * the FireHOL blocklist URL -> `http://` a tiny local server holding `127.0.0.2/32`;
//! * `[domain-fronting] port` (commented out in the example: 443 needs root) -> a fake site;
//! * an added `[network.dc-overrides]` (mtpx's own key): DC 2 is a fake DC, the other DCs a
//!   refused port, instead of Telegram's real addresses.
//!
//! Everything has a deadline, and the child process is killed if the test fails.
//!
//! What the example sets that mtpx does not act on: `[defense.anti-replay] error-rate` (mtpx's
//! replay filter is exact, so there is no false-positive rate to tune; the value is only
//! range-checked). The sections the example leaves disabled (allowlist, StatsD) are covered by
//! `tests/operators.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls;
use mtpx::proto::obfs2::Tag;

const EXAMPLE: &str = include_str!("data/config/mtg-example.toml");
const LIST: &str = "# test copy of firehol_level1\n127.0.0.2/32\n";

/// The mtpx child, killed and reaped on drop (a failed assertion must not leave it running).
struct Mtpx(Child);

impl Drop for Mtpx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

/// `text` with `from` replaced by `to`; `from` must occur exactly once.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} is not in the example exactly once"
    );
    text.replacen(from, to, 1)
}

/// Serves [`LIST`] over HTTP/1.1 to every request; records the request lines.
fn list_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind list server");
    let addr = l.local_addr().expect("addr");
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let reqs = requests.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            set_timeouts(&s, Duration::from_secs(5));
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let first = String::from_utf8_lossy(&req);
            reqs.lock()
                .unwrap()
                .push(first.lines().next().unwrap_or("").to_string());
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{LIST}",
                LIST.len()
            );
        }
    });
    (addr, requests)
}

/// Whether the proxy closes a connection from `src` at once without a byte, as it does for a
/// listed address (an admitted client is waited for until its handshake times out).
fn closed_at_once(src: Ipv4Addr, proxy: SocketAddr) -> bool {
    let mut s = connect_from(src, proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("a blocked client must get nothing, got {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// Sends `hello` on a fresh connection; whether the client got the fake site's answer.
fn fronted(proxy: SocketAddr, hello: &[u8]) -> bool {
    let mut s = connect(proxy).expect("connect");
    s.write_all(hello).expect("hello");
    let closed = read_until_closed(&mut s, Duration::from_secs(5)).expect("closed");
    closed.bytes == FRONT_REPLY
}

#[test]
fn mtg_example_config_runs_with_every_section_in_effect() {
    let (example, _) = mtpx::config::parse(EXAMPLE).expect("the example parses");
    let secret = example.secret;
    let host = secret.host.clone();
    assert_eq!(host, "storage.googleapis.com");

    let doh = tls_dns_server(&[(&host, "127.0.0.1")]);
    // Questions asked, as "<name> <type>".
    let queries = || -> Vec<String> {
        doh.queries()
            .iter()
            .filter_map(|l| l.strip_prefix("doh ").map(str::to_string))
            .collect()
    };
    let front = FakeFront::start();
    let dc = FakeDc::start(DcMode::Echo);
    let refused = RefusedPort::new();
    let (list_addr, list_requests) = list_server();
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let mut text = EXAMPLE.to_string();
    for (from, to) in [
        (
            "bind-to = \"0.0.0.0:3128\"".to_string(),
            format!("bind-to = \"{proxy}\""),
        ),
        (
            "dns = \"https://1.1.1.1\"".into(),
            format!("dns = \"https://{}\"", doh.doh),
        ),
        (
            "\"https://iplists.firehol.org/files/firehol_level1.netset\"".into(),
            format!("\"http://{list_addr}/firehol_level1.netset\""),
        ),
        (
            "bind-to = \"127.0.0.1:3129\"".into(),
            format!("bind-to = \"{metrics}\""),
        ),
        (
            "# port = 443".into(),
            format!("port = {}", front.addr.port()),
        ),
    ] {
        text = substitute(&text, &from, &to);
    }
    text.push_str("\n[network.dc-overrides]\n");
    for id in [1, 3, 4, 5, 203] {
        text.push_str(&format!("{id} = \"{}\"\n", refused.addr));
    }
    text.push_str(&format!("2 = \"{}\"\n", dc.addr));

    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "mtpx-mtg-example-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let config = dir.0.join("config.toml");
    std::fs::write(&config, &text).expect("write config");
    let log_path = dir.0.join("mtpx.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_mtpx"))
        .arg("run")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().expect("clone log file")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start mtpx");
    let mut mtpx = Mtpx(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // 1. It starts, without a not-implemented or unknown-key warning.
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .contains("event=proxy-started")),
        "mtpx did not start:\n{}",
        log()
    );
    let warnings: Vec<String> = log()
        .lines()
        .filter(|l| l.contains("level=warn"))
        .map(String::from)
        .collect();
    eprintln!("warnings at start ({}):", warnings.len());
    for w in &warnings {
        eprintln!("  {w}");
    }
    let config_warnings: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("event=config-warning"))
        .collect();
    assert!(
        config_warnings.is_empty(),
        "config warnings: {config_warnings:#?}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("not implemented") || w.contains("unknown key")),
        "{warnings:#?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(metrics)
            .is_ok()),
        "the Prometheus endpoint {metrics} never came up"
    );

    // 2. The blocklist is downloaded over http:// from the local copy.
    let blocklist_size = || {
        sample(
            &scrape(metrics, "/").1,
            "mtg_iplist_size{ip_list=\"blocklist\"}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || blocklist_size() == Some(1.0)),
        "the blocklist never loaded (size {:?}):\n{}",
        blocklist_size(),
        log()
    );
    assert_eq!(
        list_requests.lock().unwrap()[0],
        "GET /firehol_level1.netset HTTP/1.1"
    );

    // 3. 127.0.0.2 is on the list: closed at once, never accepted.
    assert!(
        closed_at_once(Ipv4Addr::new(127, 0, 0, 2), proxy),
        "a client from 127.0.0.2 was not blocked"
    );
    let mut accepted = 0u64;

    // 4. A FakeTLS client with the example's secret, from 127.0.0.1, relays through the fake
    // DC both ways.
    let stream = connect_from(Ipv4Addr::LOCALHOST, proxy).expect("connect");
    let mut client = TestClient::handshake(stream, &secret, &ClientOpts::new(Tag::Padded, 2, 1))
        .expect("FakeTLS handshake with the example's secret");
    accepted += 1;
    let data = Pattern::new(1).take(100_000);
    assert!(
        client.echo_round_trip(&data).expect("echo") == data,
        "echoed bytes differ"
    );
    client.shutdown_write().expect("shutdown");
    client.rx.expect_eof().expect("eof");
    assert_eq!(dc.count(), 1, "the fake DC saw the relay");

    // 5. A wrong secret is fronted to the site whose address came from the DNS stub. Until the
    // proxy has the answer, failed handshakes are closed rather than fronted.
    assert!(
        wait_until(Duration::from_secs(10), || queries()
            .contains(&format!("{host} A"))),
        "the secret's host was never asked: {:?}",
        queries()
    );
    let wrong_key = [0xA5u8; 16];
    let mut seed = 100;
    let (mut hello, mut fronted_count) = (Vec::new(), 0u64);
    let ok = wait_until(Duration::from_secs(10), || {
        seed += 1;
        hello = faketls::build_client_hello(&mut XorShift64(seed), &wrong_key, &host, unix_now());
        accepted += 1;
        fronted(proxy, &hello)
    });
    assert!(ok, "a wrong-secret client was never fronted:\n{}", log());
    fronted_count += 1;
    let received = |bytes: &[u8]| {
        wait_until(Duration::from_secs(2), || {
            (0..front.count()).any(|i| front.received(i) == bytes)
        })
    };
    assert!(received(&hello), "the fake site did not get the hello");

    // 6. A replayed ClientHello (valid key) is fronted too.
    let hello = faketls::build_client_hello(&mut XorShift64(7), &secret.key, &host, unix_now());
    let mut first = connect(proxy).expect("connect");
    first.write_all(&hello).expect("hello");
    let mut head = [0u8; 5];
    first
        .read_exact(&mut head)
        .expect("the first hello is answered");
    assert_eq!(&head[..3], &[0x16, 0x03, 0x03], "a ServerHello record");
    accepted += 1;
    assert!(fronted(proxy, &hello), "the replayed hello was not fronted");
    accepted += 1;
    fronted_count += 1;
    assert!(received(&hello), "the fake site did not get the replay");
    drop(first);

    // 7. Prometheus at the example's path, with mtg's prefix, counts all of it.
    let (status, body) = scrape(metrics, "/");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let metric =
        |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    for l in body.lines().filter(|l| !l.is_empty()) {
        let name = l
            .trim_start_matches("# HELP ")
            .trim_start_matches("# TYPE ");
        assert!(name.starts_with("mtg_"), "not mtg-prefixed: {l}");
    }
    assert_eq!(metric("mtg_accepted_connections"), accepted as f64);
    assert_eq!(metric("mtg_ip_blocklisted{ip_list=\"blocklist\"}"), 1.0);
    assert_eq!(metric("mtg_domain_fronting"), fronted_count as f64);
    assert_eq!(metric("mtg_replay_attacks"), 1.0);
    assert!(metric("mtg_handshakes") >= 1.0);
    for dir in ["from_client", "to_client"] {
        assert_eq!(
            metric(&format!(
                "mtg_telegram_traffic{{dc=\"2\",direction=\"{dir}\"}}"
            )),
            data.len() as f64
        );
    }
    eprintln!("metrics:\n{body}");

    // 8. debug = true: debug events are logged.
    let text = log();
    assert!(
        text.contains(&format!("level=debug event=fronting-resolved host={host}")),
        "no debug line for the DNS answer:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("level=debug event=conn-closed") && l.contains("dc=2")),
        "no debug line for the closed relay:\n{text}"
    );
    // Every lookup went to the stub (and was about the secret's host).
    assert!(
        queries().iter().all(|q| q.starts_with(&format!("{host} "))),
        "{:?}",
        queries()
    );

    // SIGTERM: a clean stop.
    // SAFETY: signalling our own child, whose pid is valid until it is reaped below.
    assert_eq!(unsafe { libc::kill(mtpx.0.id() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = mtpx.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "mtpx did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = log();
    assert!(status.success(), "exit status {status:?}:\n{text}");
    assert!(text.contains("event=proxy-stopped"), "{text}");
    assert!(!text.contains("panic"), "{text}");
}
