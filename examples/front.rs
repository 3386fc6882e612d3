use mtpx::proto::secret::{Secret, SecretKind};
use mtpx::proto::XorShift64;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let site = TcpListener::bind("127.0.0.1:0").unwrap();
    let site_addr = site.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in site.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                loop { match s.read(&mut b) { Ok(0) => break, Ok(n) => got.extend_from_slice(&b[..n]), Err(_) => break } }
                let _ = s.write_all(format!("SITE saw {} bytes: {:?}", got.len(), String::from_utf8_lossy(&got[..got.len().min(40)])).as_bytes());
            });
        }
    });
    for (kind, pp) in [(SecretKind::FakeTls, false), (SecretKind::Secure, false), (SecretKind::FakeTls, true)] {
        let mut rng = XorShift64(42);
        let secret = Secret::generate(kind, "example.com", &mut rng);
        let mut cfg = mtpx::config::Config::simple("127.0.0.1:0".parse().unwrap(), secret.clone());
        cfg.workers = 1;
        cfg.domain_fronting.ip = Some("127.0.0.1".parse().unwrap());
        cfg.domain_fronting.port = site_addr.port();
        cfg.domain_fronting.proxy_protocol = pp;
        cfg.timeouts.handshake = Duration::from_secs(1);
        let proxy = mtpx::io::start(cfg).unwrap();
        for probe in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 3, 1, 0, 10, 1, 2][..], &[0u8; 64][..], &b""[..]] {
            let t = Instant::now();
            let mut c = TcpStream::connect(proxy.local_addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(probe).unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            println!("{:?} pp={} probe {} bytes -> {:?} in {:?}", kind, pp, probe.len(), String::from_utf8_lossy(&out), t.elapsed());
        }
        println!("fronted={}", proxy.stats().fronted.load(std::sync::atomic::Ordering::Relaxed));
        proxy.shutdown();
    }
}
