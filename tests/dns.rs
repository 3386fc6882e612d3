//! The stub resolver (`mtpx::background::resolve`) against a local DNS responder on 127.0.0.1, UDP and
//! TCP on the same port. The responder's wire code is written independently of
//! `mtpx::formats::dns` so that the two check each other.
//!
//! Names the responder knows:
//! * `a.test`        A 192.0.2.1, 192.0.2.2; AAAA 2001:db8::1
//! * `alias.test`    CNAME -> a.test, with a.test's records in the same answer
//! * `v4only.test`   A 192.0.2.9; AAAA: no data
//! * `big.test`      over UDP: TC set, nothing else; over TCP: 40 A records (> 512 bytes)
//! * `nx.test`       NXDOMAIN
//! * `wrongid.test`  first an answer with the wrong id (203.0.113.66), then the right one
//! * `spoof.test`    first an answer with the right id from another port (203.0.113.66),
//!   then the right one from the server's port
//! * `garbage.test`  first junk bytes, then the right answer
//! * `silent.test`   never answered
//! * `front.test`    A 127.0.0.3 (a fake fronting site listens there); AAAA: no data
//!
//! A responder in `servfail` mode answers SERVFAIL to everything.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mtpx::background::resolve::{resolv_conf_servers, resolve_with};

mod common;

const A: u16 = 1;
const CNAME: u16 = 5;
const AAAA: u16 = 28;

struct Responder {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Question parsed from a query: (id, lowercase name, qtype, end of the question section).
fn parse_query(q: &[u8]) -> Option<(u16, String, u16, usize)> {
    let id = u16::from_be_bytes([*q.first()?, *q.get(1)?]);
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    Some((id, labels.join("."), qtype, pos + 4))
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for l in name.split('.') {
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
    }
    v.push(0);
    v
}

/// A response: header, the question copied from the query, then `answers` given as
/// (owner bytes, type, rdata).
fn response(
    q: &[u8],
    qend: usize,
    id: u16,
    flags: u16,
    answers: &[(Vec<u8>, u16, Vec<u8>)],
) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&id.to_be_bytes());
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    for (owner, t, data) in answers {
        r.extend_from_slice(owner);
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]); // IN, TTL 3600
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(data);
    }
    r
}

const QNAME_PTR: [u8; 2] = [0xC0, 12];

fn v4(a: [u8; 4]) -> Vec<u8> {
    a.to_vec()
}

fn v6(s: &str) -> Vec<u8> {
    s.parse::<Ipv6Addr>().unwrap().octets().to_vec()
}

/// What to send for `query`: a list of (send from the decoy socket?, bytes).
fn answer(query: &[u8], tcp: bool, servfail: bool) -> Vec<(bool, Vec<u8>)> {
    let Some((id, name, qtype, qend)) = parse_query(query) else {
        return Vec::new();
    };
    let ok = 0x8180;
    let own = || QNAME_PTR.to_vec();
    let one = |flags, answers: &[(Vec<u8>, u16, Vec<u8>)]| {
        vec![(false, response(query, qend, id, flags, answers))]
    };
    if servfail {
        return one(0x8182, &[]);
    }
    match (name.as_str(), qtype) {
        ("a.test", A) => one(
            ok,
            &[
                (own(), A, v4([192, 0, 2, 1])),
                (own(), A, v4([192, 0, 2, 2])),
            ],
        ),
        ("a.test", AAAA) => one(ok, &[(own(), AAAA, v6("2001:db8::1"))]),
        ("alias.test", t) => {
            // CNAME rdata at offset 12 + qlen + 12; the A/AAAA owners point into it.
            let target_at = (qend + 12) as u16;
            let target = [0xC0 | (target_at >> 8) as u8, target_at as u8].to_vec();
            let mut answers = vec![(own(), CNAME, wire_name("a.test"))];
            if t == A {
                answers.push((target.clone(), A, v4([192, 0, 2, 1])));
                answers.push((target, A, v4([192, 0, 2, 2])));
            } else {
                answers.push((target, AAAA, v6("2001:db8::1")));
            }
            one(ok, &answers)
        }
        ("v4only.test", A) => one(ok, &[(own(), A, v4([192, 0, 2, 9]))]),
        ("v4only.test", _) => one(ok, &[]),
        ("big.test", A) if !tcp => one(ok | 0x0200, &[]),
        ("big.test", A) => {
            let answers: Vec<_> = (0..40u8)
                .map(|i| (own(), A, v4([198, 51, 100, i + 1])))
                .collect();
            one(ok, &answers)
        }
        ("big.test", _) => one(ok, &[]),
        ("nx.test", _) => one(0x8183, &[]),
        ("front.test", A) => one(ok, &[(own(), A, v4([127, 0, 0, 3]))]),
        ("front.test", _) => one(ok, &[]),
        ("wrongid.test", t) => {
            let data = if t == A {
                v4([203, 0, 113, 66])
            } else {
                v6("2001:db8::66")
            };
            let good = if t == A {
                v4([203, 0, 113, 1])
            } else {
                v6("2001:db8::1")
            };
            vec![
                (
                    false,
                    response(query, qend, id ^ 0x5A5A, ok, &[(own(), t, data)]),
                ),
                (false, response(query, qend, id, ok, &[(own(), t, good)])),
            ]
        }
        ("spoof.test", A) => vec![
            (
                true,
                response(query, qend, id, ok, &[(own(), A, v4([203, 0, 113, 66]))]),
            ),
            (
                false,
                response(query, qend, id, ok, &[(own(), A, v4([203, 0, 113, 1]))]),
            ),
        ],
        ("spoof.test", _) => one(ok, &[]),
        ("garbage.test", t) => {
            let mut truncated = response(query, qend, id, ok, &[(own(), A, v4([203, 0, 113, 66]))]);
            truncated.truncate(truncated.len() - 3);
            let good = if t == A {
                vec![(own(), A, v4([203, 0, 113, 1]))]
            } else {
                Vec::new()
            };
            vec![
                (false, vec![0xFF; 7]),
                (false, b"\x12\x34 definitely not DNS".to_vec()),
                (false, truncated),
                (false, response(query, qend, id, ok, &good)),
            ]
        }
        _ => Vec::new(), // silent.test and anything unknown: no answer
    }
}

fn responder(servfail: bool) -> Responder {
    // UDP and TCP on the same port.
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let decoy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));

    let (s, n) = (stop.clone(), udp_queries.clone());
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::SeqCst) {
            let Ok((len, from)) = udp.recv_from(&mut buf) else {
                continue;
            };
            n.fetch_add(1, Ordering::SeqCst);
            for (from_decoy, bytes) in answer(&buf[..len], false, servfail) {
                let sock = if from_decoy { &decoy } else { &udp };
                let _ = sock.send_to(&bytes, from);
                thread::sleep(Duration::from_millis(5));
            }
        }
    });

    let (s, n) = (stop.clone(), tcp_queries.clone());
    tcp.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = tcp.accept() else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            n.fetch_add(1, Ordering::SeqCst);
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut len = [0u8; 2];
            if c.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if c.read_exact(&mut q).is_err() {
                continue;
            }
            for (_, bytes) in answer(&q, true, servfail) {
                let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                // Split the write to exercise the client's read loop.
                let (a, b) = framed.split_at(framed.len() / 2);
                let _ = c.write_all(a);
                let _ = c.flush();
                thread::sleep(Duration::from_millis(5));
                let _ = c.write_all(b);
            }
        }
    });
    Responder {
        addr,
        udp_queries,
        tcp_queries,
        stop,
    }
}

fn ips(addrs: &[SocketAddr]) -> Vec<IpAddr> {
    addrs.iter().map(SocketAddr::ip).collect()
}

const T: Duration = Duration::from_secs(3);

#[test]
fn a_and_aaaa_with_port() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "A.Test.", 443, T).unwrap();
    assert_eq!(
        got,
        vec![
            "192.0.2.1:443".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        ]
    );
    assert_eq!(r.udp_queries.load(Ordering::SeqCst), 2);
    assert_eq!(r.tcp_queries.load(Ordering::SeqCst), 0);
}

#[test]
fn cname_chain_is_followed() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "alias.test", 80, T).unwrap();
    assert_eq!(
        ips(&got),
        vec![
            IpAddr::from([192, 0, 2, 1]),
            IpAddr::from([192, 0, 2, 2]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        ]
    );
}

#[test]
fn missing_aaaa_is_not_an_error() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "v4only.test", 1, T).unwrap();
    assert_eq!(ips(&got), vec![IpAddr::from([192, 0, 2, 9])]);
}

#[test]
fn truncated_udp_answer_falls_back_to_tcp() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "big.test", 443, T).unwrap();
    assert_eq!(got.len(), 40);
    assert_eq!(got[0], "198.51.100.1:443".parse().unwrap());
    assert_eq!(got[39], "198.51.100.40:443".parse().unwrap());
    assert_eq!(r.tcp_queries.load(Ordering::SeqCst), 1);
}

#[test]
fn nxdomain_is_not_found_and_stops_there() {
    let r = responder(false);
    let other = responder(false);
    let e = resolve_with(&[r.addr, other.addr], "nx.test", 443, T).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("nx.test"), "{e}");
    assert_eq!(other.udp_queries.load(Ordering::SeqCst), 0);
}

#[test]
fn wrong_id_answer_is_ignored() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "wrongid.test", 443, T).unwrap();
    assert_eq!(
        ips(&got),
        vec![
            IpAddr::from([203, 0, 113, 1]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        ]
    );
}

#[test]
fn answer_from_another_port_is_ignored() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "spoof.test", 443, T).unwrap();
    assert_eq!(ips(&got), vec![IpAddr::from([203, 0, 113, 1])]);
}

#[test]
fn garbage_and_cut_answers_are_ignored() {
    let r = responder(false);
    let got = resolve_with(&[r.addr], "garbage.test", 443, T).unwrap();
    assert_eq!(ips(&got), vec![IpAddr::from([203, 0, 113, 1])]);
}

#[test]
fn silence_times_out_within_the_budget() {
    let r = responder(false);
    let start = Instant::now();
    let e = resolve_with(&[r.addr], "silent.test", 443, Duration::from_millis(600)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(took >= Duration::from_millis(550), "{took:?}");
    // Well past the budget: a second or two of slack for a loaded machine (it was 0.9 s).
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Two rounds (attempts), each asking A and AAAA.
    assert_eq!(r.udp_queries.load(Ordering::SeqCst), 4);
}

#[test]
fn servfail_moves_on_to_the_next_server() {
    let bad = responder(true);
    let good = responder(false);
    let got = resolve_with(&[bad.addr, good.addr], "a.test", 443, T).unwrap();
    assert_eq!(got.len(), 3);
    assert!(bad.udp_queries.load(Ordering::SeqCst) >= 1);
    // Only SERVFAIL everywhere: an error, not addresses.
    let e = resolve_with(&[bad.addr], "a.test", 443, Duration::from_millis(500)).unwrap_err();
    assert!(e.to_string().contains("SERVFAIL"), "{e}");
}

#[test]
fn silent_then_good_server() {
    let silent = responder(false);
    let good = responder(false);
    let start = Instant::now();
    // per-try budget is timeout / 2 = 400 ms
    let got = resolve_with(
        &[silent.addr, good.addr],
        "silent.test",
        1,
        Duration::from_millis(800),
    );
    assert!(got.is_err());
    let got = resolve_with(
        &[silent.addr, good.addr],
        "a.test",
        1,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(got.len(), 3);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn refused_port_moves_on_quickly() {
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let good = responder(false);
    let start = Instant::now();
    let got = resolve_with(&[closed, good.addr], "a.test", 443, Duration::from_secs(10)).unwrap();
    assert_eq!(got.len(), 3);
    // ICMP port unreachable ends the try at once instead of waiting out the 5 s per-try budget
    // (bounds far apart, so a loaded machine's delays never reach them).
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn ipv6_loopback_server() {
    // Skipped where the host has no IPv6 loopback.
    let Ok(udp) = UdpSocket::bind("[::1]:0") else {
        return;
    };
    let addr = udp.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..2 {
            let Ok((n, from)) = udp.recv_from(&mut buf) else {
                return;
            };
            for (_, bytes) in answer(&buf[..n], false, false) {
                let _ = udp.send_to(&bytes, from);
            }
        }
    });
    let got = resolve_with(&[addr], "a.test", 443, T).unwrap();
    assert_eq!(got.len(), 3);
}

#[test]
fn literals_and_resolv_conf() {
    assert_eq!(
        resolve_with(&[], "127.0.0.1", 8443, T).unwrap(),
        vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 8443))]
    );
    // Whatever the host's resolv.conf says, there is at least one server, on port 53.
    let servers = resolv_conf_servers();
    assert!(!servers.is_empty() && servers.len() <= 3);
    assert!(servers.iter().all(|s| s.port() == 53));
}

/// `[network] dns = "udp://…"` end to end: the proxy resolves the fronting host of its `ee`
/// secret through the configured server (not /etc/resolv.conf), and a client with the wrong
/// key is spliced to the address that server gave (127.0.0.3, which only it knows).
/// Starts a proxy whose secret names `front.test` and whose `[network] dns` is `dns`; a
/// wrong-key client must end up fronted to the fake site at 127.0.0.3, the address only the
/// configured server gives for that name.
fn fronting_site_found_through(dns: &str) {
    use common::*;
    use mtpx::proto::XorShift64;
    use mtpx::proto::faketls;
    use mtpx::proto::secret::{Secret, SecretKind};

    let front = FakeFront::start_on(IpAddr::from([127, 0, 0, 3]));
    let refused = RefusedPort::new();
    let secret = Secret::generate(SecretKind::FakeTls, "front.test", &mut XorShift64(5));
    let text = format!(
        "secret = \"{}\"\nbind-to = \"127.0.0.1:1\"\n\
         [domain-fronting]\nport = {}\n\
         [network]\ndns = \"{dns}\"\n\
         [network.dc-overrides]\n1 = \"{r0}\"\n2 = \"{r0}\"\n3 = \"{r0}\"\n4 = \"{r0}\"\n\
         5 = \"{r0}\"\n203 = \"{r0}\"\n",
        secret.to_hex(),
        front.addr.port(),
        r0 = refused.addr,
    );
    let (mut config, warnings) = mtpx::config::parse(&text).expect("config");
    config.bind_to.set_port(0); // the file format refuses port 0; any free port will do
    assert!(warnings.is_empty(), "{warnings:?}");
    // Checked before start, so that a wiring bug cannot send a query off this machine.
    let ns = config.nameserver().expect("a configured server");
    assert!(ns.addr.ip().is_loopback(), "{ns:?}");
    let proxy = mtpx::io::start(config).expect("start proxy");

    let wrong_key = [0x5Au8; 16];
    let mut seed = 10;
    let fronted = |hello: &[u8]| {
        let mut s = connect(proxy.local_addr()).expect("connect");
        s.write_all(hello).expect("hello");
        let closed = read_until_closed(&mut s, Duration::from_secs(5)).expect("closed");
        closed.bytes == FRONT_REPLY
    };
    // Until the fronting resolver has its answer, failed handshakes are closed, not fronted.
    let mut hello = Vec::new();
    let ok = common::wait_until(Duration::from_secs(10), || {
        seed += 1;
        hello = faketls::build_client_hello(
            &mut XorShift64(seed),
            &wrong_key,
            "front.test",
            unix_now(),
        );
        fronted(&hello)
    });
    assert!(
        ok,
        "a wrong-key client was never fronted to 127.0.0.3 ({dns})"
    );
    assert!(
        (0..front.count()).any(|i| front.received(i) == hello),
        "the fake site at 127.0.0.3 did not get the client's hello"
    );
    proxy.shutdown();
}

#[test]
fn configured_dns_server_finds_the_fronting_site() {
    let r = responder(false);
    fronting_site_found_through(&format!("udp://{}", r.addr));
    assert!(r.udp_queries.load(Ordering::SeqCst) >= 2);
}

/// `dns = "https://…"` and `"tls://…"`: mtpx's own TLS 1.3 client against Python's ssl
/// (OpenSSL): the answers come from the DoH / DoT server, which alone knows `front.test`.
#[test]
fn dns_over_https_and_tls_resolve_through_an_openssl_server() {
    use mtpx::background::resolve::resolve;
    use mtpx::formats::dns::{Nameserver, Transport};
    let srv = common::tls_dns_server(&[
        ("front.test", "127.0.0.3"),
        ("dual.test", "192.0.2.7"),
        ("dual.test", "2001:db8::7"),
    ]);
    let doh = Nameserver {
        addr: srv.doh,
        transport: Transport::Https("/dns-query".into()),
    };
    let dot = Nameserver {
        addr: srv.dot,
        transport: Transport::Tls,
    };
    let t = Duration::from_secs(5);
    for ns in [&doh, &dot] {
        let got = resolve(Some(ns), "dual.test", 443, t).expect("resolve");
        assert_eq!(
            ips(&got),
            [
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ],
            "{ns:?}"
        );
        assert!(got.iter().all(|a| a.port() == 443));
        let e = resolve(Some(ns), "nx.test", 443, t).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{ns:?}: {e}");
    }
    // A server that is not there fails within the budget.
    let gone = Nameserver {
        addr: common::RefusedPort::new().addr,
        transport: Transport::Tls,
    };
    let t0 = Instant::now();
    assert!(resolve(Some(&gone), "front.test", 443, t).is_err());
    assert!(t0.elapsed() < t + Duration::from_secs(1));
    // The server's log lines arrive through a reader thread: wait for them.
    let logged = |wants: &[&str]| {
        common::wait_until(Duration::from_secs(5), || {
            let q = srv.queries();
            wants.iter().all(|w| q.iter().any(|l| l == w))
        })
    };
    let wants = [
        "doh dual.test A",
        "doh dual.test AAAA",
        "dot dual.test A",
        "dot nx.test A",
    ];
    assert!(logged(&wants), "{wants:?} not all in {:?}", srv.queries());
    // End to end through the proxy, both transports.
    fronting_site_found_through(&format!("https://{}/dns-query", srv.doh));
    fronting_site_found_through(&format!("tls://{}", srv.dot));
    let wants = ["doh front.test A", "dot front.test A"];
    assert!(logged(&wants), "{wants:?} not all in {:?}", srv.queries());
}
