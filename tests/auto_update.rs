//! `auto-update` end to end (PROTOCOL.md §4): Telegram's proxy config comes from a local
//! stand-in (plain HTTP, HTTPS through mtpx's TLS client, or files), and real clients through
//! mtpx reach the fake DC at the DC 203 address it names; a broken, hostile or oversized
//! config, or an HTTP error, leaves the previous address in force.
//!
//! Nothing leaves the machine: the config URLs point at 127.0.0.1, DCs other than 203 are
//! overridden to a refused port, and `only-ipv4` keeps the built-in IPv6 address of DC 203 out
//! of the dialling order (the auto-updated address is dialled first and always answers).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mtpx::config::Config;
use mtpx::io::Proxy;
use mtpx::proto::dc::PreferIp;
use mtpx::proto::obfs2::Tag;
use mtpx::proto::secret::{Secret, SecretKind};

const WAIT: Duration = Duration::from_secs(15);

/// A stand-in for core.telegram.org: answers every GET with the current status and body.
struct ConfigServer {
    addr: SocketAddr,
    reply: Arc<Mutex<(u16, Vec<u8>)>>,
    hits: Arc<AtomicUsize>,
}

impl ConfigServer {
    fn start(body: &[u8]) -> ConfigServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reply = Arc::new(Mutex::new((200, body.to_vec())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (r, h) = (reply.clone(), hits.clone());
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                set_timeouts(&s, Duration::from_secs(5));
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let (status, body) = r.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        ConfigServer { addr, reply, hits }
    }

    fn set(&self, status: u16, body: &[u8]) {
        *self.reply.lock().unwrap() = (status, body.to_vec());
    }

    fn url(&self) -> String {
        format!("http://{}/getProxyConfig", self.addr)
    }
}

fn config_for(dc: SocketAddr) -> Vec<u8> {
    format!(
        "# stand-in\ndefault 2;\nproxy_for 2 127.0.0.1:1;\nproxy_for 203 {dc};\nproxy_for -203 {dc};\n"
    )
    .into_bytes()
}

fn base_config(secret: &Secret, refused: &RefusedPort) -> Config {
    let mut c = test_config(secret.clone(), 2, refused);
    c.dc_overrides.retain(|(id, _)| *id != 203);
    c.prefer_ip = PreferIp::OnlyIpv4;
    c.auto_update = true;
    c
}

/// A client asks for `dc` (203 or -203) and echoes through `proxy`; `fake` must get it.
fn reaches(proxy: &Proxy, secret: &Secret, dc: i16, fake: &FakeDc, seed: u64) {
    let before = fake.count();
    let mut c = TestClient::connect(
        proxy.local_addr(),
        secret,
        &ClientOpts::new(Tag::Padded, dc, seed),
    )
    .expect("handshake");
    let data = Pattern::new(seed).take(10_000);
    assert_eq!(c.echo_round_trip(&data).expect("echo"), data);
    assert_eq!(
        fake.count(),
        before + 1,
        "the fake DC at the new address got the client"
    );
    assert_eq!(
        *fake.conn(before).frame.lock().unwrap(),
        Some((Tag::Padded, 203))
    );
}

fn wait_cdn(proxy: &Proxy, want: &[SocketAddr]) {
    assert!(
        wait_until(WAIT, || proxy.cdn_addresses() == want),
        "DC 203 addresses {:?}, expected {want:?}",
        proxy.cdn_addresses()
    );
}

#[test]
fn dc_203_follows_the_published_config_and_keeps_it_through_failures() {
    let refused = RefusedPort::new();
    let (dc_a, dc_b) = (FakeDc::start(DcMode::Echo), FakeDc::start(DcMode::Echo));
    let server = ConfigServer::start(&config_for(dc_a.addr));
    let secret = secret(SecretKind::Secure, 1);
    let mut cfg = base_config(&secret, &refused);
    cfg.proxy_config_urls = vec![server.url()];
    let proxy = mtpx::io::start(cfg).expect("start");
    wait_cdn(&proxy, &[dc_a.addr]);
    reaches(&proxy, &secret, 203, &dc_a, 1);
    reaches(&proxy, &secret, -203, &dc_a, 2);

    // A new config (SIGHUP does not wait for the hour): new connections go to the new address.
    server.set(200, &config_for(dc_b.addr));
    proxy.reload_lists();
    wait_cdn(&proxy, &[dc_b.addr]);
    reaches(&proxy, &secret, 203, &dc_b, 3);
    assert_eq!(dc_a.count(), 2, "the old address is no longer dialled");

    // HTTP 500, an error page, a hostile and an oversized file: the last good list stays.
    let hostile = config_for(dc_a.addr)
        .into_iter()
        .chain(b"proxy_for 203 attacker.example:443;\n".iter().copied())
        .collect::<Vec<u8>>();
    let oversized = [config_for(dc_a.addr), vec![b'#'; 70 * 1024]].concat();
    for (status, body) in [
        (500, b"oops".to_vec()),
        (200, b"<html><body>Bad Gateway</body></html>".to_vec()),
        (200, hostile),
        (200, oversized),
        (200, Vec::new()),
    ] {
        let hits = server.hits.load(Ordering::SeqCst);
        server.set(status, &body);
        proxy.reload_lists();
        assert!(wait_until(WAIT, || server.hits.load(Ordering::SeqCst) > hits));
        // The update ran (the server answered); give the updater a moment to finish it.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(proxy.cdn_addresses(), [dc_b.addr], "after status {status}");
    }
    reaches(&proxy, &secret, 203, &dc_b, 4);
    assert_eq!(dc_a.count(), 2);
    proxy.shutdown();
}

#[test]
fn dc_203_follows_files_and_their_changes() {
    let refused = RefusedPort::new();
    let (dc_a, dc_b) = (FakeDc::start(DcMode::Echo), FakeDc::start(DcMode::Echo));
    let dir = std::env::temp_dir().join(format!("mtpx-autoupdate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v4 = dir.join("proxy-config");
    let v6 = dir.join("proxy-config-v6");
    std::fs::write(&v4, config_for(dc_a.addr)).unwrap();
    // An IPv6-only file (as getProxyConfigV6): with only-ipv4 it adds nothing to dial.
    std::fs::write(&v6, b"proxy_for 203 [::1]:1;\n").unwrap();
    let secret = secret(SecretKind::Secure, 2);
    let mut cfg = base_config(&secret, &refused);
    // A URL that would fail loudly if it were fetched: files replace the URLs.
    cfg.proxy_config_urls = vec!["http://127.0.0.1:1/never".into()];
    cfg.proxy_config_files = vec![v4.display().to_string(), v6.display().to_string()];
    let proxy = mtpx::io::start(cfg).expect("start");
    // Files are read before the proxy accepts anything.
    assert_eq!(
        proxy.cdn_addresses(),
        [dc_a.addr, "[::1]:1".parse().unwrap()]
    );
    assert_eq!(proxy.dc_addresses(203).unwrap()[0], dc_a.addr);
    reaches(&proxy, &secret, 203, &dc_a, 5);
    // Rewritten in place (as `curl -o` does, or better a rename): noticed without SIGHUP.
    let tmp = dir.join("new");
    std::fs::write(&tmp, config_for(dc_b.addr)).unwrap();
    std::fs::rename(&tmp, &v4).unwrap();
    wait_cdn(&proxy, &[dc_b.addr, "[::1]:1".parse().unwrap()]);
    reaches(&proxy, &secret, 203, &dc_b, 6);
    // Truncated mid-write: the previous list stays.
    std::fs::write(&v4, &config_for(dc_a.addr)[..20]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.cdn_addresses()[0], dc_b.addr);
    reaches(&proxy, &secret, 203, &dc_b, 7);
    proxy.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dc_203_follows_a_config_fetched_over_https() {
    // Python's ssl module (OpenSSL) serves the config over TLS 1.3 on 127.0.0.1.
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let server = https_file_server(&[("getProxyConfig", &config_for(dc.addr))]);
    let secret = secret(SecretKind::Secure, 3);
    let mut cfg = base_config(&secret, &refused);
    cfg.proxy_config_urls = vec![format!("https://{}/getProxyConfig", server.addr)];
    let proxy = mtpx::io::start(cfg).expect("start");
    wait_cdn(&proxy, &[dc.addr]);
    reaches(&proxy, &secret, 203, &dc, 8);
    // The server's log lines arrive through a reader thread: wait for them.
    assert!(
        wait_until(Duration::from_secs(5), || server
            .requests()
            .iter()
            .any(|r| r == "GET /getProxyConfig")),
        "{:?}",
        server.requests()
    );
    proxy.shutdown();
}
