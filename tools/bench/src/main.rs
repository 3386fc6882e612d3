//! mtpx-bench: loopback benchmark of the mtpx release binary (see BENCHMARKS.md).
//!
//! ```text
//! mtpx-bench [--quick] [--mtpx PATH] [--json PATH] [--workers N] [--idle N] [--rounds N]
//!            [--relay-only] [--relay-rounds N] [--compare OLD_MTPX [--ab-rounds N]]
//! mtpx-bench fake-dc                      (internal: one fake DC process)
//! mtpx-bench worker <proxy> <src> <key> <host>   (internal: one load-generator process)
//! mtpx-bench floor <key> <host> <dc-port>...     (internal: the floor proxy, floor.rs)
//! mtpx-bench soak ...                      (the hostile soak: soak.rs)
//! mtpx-bench users [--quick]              (only the in-process user-search timing)
//! ```
//!
//! The orchestrator starts fake DC processes, mtpx (`simple-run`, every DC overridden to a fake
//! DC, fronting pointed at a refused loopback port), the floor proxy and load-generator
//! processes, and only measures: `/proc/<mtpx>/stat` (CPU), `/proc/<mtpx>/status` (VmRSS),
//! `/proc/<mtpx>/fd`, and the floor's thread CPU. Relay and handshake figures are given as
//! ratios to the floor measured on the same load in the same run.
//! Nothing leaves 127.0.0.0/8. Every phase has a count and a deadline, and a watchdog ends
//! the whole run (children die with it: PR_SET_PDEATHSIG).

mod common;
mod dc;
mod floor;
mod soak;
mod users;
mod worker;

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit, StreamCipher};
use mtpx::proto::XorShift64;
use mtpx::proto::obfs2::AesCtr;
use mtpx::proto::secret::{Secret, SecretKind};

use common::*;

const MIB: u64 = 1024 * 1024;
const GB: f64 = 1e9;
/// The FakeTLS host of the bench secret (nothing is ever resolved or fronted for real).
const HOST: &str = "localhost";

/// Makes this process die when its parent does (children of the orchestrator).
pub fn die_with_parent() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("fake-dc") => dc::run(),
        Some("worker") => worker_main(&args[2..]),
        Some("floor") => floor::run(&args[2..]),
        Some("soak") => soak::main(&args[2..]),
        Some("users") => {
            let budget = if args.iter().any(|a| a == "--quick") {
                0.1
            } else {
                0.5
            };
            println!("== user search: CPU per handshake check (in process, one thread) ==");
            let cases = users::run(budget);
            users::report(&cases);
            Ok(())
        }
        _ => orchestrate(&args[1..]),
    };
    if let Err(e) = r {
        eprintln!("mtpx-bench: {e}");
        std::process::exit(1);
    }
}

fn worker_main(a: &[String]) -> io::Result<()> {
    let bad = || io::Error::other("usage: worker <proxy> <src> <key-hex> <host>");
    let proxy: SocketAddrV4 = a.first().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let src: Ipv4Addr = a.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let hex = a.get(2).ok_or_else(bad)?;
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    let host = a.get(3).ok_or_else(bad)?.clone();
    worker::run(Target {
        proxy,
        src,
        key,
        host,
    })
}

// ------------------------------------------------------------------------------------------
// Options and plan

struct Plan {
    quick: bool,
    mtpx: PathBuf,
    json: PathBuf,
    workers: usize,
    idle_small: usize,
    idle_big: usize,
    rounds: usize,
    idle_procs: usize,
    xfer_single: u64,
    xfer_multi: u64,
    multi_conns: usize,
    hs_ms: u64,
    hs_clients: usize,
    hs_procs: usize,
    floor_bytes: u64,
    limit: Duration,
    /// Extra arguments for mtpx (`--mtpx-arg`, repeatable), e.g. `-a 64KiB`.
    mtpx_args: Vec<String>,
    /// Save /proc/<mtpx>/smaps at the two idle points (`--smaps`).
    smaps: bool,
    /// Client threads per load process while opening idle connections (`--open-threads`).
    open_threads: usize,
    /// Only the floors, throughput and handshakes (`--relay-only`).
    relay_only: bool,
    /// Side by side: this older binary against `mtpx`, alternating (`--compare`).
    compare: Option<PathBuf>,
    /// Rounds of the side-by-side comparison (`--ab-rounds`).
    ab_rounds: usize,
    /// Each throughput run, mtpx's and the floor's, this many times, alternating (order
    /// swapped every round); the median of each is reported (`--relay-rounds`).
    relay_rounds: usize,
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut p = Plan {
        quick,
        mtpx: PathBuf::from(std::env::var("MTPX_BIN").unwrap_or("target/release/mtpx".into())),
        json: PathBuf::from("target/bench.json"),
        workers: 2,
        idle_small: if quick { 200 } else { 1000 },
        idle_big: if quick { 1000 } else { 9000 },
        rounds: if quick { 3 } else { 10 },
        idle_procs: 3,
        xfer_single: if quick { 256 * MIB } else { 1024 * MIB },
        xfer_multi: if quick { 256 * MIB } else { 1024 * MIB },
        multi_conns: 64,
        hs_ms: if quick { 2000 } else { 5000 },
        hs_clients: 256,
        hs_procs: 2,
        floor_bytes: if quick { 128 * MIB } else { 512 * MIB },
        limit: Duration::from_secs(if quick { 90 } else { 600 }),
        mtpx_args: Vec::new(),
        smaps: false,
        open_threads: 16,
        relay_only: false,
        compare: None,
        ab_rounds: 5,
        relay_rounds: if quick { 1 } else { 3 },
    };
    let mut relay_rounds_set = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || {
            i += 1;
            args.get(i).cloned().ok_or(format!("{a} needs a value"))
        };
        match a {
            "--quick" => {}
            "--mtpx" => p.mtpx = PathBuf::from(val()?),
            "--json" => p.json = PathBuf::from(val()?),
            "--workers" | "-w" => p.workers = val()?.parse().map_err(|_| "bad --workers")?,
            "--idle" => p.idle_big = val()?.parse().map_err(|_| "bad --idle")?,
            "--rounds" => p.rounds = val()?.parse().map_err(|_| "bad --rounds")?,
            "--mtpx-arg" => p.mtpx_args.push(val()?),
            "--smaps" => p.smaps = true,
            "--relay-only" => p.relay_only = true,
            "--compare" => p.compare = Some(PathBuf::from(val()?)),
            "--ab-rounds" => p.ab_rounds = val()?.parse().map_err(|_| "bad --ab-rounds")?,
            "--relay-rounds" => {
                p.relay_rounds = val()?.parse().map_err(|_| "bad --relay-rounds")?;
                relay_rounds_set = true;
            }
            "--open-threads" => {
                p.open_threads = val()?.parse().map_err(|_| "bad --open-threads")?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: mtpx-bench [--quick] [--mtpx PATH] [--json PATH] [--workers N] \
                     [--idle N (<= 9900)] [--rounds N] [--mtpx-arg ARG]... [--smaps] [--open-threads N] \
                     [--relay-only] [--relay-rounds N] [--compare OLD_MTPX [--ab-rounds N]]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 1;
    }
    // --compare alternates whole runs already.
    if p.compare.is_some() && !relay_rounds_set {
        p.relay_rounds = 1;
    }
    p.relay_rounds = p.relay_rounds.max(1);
    p.idle_big = p.idle_big.clamp(1, 9900);
    p.idle_small = p.idle_small.min(p.idle_big);
    Ok(p)
}

// ------------------------------------------------------------------------------------------
// Child processes

/// A child answering one line per command.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    name: String,
}

impl Proc {
    fn spawn(mut cmd: Command, name: &str) -> io::Result<Proc> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            stdin,
            lines: rx,
            name: name.to_string(),
        })
    }

    fn send(&mut self, cmd: &str) -> io::Result<()> {
        let s = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin closed"))?;
        writeln!(s, "{cmd}")?;
        s.flush()
    }

    fn recv(&mut self, limit: Duration) -> io::Result<String> {
        self.lines
            .recv_timeout(limit)
            .map_err(|_| io::Error::other(format!("{}: no answer within {limit:?}", self.name)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(2);
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

fn self_cmd() -> io::Result<Command> {
    let exe = std::env::current_exe()?;
    let mut c = Command::new(exe);
    c.stderr(Stdio::inherit());
    Ok(c)
}

/// Sends `cmd` to every process, then collects one answer from each.
fn ask_all(ps: &mut [Proc], cmds: &[String], limit: Duration) -> io::Result<Vec<String>> {
    for (p, c) in ps.iter_mut().zip(cmds) {
        p.send(c)?;
    }
    ps.iter_mut().map(|p| p.recv(limit)).collect()
}

/// The running proxy under test.
struct Mtpx {
    child: Child,
    pid: u32,
    addr: SocketAddrV4,
}

impl Mtpx {
    fn start(
        plan: &Plan,
        bin: &std::path::Path,
        secret: &str,
        dcs: &[u16],
        refused: u16,
        log: &str,
        extra: &[&str],
    ) -> io::Result<Mtpx> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut cmd = Command::new(bin);
        cmd.arg("simple-run")
            .arg(addr.to_string())
            .arg(secret)
            .args(["-c", "10000", "-w", &plan.workers.to_string()])
            .args([
                "--domain-fronting-ip",
                "127.0.0.1",
                "-p",
                &refused.to_string(),
            ]);
        // Every DC (and the media DCs) goes to a fake DC on loopback.
        for (i, id) in [1i16, 2, 3, 4, 5, 203].iter().enumerate() {
            let p = dcs[i % dcs.len()];
            cmd.arg("--dc-override").arg(format!("{id}=127.0.0.1:{p}"));
            cmd.arg("--dc-override")
                .arg(format!("{}=127.0.0.1:{p}", -id));
        }
        cmd.args(&plan.mtpx_args).args(extra);
        let child = start_mtpx(cmd, std::path::Path::new(log))?;
        let pid = child.id();
        Ok(Mtpx { child, pid, addr })
    }

    /// (user, system) CPU seconds of `/proc/<pid>/stat` (10 ms clock ticks).
    fn cpu_split(&self) -> (f64, f64) {
        proc_cpu_split(self.pid).unwrap_or((f64::NAN, f64::NAN))
    }

    /// CPU seconds of all threads, to the nanosecond (schedstat; falls back to the ticks).
    fn cpu_total(&self) -> f64 {
        proc_cpu_ns(self.pid).unwrap_or_else(|_| {
            let (u, s) = self.cpu_split();
            u + s
        })
    }

    fn rss(&self) -> u64 {
        proc_rss(self.pid).unwrap_or(0)
    }

    fn fds(&self) -> usize {
        proc_fds(self.pid)
    }

    /// Waits until mtpx holds at most `want` descriptors (closes are asynchronous).
    fn settle_fds(&self, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.fds();
            if n <= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
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

impl Drop for Mtpx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that is bound but not listening (connects are refused): the fronting site.
struct Refused(#[allow(dead_code)] std::os::fd::OwnedFd, u16);

fn refused_port() -> io::Result<Refused> {
    use std::os::fd::FromRawFd;
    // SAFETY: libc socket calls on a descriptor we own; sockaddrs are local values.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len);
        Ok(Refused(owned, u16::from_be(sa.sin_port)))
    }
}

// ------------------------------------------------------------------------------------------
// Measurements

/// CPU seconds per GB of AES-256-CTR applied twice (decrypt + re-encrypt, as the relay does),
/// over `bytes` in 16 KiB buffers (the proxy's buffer size), on this thread.
fn crypto_floor(bytes: u64) -> f64 {
    let mut a = AesCtr::new(&[7u8; 32].into(), &[1u8; 16].into());
    let mut b = AesCtr::new(&[9u8; 32].into(), &[2u8; 16].into());
    let mut buf = vec![0x5au8; 16 * 1024];
    let n = bytes / buf.len() as u64;
    // Warm up.
    for _ in 0..64 {
        a.apply_keystream(&mut buf);
        b.apply_keystream(&mut buf);
    }
    let t0 = thread_cpu();
    for _ in 0..n {
        a.apply_keystream(&mut buf);
        b.apply_keystream(&mut buf);
    }
    let dt = thread_cpu() - t0;
    std::hint::black_box(&buf);
    dt / (n as f64 * buf.len() as f64) * GB
}

#[derive(Clone)]
struct Xfer {
    name: String,
    bytes: u64,
    secs: f64,
    cpu: f64,
    /// The user-space part of `cpu` (the rest is the kernel: syscalls and, on loopback, the
    /// peers' receive processing that the sender pays for).
    user: f64,
    errors: u64,
}

impl Xfer {
    fn per_gb(&self) -> f64 {
        self.cpu / self.bytes.max(1) as f64 * GB
    }

    fn user_per_gb(&self) -> f64 {
        self.user / self.bytes.max(1) as f64 * GB
    }

    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
}

struct Hs {
    count: u64,
    errors: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    cpu: f64,
    user: f64,
}

impl Hs {
    fn cpu_us(&self) -> f64 {
        self.cpu / self.count.max(1) as f64 * 1e6
    }

    fn user_us(&self) -> f64 {
        self.user / self.count.max(1) as f64 * 1e6
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn num(line: &str, i: usize) -> u64 {
    line.split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn split(n: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// What every phase needs to start proxies and load generators.
struct Env {
    secret_hex: String,
    key_hex: String,
    dc_ports: Vec<u16>,
    refused: u16,
    logdir: PathBuf,
}

impl Env {
    fn log(&self, n: &str) -> String {
        self.logdir.join(n).to_string_lossy().into_owned()
    }

    /// `n` load-generator processes against `addr`, bound to 127.0.0.<first_src + i>.
    fn load(&self, addr: SocketAddrV4, n: usize, first_src: u8) -> io::Result<Vec<Proc>> {
        (0..n)
            .map(|i| {
                let mut c = self_cmd()?;
                let src = Ipv4Addr::new(127, 0, 0, first_src + i as u8);
                c.args([
                    "worker",
                    &addr.to_string(),
                    &src.to_string(),
                    &self.key_hex,
                    HOST,
                ]);
                Proc::spawn(c, &format!("worker-{src}"))
            })
            .collect()
    }

    fn mtpx(
        &self,
        plan: &Plan,
        bin: &std::path::Path,
        log: &str,
        extra: &[&str],
    ) -> io::Result<Mtpx> {
        Mtpx::start(
            plan,
            bin,
            &self.secret_hex,
            &self.dc_ports,
            self.refused,
            &self.log(log),
            extra,
        )
    }
}

/// The floor proxy process (floor.rs): the simplest blocking relay and handshake.
struct Floor {
    p: Proc,
    addr: SocketAddrV4,
}

impl Floor {
    fn start(env: &Env) -> io::Result<Floor> {
        let mut c = self_cmd()?;
        c.args(["floor", &env.key_hex, HOST]);
        c.args(env.dc_ports.iter().map(|p| p.to_string()));
        let mut p = Proc::spawn(c, "floor")?;
        let line = p.recv(Duration::from_secs(10))?;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, num(&line, 1) as u16);
        Ok(Floor { p, addr })
    }

    /// Relay mode (a second thread per connection) or handshake mode.
    fn mode(&mut self, relay: bool) -> io::Result<()> {
        self.p.send(if relay { "mode relay" } else { "mode hs" })?;
        self.p.recv(Duration::from_secs(10)).map(|_| ())
    }

    /// (thread CPU s, user s) so far, once no connection is open, and the errors so far.
    fn cpu(&mut self) -> io::Result<(f64, f64, u64)> {
        self.p.send("cpu")?;
        let l = self.p.recv(Duration::from_secs(20))?;
        Ok((
            num(&l, 1) as f64 * 1e-9,
            num(&l, 2) as f64 * 1e-9,
            num(&l, 4),
        ))
    }
}

/// The four relay runs: (name, command, single connection?).
const XFERS: [(&str, &str, bool); 4] = [
    ("upload, 1 conn", "up", true),
    ("download, 1 conn", "down", true),
    ("upload, 64 conns", "up", false),
    ("download, 64 conns", "down", false),
];

/// One relay run through whatever `load` points at; `cpu` reads (total, user) CPU seconds of
/// the proxy under test.
fn xfer(
    plan: &Plan,
    load: &mut [Proc],
    (name, dir, single): (&str, &str, bool),
    cpu: &mut dyn FnMut() -> io::Result<(f64, f64)>,
) -> io::Result<Xfer> {
    let (bytes, conns) = if single {
        (plan.xfer_single, 1)
    } else {
        (plan.xfer_multi, plan.multi_conns)
    };
    let (c0, u0) = cpu()?;
    let r = ask_all(
        load,
        &[format!("{dir} {bytes} {conns}")],
        Duration::from_secs(240),
    )?;
    let (c1, u1) = cpu()?;
    Ok(Xfer {
        name: name.to_string(),
        bytes: num(&r[0], 1),
        secs: num(&r[0], 2) as f64 * 1e-6,
        cpu: c1 - c0,
        user: u1 - u0,
        errors: num(&r[0], 3),
    })
}

/// The run of median CPU per GB among `runs` (the lower middle one of an even count), with
/// the errors of all of them.
fn median_xfer(mut runs: Vec<Xfer>) -> Xfer {
    let errors = runs.iter().map(|x| x.errors).sum();
    runs.sort_by(|a, b| a.per_gb().total_cmp(&b.per_gb()));
    let mut x = runs.swap_remove((runs.len() - 1) / 2);
    x.errors = errors;
    x
}

/// `plan.hs_clients` clients doing complete handshakes against `addr` for `ms` ms; `settle`
/// waits until the proxy closed its side, `cpu` as for [`xfer`].
fn handshakes(
    plan: &Plan,
    env: &Env,
    addr: SocketAddrV4,
    first_src: u8,
    ms: u64,
    settle: &dyn Fn(),
    cpu: &mut dyn FnMut() -> io::Result<(f64, f64)>,
) -> io::Result<Hs> {
    let mut load = env.load(addr, plan.hs_procs, first_src)?;
    let per = split(plan.hs_clients, plan.hs_procs);
    let cmds: Vec<String> = per.iter().map(|t| format!("hs {ms} {t} 1000000")).collect();
    let (c0, u0) = cpu()?;
    let t0 = Instant::now();
    let r = ask_all(
        &mut load,
        &cmds,
        Duration::from_millis(ms) + Duration::from_secs(60),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    drop(load);
    // Let the last closes finish before reading the CPU.
    settle();
    let (c1, u1) = cpu()?;
    let mut lat: Vec<u64> = r
        .iter()
        .flat_map(|l| l.split_whitespace().skip(3).filter_map(|v| v.parse().ok()))
        .collect();
    lat.sort_unstable();
    Ok(Hs {
        count: r.iter().map(|l| num(l, 1)).sum(),
        errors: r.iter().map(|l| num(l, 2)).sum(),
        secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        cpu: c1 - c0,
        user: u1 - u0,
    })
}

/// mtpx's (total, user) CPU seconds: the total to the nanosecond, the user part in ticks.
fn mtpx_cpu(m: &Mtpx) -> impl FnMut() -> io::Result<(f64, f64)> + '_ {
    move || Ok((m.cpu_total(), m.cpu_split().0))
}

/// The floor's relay runs or handshakes: `floor_errors` collects its own failures.
fn floor_cpu<'a>(
    f: &'a mut Floor,
    floor_errors: &'a mut u64,
) -> impl FnMut() -> io::Result<(f64, f64)> + 'a {
    let mut first: Option<u64> = None;
    move || {
        let (c, u, e) = f.cpu()?;
        let e0 = *first.get_or_insert(e);
        *floor_errors = (*floor_errors).max(e - e0);
        Ok((c, u))
    }
}

fn print_xfer(who: &str, x: &Xfer, aes: f64) {
    println!(
        "{:<20} {who:<5} {:>7.1} MB/s  ({} MiB in {:.2} s, {} errors)  CPU {:.2} s = {:.3} s/GB = {:.2}x AES floor (user {:.3} s/GB)",
        x.name,
        x.mb_s(),
        x.bytes / MIB,
        x.secs,
        x.errors,
        x.cpu,
        x.per_gb(),
        x.per_gb() / aes,
        x.user_per_gb(),
    );
}

fn print_hs(who: &str, hs: &Hs) {
    println!(
        "{who:<5} {} handshakes ({} errors) in {:.2} s = {:.0}/s; latency p50 {} us, p99 {} us; \
         CPU {:.2} s = {:.1} us/handshake (user {:.1} us, kernel {:.1} us)",
        hs.count,
        hs.errors,
        hs.secs,
        hs.count as f64 / hs.secs,
        hs.p50_us,
        hs.p99_us,
        hs.cpu,
        hs.cpu_us(),
        hs.user_us(),
        hs.cpu_us() - hs.user_us()
    );
}

fn orchestrate(args: &[String]) -> io::Result<()> {
    let plan = parse(args).map_err(io::Error::other)?;
    for bin in std::iter::once(&plan.mtpx).chain(plan.compare.as_ref()) {
        if !bin.exists() {
            return Err(io::Error::other(format!(
                "{} not found: build it first (cargo build --release) or pass --mtpx",
                bin.display()
            )));
        }
    }
    // Watchdog: the run ends by itself, whatever happens.
    let limit = if plan.compare.is_some() {
        plan.limit * plan.ab_rounds.max(1) as u32
    } else {
        plan.limit
    };
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("mtpx-bench: time limit {limit:?} reached, aborting");
        std::process::exit(3);
    });
    let started = Instant::now();
    let logdir = plan.json.parent().map(PathBuf::from).unwrap_or_default();
    let _ = std::fs::create_dir_all(&logdir);

    let mode = if plan.quick { "quick" } else { "full" };
    println!(
        "mtpx-bench ({mode}): {} -w {} on {} CPUs, all on loopback",
        plan.mtpx.display(),
        plan.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let secret = Secret::generate(SecretKind::FakeTls, HOST, &mut XorShift64(seed()));
    let key_hex: String = secret.key.iter().map(|b| format!("{b:02x}")).collect();
    let refused = refused_port()?;

    // Crypto floor first, on a quiet machine.
    let aes = crypto_floor(plan.floor_bytes);
    println!(
        "crypto floor: AES-256-CTR x2 = {aes:.3} CPU s/GB   (size_of AesCtr = {} B)",
        std::mem::size_of::<AesCtr>()
    );

    // Fake DCs: two processes.
    let mut dcs = Vec::new();
    let mut dc_ports = Vec::new();
    for i in 0..2 {
        let mut c = self_cmd()?;
        c.arg("fake-dc");
        let mut p = Proc::spawn(c, &format!("fake-dc-{i}"))?;
        let line = p.recv(Duration::from_secs(5))?;
        dc_ports.push(num(&line, 1) as u16);
        dcs.push(p);
    }
    let env = Env {
        secret_hex: secret.to_hex(),
        key_hex,
        dc_ports,
        refused: refused.1,
        logdir,
    };
    let mut floor = Floor::start(&env)?;
    let r = match plan.compare.clone() {
        Some(old) => compare(&plan, &env, &mut floor, &old, aes, started),
        None => full_run(&plan, &env, &mut floor, aes, started),
    };
    drop(floor);
    drop(dcs);
    drop(refused);
    r
}

/// Memory at rest and with idle connections, then connection churn (a fresh mtpx).
struct Mem {
    rss_rest: u64,
    ok_small: usize,
    rss_small: u64,
    ok_big: usize,
    rss_big: u64,
    fd_big: usize,
    slope: f64,
    rss_round0: u64,
    rounds: Vec<(usize, usize, u64, u64, usize)>,
    failures: usize,
}

fn memory_phase(plan: &Plan, env: &Env) -> io::Result<Mem> {
    let t_open = Duration::from_secs(120);
    println!("\n== memory: idle FakeTLS connections (fresh mtpx) ==");
    let m = env.mtpx(plan, &plan.mtpx, "bench-mtpx-mem.log", &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let fd_rest = m.fds();
    let rss_rest = m.rss();
    println!("at rest: RSS {:.0} KiB, {fd_rest} fds", kib(rss_rest));
    let mut idle = env.load(m.addr, plan.idle_procs, 2)?;
    let open = |ps: &mut [Proc], n: usize| -> io::Result<(usize, usize)> {
        let cmds: Vec<String> = split(n, ps.len())
            .iter()
            .map(|k| format!("open {k} {}", plan.open_threads))
            .collect();
        let r = ask_all(ps, &cmds, t_open)?;
        Ok((
            r.iter().map(|l| num(l, 1) as usize).sum(),
            r.iter().map(|l| num(l, 2) as usize).sum(),
        ))
    };
    let close = |ps: &mut [Proc]| -> io::Result<usize> {
        let cmds = vec!["close 16".to_string(); ps.len()];
        let r = ask_all(ps, &cmds, t_open)?;
        Ok(r.iter().map(|l| num(l, 1) as usize).sum())
    };
    let settle = Duration::from_millis(700);
    let (ok_small, f1) = open(&mut idle, plan.idle_small)?;
    std::thread::sleep(settle);
    let (rss_small, fd_small) = (m.rss(), m.fds());
    if plan.smaps {
        let _ = std::fs::copy(
            format!("/proc/{}/smaps", m.pid),
            env.log("bench-smaps-small.txt"),
        );
    }
    println!(
        "{ok_small} idle ({f1} failed): RSS {:.0} KiB, {fd_small} fds",
        kib(rss_small)
    );
    let (ok_more, f2) = open(&mut idle, plan.idle_big - plan.idle_small)?;
    std::thread::sleep(settle);
    let (rss_big, fd_big) = (m.rss(), m.fds());
    if plan.smaps {
        let _ = std::fs::copy(
            format!("/proc/{}/smaps", m.pid),
            env.log("bench-smaps-big.txt"),
        );
    }
    let ok_big = ok_small + ok_more;
    println!(
        "{ok_big} idle ({f2} failed): RSS {:.0} KiB, {fd_big} fds",
        kib(rss_big)
    );
    let slope = (rss_big as f64 - rss_small as f64) / (ok_big - ok_small).max(1) as f64;
    println!(
        "per idle connection: {slope:.0} B ({:.2} KiB)   [{} connections between the two points]",
        slope / 1024.0,
        ok_big - ok_small
    );
    close(&mut idle)?;
    let fd_after = m.settle_fds(fd_rest, Duration::from_secs(20));
    let rss_round0 = m.rss();
    println!(
        "after closing all: RSS {:.0} KiB, {fd_after} fds",
        kib(rss_round0)
    );

    println!(
        "\n== churn: {} rounds of {} connections opening and closing ==",
        plan.rounds, plan.idle_big
    );
    let mut rounds = Vec::new();
    for r in 1..=plan.rounds {
        let t = Instant::now();
        let (ok, f) = open(&mut idle, plan.idle_big)?;
        let rss_open = m.rss();
        close(&mut idle)?;
        let fds = m.settle_fds(fd_rest, Duration::from_secs(20));
        let rss = m.rss();
        println!(
            "round {r:2}: {ok} opened ({f} failed), RSS open {:.0} KiB, after close {:.0} KiB, \
             {fds} fds, {:.1} s",
            kib(rss_open),
            kib(rss),
            t.elapsed().as_secs_f64()
        );
        rounds.push((ok, f, rss_open, rss, fds));
    }
    drop(idle);
    m.stop();
    let failures = f1 + f2 + rounds.iter().map(|r| r.1).sum::<usize>();
    Ok(Mem {
        rss_rest,
        ok_small,
        rss_small,
        ok_big,
        rss_big,
        fd_big,
        slope,
        rss_round0,
        rounds,
        failures,
    })
}

/// Throughput and handshakes through `bin` and through the floor, interleaved run by run.
struct Relay {
    xfers: Vec<Xfer>,
    floor_xfers: Vec<Xfer>,
    hs: Hs,
    floor_hs: Hs,
    floor_errors: u64,
}

fn relay_phase(
    plan: &Plan,
    env: &Env,
    floor: &mut Floor,
    bin: &std::path::Path,
    aes: f64,
) -> io::Result<(Relay, Mtpx, usize)> {
    let name = bin.display();
    println!("\n== throughput: {name} (fresh) and the floor, run by run ==");
    let m = env.mtpx(plan, bin, "bench-mtpx-tput.log", &[])?;
    std::thread::sleep(Duration::from_millis(300));
    let fd_rest = m.fds();
    let mut load = env.load(m.addr, 1, 10)?;
    let mut floor_load = env.load(floor.addr, 1, 11)?;
    let mut floor_errors = 0;
    let (mut xfers, mut floor_xfers) = (Vec::new(), Vec::new());
    floor.mode(true)?;
    let rounds = plan.relay_rounds;
    for run in XFERS {
        let (mut xs, mut fs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternating: mtpx first in even rounds, the floor first in odd ones.
            for floor_turn in [round % 2 == 1, round % 2 == 0] {
                if floor_turn {
                    let f = xfer(
                        plan,
                        &mut floor_load,
                        run,
                        &mut floor_cpu(floor, &mut floor_errors),
                    )?;
                    print_xfer("floor", &f, aes);
                    fs.push(f);
                } else {
                    let x = xfer(plan, &mut load, run, &mut mtpx_cpu(&m))?;
                    print_xfer("mtpx", &x, aes);
                    xs.push(x);
                }
            }
        }
        let (x, f) = (median_xfer(xs), median_xfer(fs));
        println!(
            "{:<20} mtpx = {:.2}x the floor relay (user {:.2}x){}",
            "",
            x.per_gb() / f.per_gb(),
            x.user_per_gb() / f.user_per_gb(),
            if rounds > 1 {
                format!(", medians of {rounds} runs each")
            } else {
                String::new()
            }
        );
        xfers.push(x);
        floor_xfers.push(f);
    }
    drop(load);
    drop(floor_load);

    println!(
        "\n== handshakes: {} concurrent clients for {} ms, mtpx then the floor ==",
        plan.hs_clients, plan.hs_ms
    );
    let settle = || {
        m.settle_fds(fd_rest + 2, Duration::from_secs(5));
    };
    let hs = handshakes(
        plan,
        env,
        m.addr,
        20,
        plan.hs_ms,
        &settle,
        &mut mtpx_cpu(&m),
    )?;
    print_hs("mtpx", &hs);
    floor.mode(false)?;
    let mut hs_errors = 0;
    let floor_hs = handshakes(
        plan,
        env,
        floor.addr,
        30,
        plan.hs_ms,
        &|| {},
        &mut floor_cpu(floor, &mut hs_errors),
    )?;
    print_hs("floor", &floor_hs);
    println!(
        "mtpx = {:.2}x the floor's CPU per handshake",
        hs.cpu_us() / floor_hs.cpu_us()
    );
    Ok((
        Relay {
            xfers,
            floor_xfers,
            hs,
            floor_hs,
            floor_errors: floor_errors + hs_errors,
        },
        m,
        fd_rest,
    ))
}

fn full_run(
    plan: &Plan,
    env: &Env,
    floor: &mut Floor,
    aes: f64,
    started: Instant,
) -> io::Result<()> {
    let mode = if plan.quick { "quick" } else { "full" };
    // User search (issue 15): in process, before any load.
    println!("\n== user search: CPU per handshake check (in process, one thread) ==");
    let user_cases = users::run(if plan.quick { 0.1 } else { 0.5 });
    let user_json = users::report(&user_cases);
    let mem = if plan.relay_only {
        None
    } else {
        Some(memory_phase(plan, env)?)
    };

    let (rel, m, _) = relay_phase(plan, env, floor, &plan.mtpx, aes)?;
    let relay_bytes: u64 = rel.xfers.iter().map(|x| x.bytes).sum();
    let relay_cpu: f64 = rel.xfers.iter().map(|x| x.cpu).sum();
    let relay_per_gb = relay_cpu / relay_bytes.max(1) as f64 * GB;
    let relay_ratio = relay_per_gb / aes;
    let relay_user: f64 = rel.xfers.iter().map(|x| x.user).sum();
    let relay_user_per_gb = relay_user / relay_bytes.max(1) as f64 * GB;
    let relay_user_ratio = relay_user_per_gb / aes;
    let floor_ratios: Vec<f64> = rel
        .xfers
        .iter()
        .zip(&rel.floor_xfers)
        .map(|(x, f)| x.per_gb() / f.per_gb())
        .collect();
    let hs_floor_ratio = rel.hs.cpu_us() / rel.floor_hs.cpu_us();
    println!(
        "\nrelay cost overall: {relay_per_gb:.3} CPU s/GB = {relay_ratio:.2}x the crypto floor ({aes:.3} s/GB); \
         user space alone {relay_user_per_gb:.3} s/GB = {relay_user_ratio:.2}x"
    );
    let rss_after_load = m.rss();

    // ---------------------------------------------------------------- stalled handshakes
    // The same handshake load while many connections sit mid-handshake (5 bytes of a TLS
    // header, then silence, as a slowloris does): what they cost new clients.
    let stalled_n = if plan.quick { 500 } else { 4000 };
    let mut hs_stalled = None;
    let mut rss_stalled = 0;
    if !plan.relay_only {
        let stalled_ms = plan.hs_ms.min(3000);
        println!(
            "\n== handshakes behind {stalled_n} stalled handshakes: {} clients for {stalled_ms} ms ==",
            plan.hs_clients
        );
        let fd_rest = m.fds();
        let mut stalled = Vec::with_capacity(stalled_n);
        for _ in 0..stalled_n {
            let mut s = std::net::TcpStream::connect(m.addr)?;
            s.write_all(b"\x16\x03\x01\x02\x00")?;
            stalled.push(s);
        }
        std::thread::sleep(Duration::from_millis(300));
        rss_stalled = m.rss() / 1024;
        let settle = || {
            m.settle_fds(fd_rest + stalled_n + 2, Duration::from_secs(5));
        };
        let h = handshakes(
            plan,
            env,
            m.addr,
            20,
            stalled_ms,
            &settle,
            &mut mtpx_cpu(&m),
        )?;
        drop(stalled);
        println!(
            "{} handshakes ({} errors) in {:.2} s = {:.0}/s; latency p50 {} us, p99 {} us \
             (without them: p50 {} us, p99 {} us); mtpx RSS with them {} KiB",
            h.count,
            h.errors,
            h.secs,
            h.count as f64 / h.secs,
            h.p50_us,
            h.p99_us,
            rel.hs.p50_us,
            rel.hs.p99_us,
            rss_stalled
        );
        hs_stalled = Some(h);
    }
    m.stop();

    // ---------------------------------------------------------------- shaping
    // The same 64-connection download through a fresh mtpx with inter-record timing on
    // (mtg's Weibull gaps, 4 MiB/s floor per connection): what the timer wheel and the
    // per-record pacing cost per byte, side by side with the unshaped run above.
    let mut shaped = None;
    let mut shaped_ratio = 0.0;
    if !plan.relay_only {
        let shaped_bytes = plan.xfer_multi / 4;
        println!(
            "\n== shaped download: --delays (mtg's gaps, 4 MiB/s floor), {} MiB over {} conns ==",
            shaped_bytes / MIB,
            plan.multi_conns
        );
        let m = env.mtpx(plan, &plan.mtpx, "bench-mtpx-shaped.log", &["--delays"])?;
        let mut load = env.load(m.addr, 1, 10)?;
        let (c0, u0) = (m.cpu_total(), m.cpu_split().0);
        let r = ask_all(
            &mut load,
            &[format!("down {shaped_bytes} {}", plan.multi_conns)],
            Duration::from_secs(240),
        )?;
        let (c1, u1) = (m.cpu_total(), m.cpu_split().0);
        let x = Xfer {
            name: "shaped download, 64 conns".into(),
            bytes: num(&r[0], 1),
            secs: num(&r[0], 2) as f64 * 1e-6,
            cpu: c1 - c0,
            user: u1 - u0,
            errors: num(&r[0], 3),
        };
        drop(load);
        m.stop();
        let unshaped = rel.xfers.iter().find(|x| x.name == "download, 64 conns");
        shaped_ratio = unshaped.map_or(0.0, |u| x.per_gb() / u.per_gb().max(1e-9));
        println!(
            "shaped: {:.1} MB/s ({} MiB in {:.2} s, {} errors), mtpx CPU {:.3} s/GB = {shaped_ratio:.2}x \
             the unshaped 64-conn download",
            x.mb_s(),
            x.bytes / MIB,
            x.secs,
            x.errors,
            x.per_gb()
        );
        shaped = Some(x);
    }

    // ---------------------------------------------------------------- summary
    let failures = mem.as_ref().map_or(0, |m| m.failures)
        + rel.xfers.iter().map(|x| x.errors as usize).sum::<usize>()
        + rel
            .floor_xfers
            .iter()
            .map(|x| x.errors as usize)
            .sum::<usize>()
        + rel.floor_errors as usize
        + shaped.as_ref().map_or(0, |x| x.errors as usize)
        + rel.hs.errors as usize
        + rel.floor_hs.errors as usize
        + hs_stalled.as_ref().map_or(0, |h| h.errors as usize);
    println!(
        "\n== summary ({mode}{}, {:.0} s) ==",
        if plan.relay_only { ", relay only" } else { "" },
        started.elapsed().as_secs_f64()
    );
    println!("{:<44} {:>14}  {:<14} ", "metric", "value", "goal");
    let row = |name: &str, val: String, goal: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!("{name:<44} {val:>14}  {goal:<14} {verdict}");
    };
    for x in &rel.xfers {
        row(
            &format!("throughput {} (MB/s)", x.name),
            format!("{:.1}", x.mb_s()),
            "",
            None,
        );
    }
    for ((x, f), r) in rel.xfers.iter().zip(&rel.floor_xfers).zip(&floor_ratios) {
        row(
            &format!("{} CPU s/GB: mtpx / floor", x.name),
            format!("{:.3} / {:.3}", x.per_gb(), f.per_gb()),
            "",
            None,
        );
        row(
            &format!("  x relay floor (x AES floor {:.2})", x.per_gb() / aes),
            format!("{r:.2}"),
            "<= 1.25",
            Some(*r <= 1.25),
        );
    }
    if let Some(s) = &shaped {
        row(
            "shaped download, 64 conns (MB/s)",
            format!("{:.1}", s.mb_s()),
            "",
            None,
        );
        row(
            "shaped / unshaped download CPU per byte",
            format!("{shaped_ratio:.2}"),
            "",
            None,
        );
    }
    row(
        "relay CPU (s/GB) / crypto floor",
        format!("{relay_per_gb:.3} / {aes:.3}"),
        "",
        None,
    );
    row(
        "relay cost ratio (x AES floor)",
        format!("{relay_ratio:.2}"),
        "<= 2.0",
        Some(relay_ratio <= 2.0),
    );
    row(
        "  of which user space (x AES floor)",
        format!("{relay_user_ratio:.2}"),
        "",
        None,
    );
    row(
        "handshakes/s (256 concurrent)",
        format!("{:.0}", rel.hs.count as f64 / rel.hs.secs),
        "",
        None,
    );
    row(
        "handshake latency p50 / p99 (us)",
        format!("{} / {}", rel.hs.p50_us, rel.hs.p99_us),
        "",
        None,
    );
    if let Some(h) = &hs_stalled {
        row(
            &format!("  behind {stalled_n} stalled handshakes (us)"),
            format!("{} / {}", h.p50_us, h.p99_us),
            "",
            None,
        );
    }
    row(
        "CPU per handshake (us): mtpx / floor",
        format!("{:.1} / {:.1}", rel.hs.cpu_us(), rel.floor_hs.cpu_us()),
        "",
        None,
    );
    row(
        "  x handshake floor",
        format!("{hs_floor_ratio:.2}"),
        "<= 1.5",
        Some(hs_floor_ratio <= 1.5),
    );
    row(
        "mtpx CPU per handshake (us)",
        format!("{:.1}", rel.hs.cpu_us()),
        "<= 50",
        Some(rel.hs.cpu_us() <= 50.0),
    );
    // The second half of the rounds: by then every bounded structure (anti-replay ring,
    // slab high-water mark, pool buffers) has been touched; growth there is a leak.
    let (mut growth, mut growth_late) = (0i64, 0i64);
    if let Some(mem) = &mem {
        growth = match (mem.rounds.first(), mem.rounds.last()) {
            (Some(a), Some(b)) => b.3 as i64 - a.3 as i64,
            _ => 0,
        };
        let half = mem.rounds.len() / 2;
        growth_late = match (mem.rounds.get(half.saturating_sub(1)), mem.rounds.last()) {
            (Some(a), Some(b)) => b.3 as i64 - a.3 as i64,
            _ => 0,
        };
        row(
            "RSS at rest (KiB)",
            format!("{:.0}", kib(mem.rss_rest)),
            "",
            None,
        );
        row(
            &format!("RSS with {} / {} idle (KiB)", mem.ok_small, mem.ok_big),
            format!("{:.0} / {:.0}", kib(mem.rss_small), kib(mem.rss_big)),
            "",
            None,
        );
        row(
            "resident per idle connection (KiB)",
            format!("{:.2}", mem.slope / 1024.0),
            "<= 2.00",
            Some(mem.slope <= 2048.0),
        );
        row(
            &format!("RSS growth round 1 -> {} (KiB)", mem.rounds.len()),
            format!("{:.0}", growth as f64 / 1024.0),
            "bounded",
            None,
        );
        row(
            &format!(
                "RSS growth round {} -> {} (KiB)",
                half.max(1),
                mem.rounds.len()
            ),
            format!("{:.0}", growth_late as f64 / 1024.0),
            "no growth",
            Some(growth_late <= 16 * 1024),
        );
    }
    row(
        "RSS after all load (KiB)",
        format!("{:.0}", kib(rss_after_load)),
        "",
        None,
    );
    row(
        "failed operations",
        failures.to_string(),
        "0",
        Some(failures == 0),
    );

    // ---------------------------------------------------------------- JSON
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\n  \"mode\": \"{mode}\",\n  \"relay_only\": {},\n  \"mtpx\": \"{}\",\n  \"mtpx_workers\": {},\n  \"cpus\": {},\n  \"elapsed_s\": {:.1},\n",
        plan.relay_only,
        plan.mtpx.display(),
        plan.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    let _ = write!(
        j,
        "  \"crypto_floor_cpu_s_per_gb\": {aes:.4},\n  \"aes_ctr_state_bytes\": {},\n  \"user_search\": {user_json},\n",
        std::mem::size_of::<AesCtr>()
    );
    j.push_str("  \"throughput\": [\n");
    for (i, (x, f)) in rel.xfers.iter().zip(&rel.floor_xfers).enumerate() {
        let _ = writeln!(
            j,
            "    {{\"name\": \"{}\", \"bytes\": {}, \"seconds\": {:.4}, \"mb_per_s\": {:.2}, \"mtpx_cpu_s\": {:.3}, \"mtpx_user_s\": {:.3}, \"cpu_s_per_gb\": {:.4}, \"ratio_to_floor\": {:.3}, \"relay_floor_cpu_s_per_gb\": {:.4}, \"relay_floor_user_s_per_gb\": {:.4}, \"relay_floor_mb_per_s\": {:.2}, \"ratio_to_relay_floor\": {:.3}, \"goal_ratio_to_relay_floor\": 1.25, \"errors\": {}}}{}",
            x.name,
            x.bytes,
            x.secs,
            x.mb_s(),
            x.cpu,
            x.user,
            x.per_gb(),
            x.per_gb() / aes,
            f.per_gb(),
            f.user_per_gb(),
            f.mb_s(),
            x.per_gb() / f.per_gb(),
            x.errors + f.errors,
            if i + 1 < rel.xfers.len() { "," } else { "" }
        );
    }
    let _ = write!(
        j,
        "  ],\n  \"relay\": {{\"bytes\": {relay_bytes}, \"mtpx_cpu_s\": {relay_cpu:.3}, \"cpu_s_per_gb\": {relay_per_gb:.4}, \"ratio_to_floor\": {relay_ratio:.3}, \"user_cpu_s_per_gb\": {relay_user_per_gb:.4}, \"user_ratio_to_floor\": {relay_user_ratio:.3}, \"goal_ratio\": 2.0}},\n"
    );
    if let Some(s) = &shaped {
        let _ = writeln!(
            j,
            "  \"shaping\": {{\"bytes\": {}, \"seconds\": {:.4}, \"mb_per_s\": {:.2}, \"cpu_s_per_gb\": {:.4}, \"ratio_to_unshaped\": {shaped_ratio:.3}, \"errors\": {}}},",
            s.bytes,
            s.secs,
            s.mb_s(),
            s.per_gb(),
            s.errors
        );
    }
    if let Some(h) = &hs_stalled {
        let _ = writeln!(
            j,
            "  \"handshakes_behind_stalled\": {{\"stalled\": {stalled_n}, \"count\": {}, \"errors\": {}, \"p50_us\": {}, \"p99_us\": {}, \"rss_kib\": {rss_stalled}}},",
            h.count, h.errors, h.p50_us, h.p99_us
        );
    }
    let hs = &rel.hs;
    let fh = &rel.floor_hs;
    let _ = writeln!(
        j,
        "  \"handshakes\": {{\"clients\": {}, \"count\": {}, \"errors\": {}, \"seconds\": {:.3}, \"per_s\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"mtpx_cpu_s\": {:.3}, \"mtpx_cpu_us_per_handshake\": {:.2}, \"mtpx_user_us_per_handshake\": {:.2}, \"goal_us\": 50, \"floor_count\": {}, \"floor_errors\": {}, \"floor_per_s\": {:.1}, \"floor_cpu_us_per_handshake\": {:.2}, \"floor_user_us_per_handshake\": {:.2}, \"ratio_to_floor\": {hs_floor_ratio:.3}, \"goal_ratio_to_floor\": 1.5}},",
        plan.hs_clients,
        hs.count,
        hs.errors,
        hs.secs,
        hs.count as f64 / hs.secs,
        hs.p50_us,
        hs.p99_us,
        hs.cpu,
        hs.cpu_us(),
        hs.user_us(),
        fh.count,
        fh.errors,
        fh.count as f64 / fh.secs,
        fh.cpu_us(),
        fh.user_us(),
    );
    if let Some(mem) = &mem {
        let _ = writeln!(
            j,
            "  \"memory\": {{\"rss_rest\": {}, \"idle_small\": {}, \"rss_idle_small\": {}, \"idle_big\": {}, \"rss_idle_big\": {}, \"bytes_per_idle_conn\": {:.1}, \"goal_bytes\": 2048, \"fds_idle_big\": {}, \"rss_after_close\": {}, \"rss_after_all_load\": {rss_after_load}}},",
            mem.rss_rest,
            mem.ok_small,
            mem.rss_small,
            mem.ok_big,
            mem.rss_big,
            mem.slope,
            mem.fd_big,
            mem.rss_round0
        );
        j.push_str("  \"rounds\": [\n");
        for (i, r) in mem.rounds.iter().enumerate() {
            let _ = writeln!(
                j,
                "    {{\"round\": {}, \"opened\": {}, \"failed\": {}, \"rss_open\": {}, \"rss_after_close\": {}, \"fds_after_close\": {}}}{}",
                i + 1,
                r.0,
                r.1,
                r.2,
                r.3,
                r.4,
                if i + 1 < mem.rounds.len() { "," } else { "" }
            );
        }
        let _ = writeln!(
            j,
            "  ],\n  \"rss_growth_over_rounds\": {growth},\n  \"rss_growth_second_half\": {growth_late},"
        );
    }
    let _ = write!(j, "  \"failures\": {failures}\n}}\n");
    std::fs::write(&plan.json, j)?;
    println!("\nwrote {}", plan.json.display());
    if failures > 0 {
        return Err(io::Error::other(format!("{failures} operations failed")));
    }
    Ok(())
}

/// Side by side: `old` (`--compare`) and `plan.mtpx` alternate for `plan.ab_rounds` rounds of
/// the relay runs and handshakes (order swapped every round), each round with the floor too;
/// medians per binary, their ratio and both against the floor.
fn compare(
    plan: &Plan,
    env: &Env,
    floor: &mut Floor,
    old: &std::path::Path,
    aes: f64,
    started: Instant,
) -> io::Result<()> {
    let bins = [old, plan.mtpx.as_path()];
    // [binary][metric][round]; metrics: the four relay runs (CPU s/GB), handshake CPU (us),
    // relay user s/GB and handshake user us; the floor likewise in `fl`.
    let n = XFERS.len() + 1;
    let mut v = vec![vec![Vec::new(); 2 * n]; 2];
    let mut fl = vec![Vec::new(); 2 * n];
    let mut failures = 0u64;
    for round in 0..plan.ab_rounds.max(1) {
        println!("\n######## round {} of {}", round + 1, plan.ab_rounds);
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for b in order {
            let (rel, m, _) = relay_phase(plan, env, floor, bins[b], aes)?;
            m.stop();
            for (i, x) in rel.xfers.iter().enumerate() {
                v[b][i].push(x.per_gb());
                v[b][n + i].push(x.user_per_gb());
                failures += x.errors;
            }
            v[b][n - 1].push(rel.hs.cpu_us());
            v[b][2 * n - 1].push(rel.hs.user_us());
            failures += rel.hs.errors;
            // The floor runs next to each binary: keep both (twice the samples).
            for (i, x) in rel.floor_xfers.iter().enumerate() {
                fl[i].push(x.per_gb());
                fl[n + i].push(x.user_per_gb());
                failures += x.errors;
            }
            fl[n - 1].push(rel.floor_hs.cpu_us());
            fl[2 * n - 1].push(rel.floor_hs.user_us());
            failures += rel.floor_hs.errors + rel.floor_errors;
        }
    }
    let names: Vec<String> = XFERS
        .iter()
        .map(|x| format!("{} (CPU s/GB)", x.0))
        .chain(std::iter::once("handshake (CPU us)".to_string()))
        .collect();
    println!(
        "\n== side by side, medians of {} rounds ({:.0} s): A = {}, B = {} ==",
        plan.ab_rounds,
        started.elapsed().as_secs_f64(),
        old.display(),
        plan.mtpx.display()
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8}",
        "metric", "A", "B", "floor", "B/A", "A/floor", "B/floor"
    );
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\n  \"mode\": \"compare\",\n  \"a\": \"{}\",\n  \"b\": \"{}\",\n  \"rounds\": {},\n  \"crypto_floor_cpu_s_per_gb\": {aes:.4},\n  \"metrics\": [\n",
        old.display(),
        plan.mtpx.display(),
        plan.ab_rounds
    );
    for k in 0..2 * n {
        let name = if k < n {
            names[k].clone()
        } else {
            format!("  user: {}", names[k - n])
        };
        let (a, b, f) = (median(&v[0][k]), median(&v[1][k]), median(&fl[k]));
        println!(
            "{name:<30} {a:>9.3} {b:>9.3} {f:>9.3} {:>7.3} {:>8.2} {:>8.2}",
            b / a,
            a / f,
            b / f
        );
        let list = |x: &[f64]| {
            x.iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            j,
            "    {{\"name\": \"{}\", \"a_median\": {a:.4}, \"b_median\": {b:.4}, \"floor_median\": {f:.4}, \"b_over_a\": {:.4}, \"a\": [{}], \"b\": [{}], \"floor\": [{}]}}{}",
            name.trim(),
            b / a,
            list(&v[0][k]),
            list(&v[1][k]),
            list(&fl[k]),
            if k + 1 < 2 * n { "," } else { "" }
        );
    }
    let _ = write!(j, "  ],\n  \"failures\": {failures}\n}}\n");
    std::fs::write(&plan.json, j)?;
    println!("\nwrote {}", plan.json.display());
    if failures > 0 {
        return Err(io::Error::other(format!("{failures} operations failed")));
    }
    Ok(())
}
