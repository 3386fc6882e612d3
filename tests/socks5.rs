//! SOCKS5 upstream chaining end to end on loopback: clients reach the fake DC through a SOCKS5
//! server written here (RFC 1928 CONNECT, RFC 1929 user/password), with and without
//! authentication, and past an upstream that refuses or is down.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mtpx::proto::obfs2::Tag;
use mtpx::proto::secret::SecretKind;

/// How the test SOCKS5 server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// No authentication; CONNECT works.
    Open,
    /// Requires user "u" / password "p w".
    Auth,
    /// Answers CONNECT with "connection not allowed by ruleset" (0x02).
    Refuse,
}

struct Socks {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<SocketAddr>>>,
    sessions: Arc<AtomicUsize>,
}

fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn serve(
    mut c: TcpStream,
    mode: Mode,
    connects: Arc<Mutex<Vec<SocketAddr>>>,
) -> std::io::Result<()> {
    set_timeouts(&c, IO_TIMEOUT);
    let head = read_n(&mut c, 2)?;
    assert_eq!(head[0], 5, "SOCKS version");
    let methods = read_n(&mut c, head[1] as usize)?;
    if mode == Mode::Auth {
        if !methods.contains(&2) {
            c.write_all(&[5, 0xff])?;
            return Ok(());
        }
        c.write_all(&[5, 2])?;
        let v = read_n(&mut c, 2)?;
        assert_eq!(v[0], 1, "RFC 1929 version");
        let user = read_n(&mut c, v[1] as usize)?;
        let plen = read_n(&mut c, 1)?[0] as usize;
        let pass = read_n(&mut c, plen)?;
        let ok = user == b"u" && pass == b"p w";
        c.write_all(&[1, if ok { 0 } else { 1 }])?;
        if !ok {
            return Ok(());
        }
    } else {
        assert!(methods.contains(&0), "client offers no-auth");
        c.write_all(&[5, 0])?;
    }
    let req = read_n(&mut c, 4)?;
    assert_eq!(&req[..3], &[5, 1, 0], "CONNECT");
    let target: SocketAddr = match req[3] {
        1 => {
            let a = read_n(&mut c, 6)?;
            SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[4], a[5]])))
        }
        4 => {
            let a = read_n(&mut c, 18)?;
            let ip: [u8; 16] = a[..16].try_into().unwrap();
            SocketAddr::from((ip, u16::from_be_bytes([a[16], a[17]])))
        }
        t => panic!("unexpected address type {t}"),
    };
    connects.lock().unwrap().push(target);
    if mode == Mode::Refuse {
        c.write_all(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0])?;
        return Ok(());
    }
    let mut up = TcpStream::connect(target)?;
    c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0x12, 0x34])?;
    let (mut c2, mut up2) = (c.try_clone()?, up.try_clone()?);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut c, &mut up);
    let _ = up.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
    Ok(())
}

fn socks_server(mode: Mode) -> Socks {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let connects = Arc::new(Mutex::new(Vec::new()));
    let sessions = Arc::new(AtomicUsize::new(0));
    let (c2, s2) = (connects.clone(), sessions.clone());
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            s2.fetch_add(1, Ordering::SeqCst);
            let c3 = c2.clone();
            std::thread::spawn(move || {
                let _ = serve(c, mode, c3);
            });
        }
    });
    Socks {
        addr,
        connects,
        sessions,
    }
}

fn echo_through(
    proxies: Vec<String>,
    kind: SecretKind,
) -> (mtpx::io::Proxy, FakeDc, Result<(), String>) {
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(kind, 7);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.dc_overrides.push((2, vec![dc.addr]));
    cfg.proxies = proxies;
    cfg.timeouts.tcp = Duration::from_secs(2);
    let proxy = mtpx::io::start(cfg).expect("start");
    let res = (|| {
        let mut c = TestClient::connect(
            proxy.local_addr(),
            &secret,
            &ClientOpts::new(Tag::Padded, 2, 3),
        )
        .map_err(|e| format!("handshake: {e}"))?;
        let data = Pattern::new(5).take(100_000);
        let got = c.echo_round_trip(&data).map_err(|e| format!("echo: {e}"))?;
        if got != data {
            return Err("bytes differ".into());
        }
        Ok(())
    })();
    (proxy, dc, res)
}

#[test]
fn relays_through_socks5_without_auth() {
    for kind in [SecretKind::FakeTls, SecretKind::Secure] {
        let s = socks_server(Mode::Open);
        let (_p, dc, res) = echo_through(vec![format!("socks5://{}", s.addr)], kind);
        res.unwrap();
        assert_eq!(
            s.connects.lock().unwrap().as_slice(),
            &[dc.addr],
            "asked for the DC"
        );
        assert_eq!(dc.frames(), vec![(Tag::Padded, 2)]);
    }
}

#[test]
fn relays_through_socks5_with_password() {
    let s = socks_server(Mode::Auth);
    let (_p, dc, res) = echo_through(
        vec![format!("socks5://u:p%20w@{}", s.addr)],
        SecretKind::Secure,
    );
    res.unwrap();
    assert_eq!(s.connects.lock().unwrap().as_slice(), &[dc.addr]);
}

#[test]
fn wrong_password_fails_and_nothing_reaches_the_dc() {
    let s = socks_server(Mode::Auth);
    let (p, dc, res) = echo_through(
        vec![format!("socks5://u:nope@{}", s.addr)],
        SecretKind::Secure,
    );
    assert!(res.is_err(), "must not connect with a wrong password");
    assert_eq!(dc.count(), 0);
    assert!(s.sessions.load(Ordering::SeqCst) >= 1);
    assert!(wait_until(Duration::from_secs(5), || p
        .stats()
        .dc_failures
        .load(Ordering::SeqCst)
        == 1));
}

#[test]
fn falls_back_past_a_refusing_and_a_dead_upstream() {
    let refusing = socks_server(Mode::Refuse);
    let dead = RefusedPort::new();
    let good = socks_server(Mode::Open);
    let (_p, dc, res) = echo_through(
        vec![
            format!("socks5://{}", refusing.addr),
            format!("socks5://{}", dead.addr),
            format!("socks5://{}", good.addr),
        ],
        SecretKind::FakeTls,
    );
    res.unwrap();
    assert_eq!(
        refusing.connects.lock().unwrap().len(),
        1,
        "the refusing upstream was asked first"
    );
    assert_eq!(good.connects.lock().unwrap().as_slice(), &[dc.addr]);
}

#[test]
fn never_connects_directly_when_every_upstream_fails() {
    let dead = RefusedPort::new();
    let (p, dc, res) = echo_through(vec![format!("socks5://{}", dead.addr)], SecretKind::Secure);
    assert!(res.is_err());
    assert_eq!(
        dc.count(),
        0,
        "the DC must not be reached around the upstream"
    );
    assert!(wait_until(Duration::from_secs(5), || p
        .stats()
        .dc_failures
        .load(Ordering::SeqCst)
        == 1));
}

/// `auto-update` fetches Telegram's proxy config through the upstream (mtg does too), and the
/// address it brings is then dialled through the upstream as well.
#[test]
fn auto_update_fetches_through_the_upstream() {
    let s = socks_server(Mode::Auth);
    let dc = FakeDc::start(DcMode::Echo);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let web = l.local_addr().unwrap();
    let body = format!("proxy_for 203 {};\n", dc.addr);
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let refused = RefusedPort::new();
    let secret = secret(SecretKind::Secure, 77);
    let mut cfg = test_config(secret.clone(), 1, &refused);
    cfg.dc_overrides.retain(|(id, _)| *id != 203);
    cfg.prefer_ip = mtpx::proto::dc::PreferIp::OnlyIpv4;
    cfg.proxies = vec![format!("socks5://u:p%20w@{}", s.addr)];
    cfg.auto_update = true;
    cfg.proxy_config_urls = vec![format!("http://{web}/getProxyConfig")];
    let p = mtpx::io::start(cfg).unwrap();
    assert!(wait_until(Duration::from_secs(10), || p.cdn_addresses() == [dc.addr]));
    assert_eq!(
        s.connects.lock().unwrap().as_slice(),
        &[web],
        "fetched through SOCKS5"
    );
    let mut c = TestClient::connect(
        p.local_addr(),
        &secret,
        &ClientOpts::new(Tag::Padded, 203, 5),
    )
    .unwrap();
    assert_eq!(c.echo_round_trip(b"media").unwrap(), b"media");
    assert_eq!(s.connects.lock().unwrap().as_slice(), &[web, dc.addr]);
}
