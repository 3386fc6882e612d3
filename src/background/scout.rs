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

use crate::formats::tls13::{self, Step};
use crate::log::Level;
use crate::proto::Rng;
use crate::proto::faketls::build_client_hello;
use crate::proto::shaping::{self, MIN_FIT_SAMPLES};
use crate::proto::tlsprofile::{FlightError, Observation, Profile, Summary, parse_server_flight};

/// Most bytes read from the site per probe.
const MAX_FLIGHT: usize = 64 * 1024;
/// Default time allowed for one probe (connect + flight).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one Telegram-shaped ClientHello for `host` to `addr`, reads the site's first flight
/// and closes. `timeout` bounds the connect and the whole read. An alert, a non-TLS answer or
/// a flight cut short is an error (`InvalidData`, `UnexpectedEof`, `TimedOut`).
pub fn probe_once(addr: SocketAddr, host: &str, timeout: Duration) -> io::Result<Observation> {
    let mut rng = crate::io::OsRng;
    let mut key = [0u8; 16];
    rng.fill(&mut key);
    let now = u32::try_from(crate::io::unix_now()).unwrap_or(u32::MAX);
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

/// Most response bytes read per timing observation.
const MAX_BODY: usize = 8 << 20;
/// Gaps kept for the fit (the newest).
const MAX_GAPS: usize = 4096;

/// Fetches `path` from `addr` over TLS 1.3 (SNI and `Host` = `host`, as `curl` would) and
/// returns the gaps between consecutive application-data records of the answer, as they
/// arrived. Reads until the site closes, [`MAX_BODY`] bytes, [`MAX_GAPS`] gaps or `timeout`.
/// Errors: the handshake failed (the site refused x25519 / AES-128-GCM, an alert, a bad
/// Finished) or the connection did.
pub fn observe_gaps(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<Vec<Duration>> {
    let deadline = Instant::now() + timeout;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    let opts = tls13::Options {
        host,
        alpn: b"http/1.1",
        decrypt: false,
    };
    let mut gaps = Vec::new();
    let (mut last, mut body) = (None::<Instant>, 0usize);
    super::tls::session(addr, opts, request.as_bytes(), deadline, |at, step| {
        if let Step::Data(n) = step {
            if let Some(p) = last {
                gaps.push(at - p);
            }
            last = Some(at);
            body += n;
        }
        body < MAX_BODY && gaps.len() < MAX_GAPS
    })?;
    Ok(gaps)
}

/// Where timing raids fetch from: `[defense.doppelganger] urls` (https://host[:port]/path),
/// or else the fronting site's `/`.
pub struct TimingRaid {
    /// `(host, port, path)` of each URL.
    pub urls: Vec<(String, u16, String)>,
    /// Where fitted parameters go.
    pub cell: Arc<crate::io::ShapingCell>,
    /// The `[network] dns` server for the URLs' host names (else /etc/resolv.conf).
    dns: Option<crate::formats::dns::Nameserver>,
    /// Gaps observed so far (the newest [`MAX_GAPS`]).
    gaps: std::collections::VecDeque<Duration>,
}

impl TimingRaid {
    /// A raid plan; `urls` are `https://` URLs (checked by the config).
    pub fn new(
        urls: &[String],
        cell: Arc<crate::io::ShapingCell>,
        dns: Option<crate::formats::dns::Nameserver>,
    ) -> TimingRaid {
        let urls = urls.iter().filter_map(|u| parse_https_url(u)).collect();
        TimingRaid {
            urls,
            cell,
            dns,
            gaps: std::collections::VecDeque::new(),
        }
    }

    /// `repeats` observations of each URL (or of the fronting site at `front`), then a fit of
    /// every gap kept so far into the shaping cell. Returns `(observations that worked, gaps
    /// kept, the fit if one was made)`.
    pub fn run(
        &mut self,
        front: &[SocketAddr],
        host: &str,
        repeats: u32,
        timeout: Duration,
    ) -> (u32, usize, Option<(f64, Duration)>) {
        let mut ok = 0;
        for _ in 0..repeats {
            let mut targets: Vec<(Vec<SocketAddr>, &str, &str)> = Vec::new();
            if self.urls.is_empty() {
                targets.push((front.to_vec(), host, "/"));
            } else {
                for (h, port, path) in &self.urls {
                    let addrs = super::resolve::resolve(self.dns.as_ref(), h, *port, timeout)
                        .unwrap_or_default();
                    targets.push((addrs, h, path));
                }
            }
            for (addrs, h, path) in targets {
                for addr in addrs {
                    match observe_gaps(addr, h, path, timeout) {
                        Ok(gaps) => {
                            ok += 1;
                            for g in gaps {
                                if self.gaps.len() == MAX_GAPS {
                                    self.gaps.pop_front();
                                }
                                self.gaps.push_back(g);
                            }
                            break;
                        }
                        Err(e) => crate::log_event!(
                            Level::Debug,
                            "scout-timing-failed",
                            addr = addr,
                            error = e
                        ),
                    }
                }
            }
        }
        let sample: Vec<Duration> = self.gaps.iter().copied().collect();
        let fitted = shaping::fit(&sample);
        if let Some((k, scale)) = fitted {
            self.cell.set(k, scale);
        }
        (ok, sample.len(), fitted)
    }
}

/// `https://host[:port][/path]` → `(host, port (443), path)`.
pub fn parse_https_url(u: &str) -> Option<(String, u16, String)> {
    let rest = u.trim().strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let explicit = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (!h.starts_with('[') || h.ends_with(']'))
    });
    let (host, port, path) =
        crate::formats::http::parse_http_url(&format!("http://{rest}")).ok()?;
    Some((host, if explicit { port } else { 443 }, path))
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
    mut timing: Option<TimingRaid>,
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
                if let Some(t) = timing.as_mut() {
                    let (ok, kept, fitted) = t.run(&addrs, &host, repeats, PROBE_TIMEOUT);
                    let (k, scale) = t.cell.params();
                    crate::log_event!(
                        if fitted.is_some() || ok == 0 {
                            Level::Info
                        } else {
                            Level::Debug
                        },
                        "scout-timing",
                        observed = ok,
                        gaps = kept,
                        fitted = fitted.is_some(),
                        shape = format_args!("{k:.4}"),
                        scale_us = scale.as_micros(),
                        needs = MIN_FIT_SAMPLES,
                    );
                }
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
