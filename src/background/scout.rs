//! The scout: learns the fronted site's TLS handshake shape in the background.
//!
//! A raid sends the site, `repeats` times for each [`HelloKind`], a ClientHello a current
//! browser sends for that kind ([`browser_hello`]: never a Telegram-shaped one, which would
//! leave the server with a TDLib fingerprint; SNI = the secret's host), reads its first flight
//! (ServerHello, ChangeCipherSpec, the encrypted records' headers and lengths), closes, and
//! pushes each [`Observation`] into the kind's [`Profile`](crate::proto::tlsprofile::Profile) of the shared [`Profiles`] the
//! workers read once per handshake.
//!
//! Blocking std sockets with timeouts, on its own thread: never on a worker. The flight is over
//! when the records look finished ([`Observation::looks_finished`]) or after a quiet period
//! (twice the connect time plus 150 ms, within 250 ms..1.5 s) with no new byte.
//!
//! Stopping never waits for a raid: [`Scout::stop`] raises a flag checked between probes and
//! shuts the socket in use down (a blocked read returns at once), and waits at most
//! [`STOP_WAIT`] for the thread before leaving it behind (a connect or a timing fetch in
//! progress ends by its own timeout; the process does not wait for it).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::formats::tls13::{self, Step};
use crate::log::Level;
use crate::proto::browserhello::browser_hello;
use crate::proto::shaping::{self, MIN_FIT_SAMPLES};
use crate::proto::tlsprofile::{
    FlightError, GROUP_X25519_MLKEM768, HelloKind, Observation, Profiles, Summary,
    parse_server_flight,
};

/// Most bytes read from the site per probe.
const MAX_FLIGHT: usize = 64 * 1024;
/// Default time allowed for one probe (connect + flight).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Scout::stop`] waits for the thread.
pub const STOP_WAIT: Duration = Duration::from_millis(500);

/// Tells a raid to stop: a flag checked between steps, and the socket in use, shut down by
/// [`StopSignal::stop`] so that a blocked read returns at once.
#[derive(Debug, Default)]
pub struct StopSignal {
    state: Mutex<StopState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct StopState {
    stopped: bool,
    /// The thread has ended.
    done: bool,
    socket: Option<TcpStream>,
}

impl StopSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`StopSignal::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Stops: raises the flag and shuts down the socket in use.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        if let Some(sock) = s.socket.take() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        self.cv.notify_all();
    }

    /// Remembers `stream` as the socket in use (`false`, and nothing kept, once stopped).
    fn watch(&self, stream: &TcpStream) -> bool {
        let mut s = self.lock();
        if s.stopped {
            return false;
        }
        s.socket = stream.try_clone().ok();
        true
    }

    fn unwatch(&self) {
        self.lock().socket = None;
    }

    /// Waits until stopped or `d` passed; true when stopped.
    fn wait(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut s = self.lock();
        while !s.stopped {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = match self.cv.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        s.stopped
    }

    fn finished(&self) {
        self.lock().done = true;
        self.cv.notify_all();
    }

    /// Waits up to `d` for [`StopSignal::finished`]; true if it came.
    fn wait_finished(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut s = self.lock();
        while !s.done {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.cv.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// Sends one browser-like ClientHello of `kind` for `host` to `addr`, reads the site's first
/// flight and closes. `timeout` bounds the connect and the whole read. An alert, a non-TLS
/// answer or a flight cut short is an error (`InvalidData`, `UnexpectedEof`, `TimedOut`).
pub fn probe_once(
    addr: SocketAddr,
    host: &str,
    kind: HelloKind,
    timeout: Duration,
) -> io::Result<Observation> {
    probe_until(addr, host, kind, timeout, &StopSignal::default())
}

fn probe_until(
    addr: SocketAddr,
    host: &str,
    kind: HelloKind,
    timeout: Duration,
    stop: &StopSignal,
) -> io::Result<Observation> {
    let hello = browser_hello(&mut crate::io::OsRng, host, kind);
    capture_until(addr, &hello, timeout, stop).map(|(obs, _)| obs)
}

/// Sends `hello` (a complete ClientHello record) to `addr` and reads the site's first flight:
/// the observation and the raw bytes read (for tests and captures). See [`probe_once`].
pub fn capture(
    addr: SocketAddr,
    hello: &[u8],
    timeout: Duration,
) -> io::Result<(Observation, Vec<u8>)> {
    capture_until(addr, hello, timeout, &StopSignal::default())
}

fn capture_until(
    addr: SocketAddr,
    hello: &[u8],
    timeout: Duration,
    stop: &StopSignal,
) -> io::Result<(Observation, Vec<u8>)> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    if !stop.watch(&stream) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "scout stopped"));
    }
    let r = read_flight(stream, start, hello, timeout);
    stop.unwatch();
    r
}

fn read_flight(
    mut stream: TcpStream,
    start: Instant,
    hello: &[u8],
    timeout: Duration,
) -> io::Result<(Observation, Vec<u8>)> {
    let deadline = start + timeout;
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

/// What one raid learned for one kind of hello.
#[derive(Clone, Copy, Debug)]
pub struct KindReport {
    /// The kind of hello sent.
    pub kind: HelloKind,
    /// The kind's profile after the raid.
    pub summary: Summary,
    /// Probes that got an answer.
    pub answered: u32,
}

impl KindReport {
    /// Whether the fake flight can answer this kind as the site does.
    pub fn matched(&self) -> bool {
        self.summary.samples > 0 && self.summary.advice().is_none()
    }

    /// The site answers today's X25519MLKEM768 hello without X25519MLKEM768 (or without TLS
    /// 1.3): a front that looks older than the clients that use it.
    pub fn older_than_clients(&self) -> bool {
        self.kind == HelloKind::PostQuantum
            && self.answered > 0
            && self.summary.group != Some(GROUP_X25519_MLKEM768)
    }
}

/// One raid: for each [`HelloKind`], `repeats` probes, each trying `addrs` in order until one
/// answers; every observation goes into the kind's profile (unusable ones are refused there,
/// with the reason kept). Returns one report per kind.
pub fn raid(
    addrs: &[SocketAddr],
    host: &str,
    repeats: u32,
    timeout: Duration,
    profiles: &Mutex<Profiles>,
) -> [KindReport; 2] {
    raid_until(
        addrs,
        host,
        repeats,
        timeout,
        profiles,
        &StopSignal::default(),
    )
}

fn raid_until(
    addrs: &[SocketAddr],
    host: &str,
    repeats: u32,
    timeout: Duration,
    profiles: &Mutex<Profiles>,
    stop: &StopSignal,
) -> [KindReport; 2] {
    HelloKind::ALL.map(|kind| {
        let mut answered = 0;
        for _ in 0..repeats {
            for &addr in addrs {
                if stop.stopped() {
                    break;
                }
                match probe_until(addr, host, kind, timeout, stop) {
                    Ok(obs) => {
                        answered += 1;
                        let mut p = profiles.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = p.get_mut(kind).push(obs);
                        break;
                    }
                    Err(e) => {
                        crate::log_event!(
                            Level::Debug,
                            "scout-probe-failed",
                            addr = addr,
                            hello = kind.as_str(),
                            error = e
                        );
                    }
                }
            }
        }
        let p = profiles.lock().unwrap_or_else(|p| p.into_inner());
        KindReport {
            kind,
            summary: p.get(kind).summary(),
            answered,
        }
    })
}

/// Logs what a raid learned for one kind of hello: one info line, a warning when the fake
/// flight cannot look like the site's (several encrypted records, a clamped size, or nothing
/// usable learned), and one when the site answers today's X25519MLKEM768 hello without it.
pub fn log_summary(host: &str, r: &KindReport) {
    let s = &r.summary;
    log_raid(host, r);
    if s.samples == 0 {
        let why = match s.problem {
            Some(p) => p.to_string(),
            None => "the site did not answer".to_string(),
        };
        crate::log_event!(
            Level::Warn,
            "scout-fallback",
            host = host,
            hello = r.kind.as_str(),
            reason = why,
            using = "built-in handshake shape"
        );
    } else if let Some(advice) = s.advice() {
        crate::log_event!(
            Level::Warn,
            "scout-shape-differs",
            host = host,
            hello = r.kind.as_str(),
            records = s.records,
            clamped = s.clamped,
            advice = advice
        );
    }
    if r.older_than_clients() {
        crate::log_event!(
            Level::Warn,
            "scout-site-older-than-clients",
            host = host,
            group = format_args!("{:#06x}", s.group.unwrap_or(0)),
            advice = "today's Telegram clients offer X25519MLKEM768 and this site does not \
                      answer with it: front a site that speaks TLS 1.3 with X25519MLKEM768"
        );
    }
}

fn log_raid(host: &str, r: &KindReport) {
    let s = &r.summary;
    crate::log_event!(
        Level::Info,
        "scout-raid",
        host = host,
        hello = r.kind.as_str(),
        answered = r.answered,
        samples = s.samples,
        group = format_args!("{:#06x}", s.group.unwrap_or(0)),
        server_hello = s.server_hello_len,
        records = s.records,
        size = s.mean,
        jitter = s.jitter,
        matched = r.matched(),
    );
}

/// The running scout thread; [`Scout::stop`] ends it without waiting for a raid.
pub struct Scout {
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Scout {
    /// Asks the thread to stop and waits for it, at most [`STOP_WAIT`]: a probe's socket is
    /// shut down at once; a connect or a timing fetch in progress is left to end by its own
    /// timeout (the thread then ends by itself).
    pub fn stop(mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            if self.stop.wait_finished(STOP_WAIT) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Scout {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Starts the scout: a raid at once, then every `every`. `targets` is asked for the site's
/// addresses before each raid (so a background re-resolution is picked up). The profiles are
/// shared with the workers, which read [`Profiles::shape_for`] once per handshake.
pub fn spawn<F>(
    targets: F,
    host: String,
    every: Duration,
    repeats: u32,
    profiles: Arc<Mutex<Profiles>>,
    timing: Option<TimingRaid>,
) -> io::Result<Scout>
where
    F: FnMut() -> Vec<SocketAddr> + Send + 'static,
{
    let stop = Arc::new(StopSignal::default());
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("mtpx-scout".into())
        .spawn(move || {
            run(targets, &host, every, repeats, &profiles, timing, &flag);
            flag.finished();
        })?;
    Ok(Scout {
        stop,
        thread: Some(thread),
    })
}

fn run<F>(
    mut targets: F,
    host: &str,
    every: Duration,
    repeats: u32,
    profiles: &Mutex<Profiles>,
    mut timing: Option<TimingRaid>,
    stop: &StopSignal,
) where
    F: FnMut() -> Vec<SocketAddr>,
{
    let every = every.max(Duration::from_secs(1));
    let mut last_warned: [Option<(u8, bool, bool, bool)>; 2] = [None; 2];
    let mut waited = Duration::ZERO;
    loop {
        let addrs = targets();
        // The site's name may not be resolved yet: wait for it (up to a minute) rather than
        // learning nothing until the next raid hours later.
        if addrs.is_empty() && waited < Duration::from_secs(60) {
            waited += Duration::from_secs(2);
            if stop.wait(Duration::from_secs(2)) {
                return;
            }
            continue;
        }
        let reports = raid_until(&addrs, host, repeats, PROBE_TIMEOUT, profiles, stop);
        if stop.stopped() {
            return;
        }
        if let Some(t) = timing.as_mut() {
            let (ok, kept, fitted) = t.run(&addrs, host, repeats, PROBE_TIMEOUT);
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
        for (r, last) in reports.iter().zip(last_warned.iter_mut()) {
            let s = &r.summary;
            let key = (s.records, s.clamped, s.samples == 0, r.older_than_clients());
            if *last != Some(key) {
                log_summary(host, r);
                *last = Some(key);
            } else {
                log_raid(host, r);
            }
        }
        if stop.wait(every) {
            return;
        }
    }
}
