//! Logs as a weapon (issue 12), on the real binary: probes cannot flood the log at the
//! default level, and a stderr nobody reads cannot stall the proxy.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mtpx::proto::obfs2::Tag;
use mtpx::proto::secret::{Secret, SecretKind};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Mtpx(Child);

impl Drop for Mtpx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("mtpx-logs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config: `secret` on `addr`, failed handshakes fronted to `front` (a refused port: each
/// probe logs `fronting` and `fronting-failed`), DC 2 at `dc`, extra TOML appended.
fn write_config(
    dir: &Path,
    secret: &Secret,
    addr: SocketAddr,
    front: SocketAddr,
    dc: SocketAddr,
    extra: &str,
) -> PathBuf {
    let path = dir.join("mtpx.toml");
    std::fs::write(
        &path,
        format!(
            "secret = \"{}\"\nbind-to = \"{addr}\"\n{extra}\n[domain-fronting]\nip = \"{}\"\n\
             port = {}\n\n[network.dc-overrides]\n2 = \"{dc}\"\n",
            secret.to_hex(),
            front.ip(),
            front.port(),
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, stderr: Stdio, addr: SocketAddr) -> Mtpx {
    let child = Command::new(env!("CARGO_BIN_EXE_mtpx"))
        .arg("run")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start mtpx");
    let m = Mtpx(child);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "mtpx never listened"
    );
    m
}

/// One-byte probes: each is rejected, fronted to the refused port, and closed.
fn probe(addr: SocketAddr, n: usize) {
    for i in 0..n {
        let mut s = connect(addr).unwrap_or_else(|e| panic!("probe {i}: {e}"));
        s.write_all(b"\x00").expect("probe byte");
        let _ = read_until_closed(&mut s, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("probe {i}: {e}"));
    }
}

/// SIGTERM, then the exit status must be success within 15 s.
fn stop(m: &mut Mtpx) {
    let rc = Command::new("kill")
        .arg("-15")
        .arg(m.0.id().to_string())
        .status()
        .expect("kill");
    assert!(rc.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = m.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "mtpx did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

/// Lines of `log` for event `event`, and the `suppressed=` counts of its summaries.
fn count(log: &str, event: &str) -> (u64, u64) {
    let shown = log
        .lines()
        .filter(|l| l.contains(&format!(" event={event} ")))
        .count() as u64;
    let suppressed = log
        .lines()
        .filter(|l| l.contains(" event=log-suppressed ") && l.contains(&format!(" of={event} ")))
        .filter_map(|l| l.split("suppressed=").nth(1)?.trim().parse::<u64>().ok())
        .sum();
    (shown, suppressed)
}

/// 200 one-byte probes: at the default level, at most 10 lines per kind of probe event every
/// 10 s, and the rest summed up in `log-suppressed` lines (every probe accounted for); with
/// `debug = true`, one line per probe.
#[test]
fn probe_lines_are_rate_limited_at_the_default_level() {
    const PROBES: u64 = 200;
    for debug in [false, true] {
        let dir = Dir::new(if debug { "debug" } else { "info" });
        let refused = RefusedPort::new();
        let dc = FakeDc::start(DcMode::Echo);
        let secret = secret(SecretKind::FakeTls, 1);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let extra = if debug { "debug = true\n" } else { "" };
        let cfg = write_config(&dir.0, &secret, addr, refused.addr, dc.addr, extra);
        let log_path = dir.0.join("stderr.log");
        let mut m = spawn(
            &cfg,
            Stdio::from(std::fs::File::create(&log_path).unwrap()),
            addr,
        );
        let t = Instant::now();
        probe(addr, PROBES as usize);
        let took = t.elapsed();
        stop(&mut m);
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("event=proxy-stopped"), "{log}");
        // The probes span this many 10 s windows at most.
        let windows = took.as_secs() / 10 + 2;
        // `spawn`'s check that the proxy listens was one more probe.
        let all = PROBES + 1;
        for event in ["fronting", "fronting-failed"] {
            let (shown, suppressed) = count(&log, event);
            if debug {
                // Every one, except lines the ring dropped if the writer fell behind (at
                // debug a probe writes three lines; a loaded machine may delay the writer).
                let dropped = log
                    .lines()
                    .filter(|l| l.contains(" event=log-lines-dropped "))
                    .filter_map(|l| l.split("total=").nth(1)?.trim().parse::<u64>().ok())
                    .max()
                    .unwrap_or(0);
                assert_eq!(suppressed, 0, "{event}");
                assert!(
                    shown <= all && shown + dropped >= all,
                    "{event}: {shown} lines, {dropped} dropped, {all} probes"
                );
            } else {
                assert!(shown <= 10 * windows, "{event}: {shown} lines in {took:?}");
                assert_eq!(
                    shown + suppressed,
                    all,
                    "{event}: every probe accounted for\n{log}"
                );
            }
        }
    }
}

/// stderr is a pipe nobody reads, logging at debug: once the pipe is full the proxy drops log
/// lines (and counts them) instead of stalling its workers; a client relays 4 MB meanwhile.
#[test]
fn unread_stderr_does_not_stall_the_proxy() {
    let dir = Dir::new("blocked");
    // Every probe comes from 127.0.0.1: no per-source cap (it would turn most away before
    // they log anything).
    let refused = RefusedPort::new();
    let dc = FakeDc::start(DcMode::Echo);
    let secret = secret(SecretKind::Secure, 2);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let extra = format!(
        "debug = true\nworkers = 1\nconcurrency-per-ip = 0\n\n[stats.prometheus]\nenabled = true\n\
         bind-to = \"{metrics}\"\nhttp-path = \"/metrics\"\n"
    );
    let cfg = write_config(&dir.0, &secret, addr, refused.addr, dc.addr, &extra);
    let mut m = spawn(&cfg, Stdio::piped(), addr);
    // Held, never read: 64 KiB of log lines fill the pipe.
    let _stderr = m.0.stderr.take().expect("stderr pipe");
    // Each probe writes a few lines (about 500 bytes): 600 of them are 300 KB.
    let probes = std::thread::spawn(move || {
        for _ in 0..600 {
            if let Ok(mut s) = connect(addr) {
                let _ = s.write_all(b"\x00");
            }
        }
    });
    probes.join().expect("probes");
    let mut c = TestClient::connect(addr, &secret, &ClientOpts::new(Tag::Padded, 2, 3))
        .expect("handshake with stderr blocked");
    c.rx.set_read_timeout(Duration::from_secs(10));
    let data = Pattern::new(3).take(4 << 20);
    let got = c.echo_round_trip(&data).expect("relay with stderr blocked");
    assert!(got == data, "bytes differ");
    drop(c);
    let (status, body) = scrape(metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let dropped = sample(&body, "mtg_log_lines_dropped").unwrap_or(0.0);
    assert!(dropped > 0.0, "no log line was dropped:\n{body}");
    stop(&mut m);
}
