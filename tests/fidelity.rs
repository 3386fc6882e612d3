//! Fidelity of the fake FakeTLS flight against a real site: nginx on loopback with a
//! self-signed certificate (made by openssl in a temp dir), started and stopped here.
//!
//! For the same ClientHello, the site's first flight and mtpx's fake flight must have the same
//! ServerHello record (byte for byte, except the random and the key share), the same CCS record,
//! and the same total encrypted length within the jitter the site itself shows.
//!
//! Needs `nginx` and `openssl` (Debian: `apt-get install -y nginx-light openssl`, or `nginx`).
//! Without them the tests print `SKIP` and pass, unless `MTPX_REQUIRE_NGINX=1` (CI) makes them
//! fail. `MTPX_CAPTURE_DIR=<dir>` writes the raw flights taken (to refresh tests/data/tls/).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtpx::io::scout;
use mtpx::proto::faketls::{
    self, build_client_hello, parse_client_hello, verify_server_flight, write_server_hello_as,
};
use mtpx::proto::tlsprofile::{
    EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS, GROUP_X25519, MAX_CIPHERTEXT, Observation, Profile,
    Unusable, parse_server_flight,
};
use mtpx::proto::{Rng, XorShift64};

const HOST: &str = "fidelity.example";
const KEY: [u8; 16] = [0x5a; 16];
const PROBES: u32 = 10;
const TIMEOUT: Duration = Duration::from_secs(5);

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Tools missing: skip (or fail when the environment requires nginx).
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (find("nginx"), find("openssl")) {
        (Some(n), Some(o)) => Some((n, o)),
        _ => {
            assert!(
                std::env::var_os("MTPX_REQUIRE_NGINX").is_none(),
                "nginx/openssl not found but MTPX_REQUIRE_NGINX is set"
            );
            eprintln!("SKIP: nginx or openssl not found (apt-get install -y nginx-light openssl)");
            None
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Cert {
    Rsa2048,
    EcdsaP256,
}

/// An nginx serving TLS on 127.0.0.1, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx_conf(dir: &Path, port: u16, protocols: &str, temp_paths: &[&str]) -> String {
    let d = dir.display();
    let temps: String = temp_paths
        .iter()
        .map(|t| format!("  {t}_temp_path {d}/tmp_{t};\n"))
        .collect();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log warn;\n\
         pid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
         {temps}  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {HOST};\n\
         ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
         ssl_protocols {protocols};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

fn start_nginx(nginx: &Path, openssl: &Path, cert: Cert, protocols: &str) -> Nginx {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mtpx-fidelity-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let newkey = match cert {
        Cert::Rsa2048 => vec!["-newkey", "rsa:2048"],
        Cert::EcdsaP256 => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    };
    assert!(
        run(Command::new(openssl)
            .args(["req", "-x509", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={HOST}"))
            .args(newkey)
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))),
        "openssl could not make a certificate"
    );
    let port = free_port();
    let conf = dir.join("nginx.conf");
    // Builds differ in which temp-path directives exist; take the first config nginx accepts.
    let variants: [&[&str]; 3] = [
        &["client_body", "proxy", "fastcgi", "uwsgi", "scgi"],
        &["client_body", "proxy", "fastcgi"],
        &["client_body"],
    ];
    let ok = variants.iter().any(|v| {
        std::fs::write(&conf, nginx_conf(&dir, port, protocols, v)).unwrap();
        run(Command::new(nginx)
            .arg("-t")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf))
    });
    assert!(ok, "nginx rejects every config variant (see nginx -t)");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let n = Nginx { child, addr, dir };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < until, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

fn records(flight: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut p = 0;
    while let Some(h) = flight.get(p..p + 5) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        out.push((h[0], len));
        p += 5 + len;
    }
    out
}

fn save(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("MTPX_CAPTURE_DIR") {
        let path = Path::new(&dir).join(name);
        std::fs::write(&path, bytes).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

/// Probes `site` PROBES times into a profile, then compares, for one shared ClientHello, the
/// site's flight with the fake one built from the learned shape.
fn check_fidelity(site: &Nginx, label: &str) {
    let profile = Mutex::new(Profile::default());
    let (summary, answered) = scout::raid(&[site.addr], HOST, PROBES, TIMEOUT, &profile);
    let profile = profile.into_inner().unwrap();
    eprintln!("[{label}] learned: {summary}");
    assert_eq!(answered, PROBES);
    assert_eq!(summary.samples, PROBES as usize, "{:?}", summary.problem);
    assert_eq!(summary.problem, None);
    let samples: Vec<Observation> = profile.samples().copied().collect();
    for o in &samples {
        assert!(o.is_tls13() && o.ccs);
        // nginx with OpenSSL: EncryptedExtensions, Certificate, CertificateVerify, Finished.
        assert_eq!(o.records().len(), 4, "{:?}", o.records());
        let t = &o.server_hello;
        assert_eq!(t.extension_types(), [EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE]);
        assert_eq!(t.key_share_group(), Some(GROUP_X25519));
        assert_eq!(t.session_id_len(), 32);
        assert_eq!(t.cipher_suite(), Some(0x1301));
        assert_eq!(o.server_hello, samples[0].server_hello);
        eprintln!(
            "[{label}] site records {:?} -> one-record size {}",
            o.records(),
            o.one_record_len()
        );
    }
    assert_eq!(summary.records, 4);
    assert!(summary.advice().is_some(), "four records must be reported");
    let shape = profile.shape();
    assert!(shape.learned);
    assert_eq!(shape.site_records, 4);
    assert_eq!(usize::from(shape.noise_min), summary.min);
    assert_eq!(usize::from(shape.noise_max), summary.max);

    // The same ClientHello to the site and to the fake.
    let mut rng = XorShift64(0xf1de_1177);
    let now = u32::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let hello_rec = build_client_hello(&mut rng, &KEY, HOST, now);
    let hello = parse_client_hello(&hello_rec[5..]).unwrap();
    let (real_obs, real) = scout::capture(site.addr, &hello_rec, TIMEOUT).unwrap();
    save(&format!("nginx-{label}-flight.bin"), &real);
    save(&format!("nginx-{label}-client-hello.bin"), &hello_rec);

    let mut scalar = [0u8; 32];
    rng.fill(&mut scalar);
    let public = mtpx::proto::x25519::public_key(&scalar);
    let mut out = vec![0u8; 20_000];
    let noise = shape.noise_len(&mut rng);
    let n = write_server_hello_as(
        &mut out,
        &hello,
        &KEY,
        &mut rng,
        &shape.template,
        noise,
        &public,
    );
    assert!(n > 0);
    let fake = &out[..n];
    assert_eq!(verify_server_flight(fake, &hello.random, &KEY), Ok(Some(n)));
    let fake_obs = parse_server_flight(fake).unwrap();

    let real_recs = records(&real);
    let fake_recs = records(fake);
    eprintln!("[{label}] real flight records (type, len): {real_recs:?}");
    eprintln!("[{label}] fake flight records (type, len): {fake_recs:?}");
    // ServerHello and CCS records: same lengths, same bytes except random and key share.
    assert_eq!(fake_recs[..2], real_recs[..2]);
    let sh = 5 + real_recs[0].1;
    let mut mask = vec![true; sh + 6];
    mask[11..43].fill(false); // server random
    let key_at = sh - 32; // key_share is the last extension for nginx
    mask[key_at..sh].fill(false);
    for (i, keep) in mask.iter().enumerate() {
        if *keep {
            assert_eq!(
                fake[i], real[i],
                "[{label}] byte {i} of ServerHello+CCS differs"
            );
        }
    }
    assert_eq!(
        &fake[key_at..sh],
        &public,
        "the key share is our genuine public key"
    );
    assert_eq!(fake_obs.server_hello, real_obs.server_hello);
    assert_eq!(fake_obs.ccs, real_obs.ccs);
    // One encrypted record carrying what the site's four put on the wire.
    assert_eq!(fake_obs.records().len(), 1);
    let real_wire = real_obs.encrypted_wire_len();
    let fake_wire = fake_obs.encrypted_wire_len();
    eprintln!(
        "[{label}] encrypted bytes on the wire: real {real_wire}, fake {fake_wire}, \
         site mean {} jitter {} (range {}..{})",
        summary.mean + 5,
        summary.jitter,
        summary.min + 5,
        summary.max + 5
    );
    assert!(real_wire.abs_diff(summary.mean + 5) <= summary.jitter);
    assert!(fake_wire.abs_diff(summary.mean + 5) <= summary.jitter);
    assert!((summary.min + 5..=summary.max + 5).contains(&fake_wire));
    assert_eq!(
        real.len().abs_diff(fake.len()),
        real_wire.abs_diff(fake_wire)
    );
    assert!(noise <= MAX_CIPHERTEXT);

    // Many fake flights stay within the site's range and never exceed one record.
    for _ in 0..200 {
        let noise = shape.noise_len(&mut rng);
        let n = write_server_hello_as(
            &mut out,
            &hello,
            &KEY,
            &mut rng,
            &shape.template,
            noise,
            &public,
        );
        let o = parse_server_flight(&out[..n]).unwrap();
        assert!((summary.min..=summary.max).contains(&o.one_record_len()));
    }
}

#[test]
fn fake_flight_matches_nginx_rsa() {
    let Some((nginx, openssl)) = tools() else {
        return;
    };
    let site = start_nginx(&nginx, &openssl, Cert::Rsa2048, "TLSv1.2 TLSv1.3");
    check_fidelity(&site, "rsa");
}

#[test]
fn fake_flight_matches_nginx_ecdsa() {
    let Some((nginx, openssl)) = tools() else {
        return;
    };
    let site = start_nginx(&nginx, &openssl, Cert::EcdsaP256, "TLSv1.2 TLSv1.3");
    check_fidelity(&site, "ecdsa");
}

#[test]
fn tls12_site_falls_back_to_builtin_shape() {
    let Some((nginx, openssl)) = tools() else {
        return;
    };
    let site = start_nginx(&nginx, &openssl, Cert::Rsa2048, "TLSv1.2");
    let hello_rec = build_client_hello(&mut XorShift64(12), &KEY, HOST, 0);
    let (obs, raw) = scout::capture(site.addr, &hello_rec, TIMEOUT).unwrap();
    save("nginx-tls12-flight.bin", &raw);
    assert_eq!(records(&raw)[0].0, 0x16);
    assert!(!obs.is_tls13());
    assert_eq!(obs.server_hello.supported_version(), None);
    assert_eq!(obs.check(), Err(Unusable::NotTls13(0x0303)));
    let profile = Mutex::new(Profile::default());
    let (summary, answered) = scout::raid(&[site.addr], HOST, 3, TIMEOUT, &profile);
    eprintln!("[tls1.2] {summary}");
    assert_eq!(answered, 3);
    assert_eq!(summary.samples, 0);
    assert_eq!(summary.refused, 3);
    assert_eq!(summary.problem, Some(Unusable::NotTls13(0x0303)));
    let shape = profile.lock().unwrap().shape();
    assert!(!shape.learned);
    assert_eq!((shape.noise_min, shape.noise_max), (2500, 4699));
}

#[test]
fn unreachable_site_keeps_builtin_shape_and_scout_stops() {
    // A port nobody listens on: every probe fails, the shape stays the default.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let err = scout::probe_once(dead, HOST, TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let profile = Arc::new(Mutex::new(Profile::default()));
    let s = scout::spawn(
        move || vec![dead],
        HOST.to_string(),
        Duration::from_secs(3600),
        2,
        profile.clone(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop waits for the hour-long sleep"
    );
    let p = profile.lock().unwrap();
    assert!(!p.shape().learned);
    assert_eq!(p.summary().samples, 0);
    let _ = faketls::MAX_RECORD_PAYLOAD;
}

#[test]
fn scout_thread_learns_from_nginx() {
    let Some((nginx, openssl)) = tools() else {
        return;
    };
    let site = start_nginx(&nginx, &openssl, Cert::Rsa2048, "TLSv1.3");
    let addr = site.addr;
    let profile = Arc::new(Mutex::new(Profile::default()));
    let s = scout::spawn(
        move || vec![addr],
        HOST.to_string(),
        Duration::from_secs(3600),
        3,
        profile.clone(),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while profile.lock().unwrap().summary().samples < 3 {
        assert!(Instant::now() < until, "scout learned nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop();
    let shape = profile.lock().unwrap().shape();
    assert!(shape.learned);
    assert_eq!(shape.site_records, 4);
}
