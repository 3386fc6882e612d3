//! `mtpx-bench soak`: the hostile soak (issue 12). While valid clients echo through mtpx to a
//! fake DC, attackers try to deny them service or to unmask the proxy, and probes check that
//! mtpx answers as the fronted site does:
//!
//! ```text
//! mtpx-bench soak [--mtpx PATH] [--compare OLD] [--labels OLD,NEW] [--quick]
//!                 [--duration SECS] [--attacks a,b,...] [--out FILE] [intensities...]
//! mtpx-bench soak site                     (internal: the stand-in fronting site)
//! ```
//!
//! Per binary: fake DCs (`fake-dc`), the stand-in site (`soak site`), and two mtpx
//! (`run` with a written config: an ee one, the target of most attacks, and a dd one, for dd
//! clients, dd replays and dd probes), all on 127.0.0.0/8. Phases: a quiet baseline, each
//! attack alone, all of them at once, then a recovery (`--quick`: baseline, all, recovery).
//! Clients (`load::client`), probes (`load::prober`) and the recorder of handshakes
//! (`attack::recorder`) run through every phase; whatever they see is counted in the phase it
//! happened in. mtpx's CPU, RSS and descriptors come from /proc. With `--compare OLD`, OLD runs
//! first, then the binary under test, and the table shows both side by side.

mod attack;
mod load;
mod site;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtpx::proto::XorShift64;
use mtpx::proto::secret::{Secret, SecretKind};

use crate::common::*;
use attack::Attack;
use load::Probe;

/// The FakeTLS host of the ee secret (the stand-in site is reached by `[domain-fronting] ip`).
const HOST: &str = "localhost";

pub fn main(args: &[String]) -> io::Result<()> {
    match args.first().map(String::as_str) {
        Some("site") => site::run(),
        _ => orchestrate(args),
    }
}

// ------------------------------------------------------------------------------------------
// Options

pub struct Opts {
    mtpx: PathBuf,
    compare: Option<PathBuf>,
    labels: Vec<String>,
    quick: bool,
    duration: Duration,
    out: PathBuf,
    workers: usize,
    buffers: usize,
    concurrency: usize,
    skew_s: u64,
    clients: usize,
    dd_clients: usize,
    direct_clients: usize,
    echo_ms: u64,
    echo_max: usize,
    echo_timeout: Duration,
    reconnect_every: u32,
    probe_ms: u64,
    probe_timeout: Duration,
    attacks: Vec<Attack>,
    slowloris: usize,
    flood: usize,
    fronted_readers: usize,
    client_readers: usize,
    empty_floods: usize,
    empty_rate: u64,
    garbage: usize,
    replay_ms: u64,
}

const USAGE: &str = "usage: mtpx-bench soak [--mtpx PATH] [--compare OLD_MTPX] [--labels OLD,NEW]
    [--quick] [--duration SECS (180)] [--attacks LIST (all)] [--out FILE (target/soak/soak.md)]
    [--workers N (2)] [--buffers N (48)] [--concurrency N (1500)] [--skew SECS (2)]
    [--clients N (64)] [--dd-clients N (8 of them)] [--direct-clients N (8, more; no mtpx)]
    [--echo-ms MS (50)] [--echo-max BYTES (8192)]
    [--echo-timeout SECS (5)] [--reconnect-every N (40)] [--probe-ms MS (200)]
    [--slowloris N (400)] [--flood N (concurrency + 500)] [--fronted-readers N (buffers)]
    [--client-readers N (1.5 x buffers)] [--empty-floods N (2)] [--empty-rate BYTES/S (8388608)]
    [--garbage THREADS (2)] [--replay-ms MS (250)]
attacks: slowloris, empty-records, fronted-readers, client-readers, garbage, replays, flood";

fn parse(args: &[String]) -> Result<Opts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        mtpx: PathBuf::from(std::env::var("MTPX_BIN").unwrap_or("target/release/mtpx".into())),
        compare: None,
        labels: Vec::new(),
        quick,
        duration: Duration::from_secs(if quick { 30 } else { 180 }),
        out: PathBuf::from("target/soak/soak.md"),
        workers: 2,
        buffers: 48,
        concurrency: 1500,
        skew_s: 2,
        clients: 64,
        dd_clients: 8,
        direct_clients: 8,
        echo_ms: 50,
        echo_max: 8192,
        echo_timeout: Duration::from_secs(5),
        reconnect_every: 40,
        probe_ms: 200,
        probe_timeout: Duration::from_secs(12),
        attacks: Attack::ALL.to_vec(),
        slowloris: 400,
        flood: 0,
        fronted_readers: 0,
        client_readers: 0,
        empty_floods: 2,
        empty_rate: 8 << 20,
        garbage: 2,
        replay_ms: 250,
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || {
            i += 1;
            args.get(i).cloned().ok_or(format!("{a} needs a value"))
        };
        fn n<T: std::str::FromStr>(a: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("bad {a}: {v}"))
        }
        match a {
            "--quick" => {}
            "--mtpx" => o.mtpx = PathBuf::from(val()?),
            "--compare" => o.compare = Some(PathBuf::from(val()?)),
            "--labels" => o.labels = val()?.split(',').map(str::to_string).collect(),
            "--duration" => o.duration = Duration::from_secs(n(a, val()?)?),
            "--out" => o.out = PathBuf::from(val()?),
            "--attacks" => {
                o.attacks = val()?
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(|k| Attack::from_key(k).ok_or(format!("unknown attack {k}")))
                    .collect::<Result<_, _>>()?;
            }
            "--workers" => o.workers = n(a, val()?)?,
            "--buffers" => o.buffers = n(a, val()?)?,
            "--concurrency" => o.concurrency = n(a, val()?)?,
            "--skew" => o.skew_s = n(a, val()?)?,
            "--clients" => o.clients = n(a, val()?)?,
            "--dd-clients" => o.dd_clients = n(a, val()?)?,
            "--direct-clients" => o.direct_clients = n(a, val()?)?,
            "--echo-ms" => o.echo_ms = n(a, val()?)?,
            "--echo-max" => o.echo_max = n(a, val()?)?,
            "--echo-timeout" => o.echo_timeout = Duration::from_secs(n(a, val()?)?),
            "--reconnect-every" => o.reconnect_every = n(a, val()?)?,
            "--probe-ms" => o.probe_ms = n(a, val()?)?,
            "--slowloris" => o.slowloris = n(a, val()?)?,
            "--flood" => o.flood = n(a, val()?)?,
            "--fronted-readers" => o.fronted_readers = n(a, val()?)?,
            "--client-readers" => o.client_readers = n(a, val()?)?,
            "--empty-floods" => o.empty_floods = n(a, val()?)?,
            "--empty-rate" => o.empty_rate = n(a, val()?)?,
            "--garbage" => o.garbage = n(a, val()?)?,
            "--replay-ms" => o.replay_ms = n(a, val()?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        i += 1;
    }
    o.dd_clients = o.dd_clients.min(o.clients);
    // Enough to hold every buffer they can get (fronted connections only ever get half of
    // them; connections spread unevenly over the workers).
    if o.fronted_readers == 0 {
        o.fronted_readers = o.buffers;
    }
    if o.client_readers == 0 {
        o.client_readers = o.buffers * 3 / 2;
    }
    o.echo_max = o.echo_max.clamp(1, 1 << 20);
    o.reconnect_every = o.reconnect_every.max(1);
    Ok(o)
}

/// A phase of the run.
struct Phase {
    name: String,
    secs: u64,
    attacks: Vec<Attack>,
}

fn phases(o: &Opts) -> Vec<Phase> {
    // Full: a twelfth of the time for the baseline, each attack alone and the recovery, a
    // quarter for all attacks at once. Quick: a sixth, two thirds, a sixth.
    let d = o.duration.as_secs().max(12);
    let (quiet, all) = if o.quick {
        (d / 6, d * 2 / 3)
    } else {
        (d / 12, d / 4)
    };
    let p = |name: &str, secs: u64, attacks: Vec<Attack>| Phase {
        name: name.to_string(),
        secs,
        attacks,
    };
    let mut v = vec![p("baseline", quiet, Vec::new())];
    if !o.quick {
        for a in &o.attacks {
            v.push(p(a.key(), quiet, vec![*a]));
        }
    }
    if !o.attacks.is_empty() {
        v.push(p("all attacks", all, o.attacks.clone()));
    }
    v.push(p("recovery", quiet, Vec::new()));
    v
}

// ------------------------------------------------------------------------------------------
// What is measured

/// Client kinds: through the ee mtpx (the target of the attacks), through the dd mtpx, and
/// the control straight to a fake DC (no mtpx: what the load on the machine and on the fake
/// DCs costs by itself).
pub const EE: usize = 0;
pub const DD: usize = 1;
pub const DIRECT: usize = 2;

/// One slow echo round trip (see `load::client`).
pub struct Slow {
    /// Milliseconds since the phase started (when the echo was sent).
    pub at_ms: u32,
    pub kind: u8,
    pub client: u16,
    /// Which echo of its connection (0: the first after the handshake's).
    pub nth: u16,
    pub size: u32,
    pub rtt: u32,
}

/// The first part of a phase, reported apart: attackers start at once (connection storms,
/// unread downloads filling every socket buffer on the way).
pub const ONSET_MS: u32 = 3000;

/// CPU over one 250 ms window, in cores (seconds per second).
#[derive(Clone, Copy, Default)]
pub struct CpuWindow {
    pub at_ms: u32,
    /// The machine (all CPUs), busy.
    pub machine: f64,
    /// On a CPU / runnable but waiting for one: [mtpx ee, fake DCs, site, this tool].
    pub run: [f64; 4],
    pub wait: [f64; 4],
}

/// Samples and counts of one phase.
#[derive(Default)]
pub struct PhaseStats {
    /// Echo round trips sent [`ONSET_MS`] or more after the phase started, µs: [ee, dd,
    /// direct].
    pub rtt_steady: [Vec<u32>; 3],
    pub cpu_windows: Vec<CpuWindow>,
    /// Echo round trips of established clients, µs: [ee, dd, direct].
    pub rtt: [Vec<u32>; 3],
    /// Echoes of 20 ms or more, one by one.
    pub slow: Vec<Slow>,
    /// A new connection's first echo, handshake included, µs.
    pub hs: Vec<u32>,
    /// Echoes: [ee, dd, direct] failures (connect, handshake, echo), and the first few
    /// messages.
    pub errors: [u64; 3],
    pub error_msgs: Vec<String>,
    pub probes: BTreeMap<&'static str, ProbeStats>,
    /// Every probe, one by one (when, which path, how long).
    pub probe_log: Vec<ProbeRec>,
    /// Attackers' counters, gauges (maxima) and connection lifetimes (ms), by attack.
    pub counters: BTreeMap<(&'static str, String), u64>,
    pub gauges: BTreeMap<(&'static str, &'static str), u64>,
    pub lifetimes: BTreeMap<&'static str, Vec<u32>>,
    /// mtpx (ee, dd): CPU seconds in the phase, RSS and descriptors at most.
    pub cpu: [f64; 2],
    pub rss_max: [u64; 2],
    pub fds_max: [usize; 2],
}

/// One probe, for the split by time (see `load::prober`).
pub struct ProbeRec {
    /// Milliseconds since the phase started (when the connect began).
    pub at_ms: u32,
    pub kind: &'static str,
    /// Through mtpx (else straight to the site).
    pub via: bool,
    /// The pair it belongs to: each probe's bytes go to the site first, then through mtpx.
    pub pair: u32,
    /// µs to the answer, or why not.
    pub result: Result<u32, &'static str>,
}

/// A probe this much slower than its kind's median (same path, same phase) is slow.
const SLOW_PROBE_US: u32 = 5_000;

#[derive(Default)]
pub struct ProbeStats {
    pub via: Vec<u32>,
    pub direct: Vec<u32>,
    pub via_fail: BTreeMap<&'static str, u64>,
    pub direct_fail: BTreeMap<&'static str, u64>,
}

impl PhaseStats {
    pub fn count(&mut self, attack: &'static str, what: &str, n: u64) {
        if n > 0 {
            *self.counters.entry((attack, what.to_string())).or_default() += n;
        }
    }

    pub fn gauge(&mut self, attack: &'static str, what: &'static str, v: u64) {
        let g = self.gauges.entry((attack, what)).or_default();
        *g = (*g).max(v);
    }
}

/// Where every thread records, by phase.
pub struct Rec {
    phase: AtomicUsize,
    /// When the run started, and when the current phase did (ms after it).
    t0: Instant,
    phase_ms: AtomicU64,
    stats: Vec<Mutex<PhaseStats>>,
}

/// Between phases (attackers stopping, mtpx settling): nothing is recorded.
const SETTLE: usize = usize::MAX;

impl Rec {
    pub fn phase(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }

    /// Milliseconds from the current phase's start to `t`.
    pub fn since_phase_ms(&self, t: Instant) -> u32 {
        let now = t.saturating_duration_since(self.t0).as_millis() as u64;
        now.saturating_sub(self.phase_ms.load(Ordering::Relaxed)) as u32
    }

    pub fn at(&self, phase: usize, f: impl FnOnce(&mut PhaseStats)) {
        if let Some(m) = self.stats.get(phase) {
            f(&mut m.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    pub fn error(&self, phase: usize, kind: usize, msg: String) {
        self.at(phase, |p| {
            p.errors[kind] += 1;
            if p.error_msgs.len() < 4 {
                p.error_msgs.push(msg);
            }
        });
    }
}

/// A recorded handshake (what a client sent first).
pub struct Recorded {
    at: Instant,
    bytes: Vec<u8>,
}

/// Everything the soak's threads share.
pub struct Env {
    pub opts: Arc<Opts>,
    pub ee: SocketAddrV4,
    pub dd: SocketAddrV4,
    pub site: SocketAddrV4,
    /// The fake DCs (the direct clients' targets).
    pub dcs: Vec<SocketAddrV4>,
    pub ee_key: [u8; 16],
    pub dd_key: [u8; 16],
    pub host: String,
    pub rec: Rec,
    pub stop: AtomicBool,
    /// Recorded handshakes: (ee, dd).
    pub recorded: Mutex<(VecDeque<Recorded>, VecDeque<Recorded>)>,
}

// ------------------------------------------------------------------------------------------
// Small helpers

/// A uniform number in `0..n` (0 when `n == 0`).
pub fn below(rng: &mut XorShift64, n: u64) -> u64 {
    if n == 0 { 0 } else { rng.next_u64() % n }
}

/// Raises this process's open-file limit to the hard limit (children inherit it).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A non-blocking connect from `src`: returns at once, maybe still connecting.
pub fn connect_nb(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let s = socket_from(src)?;
    s.set_nonblocking(true)?;
    let d = sockaddr(dst);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: connect on a descriptor we own; the sockaddr is a local initialised value.
    let r = unsafe { libc::connect(s.as_raw_fd(), &d as *const _ as *const libc::sockaddr, len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(s)
}

/// A blocking connection from `src`, given up after `limit` (a full listen queue drops SYNs:
/// a blocking connect would wait for their retransmissions).
pub fn connect_timeout_from(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    limit: Duration,
) -> io::Result<TcpStream> {
    let s = connect_nb(src, dst)?;
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll over one pollfd we own.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) };
    if n == 0 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Whether a read failed because its timeout passed (the peer stayed silent).
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Shrinks a socket's receive buffer (an unread download then ties up less kernel memory on
/// our side; mtpx's side is what it is).
pub fn set_rcvbuf(s: &TcpStream, bytes: libc::c_int) {
    // SAFETY: setsockopt with a pointer to a local int on a descriptor we own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// The `p` quantile of µs samples, in ms ("-" without samples).
fn pct(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        "-".into()
    } else {
        ms(percentile(sorted, p))
    }
}

fn ms(us: u32) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

// ------------------------------------------------------------------------------------------
// Processes

/// A helper child that prints `listening PORT` and exits when its stdin closes.
struct Helper {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
}

impl Helper {
    fn spawn(args: &[&str]) -> io::Result<Helper> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("{args:?}: no port in {line:?}")))?;
        Ok(Helper {
            child,
            _stdin: stdin,
            port,
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mtpx.
struct Mtpx {
    child: Child,
    pid: u32,
}

impl Mtpx {
    fn start(bin: &Path, config: &Path, log: &Path) -> io::Result<Mtpx> {
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg(config);
        let child = start_mtpx(cmd, log)?;
        let pid = child.id();
        Ok(Mtpx { child, pid })
    }

    fn cpu(&self) -> f64 {
        proc_cpu_split(self.pid).map_or(0.0, |(u, s)| u + s)
    }
}

impl Drop for Mtpx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(o: &Opts, secret: &Secret, port: u16, site: u16, dcs: &[u16]) -> String {
    let mut c = format!(
        "# written by mtpx-bench soak\nsecret = \"{}\"\nbind-to = \"127.0.0.1:{port}\"\n\
         workers = {}\nconcurrency = {}\ntolerate-time-skewness = \"{}s\"\n\n\
         [buffers]\ncount = {}\n\n[domain-fronting]\nip = \"127.0.0.1\"\nport = {site}\n\n\
         [defense.doppelganger]\nlearn = false\n\n[network.dc-overrides]\n",
        secret.to_hex(),
        o.workers,
        o.concurrency,
        o.skew_s,
        o.buffers,
    );
    for (i, id) in [1, 2, 3, 4, 5, 203].iter().enumerate() {
        let _ = writeln!(c, "{id} = \"127.0.0.1:{}\"", dcs[i % dcs.len()]);
    }
    c
}

// ------------------------------------------------------------------------------------------
// One run

struct Report {
    label: String,
    phases: Vec<(String, u64, Vec<Attack>, PhaseStats)>,
    rss_start: [u64; 2],
    rss_end: [u64; 2],
    fds_end: [usize; 2],
}

fn run_once(o: &Arc<Opts>, bin: &Path, label: &str, dir: &Path) -> io::Result<Report> {
    let plan = phases(o);
    let total: u64 = plan.iter().map(|p| p.secs).sum();
    eprintln!(
        "soak: {label} ({}), {} phases, {total} s of measurement",
        bin.display(),
        plan.len()
    );
    let dcs = [Helper::spawn(&["fake-dc"])?, Helper::spawn(&["fake-dc"])?];
    let dc_ports: Vec<u16> = dcs.iter().map(|d| d.port).collect();
    let site = Helper::spawn(&["soak", "site"])?;
    let mut rng = XorShift64(seed());
    let ee_secret = Secret::generate(SecretKind::FakeTls, HOST, &mut rng);
    let dd_secret = Secret::generate(SecretKind::Secure, "", &mut rng);
    let (ee_port, dd_port) = (free_port()?, free_port()?);
    let start = |name: &str, secret: &Secret, port: u16| -> io::Result<Mtpx> {
        let cfg = dir.join(format!("{label}-{name}.toml"));
        std::fs::write(&cfg, config(o, secret, port, site.port, &dc_ports))?;
        Mtpx::start(bin, &cfg, &dir.join(format!("{label}-{name}.log")))
    };
    let ee = start("ee", &ee_secret, ee_port)?;
    let dd = start("dd", &dd_secret, dd_port)?;
    let pids = [ee.pid, dd.pid];
    let env = Arc::new(Env {
        opts: o.clone(),
        ee: SocketAddrV4::new(Ipv4Addr::LOCALHOST, ee_port),
        dd: SocketAddrV4::new(Ipv4Addr::LOCALHOST, dd_port),
        site: SocketAddrV4::new(Ipv4Addr::LOCALHOST, site.port),
        dcs: dc_ports
            .iter()
            .map(|&p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p))
            .collect(),
        ee_key: ee_secret.key,
        dd_key: dd_secret.key,
        host: HOST.to_string(),
        rec: Rec {
            phase: AtomicUsize::new(SETTLE),
            t0: Instant::now(),
            phase_ms: AtomicU64::new(0),
            stats: plan.iter().map(|_| Mutex::default()).collect(),
        },
        stop: AtomicBool::new(false),
        recorded: Mutex::default(),
    });
    std::thread::sleep(Duration::from_millis(300));
    let rss_start = pids.map(|p| proc_rss(p).unwrap_or(0));

    // Honest traffic and the recorder, for the whole run.
    let mut threads = Vec::new();
    for i in 0..o.clients + o.direct_clients {
        let e = env.clone();
        let kind = if i >= o.clients {
            DIRECT
        } else if i >= o.clients - o.dd_clients {
            DD
        } else {
            EE
        };
        threads.push(std::thread::spawn(move || load::client(e, i, kind)));
    }
    for (kind, n) in [
        (Probe::EeGarbage, 1),
        (Probe::EeHello, 1),
        (Probe::DdShort, 3),
    ] {
        for k in 0..n {
            let e = env.clone();
            threads.push(std::thread::spawn(move || load::prober(e, kind, k)));
        }
    }
    {
        let e = env.clone();
        threads.push(std::thread::spawn(move || attack::recorder(e)));
    }
    {
        // mtpx's RSS and descriptors, and who had the CPUs, four times a second.
        let e = env.clone();
        let groups: [Vec<u32>; 4] = [
            vec![ee.pid],
            dcs.iter().map(|d| d.child.id()).collect(),
            vec![site.child.id()],
            vec![std::process::id()],
        ];
        threads.push(std::thread::spawn(move || {
            let sample = || {
                let g = groups.clone().map(|pids| {
                    pids.iter().fold((0.0, 0.0), |(r, w), &p| {
                        let (r1, w1) = proc_sched(p);
                        (r + r1, w + w1)
                    })
                });
                (Instant::now(), machine_cpu().0, g)
            };
            let mut last = sample();
            while !e.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let phase = e.rec.phase();
                let rss = pids.map(|p| proc_rss(p).unwrap_or(0));
                let fds = pids.map(proc_fds);
                let now = sample();
                let dt = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                let mut w = CpuWindow {
                    at_ms: e.rec.since_phase_ms(last.0),
                    machine: (now.1 - last.1) / dt,
                    ..CpuWindow::default()
                };
                for k in 0..4 {
                    w.run[k] = (now.2[k].0 - last.2[k].0) / dt;
                    w.wait[k] = (now.2[k].1 - last.2[k].1) / dt;
                }
                last = now;
                e.rec.at(phase, |p| {
                    for k in 0..2 {
                        p.rss_max[k] = p.rss_max[k].max(rss[k]);
                        p.fds_max[k] = p.fds_max[k].max(fds[k]);
                    }
                    p.cpu_windows.push(w);
                });
            }
        }));
    }
    // Let the clients connect before the baseline counts.
    std::thread::sleep(Duration::from_millis(o.echo_ms * 2 + 500));
    let settle = Duration::from_secs(if o.quick { 1 } else { 3 });
    for (i, ph) in plan.iter().enumerate() {
        eprintln!("soak: {label}: phase {} ({} s)", ph.name, ph.secs);
        let running: Vec<_> = ph.attacks.iter().map(|a| attack::start(&env, *a)).collect();
        let cpu0 = [ee.cpu(), dd.cpu()];
        env.rec
            .phase_ms
            .store(env.rec.t0.elapsed().as_millis() as u64, Ordering::Relaxed);
        env.rec.phase.store(i, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(ph.secs));
        env.rec.phase.store(SETTLE, Ordering::Relaxed);
        let cpu1 = [ee.cpu(), dd.cpu()];
        env.rec
            .at(i, |p| p.cpu = [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]]);
        for r in running {
            r.stop();
        }
        std::thread::sleep(settle);
    }
    env.stop.store(true, Ordering::Relaxed);
    // Clients blocked in a read give up after their echo timeout at most.
    for t in threads {
        let _ = t.join();
    }
    let rss_end = pids.map(|p| proc_rss(p).unwrap_or(0));
    let fds_end = pids.map(proc_fds);
    drop((ee, dd, site, dcs));
    let env = Arc::try_unwrap(env).map_err(|_| io::Error::other("threads still running"))?;
    let phases: Vec<(String, u64, Vec<Attack>, PhaseStats)> = plan
        .into_iter()
        .zip(env.rec.stats)
        .map(|(p, s)| {
            (
                p.name,
                p.secs,
                p.attacks,
                s.into_inner().unwrap_or_else(|p| p.into_inner()),
            )
        })
        .collect();
    // Every slow echo, one a line, for a look at when and where they happen.
    let mut slow = String::from("phase at_ms kind client nth size rtt_ms\n");
    for (name, _, _, p) in &phases {
        for e in &p.slow {
            let _ = writeln!(
                slow,
                "{:?} {} {} {} {} {} {:.1}",
                name,
                e.at_ms,
                ["ee", "dd", "direct"][usize::from(e.kind)],
                e.client,
                e.nth,
                e.size,
                e.rtt as f64 / 1000.0
            );
        }
    }
    std::fs::write(dir.join(format!("{label}-slow.txt")), slow)?;
    // Every probe, one a line: the pair is the same bytes to the site, then through mtpx.
    let mut probes = String::from("phase at_ms kind path pair answer_ms\n");
    for (name, _, _, p) in &phases {
        for r in &p.probe_log {
            let _ = writeln!(
                probes,
                "{:?} {} {:?} {} {} {}",
                name,
                r.at_ms,
                r.kind,
                if r.via { "mtpx" } else { "site" },
                r.pair,
                match r.result {
                    Ok(us) => format!("{:.2}", us as f64 / 1000.0),
                    Err(why) => format!("{why:?}"),
                }
            );
        }
    }
    std::fs::write(dir.join(format!("{label}-probes.txt")), probes)?;
    Ok(Report {
        label: label.to_string(),
        phases,
        rss_start,
        rss_end,
        fds_end,
    })
}

// ------------------------------------------------------------------------------------------
// The table

/// `(row, value)` pairs of one report, in table order.
fn rows(o: &Opts, r: &Report) -> Vec<(String, String)> {
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    let mut v = vec![
        (
            "set-up".to_string(),
            format!(
                "{} workers, {} buffers, concurrency {}, {} clients ({} dd)",
                o.workers, o.buffers, o.concurrency, o.clients, o.dd_clients
            ),
        ),
        (
            "mtpx ee RSS at start / end (MiB); descriptors at end".to_string(),
            format!(
                "{} / {}; {}",
                mib(r.rss_start[0]),
                mib(r.rss_end[0]),
                r.fds_end[0]
            ),
        ),
        (
            "mtpx dd RSS at start / end (MiB); descriptors at end".to_string(),
            format!(
                "{} / {}; {}",
                mib(r.rss_start[1]),
                mib(r.rss_end[1]),
                r.fds_end[1]
            ),
        ),
    ];
    for (name, secs, attacks, p) in &r.phases {
        let at = |what: &str| format!("{name}: {what}");
        let mut all: Vec<u32> = p.rtt[EE].iter().chain(&p.rtt[DD]).copied().collect();
        all.sort_unstable();
        let mut hs = p.hs.clone();
        hs.sort_unstable();
        v.push((
            at("client echoes / errors (ee + dd)"),
            format!(
                "{} / **{}** ({} + {})",
                all.len(),
                p.errors[0] + p.errors[1],
                p.errors[0],
                p.errors[1]
            ),
        ));
        v.push((
            at("echo RTT p50 / p99 / max (ms); new connection p99"),
            format!(
                "{} / {} / {}; {}",
                pct(&all, 0.5),
                pct(&all, 0.99),
                pct(&all, 1.0),
                pct(&hs, 0.99)
            ),
        ));
        let tails: Vec<String> = ["ee", "dd", "direct"]
            .iter()
            .zip(&p.rtt)
            .map(|(k, r)| {
                let mut r = r.clone();
                r.sort_unstable();
                format!("{k} {} / {}", pct(&r, 0.99), pct(&r, 1.0))
            })
            .collect();
        v.push((
            at(&format!(
                "echo RTT p99 / max (ms) by kind (direct: {} clients to a fake DC, no mtpx)",
                o.direct_clients
            )),
            format!("{} (direct errors {})", tails.join("; "), p.errors[DIRECT]),
        ));
        let steady: Vec<String> = ["ee", "dd", "direct"]
            .iter()
            .zip(&p.rtt_steady)
            .map(|(k, r)| {
                let mut r = r.clone();
                r.sort_unstable();
                format!("{k} {} / {}", pct(&r, 0.99), pct(&r, 1.0))
            })
            .collect();
        v.push((
            at(&format!(
                "echo RTT p99 / max (ms) by kind, after the first {} s",
                ONSET_MS / 1000
            )),
            steady.join("; "),
        ));
        // Windows wholly after the onset (a window starting before the phase counts in it).
        let (on, after): (Vec<&CpuWindow>, Vec<&CpuWindow>) = p
            .cpu_windows
            .iter()
            .partition(|w| w.at_ms < ONSET_MS || w.at_ms > u32::MAX / 2);
        let mean = |ws: &[&CpuWindow], f: &dyn Fn(&CpuWindow) -> f64| {
            if ws.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.2}",
                    ws.iter().map(|w| f(w)).sum::<f64>() / ws.len() as f64
                )
            }
        };
        let cpu_row = |ws: &[&CpuWindow]| {
            format!(
                "machine {}; mtpx ee {} (waiting {}); fake DCs {} (waiting {}); site {}; \
                 this tool {} (waiting {})",
                mean(ws, &|w| w.machine),
                mean(ws, &|w| w.run[0]),
                mean(ws, &|w| w.wait[0]),
                mean(ws, &|w| w.run[1]),
                mean(ws, &|w| w.wait[1]),
                mean(ws, &|w| w.run[2]),
                mean(ws, &|w| w.run[3]),
                mean(ws, &|w| w.wait[3]),
            )
        };
        v.push((
            at(&format!(
                "CPU (cores; waiting: runnable, no CPU), first {} s",
                ONSET_MS / 1000
            )),
            cpu_row(&on),
        ));
        v.push((
            at("CPU (cores; waiting: runnable, no CPU), after"),
            cpu_row(&after),
        ));
        let mut slow = [0usize; 3];
        for s in &p.slow {
            slow[usize::from(s.kind)] += 1;
        }
        // Slow echoes of different clients within 50 ms of each other are one stall.
        let mut times: Vec<u32> = p.slow.iter().map(|s| s.at_ms).collect();
        times.sort_unstable();
        let stalls =
            times.windows(2).filter(|w| w[1] - w[0] > 50).count() + usize::from(!times.is_empty());
        v.push((
            at("echoes ≥ 20 ms: ee / dd / direct; stalls (50 ms apart)"),
            format!("{} / {} / {}; {stalls}", slow[EE], slow[DD], slow[DIRECT]),
        ));
        for (kind, s) in &p.probes {
            let mut via = s.via.clone();
            via.sort_unstable();
            let mut direct = s.direct.clone();
            direct.sort_unstable();
            let fails = |m: &BTreeMap<&str, u64>| {
                if m.is_empty() {
                    "0".to_string()
                } else {
                    m.iter()
                        .map(|(k, n)| format!("{n} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            v.push((
                at(&format!("probe {kind}: answer p50 / p99 (ms)")),
                format!(
                    "via mtpx {} / {} (failed **{}** of {}); site {} / {} (failed {})",
                    pct(&via, 0.5),
                    pct(&via, 0.99),
                    fails(&s.via_fail),
                    via.len() + s.via_fail.values().sum::<u64>() as usize,
                    pct(&direct, 0.5),
                    pct(&direct, 0.99),
                    fails(&s.direct_fail)
                ),
            ));
        }
        for kind in p.probes.keys() {
            probe_split(&at, kind, &p.probe_log, &mut v);
        }
        v.push((
            at("mtpx ee CPU (cores) / RSS max (MiB) / descriptors max"),
            format!(
                "{:.2} / {} / {}",
                p.cpu[0] / (*secs).max(1) as f64,
                mib(p.rss_max[0]),
                p.fds_max[0]
            ),
        ));
        for a in attacks {
            let key = a.key();
            let mut parts: Vec<String> = p
                .gauges
                .iter()
                .filter(|((k, _), _)| *k == key)
                .map(|((_, w), n)| format!("{w} ≤ {n}"))
                .collect();
            parts.extend(
                p.counters
                    .iter()
                    .filter(|((k, _), _)| *k == key)
                    .map(|((_, w), n)| format!("{w} {n}")),
            );
            if let Some(l) = p.lifetimes.get(key).filter(|l| !l.is_empty()) {
                let mut l = l.clone();
                l.sort_unstable();
                parts.push(format!(
                    "cut after p50 {:.1} s",
                    percentile(&l, 0.5) as f64 / 1000.0
                ));
            }
            v.push((at(&format!("attacker {key}")), parts.join("; ")));
        }
    }
    v
}

/// Rows of one probe kind split by time: answers in the phase's first [`ONSET_MS`] and after,
/// via mtpx and at the site, and the slow ones (≥ [`SLOW_PROBE_US`] over the median of their
/// kind and path in the phase): how many, whether the same bytes were slow at the site just
/// before, and when.
fn probe_split(
    at: &dyn Fn(&str) -> String,
    kind: &str,
    log: &[ProbeRec],
    v: &mut Vec<(String, String)>,
) {
    let answers = |via: bool, onset: Option<bool>| -> Vec<u32> {
        let mut a: Vec<u32> = log
            .iter()
            .filter(|r| r.kind == kind && r.via == via)
            .filter(|r| onset.is_none_or(|on| (r.at_ms < ONSET_MS) == on))
            .filter_map(|r| r.result.ok())
            .collect();
        a.sort_unstable();
        a
    };
    let stat = |a: &[u32]| {
        format!(
            "{} / {} / {} ({})",
            pct(a, 0.5),
            pct(a, 0.99),
            pct(a, 1.0),
            a.len()
        )
    };
    let path = |via: bool| {
        format!(
            "first {} s {}, after {}",
            ONSET_MS / 1000,
            stat(&answers(via, Some(true))),
            stat(&answers(via, Some(false)))
        )
    };
    v.push((
        at(&format!(
            "probe {kind}: p50 / p99 / max (ms) (count), first {} s and after",
            ONSET_MS / 1000
        )),
        format!("via mtpx {}; site {}", path(true), path(false)),
    ));
    let slow_at = |via: bool| -> u32 { percentile(&answers(via, None), 0.5) + SLOW_PROBE_US };
    let limit = [slow_at(false), slow_at(true)];
    let is_slow = |r: &ProbeRec| r.result.is_ok_and(|us| us >= limit[usize::from(r.via)]);
    let slow: Vec<&ProbeRec> = log
        .iter()
        .filter(|r| r.kind == kind && is_slow(r))
        .collect();
    let count = |via: bool, on: bool| {
        slow.iter()
            .filter(|r| r.via == via && (r.at_ms < ONSET_MS) == on)
            .count()
    };
    // The site's probe with the same bytes, just before the slow one through mtpx.
    let both = slow
        .iter()
        .filter(|r| r.via)
        .filter(|r| {
            log.iter()
                .any(|d| d.kind == kind && !d.via && d.pair == r.pair && is_slow(d))
        })
        .count();
    let when = |via: bool| {
        let mut t: Vec<String> = slow
            .iter()
            .filter(|r| r.via == via)
            .take(12)
            .map(|r| format!("{} ({})", r.at_ms, ms(r.result.unwrap_or(0))))
            .collect();
        if slow.iter().filter(|r| r.via == via).count() > 12 {
            t.push("…".into());
        }
        if t.is_empty() {
            "-".into()
        } else {
            t.join(", ")
        }
    };
    v.push((
        at(&format!(
            "probe {kind}: slow (≥ median + {} ms), first {} s / after: via mtpx; site; \
             via mtpx with the same bytes slow at the site too",
            SLOW_PROBE_US / 1000,
            ONSET_MS / 1000
        )),
        format!(
            "{} / {}; {} / {}; {}",
            count(true, true),
            count(true, false),
            count(false, true),
            count(false, false),
            both
        ),
    ));
    v.push((
        at(&format!(
            "probe {kind}: slow ones, ms into the phase (answer ms): via mtpx; site"
        )),
        format!("{}; {}", when(true), when(false)),
    ));
}

fn table(o: &Opts, reports: &[Report]) -> String {
    let per: Vec<Vec<(String, String)>> = reports.iter().map(|r| rows(o, r)).collect();
    let mut order: Vec<String> = Vec::new();
    for r in &per {
        for (k, _) in r {
            if !order.contains(k) {
                order.push(k.clone());
            }
        }
    }
    let mut t = String::from("| metric |");
    for r in reports {
        let _ = write!(t, " {} |", r.label);
    }
    t.push_str("\n|---|");
    for _ in reports {
        t.push_str("---|");
    }
    t.push('\n');
    for k in order {
        let _ = write!(t, "| {k} |");
        for r in &per {
            let v = r.iter().find(|(kk, _)| *kk == k).map_or("", |(_, v)| v);
            let _ = write!(t, " {v} |");
        }
        t.push('\n');
    }
    t
}

fn orchestrate(args: &[String]) -> io::Result<()> {
    let o = Arc::new(parse(args).map_err(io::Error::other)?);
    raise_nofile();
    let mut bins: Vec<PathBuf> = o.compare.iter().cloned().collect();
    bins.push(o.mtpx.clone());
    for b in &bins {
        if !b.exists() {
            return Err(io::Error::other(format!(
                "{} not found: build it first (cargo build --release) or pass --mtpx",
                b.display()
            )));
        }
    }
    let dir = o
        .out
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    // Watchdog: the run ends by itself, whatever happens.
    // (Settling, start-up and the last handshakes of stopping attackers come on top of the
    // phases.)
    let limit = (o.duration * 3 / 2 + Duration::from_secs(180)) * bins.len() as u32;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("soak: time limit {limit:?} reached, aborting");
        std::process::exit(3);
    });
    let mut reports = Vec::new();
    for (i, b) in bins.iter().enumerate() {
        let label = o.labels.get(i).cloned().unwrap_or_else(|| {
            b.file_name()
                .map_or("mtpx".into(), |n| n.to_string_lossy().into_owned())
        });
        let r = run_once(&o, b, &label, &dir)?;
        for (name, _, _, p) in &r.phases {
            for m in &p.error_msgs {
                eprintln!("soak: {label}: {name}: client error: {m}");
            }
        }
        reports.push(r);
    }
    let t = table(&o, &reports);
    let mode = if o.quick { "quick" } else { "full" };
    let text = format!(
        "mtpx-bench soak ({mode}, {} s of phases per binary, {} CPUs; errors must be 0, \
         probes via mtpx as fast as the site)\n\n{t}",
        phases(&o).iter().map(|p| p.secs).sum::<u64>(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{text}");
    std::fs::write(&o.out, &text)?;
    eprintln!("soak: wrote {}", o.out.display());
    Ok(())
}
