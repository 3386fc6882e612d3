use aes::cipher::StreamCipher;
use mtpx::proto::obfs2::{self, Tag};
use mtpx::proto::secret::{Secret, SecretKind};
use mtpx::proto::{faketls, XorShift64};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let dc = TcpListener::bind("127.0.0.1:0").unwrap();
    let dc_addr = dc.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in dc.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut f = [0u8; 64];
                s.read_exact(&mut f).unwrap();
                let (tag, dcid, mut dec, mut enc) = obfs2::dc_accept(&f).unwrap();
                eprintln!("dc saw tag {:?} dc {}", tag, dcid);
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 { break; }
                    dec.apply_keystream(&mut buf[..n]);
                    enc.apply_keystream(&mut buf[..n]);
                    s.write_all(&buf[..n]).unwrap();
                }
            });
        }
    });
    for kind in [SecretKind::Classic, SecretKind::Secure, SecretKind::FakeTls] {
        let mut rng = XorShift64(42);
        let secret = Secret::generate(kind, "example.com", &mut rng);
        let mut cfg = mtpx::config::Config::simple("127.0.0.1:0".parse().unwrap(), secret.clone());
        cfg.workers = 2;
        cfg.dc_overrides = vec![(2, vec![dc_addr])];
        let proxy = mtpx::io::start(cfg).unwrap();
        let mut c = TcpStream::connect(proxy.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tls = kind == SecretKind::FakeTls;
        if tls {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32;
            let hello = faketls::build_client_hello(&mut rng, &secret.key, "example.com", now);
            c.write_all(&hello).unwrap();
            let mut random = [0u8; 32];
            random.copy_from_slice(&hello[11..43]);
            let mut flight = Vec::new();
            let mut b = [0u8; 8192];
            loop {
                let n = c.read(&mut b).unwrap();
                assert!(n > 0, "closed during flight");
                flight.extend_from_slice(&b[..n]);
                if let Some(len) = faketls::verify_server_flight(&flight, &random, &secret.key).unwrap() { assert_eq!(len, flight.len()); break; }
            }
            eprintln!("flight ok {} bytes", flight.len());
        }
        let (frame, mut enc, mut dec) = obfs2::client_frame(&mut rng, &secret.key, Tag::Padded, 2);
        let mut payload = vec![7u8; 100000];
        for (i, b) in payload.iter_mut().enumerate() { *b = (i % 251) as u8; }
        let mut wire = payload.clone();
        enc.apply_keystream(&mut wire);
        let mut all = frame.to_vec();
        all.extend_from_slice(&wire);
        if tls {
            let mut framed = Vec::new();
            for ch in all.chunks(3000) { framed.extend_from_slice(&faketls::record_header(ch.len() as u16)); framed.extend_from_slice(ch); }
            all = framed;
        }
        c.write_all(&all).unwrap();
        let mut got = Vec::new();
        let mut b = vec![0u8; 65536];
        let mut raw = Vec::new();
        while got.len() < payload.len() {
            let n = c.read(&mut b).unwrap();
            assert!(n > 0, "closed early, got {}", got.len());
            if tls {
                raw.extend_from_slice(&b[..n]);
                while raw.len() >= 5 { let l = u16::from_be_bytes([raw[3], raw[4]]) as usize; if raw.len() < 5 + l { break; } got.extend_from_slice(&raw[5..5+l]); raw.drain(..5+l); }
            } else { got.extend_from_slice(&b[..n]); }
        }
        dec.apply_keystream(&mut got);
        assert!(got == payload, "mismatch");
        eprintln!("{:?} ok", kind);
        drop(c);
        proxy.shutdown();
    }
}
