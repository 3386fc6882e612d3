//! The post-quantum key exchange against a real site that speaks it: Node.js 24 (OpenSSL 3.5)
//! with `ecdhCurve X25519MLKEM768:X25519` (tests/pq/site.mjs), fronted by mtpx.
//!
//! For a TDLib-1.8.69-shaped hello (derived from the captured one: X25519MLKEM768 + x25519
//! shares) and an x25519-only hello, sent to the site and (with the secret's HMAC) to mtpx, the
//! ServerHello record length, the record sequence up to the first application-data record, the
//! key-share group and the encrypted flight size must match; mtpx's flight HMAC must verify.
//! A hello without an X25519MLKEM768 share never gets one; `post-quantum = "off"` answers
//! every hello with x25519.
//!
//! Needs Node.js >= 24 (.venv-pq-node, from PyPI, or `MTPX_PQ_NODE`) and `openssl` (for the
//! certificate), which `make test` installs (scripts/test-deps.sh). Without them the tests
//! fail, naming the command that installs them: they never skip.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{unix_now, wait_until};
use mtpx::background::scout;
use mtpx::proto::faketls::{build_client_hello, verify_server_flight};
use mtpx::proto::tlsprofile::{
    GROUP_X25519, GROUP_X25519_MLKEM768, HelloKind, Observation, parse_server_flight,
};
use mtpx::proto::{Rng, XorShift64, mlkem, x25519};

const HOST: &str = "pq.example";
const TIMEOUT: Duration = Duration::from_secs(5);
const SAMPLES: usize = 6;

struct Site {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Node.js that speaks X25519MLKEM768: `MTPX_PQ_NODE`, or the one scripts/test-deps.sh
/// puts in .venv-pq-node. Missing: the test fails (it never skips) with the install command.
fn node() -> PathBuf {
    let p = std::env::var_os("MTPX_PQ_NODE").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.venv-pq-node/bin/node"
            ))
        },
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} not found: install what the tests need with scripts/test-deps.sh (`make test` runs \
         it)",
        p.display()
    );
    p
}

fn start_site(tag: &str) -> Site {
    let node = node();
    let dir = std::env::temp_dir().join(format!("mtpx-pq-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-nodes", "-days", "2", "-newkey", "ec", "-pkeyopt",
        ])
        .arg("ec_paramgen_curve:prime256v1")
        .arg("-subj")
        .arg(format!("/CN={HOST}"))
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl could not make a certificate");
    let mut child = Command::new(node)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pq/site.mjs"))
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the site's port");
    Site {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    }
}

const TDLIB: &[u8] = include_bytes!("data/tls/tdlib-1.8.69-client-hello.bin");

/// A ClientHello shaped exactly like TDLib 1.8.69's captured one (same suites, extensions and
/// order, same ECH GREASE), for `host`, with a fresh session id, fresh key shares (a fake
/// ML-KEM-768 encapsulation key, a genuine X25519 point) and the HMAC random of `key`.
fn tdlib_hello(rng: &mut impl Rng, key: &[u8; 16], host: &str, now: u32) -> Vec<u8> {
    let t = TDLIB;
    let mut p = 5 + 4 + 2 + 32;
    let sid_at = p + 1;
    p += 1 + usize::from(t[p]);
    p += 2 + usize::from(u16::from_be_bytes([t[p], t[p + 1]]));
    p += 1 + usize::from(t[p]);
    let head = &t[..p];
    let mut exts = Vec::new();
    let mut i = p + 2;
    while i + 4 <= t.len() {
        let kind = u16::from_be_bytes([t[i], t[i + 1]]);
        let len = usize::from(u16::from_be_bytes([t[i + 2], t[i + 3]]));
        let mut data = t[i + 4..i + 4 + len].to_vec();
        if kind == 0 {
            let h = host.as_bytes();
            data = ((h.len() + 3) as u16).to_be_bytes().to_vec();
            data.push(0);
            data.extend_from_slice(&(h.len() as u16).to_be_bytes());
            data.extend_from_slice(h);
        } else if kind == 0x33 {
            let x = x25519::keypair(rng).1;
            let mut shares = Vec::new();
            let mut j = 2;
            while j + 4 <= data.len() {
                let g = u16::from_be_bytes([data[j], data[j + 1]]);
                let l = usize::from(u16::from_be_bytes([data[j + 2], data[j + 3]]));
                shares.extend_from_slice(&data[j..j + 4]);
                match g {
                    0x11ec => {
                        let mut ek = [0u8; mlkem::ENCAPS_KEY_LEN];
                        mlkem::fake_encaps_key(rng, &mut ek);
                        shares.extend_from_slice(&ek);
                        shares.extend_from_slice(&x);
                    }
                    0x001d => shares.extend_from_slice(&x),
                    _ => shares.extend_from_slice(&data[j + 4..j + 4 + l]),
                }
                j += 4 + l;
            }
            data = (shares.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&shares);
        }
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(&data);
        i += 4 + len;
    }
    let mut rec = head.to_vec();
    rec.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    rec.extend_from_slice(&exts);
    let n = rec.len() - 9;
    rec[3..5].copy_from_slice(&((n + 4) as u16).to_be_bytes());
    rec[6..9].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    rng.fill(&mut rec[sid_at..sid_at + 32]);
    rec[11..43].fill(0);
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(&rec);
    let mut mac: [u8; 32] = m.finalize().into_bytes().into();
    for (d, s) in mac[28..].iter_mut().zip(now.to_le_bytes()) {
        *d ^= s;
    }
    rec[11..43].copy_from_slice(&mac);
    rec
}

/// What is compared: ServerHello record length, record types up to the first application-data
/// record, key-share group, encrypted bytes on the wire.
#[derive(Debug, PartialEq)]
struct Shape {
    server_hello: u16,
    head: Vec<u8>,
    group: Option<u16>,
    encrypted: usize,
}

fn shape(flight: &[u8], obs: &Observation) -> Shape {
    let mut head = Vec::new();
    let mut p = 0;
    while let Some(h) = flight.get(p..p + 5) {
        head.push(h[0]);
        if h[0] == 0x17 {
            break;
        }
        p += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
    }
    Shape {
        server_hello: obs.server_hello_record_len,
        head,
        group: obs.server_hello.key_share_group(),
        encrypted: obs.encrypted_wire_len(),
    }
}

/// mtpx's whole answer to a valid hello, HMAC checked.
fn mtpx_flight(proxy: SocketAddr, hello: &[u8], key: &[u8; 16]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(hello).unwrap();
    let random: [u8; 32] = hello[11..43].try_into().unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 8192];
    loop {
        match verify_server_flight(&got, &random, key) {
            Ok(Some(n)) => {
                assert_eq!(n, got.len(), "bytes after the flight");
                return got;
            }
            Ok(None) => {}
            Err(e) => panic!("mtpx's flight does not verify: {e:?}"),
        }
        let n = s.read(&mut b).expect("read the flight");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&b[..n]);
    }
}

fn start_proxy(site: &Site, key: [u8; 16], post_quantum: bool) -> mtpx::io::Proxy {
    let secret = mtpx::proto::secret::Secret {
        kind: mtpx::proto::secret::SecretKind::FakeTls,
        key,
        host: HOST.to_string(),
    };
    let mut cfg = mtpx::config::Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret);
    cfg.domain_fronting.ip = Some(site.addr.ip());
    cfg.domain_fronting.port = site.addr.port();
    cfg.doppelganger.repeats_per_raid = SAMPLES as u32;
    cfg.doppelganger.post_quantum = post_quantum;
    cfg.tolerate_time_skewness = Duration::from_secs(30);
    let proxy = mtpx::io::start(cfg).expect("start");
    let learned = wait_until(Duration::from_secs(30), || {
        HelloKind::ALL
            .iter()
            .all(|&k| proxy.tls_summary(k).samples >= SAMPLES)
    });
    assert!(learned, "the scout did not learn both kinds");
    proxy
}

#[test]
fn mtpx_answers_each_kind_of_hello_as_the_pq_site_does() {
    let site = start_site("mirror");
    let key = [0x3c; 16];
    let proxy = start_proxy(&site, key, true);
    let mut rng = XorShift64(0x9e);
    type Make = fn(&mut XorShift64, &[u8; 16], &str, u32) -> Vec<u8>;
    let kinds: [(&str, Make, u16); 2] = [
        ("TDLib 1.8.69", tdlib_hello, GROUP_X25519_MLKEM768),
        ("x25519 only", build_client_hello, GROUP_X25519),
    ];
    for (label, make, group) in kinds {
        let mut site_shapes = Vec::new();
        for _ in 0..SAMPLES {
            let hello = make(&mut rng, &[0; 16], HOST, unix_now());
            let (obs, raw) = scout::capture(site.addr, &hello, TIMEOUT).unwrap();
            site_shapes.push(shape(&raw, &obs));
        }
        let s0 = &site_shapes[0];
        assert_eq!(s0.group, Some(group), "{label}: the site's group");
        assert!(
            site_shapes
                .iter()
                .all(|s| s.server_hello == s0.server_hello && s.head == s0.head)
        );
        let lo = site_shapes.iter().map(|s| s.encrypted).min().unwrap();
        let hi = site_shapes.iter().map(|s| s.encrypted).max().unwrap();
        let kind = if group == GROUP_X25519 {
            HelloKind::Classic
        } else {
            HelloKind::PostQuantum
        };
        let learned = proxy.tls_summary(kind);
        let (llo, lhi) = (learned.min + 5, learned.max + 5);
        for i in 0..10 {
            let hello = make(&mut rng, &key, HOST, unix_now());
            let flight = mtpx_flight(proxy.local_addr(), &hello, &key);
            let obs = parse_server_flight(&flight).unwrap();
            let m = shape(&flight, &obs);
            if i == 0 {
                eprintln!("[{label}] site {s0:?} (encrypted {lo}..{hi}); mtpx {m:?}");
            }
            assert_eq!(
                m.server_hello, s0.server_hello,
                "{label}: ServerHello length"
            );
            assert_eq!(m.head, s0.head, "{label}: records up to the first app data");
            assert_eq!(m.group, Some(group), "{label}: key-share group");
            // The site's size varies with its ECDSA signature (a byte or two): mtpx's stays
            // within what the scout saw, which is the site's range.
            assert!(
                (llo..=lhi).contains(&m.encrypted),
                "{label}: {} not in {llo}..={lhi}",
                m.encrypted
            );
            assert!(
                m.encrypted.abs_diff(lo) <= 4 && m.encrypted.abs_diff(hi) <= 4,
                "{label}: encrypted {} vs the site's {lo}..{hi}",
                m.encrypted
            );
        }
    }
    proxy.shutdown();
}

#[test]
fn post_quantum_off_answers_x25519_to_everyone() {
    let site = start_site("off");
    let key = [0x3d; 16];
    let proxy = start_proxy(&site, key, false);
    let mut rng = XorShift64(0x9f);
    for _ in 0..5 {
        let hello = tdlib_hello(&mut rng, &key, HOST, unix_now());
        let flight = mtpx_flight(proxy.local_addr(), &hello, &key);
        let obs = parse_server_flight(&flight).unwrap();
        assert_eq!(obs.server_hello.key_share_group(), Some(GROUP_X25519));
        assert_eq!(obs.server_hello_record_len, 122);
    }
    // The site itself answers the same hello with X25519MLKEM768: "off" is a downgrade.
    let hello = tdlib_hello(&mut rng, &key, HOST, unix_now());
    let (obs, _) = scout::capture(site.addr, &hello, TIMEOUT).unwrap();
    assert_eq!(
        obs.server_hello.key_share_group(),
        Some(GROUP_X25519_MLKEM768)
    );
    proxy.shutdown();
}
