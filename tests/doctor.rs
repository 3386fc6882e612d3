//! `mtpx doctor` against fakes on loopback: Telegram DCs (TCP listeners and a refused port), an
//! NTP server (UDP) answering with a chosen clock offset, SOCKS5 proxies (one accepting CONNECT,
//! one refusing it) and a fronting "site" answering the scout's ClientHello with a canned
//! TLS 1.3 first flight (from tests/data/tls). Every DC id is overridden and every NTP server
//! given with --ntp, so nothing leaves 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::RefusedPort;
use mtpx::formats::sntp::NtpTimestamp;
use mtpx::proto::secret::{Secret, SecretKind};
use mtpx::proto::tlsprofile::HelloKind;

const DC_IDS: [i16; 6] = [1, 2, 3, 4, 5, 203];
const LIMIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Fakes

/// A TCP listener that accepts and counts connections.
struct FakeDc {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl FakeDc {
    fn start() -> FakeDc {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if s.is_err() {
                    break;
                }
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        FakeDc { addr, accepted }
    }
}

/// An NTP server whose clock is `offset` seconds ahead of ours (negative: behind).
struct FakeNtp {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl FakeNtp {
    fn start(offset: f64) -> FakeNtp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let n = requests.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = sock.recv_from(&mut buf) {
                if len < 48 || buf[0] & 7 != 3 {
                    continue;
                }
                n.fetch_add(1, Ordering::SeqCst);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
                    + offset;
                let ts = NtpTimestamp::from_unix(now as u64, (now.fract() * 1e9) as u32);
                let mut r = [0u8; 48];
                r[0] = 0x24; // LI 0, VN 4, mode 4 (server)
                r[1] = 2; // stratum
                r[12..16].copy_from_slice(b"TEST");
                r[16..24].copy_from_slice(&ts.0.to_be_bytes()); // reference
                r[24..32].copy_from_slice(&buf[40..48]); // originate = client's transmit
                r[32..40].copy_from_slice(&ts.0.to_be_bytes()); // receive
                r[40..48].copy_from_slice(&ts.0.to_be_bytes()); // transmit
                let _ = sock.send_to(&r, from);
            }
        });
        FakeNtp { addr, requests }
    }
}

/// A UDP port nobody listens on (the kernel answers with port unreachable).
fn dead_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// A SOCKS5 server (no authentication) that answers every CONNECT with `reply` (0 = success)
/// and records the targets asked for.
struct FakeSocks {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
}

impl FakeSocks {
    fn start(reply: u8) -> FakeSocks {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let t = targets.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let t = t.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut greet = [0u8; 2];
                    s.read_exact(&mut greet).unwrap();
                    assert_eq!(greet[0], 5);
                    let mut methods = vec![0u8; usize::from(greet[1])];
                    s.read_exact(&mut methods).unwrap();
                    assert!(methods.contains(&0));
                    s.write_all(&[5, 0]).unwrap();
                    let mut head = [0u8; 4];
                    s.read_exact(&mut head).unwrap();
                    assert_eq!(&head[..3], &[5, 1, 0], "a CONNECT request");
                    let target = match head[3] {
                        1 => {
                            let mut a = [0u8; 6];
                            s.read_exact(&mut a).unwrap();
                            SocketAddr::from((
                                [a[0], a[1], a[2], a[3]],
                                u16::from_be_bytes([a[4], a[5]]),
                            ))
                        }
                        4 => {
                            let mut a = [0u8; 18];
                            s.read_exact(&mut a).unwrap();
                            let ip: [u8; 16] = a[..16].try_into().unwrap();
                            SocketAddr::from((ip, u16::from_be_bytes([a[16], a[17]])))
                        }
                        other => panic!("address type {other}"),
                    };
                    t.lock().unwrap().push(target);
                    s.write_all(&[5, reply, 0, 1, 127, 0, 0, 1, 0x12, 0x34])
                        .unwrap();
                    let _ = s.read(&mut [0u8; 16]);
                });
            }
        });
        FakeSocks { addr, targets }
    }
}

/// A "site" that reads one TLS ClientHello record per connection, answers with `flight` and
/// closes; records every ClientHello.
struct FakeSite {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeSite {
    fn start(flight: Vec<u8>) -> FakeSite {
        FakeSite::start_kinds(flight.clone(), flight)
    }

    /// Answers a hello with an X25519MLKEM768 share with `pq`, any other with `classic`.
    fn start_kinds(classic: Vec<u8>, pq: Vec<u8>) -> FakeSite {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let h = hellos.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = [0u8; 5];
                if s.read_exact(&mut head).is_err() {
                    // The TCP connect check: connects and closes.
                    continue;
                }
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
                s.read_exact(&mut body).unwrap();
                let mut hello = head.to_vec();
                hello.extend_from_slice(&body);
                let kind = mtpx::proto::faketls::parse_client_hello(&hello[5..])
                    .map(|h| h.kind())
                    .unwrap_or(HelloKind::Classic);
                h.lock().unwrap().push(hello);
                let flight = if kind == HelloKind::PostQuantum {
                    &pq
                } else {
                    &classic
                };
                s.write_all(flight).unwrap();
            }
        });
        FakeSite { addr, hellos }
    }
}

fn tls_data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).unwrap()
}

/// The records of a TLS byte stream as (type, payload).
fn records(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    assert!(b.is_empty());
    out
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, 3, 3];
    r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

/// nginx's TLS 1.3 flight (ServerHello, CCS, four encrypted records).
fn nginx_flight() -> Vec<u8> {
    tls_data("nginx-ecdsa-flight.bin")
}

/// The same flight with its encrypted records merged into one, as sites that send their whole
/// encrypted handshake in one record do.
fn one_record_flight() -> Vec<u8> {
    merge_encrypted(&nginx_flight())
}

/// An OpenSSL 3.5 site's answer to a post-quantum hello (X25519MLKEM768), merged likewise.
fn one_record_pq_flight() -> Vec<u8> {
    merge_encrypted(&tls_data("openssl35-pq-flight.bin"))
}

fn merge_encrypted(flight: &[u8]) -> Vec<u8> {
    let recs = records(flight);
    assert_eq!(recs.len(), 6);
    assert_eq!((recs[0].0, recs[1].0), (0x16, 0x14));
    let mut out = record(recs[0].0, &recs[0].1);
    out.extend(record(recs[1].0, &recs[1].1));
    let merged: Vec<u8> = recs[2..]
        .iter()
        .flat_map(|(k, p)| {
            assert_eq!(*k, 0x17);
            p.clone()
        })
        .collect();
    out.extend(record(0x17, &merged));
    out
}

// ------------------------------------------------------------------------------------------
// Running the binary

fn ee_secret(host: &str) -> String {
    Secret {
        kind: SecretKind::FakeTls,
        key: [0x42; 16],
        host: host.to_string(),
    }
    .to_hex()
}

/// A config file in a per-test temporary directory, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!("mtpx-doctor-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        TempConfig(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn dc_overrides(addrs: &[(i16, SocketAddr)]) -> String {
    let mut s = String::from("[network.dc-overrides]\n");
    for (id, a) in addrs {
        s.push_str(&format!("{id} = \"{a}\"\n"));
    }
    s
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn doctor(args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtpx"))
        .arg("doctor")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads so that a large report cannot block the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mtpx doctor {args:?} took more than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = Run {
        code: status.code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        took: start.elapsed(),
    };
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r
}

/// The report's check lines as (icon, text after the icon), in order.
fn lines(report: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for l in report.lines() {
        for icon in ["✅", "⚠️", "❌"] {
            if let Some(rest) = l.strip_prefix("  ").and_then(|r| r.strip_prefix(icon)) {
                out.push((icon, rest.trim_start().to_string()));
            }
        }
    }
    out
}

fn has(report: &[(&str, String)], icon: &str, prefix: &str) -> bool {
    report
        .iter()
        .any(|(i, t)| *i == icon && t.starts_with(prefix))
}

/// The JSON report parsed by Python: (section, name, status, message, hint) per check.
fn parse_json(text: &str) -> Vec<[String; 5]> {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json,sys\n\
             a=json.load(sys.stdin)\n\
             assert isinstance(a,list)\n\
             for o in a:\n\
             \x20 assert set(o)=={'section','name','status','message','hint'},o\n\
             \x20 assert o['status'] in ('ok','warn','fail'),o\n\
             \x20 assert o['hint'] is None or isinstance(o['hint'],str),o\n\
             \x20 print('\\t'.join([o['section'],o['name'],o['status'],o['message'],o['hint'] or '']).replace('\\n',' '))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o: Output = py.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "invalid JSON report: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{l}");
            [f[0], f[1], f[2], f[3], f[4]].map(str::to_string)
        })
        .collect()
}

/// The JSON report has the same checks, in the same order, with the same statuses, as the
/// human report.
fn assert_json_matches(args: &[&str], human: &Run) {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let j = doctor(&with_json);
    assert_eq!(j.code, human.code, "{}", j.stdout);
    let checks = parse_json(&j.stdout);
    let shown = lines(&human.stdout);
    assert_eq!(checks.len(), shown.len(), "{}\n{}", j.stdout, human.stdout);
    for (c, (icon, text)) in checks.iter().zip(&shown) {
        let want = match c[2].as_str() {
            "ok" => "✅",
            "warn" => "⚠️",
            _ => "❌",
        };
        assert_eq!(want, *icon, "{c:?} vs {text}");
        assert!(text.starts_with(&format!("{}: ", c[1])), "{c:?} vs {text}");
    }
    // Sections appear in the fixed order, each as a title line of the human report.
    let mut last = 0;
    for c in &checks {
        let pos = human
            .stdout
            .find(&format!("\n{}\n", c[0]))
            .map(|p| p + 1)
            .or_else(|| {
                human
                    .stdout
                    .starts_with(&format!("{}\n", c[0]))
                    .then_some(0)
            })
            .unwrap_or_else(|| panic!("no section title {:?}", c[0]));
        assert!(pos >= last, "section order: {}", c[0]);
        last = pos;
    }
}

// ------------------------------------------------------------------------------------------
// Tests

/// The seconds printed after `prefix` ("… this clock is 0.499 s behind …"); NaN if none.
fn skew(stdout: &str, prefix: &str) -> f64 {
    stdout
        .split(prefix)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn everything_reachable_passes() {
    let dcs: Vec<(i16, FakeDc)> = DC_IDS.iter().map(|&id| (id, FakeDc::start())).collect();
    let ntp = FakeNtp::start(0.5);
    let socks = FakeSocks::start(0);
    let site = FakeSite::start_kinds(one_record_flight(), one_record_pq_flight());
    let overrides: Vec<(i16, SocketAddr)> = dcs.iter().map(|(id, d)| (*id, d.addr)).collect();
    let cfg = TempConfig::new(
        "pass",
        &format!(
            "secret = \"{}\"\nbind-to = \"127.0.0.1:3128\"\ntolerate-time-skewness = \"10s\"\n\
             public-ipv4 = \"127.0.0.1\"\n\n[domain-fronting]\nip = \"127.0.0.1\"\nport = {}\n\n\
             [network]\nproxies = [\"socks5://{}\"]\n\n[network.timeout]\ntcp = \"2s\"\n\n{}",
            ee_secret("localhost"),
            site.addr.port(),
            socks.addr,
            dc_overrides(&overrides)
        ),
    );
    let ntp_arg = ntp.addr.to_string();
    let args = ["--ntp", &ntp_arg, cfg.path()];
    let r = doctor(&args);
    let report = lines(&r.stdout);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("❌"), "{}", r.stdout);

    assert!(!r.stdout.contains("⚠️"), "{}", r.stdout);
    assert!(has(&report, "✅", "config: no deprecated"), "{}", r.stdout);
    // Time skew: 0.5 s of 10 s, give or take half the round trip (a loaded machine may
    // delay the fake server's thread by tens of ms).
    let time = format!("{ntp_arg}: this clock is ");
    assert!(has(&report, "✅", &time), "{}", r.stdout);
    let secs = skew(&r.stdout, &time);
    assert!((0.3..0.7).contains(&secs), "offset {secs}\n{}", r.stdout);
    assert!(r.stdout.contains("behind"), "{}", r.stdout);
    assert!(ntp.requests.load(Ordering::SeqCst) >= 1);
    // Every DC, with its address and a time.
    for (id, dc) in &dcs {
        let line = format!("DC {id}: {} in ", dc.addr);
        assert!(has(&report, "✅", &line), "{line}\n{}", r.stdout);
        // The doctor's connect completes in the kernel's backlog; the fake's accept thread
        // counts it when it next runs, which on a loaded machine can be after the doctor exits.
        assert!(
            common::wait_until(Duration::from_secs(10), || dc
                .accepted
                .load(Ordering::SeqCst)
                >= 1),
            "DC {id}: never accepted the doctor's connection"
        );
    }
    // SOCKS5: a CONNECT to DC 2's (overridden) address.
    let dc2 = overrides.iter().find(|(id, _)| *id == 2).unwrap().1;
    let socks_line = format!("socks5://{}: CONNECT to DC 2 at {dc2} through", socks.addr);
    assert!(has(&report, "✅", &socks_line), "{}", r.stdout);
    assert_eq!(*socks.targets.lock().unwrap(), vec![dc2]);
    // Fronting: connected, then three probes whose SNI is the secret's host.
    let front = format!("localhost:{}: connected to {}", site.addr.port(), site.addr);
    assert!(has(&report, "✅", &front), "{}", r.stdout);
    // Each kind of hello matched: x25519 for the classic one, X25519MLKEM768 for today's.
    let classic =
        "TLS shape (x25519 hello): matched: 3 samples: ServerHello 122 bytes (key share 0x001d)";
    assert!(has(&report, "✅", classic), "{}", r.stdout);
    let pq = "TLS shape (x25519mlkem768 hello): matched: 3 samples: ServerHello 1210 bytes \
              (key share 0x11ec)";
    assert!(has(&report, "✅", pq), "{}", r.stdout);
    assert!(r.stdout.contains("1 encrypted record(s)"), "{}", r.stdout);
    {
        // Three browser-like hellos of each kind, never TDLib's (its ML-DSA signature
        // algorithms), SNI the secret's host.
        let hellos = site.hellos.lock().unwrap();
        assert_eq!(hellos.len(), 6);
        let mut kinds = Vec::new();
        for h in hellos.iter() {
            assert_eq!(h[0], 0x16);
            assert!(h.windows(9).any(|w| w == b"localhost"));
            let parsed = mtpx::proto::faketls::parse_client_hello(&h[5..]).unwrap();
            kinds.push(parsed.kind());
            assert!(
                !h.windows(8)
                    .any(|w| w == [0, 0x0d, 0, 0x18, 0, 0x16, 0x09, 0x04])
            );
        }
        assert_eq!(
            kinds
                .iter()
                .filter(|&&k| k == HelloKind::PostQuantum)
                .count(),
            3
        );
    }
    // SNI-DNS: localhost resolves to 127.0.0.1 = public-ipv4.
    assert!(
        has(&report, "✅", "localhost: resolves to 127.0.0.1"),
        "{}",
        r.stdout
    );
    // Sections in order, totals last.
    let titles = [
        "Config\n",
        "Time skew\n",
        "Telegram DCs\n",
        "SOCKS5 upstreams\n",
        "Fronting site\n",
        "SNI-DNS match\n",
    ];
    let pos: Vec<usize> = titles
        .iter()
        .map(|t| r.stdout.find(t).unwrap_or_else(|| panic!("{t}")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{}", r.stdout);
    let ok = report.iter().filter(|(i, _)| *i == "✅").count();
    assert!(
        r.stdout
            .ends_with(&format!("\n{ok} ok, 0 warnings, 0 failures\n")),
        "{}",
        r.stdout
    );
    assert!(r.took < Duration::from_secs(15), "{:?}", r.took);

    assert_eq!(ok, 13, "{}", r.stdout);
    // Nothing to be strict about.
    let mut strict = args.to_vec();
    strict.push("--strict");
    assert_eq!(doctor(&strict).code, Some(0));

    assert_json_matches(&args, &r);
}

/// A fronting address that is the proxy's own listener (here: the loopback address, with
/// bind-to on 0.0.0.0 and the same port) is a failure with a hint, and is never probed.
#[test]
fn fronting_to_our_own_listener_fails() {
    let dcs: Vec<(i16, FakeDc)> = DC_IDS.iter().map(|&id| (id, FakeDc::start())).collect();
    let ntp = FakeNtp::start(0.0);
    // Something does listen there (as the proxy would): doctor must not knock.
    let site = FakeSite::start(one_record_flight());
    let overrides: Vec<(i16, SocketAddr)> = dcs.iter().map(|(id, d)| (*id, d.addr)).collect();
    let cfg = TempConfig::new(
        "self-loop",
        &format!(
            "secret = \"{}\"\nbind-to = \"0.0.0.0:{}\"\n\n[domain-fronting]\nip = \"127.0.0.1\"\n\
             port = {}\n\n[network.timeout]\ntcp = \"2s\"\n\n{}",
            ee_secret("localhost"),
            site.addr.port(),
            site.addr.port(),
            dc_overrides(&overrides)
        ),
    );
    let ntp_arg = ntp.addr.to_string();
    let args = ["--ntp", &ntp_arg, cfg.path()];
    let r = doctor(&args);
    let report = lines(&r.stdout);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let front = format!(
        "localhost:{}: 127.0.0.1:{} is this proxy's own listener",
        site.addr.port(),
        site.addr.port()
    );
    assert!(has(&report, "❌", &front), "{}", r.stdout);
    assert!(
        r.stdout.contains("hint: set [domain-fronting] ip"),
        "{}",
        r.stdout
    );
    assert!(
        site.hellos.lock().unwrap().is_empty(),
        "doctor probed itself"
    );
    assert_json_matches(&args, &r);
}

#[test]
fn failures_exit_nonzero_and_name_what_failed() {
    let refused_dc = RefusedPort::new();
    let refused_site = RefusedPort::new();
    let good = FakeDc::start();
    let ntp = FakeNtp::start(-60.0);
    let overrides: Vec<(i16, SocketAddr)> = DC_IDS
        .iter()
        .map(|&id| (id, if id == 4 { refused_dc.addr } else { good.addr }))
        .collect();
    let cfg = TempConfig::new(
        "fail",
        &format!(
            "secret = \"{}\"\nbind-to = \"127.0.0.1:3128\"\ntolerate-time-skewness = \"10s\"\n\
             public-ipv4 = \"203.0.113.9\"\n\n[domain-fronting]\nip = \"127.0.0.1\"\nport = {}\n\n\
             [network.timeout]\ntcp = \"2s\"\n\n{}",
            ee_secret("localhost"),
            refused_site.addr.port(),
            dc_overrides(&overrides)
        ),
    );
    let ntp_arg = ntp.addr.to_string();
    let args = ["--ntp", &ntp_arg, cfg.path()];
    let r = doctor(&args);
    let report = lines(&r.stdout);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);

    // The refused DC fails, naming the DC and its address; the others pass.
    let dc4 = format!("DC 4: {}: ", refused_dc.addr);
    assert!(has(&report, "❌", &dc4), "{}", r.stdout);
    assert!(r.stdout.contains("refused"), "{}", r.stdout);
    for id in [1, 2, 3, 5, 203] {
        assert!(
            has(&report, "✅", &format!("DC {id}: ")),
            "DC {id}\n{}",
            r.stdout
        );
    }
    // A minute of skew against 10 s of tolerance; our clock is ahead.
    // (The measured offset is 60 s give or take the round trip: 59.999 or 60.0.)
    let time = format!("{ntp_arg}: this clock is ");
    assert!(has(&report, "❌", &time), "{}", r.stdout);
    let secs = skew(&r.stdout, &time);
    assert!((59.5..60.5).contains(&secs), "offset {secs}\n{}", r.stdout);
    assert!(r.stdout.contains("ahead of"), "{}", r.stdout);
    // The fronting site is unreachable.
    let front = format!("localhost:{}: unreachable", refused_site.addr.port());
    assert!(has(&report, "❌", &front), "{}", r.stdout);
    // localhost does not resolve to 203.0.113.9: a warning, with a hint.
    assert!(
        has(&report, "⚠️", "localhost: resolves to 127.0.0.1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("not to this server (203.0.113.9)"));
    // Every failure comes with a hint.
    let text_lines: Vec<&str> = r.stdout.lines().collect();
    for (i, l) in text_lines.iter().enumerate() {
        if l.starts_with("  ❌") {
            assert!(
                text_lines
                    .get(i + 1)
                    .is_some_and(|n| n.starts_with("     hint: ")),
                "{l}"
            );
        }
    }
    assert!(r.stdout.ends_with(" 3 failures\n"), "{}", r.stdout);

    assert_json_matches(&args, &r);
}

#[test]
fn socks5_refusal_fails_and_unreachable_dcs_only_warn_behind_proxies() {
    let refused_dc = RefusedPort::new();
    let good = FakeDc::start();
    let ntp = FakeNtp::start(0.0);
    let refusing = FakeSocks::start(5); // connection refused
    let accepting = FakeSocks::start(0);
    let overrides: Vec<(i16, SocketAddr)> = DC_IDS
        .iter()
        .map(|&id| (id, if id == 4 { refused_dc.addr } else { good.addr }))
        .collect();
    let cfg = TempConfig::new(
        "socks",
        &format!(
            "secret = \"dd{}\"\nbind-to = \"127.0.0.1:3128\"\n\n\
             [network]\nproxies = [\"socks5://user:hunter2@{}\", \"socks5h://{}\"]\n\n\
             [network.timeout]\ntcp = \"2s\"\n\n{}",
            "42".repeat(16),
            refusing.addr,
            accepting.addr,
            dc_overrides(&overrides)
        ),
    );
    let ntp_arg = ntp.addr.to_string();
    let args = ["--ntp", &ntp_arg, cfg.path()];
    let r = doctor(&args);
    let report = lines(&r.stdout);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    // The proxy never dials DCs directly when upstreams are set: a warning only.
    let dc4 = format!("DC 4: {}: ", refused_dc.addr);
    assert!(has(&report, "⚠️", &dc4), "{}", r.stdout);
    // The refusing upstream fails with the SOCKS5 reason; its password is not printed.
    let dc2 = overrides.iter().find(|(id, _)| *id == 2).unwrap().1;
    let line = format!(
        "socks5://user:***@{}: the proxy could not reach DC 2: {dc2}: connection-refused",
        refusing.addr
    );
    assert!(has(&report, "❌", &line), "{}", r.stdout);
    assert!(!r.stdout.contains("hunter2"), "{}", r.stdout);
    let line = format!("socks5h://{}: CONNECT to DC 2 at {dc2}", accepting.addr);
    assert!(has(&report, "✅", &line), "{}", r.stdout);
    assert_eq!(*refusing.targets.lock().unwrap(), vec![dc2]);
    assert_eq!(*accepting.targets.lock().unwrap(), vec![dc2]);
    // A dd secret fronts no site.
    assert!(has(&report, "✅", "fronting: not used"), "{}", r.stdout);
    assert!(r.stdout.ends_with(" 1 failure\n"), "{}", r.stdout);

    assert_json_matches(&args, &r);
}

#[test]
fn warnings_alone_exit_zero_unless_strict() {
    let dc = FakeDc::start();
    let refused = RefusedPort::new();
    let ntp = FakeNtp::start(5.0);
    let dead_ntp = dead_udp_port();
    let site = FakeSite::start(nginx_flight());
    let overrides: Vec<(i16, SocketAddr)> = DC_IDS
        .iter()
        .filter(|&&id| id != 2)
        .map(|&id| (id, dc.addr))
        .collect();
    // DC 2's first address is refused, the second works.
    let dc2 = format!("2 = [\"{}\", \"{}\"]\n", refused.addr, dc.addr);
    // Deprecated top-level domain-fronting keys (mtg's list), an unknown key, no public IP.
    let cfg = TempConfig::new(
        "warn",
        &format!(
            "secret = \"{}\"\nbind-to = \"127.0.0.1:3128\"\ntolerate-time-skewness = \"10s\"\n\
             domain-fronting-ip = \"127.0.0.1\"\ndomain-fronting-port = {}\nfrobnicate = 1\n\n\
             [network.timeout]\ntcp = \"2s\"\n\n{}{dc2}",
            ee_secret("localhost"),
            site.addr.port(),
            dc_overrides(&overrides)
        ),
    );
    let (ntp_arg, dead_arg) = (ntp.addr.to_string(), dead_ntp.to_string());
    let args = ["--ntp", &ntp_arg, "--ntp", &dead_arg, cfg.path()];
    let r = doctor(&args);
    let report = lines(&r.stdout);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("❌"), "{}", r.stdout);

    for key in [
        "domain-fronting-ip: ",
        "domain-fronting-port: ",
        "frobnicate: ",
    ] {
        assert!(has(&report, "⚠️", key), "{key}\n{}", r.stdout);
    }
    assert!(r.stdout.contains("deprecated"), "{}", r.stdout);
    let fallback = format!("DC 2: {} in ", dc.addr);
    assert!(has(&report, "⚠️", &fallback), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("after {}: ", refused.addr)),
        "{}",
        r.stdout
    );
    // 5 s of 10 s: a warning; the dead server: a warning too.
    let time = format!("{ntp_arg}: this clock is ");
    assert!(has(&report, "⚠️", &time), "{}", r.stdout);
    let secs = skew(&r.stdout, &time);
    assert!((4.8..5.2).contains(&secs), "offset {secs}\n{}", r.stdout);
    assert!(
        has(&report, "⚠️", &format!("{dead_arg}: unreachable")),
        "{}",
        r.stdout
    );
    // nginx sends four encrypted records: the advice says why that matters.
    assert!(
        has(&report, "⚠️", "TLS shape (x25519 hello): 3 samples"),
        "{}",
        r.stdout
    );
    // It answers today's X25519MLKEM768 hello with x25519: older than its clients.
    assert!(
        has(
            &report,
            "⚠️",
            "TLS shape (x25519mlkem768 hello): 3 answer(s)"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("a front older than its clients"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("4 encrypted record(s)"), "{}", r.stdout);
    assert!(r.stdout.contains("several records"), "{}", r.stdout);
    // No public address configured.
    assert!(
        r.stdout
            .contains("hint: set public-ipv4 / public-ipv6 to check"),
        "{}",
        r.stdout
    );
    assert!(
        has(&report, "✅", "proxies: none configured"),
        "{}",
        r.stdout
    );

    let mut strict = args.to_vec();
    strict.push("--strict");
    let s = doctor(&strict);
    assert_eq!(s.code, Some(1), "{}", s.stdout);

    assert_json_matches(&args, &r);
}

#[test]
fn library_api_reports_in_section_order() {
    let dc = FakeDc::start();
    let refused = RefusedPort::new();
    let ntp = FakeNtp::start(0.0);
    let skewed = FakeNtp::start(-60.0);
    let text = format!(
        "secret = \"0123456789abcdef0123456789abcdef\"\nbind-to = \"127.0.0.1:3128\"\n\n\
         [network.timeout]\ntcp = \"2s\"\n\n{}",
        dc_overrides(
            &DC_IDS
                .iter()
                .map(|&id| (id, if id == 203 { refused.addr } else { dc.addr }))
                .collect::<Vec<_>>()
        )
    );
    let (config, warnings) = mtpx::config::parse(&text).unwrap();
    let opts = mtpx::doctor::Options {
        ntp: vec![
            ("127.0.0.1".to_string(), ntp.addr.port()),
            ("127.0.0.1".to_string(), skewed.addr.port()),
        ],
        ..Default::default()
    };
    let mut seen = Vec::new();
    let checks = mtpx::doctor::run(&config, &warnings, &opts, |section, c| {
        seen.push((section, c.len()));
    });
    let order: Vec<&str> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, mtpx::doctor::SECTIONS);
    assert_eq!(seen.iter().map(|(_, n)| n).sum::<usize>(), checks.len());
    use mtpx::doctor::Status;
    let status = |section: &str, name: &str| {
        checks
            .iter()
            .find(|c| c.section == section && c.name == name)
            .unwrap_or_else(|| panic!("{section}/{name}: {checks:#?}"))
            .status
    };
    assert_eq!(status("Config", "config"), Status::Ok);
    assert_eq!(status("Time skew", &ntp.addr.to_string()), Status::Ok);
    // A minute off is only a warning for a classic secret: its handshake has no timestamp.
    assert_eq!(status("Time skew", &skewed.addr.to_string()), Status::Warn);
    assert_eq!(status("Telegram DCs", "DC 2"), Status::Ok);
    assert_eq!(status("Telegram DCs", "DC 203"), Status::Fail);
    // A classic secret fronts no site and carries no host name.
    assert_eq!(status("Fronting site", "fronting"), Status::Ok);
    assert_eq!(status("SNI-DNS match", "SNI"), Status::Ok);
    assert_eq!(mtpx::doctor::exit_status(&checks, false), 1);
}
