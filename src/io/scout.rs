//! The scout: learns the fronted site's TLS handshake shape in the background.
//!
//! A raid sends the site, `repeats` times, a ClientHello shaped like a Telegram client's (SNI =
//! the secret's host, random key: the site checks no HMAC), reads its first flight (ServerHello,
//! ChangeCipherSpec, the encrypted records' headers and lengths), closes, and pushes each
//! [`Observation`] into the shared [`Profile`] the workers read once per handshake.
//!
//! Blocking std sockets with timeouts, on its own thread: never on a worker. The flight is over
//! when the records look finished ([`Observation::looks_finished`]) or after a quiet period
//! (twice the connect time plus 150 ms, within 250 ms..1.5 s) with no new byte.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log::Level;
use crate::proto::Rng;
use crate::proto::faketls::build_client_hello;
use crate::proto::tlsprofile::{FlightError, Observation, Profile, Summary, parse_server_flight};

/// Most bytes read from the site per probe.
const MAX_FLIGHT: usize = 64 * 1024;
/// Default time allowed for one probe (connect + flight).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one Telegram-shaped ClientHello for `host` to `addr`, reads the site's first flight
/// and closes. `timeout` bounds the connect and the whole read. An alert, a non-TLS answer or
/// a flight cut short is an error (`InvalidData`, `UnexpectedEof`, `TimedOut`).
pub fn probe_once(addr: SocketAddr, host: &str, timeout: Duration) -> io::Result<Observation> {
    let mut rng = super::OsRng;
    let mut key = [0u8; 16];
    rng.fill(&mut key);
    let now = u32::try_from(super::unix_now()).unwrap_or(u32::MAX);
    let hello = build_client_hello(&mut rng, &key, host, now);
    capture(addr, &hello, timeout).map(|(obs, _)| obs)
}

/// Sends `hello` (a complete ClientHello record) to `addr` and reads the site's first flight:
/// the observation and the raw bytes read (for tests and captures). See [`probe_once`].
pub fn capture(
    addr: SocketAddr,
    hello: &[u8],
    timeout: Duration,
) -> io::Result<(Observation, Vec<u8>)> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let rtt = start.elapsed();
    stream.set_nodelay(true)?;
    let quiet = (rtt * 2 + Duration::from_millis(150))
        .clamp(Duration::from_millis(250), Duration::from_millis(1500));
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(hello)?;

    let mut buf = vec![0u8; MAX_FLIGHT];
    let mut len = 0usize;
    let mut last: Option<Observation> = None;
    let done = |last: Option<Observation>, buf: &mut Vec<u8>, len: usize, e: io::Error| {
        buf.truncate(len);
        last.map(|o| (o, std::mem::take(buf))).ok_or(e)
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if last.is_some() {
            quiet.min(left)
        } else {
            left
        };
        if wait.is_zero() {
            return done(last, &mut buf, len, io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(wait))?;
        let Some(room) = buf.get_mut(len..).filter(|r| !r.is_empty()) else {
            return done(last, &mut buf, len, invalid("flight larger than 64 KiB"));
        };
        match stream.read(room) {
            Ok(0) => {
                let eof = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "site closed before its flight",
                );
                return done(last, &mut buf, len, eof);
            }
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Quiet after complete records: the flight is over.
                return done(last, &mut buf, len, e);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return done(last, &mut buf, len, e),
        }
        match parse_server_flight(buf.get(..len).unwrap_or(&[])) {
            Ok(obs) if !obs.is_tls13() || obs.looks_finished() => {
                buf.truncate(len);
                return Ok((obs, buf));
            }
            Ok(obs) => last = Some(obs),
            Err(FlightError::NeedMore) => {}
            Err(e) => return Err(invalid(&e.to_string())),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One raid: `repeats` probes, each trying `addrs` in order until one answers; every
/// observation goes into `profile` (unusable ones are refused there, with the reason kept).
/// Returns the summary after the raid and the number of probes that got an answer.
pub fn raid(
    addrs: &[SocketAddr],
    host: &str,
    repeats: u32,
    timeout: Duration,
    profile: &Mutex<Profile>,
) -> (Summary, u32) {
    let mut answered = 0;
    for _ in 0..repeats {
        for &addr in addrs {
            match probe_once(addr, host, timeout) {
                Ok(obs) => {
                    answered += 1;
                    let mut p = profile.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = p.push(obs);
                    break;
                }
                Err(e) => {
                    crate::log_event!(Level::Debug, "scout-probe-failed", addr = addr, error = e);
                }
            }
        }
    }
    let summary = profile.lock().unwrap_or_else(|p| p.into_inner()).summary();
    (summary, answered)
}

/// Logs what a raid learned: one info line, plus one warning when the fake flight cannot look
/// like the site's (several encrypted records, a clamped size, or nothing usable learned).
pub fn log_summary(host: &str, s: &Summary, answered: u32) {
    crate::log_event!(
        Level::Info,
        "scout-raid",
        host = host,
        answered = answered,
        samples = s.samples,
        records = s.records,
        server_hello = s.server_hello_len,
        size = s.mean,
        jitter = s.jitter,
    );
    if s.samples == 0 {
        let why = match s.problem {
            Some(p) => p.to_string(),
            None => "the site did not answer".to_string(),
        };
        crate::log_event!(
            Level::Warn,
            "scout-fallback",
            host = host,
            reason = why,
            using = "built-in handshake shape"
        );
    } else if let Some(advice) = s.advice() {
        crate::log_event!(
            Level::Warn,
            "scout-shape-differs",
            host = host,
            records = s.records,
            clamped = s.clamped,
            advice = advice
        );
    }
}

/// The running scout thread; [`Scout::stop`] ends it (between probes).
pub struct Scout {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Scout {
    /// Asks the thread to stop and waits for it (at most one probe's timeout).
    pub fn stop(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal(&self) {
        let (m, c) = &*self.stop;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_all();
    }
}

impl Drop for Scout {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Starts the scout: a raid at once, then every `every`. `targets` is asked for the site's
/// addresses before each raid (so a background re-resolution is picked up). The profile is
/// shared with the workers, which read [`Profile::shape`] once per handshake.
pub fn spawn<F>(
    mut targets: F,
    host: String,
    every: Duration,
    repeats: u32,
    profile: Arc<Mutex<Profile>>,
) -> io::Result<Scout>
where
    F: FnMut() -> Vec<SocketAddr> + Send + 'static,
{
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("mtpx-scout".into())
        .spawn(move || {
            let every = every.max(Duration::from_secs(1));
            let mut last_warned: Option<(u8, bool, bool)> = None;
            let mut waited = Duration::ZERO;
            loop {
                let addrs = targets();
                // The site's name may not be resolved yet: wait for it (up to a minute)
                // rather than learning nothing until the next raid hours later.
                let wait = if addrs.is_empty() && waited < Duration::from_secs(60) {
                    waited += Duration::from_secs(2);
                    Some(Duration::from_secs(2))
                } else {
                    None
                };
                if let Some(w) = wait {
                    let (m, c) = &*flag;
                    let g = m.lock().unwrap_or_else(|p| p.into_inner());
                    let (g, _) = c.wait_timeout(g, w).unwrap_or_else(|p| p.into_inner());
                    if *g {
                        return;
                    }
                    continue;
                }
                let (s, answered) = raid(&addrs, &host, repeats, PROBE_TIMEOUT, &profile);
                // Warn at the first raid and whenever what is wrong changes; info otherwise.
                let key = (s.records, s.clamped, s.samples == 0);
                if last_warned != Some(key) {
                    log_summary(&host, &s, answered);
                    last_warned = Some(key);
                } else {
                    crate::log_event!(
                        Level::Info,
                        "scout-raid",
                        host = host,
                        answered = answered,
                        samples = s.samples,
                        records = s.records,
                        size = s.mean,
                        jitter = s.jitter,
                    );
                }
                let (m, c) = &*flag;
                let until = Instant::now() + every;
                let mut stopped = m.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    stopped = match c.wait_timeout(stopped, left) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                if *stopped {
                    return;
                }
            }
        })?;
    Ok(Scout {
        stop,
        thread: Some(thread),
    })
}
