//! The soak's attackers. Each runs in its own threads until told to stop, from its own
//! 127.x.y.z source addresses, and counts what it saw in the phase it was in.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mtpx::proto::faketls;
use mtpx::proto::{Rng, XorShift64};

use super::load::DdConn;
use super::{Env, Recorded, below, connect_nb, connect_timeout_from, set_rcvbuf, site, timed_out};
use crate::common::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attack {
    Slowloris,
    EmptyRecords,
    FrontedReaders,
    ClientReaders,
    Garbage,
    Replays,
    Flood,
}

impl Attack {
    pub const ALL: [Attack; 7] = [
        Attack::Slowloris,
        Attack::EmptyRecords,
        Attack::FrontedReaders,
        Attack::ClientReaders,
        Attack::Garbage,
        Attack::Replays,
        Attack::Flood,
    ];

    /// Its name on the command line (`--attacks`) and in the counters.
    pub fn key(self) -> &'static str {
        match self {
            Attack::Slowloris => "slowloris",
            Attack::EmptyRecords => "empty-records",
            Attack::FrontedReaders => "fronted-readers",
            Attack::ClientReaders => "client-readers",
            Attack::Garbage => "garbage",
            Attack::Replays => "replays",
            Attack::Flood => "flood",
        }
    }

    pub fn from_key(k: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.key() == k)
    }
}

/// A running attack.
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub fn start(env: &Arc<Env>, a: Attack) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let o = &env.opts;
    let mut threads = Vec::new();
    let mut spawn = |f: Box<dyn FnOnce() + Send>| threads.push(std::thread::spawn(f));
    let (e, s) = (env.clone(), stop.clone());
    match a {
        Attack::Slowloris => {
            let n = o.slowloris;
            spawn(Box::new(move || {
                let mut rng = XorShift64(seed());
                let (ee, host) = (e.ee, e.host.clone());
                hold(&e, &s, "slowloris", n, 40, |i| {
                    let src = Ipv4Addr::new(127, 0, 4, (i % 16 + 1) as u8);
                    let mut c = connect_timeout_from(src, ee, Duration::from_secs(1))?;
                    let mut key = [0u8; 16];
                    rng.fill(&mut key);
                    let hello = faketls::build_client_hello(&mut rng, &key, &host, now_unix());
                    let k = 3 + below(&mut rng, 100) as usize;
                    c.write_all(&hello[..k])?;
                    Ok(c)
                });
            }));
        }
        Attack::Flood => {
            let n = if o.flood == 0 {
                o.concurrency + 500
            } else {
                o.flood
            };
            spawn(Box::new(move || {
                let ee = e.ee;
                hold(&e, &s, "flood", n, 100, |_| {
                    connect_nb(Ipv4Addr::new(127, 0, 0, 2), ee)
                });
            }));
        }
        Attack::FrontedReaders => {
            let n = o.fronted_readers;
            spawn(Box::new(move || {
                let (ee, host) = (e.ee, e.host.clone());
                hold(&e, &s, "fronted-readers", n, 32, |i| {
                    let src = Ipv4Addr::new(127, 0, 6, (i % 16 + 1) as u8);
                    let mut c = connect_timeout_from(src, ee, Duration::from_secs(1))?;
                    set_rcvbuf(&c, 16 * 1024);
                    write!(c, "GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
                    Ok(c)
                });
            }));
        }
        Attack::ClientReaders => {
            let n = o.client_readers;
            spawn(Box::new(move || {
                let mut t = Target {
                    proxy: e.ee,
                    src: Ipv4Addr::LOCALHOST,
                    key: e.ee_key,
                    host: e.host.clone(),
                };
                hold(&e, &s, "client-readers", n, 16, |i| {
                    t.src = Ipv4Addr::new(127, 0, 7, (i % 16 + 1) as u8);
                    let dc = 1 + (i % 4) as i16;
                    let c = Client::connect(&t, dc, command(OP_DOWN, 0, 1 << 40), 64)?;
                    set_rcvbuf(&c.s, 16 * 1024);
                    c.s.try_clone()
                });
            }));
        }
        Attack::EmptyRecords => {
            for k in 0..o.empty_floods {
                let (e, s) = (e.clone(), s.clone());
                spawn(Box::new(move || empty_records(&e, &s, k)));
            }
        }
        Attack::Garbage => {
            for k in 0..o.garbage {
                let (e, s) = (e.clone(), s.clone());
                spawn(Box::new(move || garbage(&e, &s, k)));
            }
        }
        Attack::Replays => spawn(Box::new(move || replays(&e, &s))),
    }
    Running { stop, threads }
}

fn now_unix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// Keeps up to `target` connections made by `open` (at most `per_tick` new ones per 100 ms
/// tick), and counts those the far side closes, with their lifetimes.
fn hold(
    env: &Env,
    stop: &AtomicBool,
    name: &'static str,
    target: usize,
    per_tick: usize,
    mut open: impl FnMut(usize) -> io::Result<TcpStream>,
) {
    let mut held: Vec<(TcpStream, Instant)> = Vec::with_capacity(target);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(target);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        let phase = env.rec.phase();
        fds.clear();
        fds.extend(held.iter().map(|(s, _)| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }));
        // SAFETY: poll over a slice of initialised pollfds we own, without waiting.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        let mut lives = Vec::new();
        for i in (0..fds.len()).rev() {
            if fds[i].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                let (_, since) = held.swap_remove(i);
                lives.push(since.elapsed().as_millis() as u32);
            }
        }
        let (mut opened, mut failed) = (0u64, 0u64);
        while held.len() < target
            && ((opened + failed) as usize) < per_tick
            && tick.elapsed() < Duration::from_millis(80)
            && !stop.load(Ordering::Relaxed)
        {
            n += 1;
            match open(n) {
                Ok(s) => {
                    held.push((s, Instant::now()));
                    opened += 1;
                }
                Err(_) => failed += 1,
            }
        }
        let now_held = held.len() as u64;
        env.rec.at(phase, |p| {
            p.count(name, "opened", opened);
            p.count(name, "open failed", failed);
            p.count(name, "cut", lives.len() as u64);
            p.count(
                name,
                "cut within 1 s",
                lives.iter().filter(|&&l| l < 1000).count() as u64,
            );
            p.gauge(name, "held", now_held);
            p.lifetimes.entry(name).or_default().extend(&lives);
        });
        std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
    }
}

/// A valid FakeTLS client that streams zero-length application-data records.
fn empty_records(env: &Env, stop: &AtomicBool, k: usize) {
    let buf: Vec<u8> = [0x17u8, 0x03, 0x03, 0x00, 0x00].repeat(13107);
    let rate = env.opts.empty_rate.max(1) as f64;
    let t = Target {
        proxy: env.ee,
        src: Ipv4Addr::new(127, 0, 8, (k % 250 + 1) as u8),
        key: env.ee_key,
        host: env.host.clone(),
    };
    const NAME: &str = "empty-records";
    while !stop.load(Ordering::Relaxed) {
        let phase = env.rec.phase();
        let c = match Client::connect(&t, 1 + (k % 4) as i16, command(OP_HOLD, 0, 0), 64) {
            Ok(c) => c,
            Err(_) => {
                env.rec.at(phase, |p| p.count(NAME, "connect failed", 1));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut s = c.s;
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        let start = Instant::now();
        let (mut sent, mut at, mut reported) = (0u64, 0usize, Instant::now());
        let mut unreported = 0u64;
        let cut = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            let due = sent as f64 / rate;
            let el = start.elapsed().as_secs_f64();
            if el < due {
                std::thread::sleep(Duration::from_secs_f64((due - el).min(0.05)));
            } else {
                match s.write(&buf[at..]) {
                    Ok(n) => {
                        at = (at + n) % buf.len();
                        sent += n as u64;
                        unreported += n as u64;
                    }
                    Err(e) if timed_out(&e) => {}
                    Err(_) => break true,
                }
            }
            if reported.elapsed() >= Duration::from_millis(200) {
                let phase = env.rec.phase();
                env.rec
                    .at(phase, |p| p.count(NAME, "records sent", unreported / 5));
                unreported = 0;
                reported = Instant::now();
            }
        };
        let phase = env.rec.phase();
        env.rec.at(phase, |p| {
            p.count(NAME, "records sent", unreported / 5);
            if cut {
                p.count(NAME, "cut", 1);
            }
        });
    }
}

/// Connections that send random bytes and read whatever comes back for a second.
fn garbage(env: &Env, stop: &AtomicBool, k: usize) {
    const NAME: &str = "garbage";
    let mut rng = XorShift64(seed());
    let mut n = k;
    let mut junk = vec![0u8; 4096];
    let mut sink = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        n += env.opts.garbage.max(1);
        let phase = env.rec.phase();
        let src = Ipv4Addr::new(127, 0, 5, (n % 250 + 1) as u8);
        let Ok(mut s) = connect_timeout_from(src, env.ee, Duration::from_secs(1)) else {
            env.rec.at(phase, |p| p.count(NAME, "connect failed", 1));
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let len = 1 + below(&mut rng, junk.len() as u64) as usize;
        rng.fill(&mut junk[..len]);
        let _ = s.write_all(&junk[..len]);
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut got = 0usize;
        let end = loop {
            match s.read(&mut sink) {
                Ok(0) => break "closed",
                Ok(k) => got += k,
                Err(e) if timed_out(&e) => break "open after 1 s",
                Err(_) => break "reset",
            }
        };
        env.rec.at(phase, |p| {
            p.count(NAME, "connections", 1);
            if got > 0 {
                p.count(NAME, "answered", 1);
            } else {
                p.count(NAME, &format!("no answer, {end}"), 1);
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The recorder on the path: every `replay_ms` a real handshake (ee, then dd, in turn) that it
/// keeps for the replay attack. Runs for the whole soak.
pub fn recorder(env: Arc<Env>) {
    let mut i = 0u64;
    let src = Ipv4Addr::new(127, 0, 9, 1);
    while !env.stop.load(Ordering::Relaxed) {
        i += 1;
        let dd = i % 2 == 0;
        let r = if dd {
            DdConn::connect(src, env.dd, &env.dd_key, 2, command(OP_HOLD, 0, 0)).and_then(
                |mut c| {
                    c.s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    c.recv_exact(1)?;
                    Ok(c.sent)
                },
            )
        } else {
            let t = Target {
                proxy: env.ee,
                src,
                key: env.ee_key,
                host: env.host.clone(),
            };
            let mut sent = Vec::new();
            Client::connect_recorded(&t, 2, command(OP_HOLD, 0, 0), 64, &mut sent).and_then(
                |mut c| {
                    c.s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    c.recv_exact(1)?;
                    Ok(sent)
                },
            )
        };
        // Made under attack, a recording may fail: it is simply not kept.
        if let Ok(bytes) = r {
            let mut store = env.recorded.lock().unwrap_or_else(|p| p.into_inner());
            let q = if dd { &mut store.1 } else { &mut store.0 };
            q.push_back(Recorded {
                at: Instant::now(),
                bytes,
            });
            if q.len() > 1000 {
                q.pop_front();
            }
        }
        std::thread::sleep(Duration::from_millis(env.opts.replay_ms));
    }
}

/// Replays recorded handshakes: ee and dd in turn, each young (recorded a second ago or more)
/// and aged (older than twice the clock-skew tolerance plus 3 s) in turn. Each recording is
/// replayed once.
fn replays(env: &Env, stop: &AtomicBool) {
    const NAME: &str = "replays";
    let aged_after = Duration::from_secs(2 * env.opts.skew_s + 3);
    let young_after = Duration::from_secs(1);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let dd = i % 2 == 0;
        let aged = (i / 2) % 2 == 1;
        let pick = {
            let mut store = env.recorded.lock().unwrap_or_else(|p| p.into_inner());
            let q = if dd { &mut store.1 } else { &mut store.0 };
            if aged {
                q.front()
                    .is_some_and(|r| r.at.elapsed() >= aged_after)
                    .then(|| q.pop_front())
                    .flatten()
            } else {
                let at = q.iter().rposition(|r| {
                    let age = r.at.elapsed();
                    age >= young_after && age < aged_after
                });
                at.and_then(|at| q.remove(at))
            }
        };
        let Some(rec) = pick else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let phase = env.rec.phase();
        let src = Ipv4Addr::new(127, 0, 9, (i % 250 + 2) as u8);
        let outcome = replay(env, src, dd, &rec.bytes);
        let what = format!(
            "{} {}: {outcome}",
            if dd { "dd" } else { "ee" },
            if aged { "aged" } else { "young" }
        );
        env.rec.at(phase, |p| p.count(NAME, &what, 1));
        std::thread::sleep(Duration::from_millis(env.opts.replay_ms));
    }
}

/// What mtpx did with a replayed handshake: `fronted` (the site's answer came back: right),
/// `ACCEPTED` (a server flight that verifies, or the DC's byte: wrong), or `silent`/`closed`.
fn replay(env: &Env, src: Ipv4Addr, dd: bool, bytes: &[u8]) -> &'static str {
    let dst = if dd { env.dd } else { env.ee };
    let Ok(mut s) = connect_timeout_from(src, dst, Duration::from_secs(1)) else {
        return "no connect";
    };
    if s.write_all(bytes).is_err() {
        return "write failed";
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let want = if dd { site::ALERT } else { site::FLIGHT };
    loop {
        let end = match s.read(&mut b) {
            Ok(0) => Some("closed"),
            Ok(k) => {
                got.extend_from_slice(&b[..k]);
                None
            }
            Err(e) if timed_out(&e) => Some("silent"),
            Err(_) => Some("reset"),
        };
        if got.len() >= want.len() && got.starts_with(want) {
            return "fronted";
        }
        if !dd && bytes.len() > 43 {
            let mut random = [0u8; 32];
            random.copy_from_slice(&bytes[11..43]);
            if let Ok(Some(_)) = faketls::verify_server_flight(&got, &random, &env.ee_key) {
                return "ACCEPTED";
            }
        }
        if let Some(end) = end {
            return if got.is_empty() {
                end
            } else if dd || !want.starts_with(&got[..got.len().min(want.len())]) {
                "ACCEPTED"
            } else {
                "partial answer"
            };
        }
    }
}
