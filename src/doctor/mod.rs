//! `mtpx doctor`: mtg's health checks of a config and of the network around it.
//!
//! Six sections, run at the same time (each on its own thread; the DC and SOCKS5 checks fan out
//! further), reported in a fixed order:
//!
//! * **Config**: the warnings from loading the file (deprecated mtg keys, unknown keys, keys
//!   accepted but not implemented yet, a `dns` mtpx applies differently).
//! * **Time skew**: an SNTP query to each NTP server (default `pool.ntp.org`); the offset is
//!   compared with `tolerate-time-skewness`: under 30 % ok, under 70 % warning, else failure.
//!   An unreachable server is a warning.
//! * **Telegram DCs**: a TCP connect to every DC (built-in ids and `[network.dc-overrides]`),
//!   trying the addresses in the proxy's own order (`prefer-ip`).
//! * **SOCKS5 upstreams**: a SOCKS5 CONNECT to DC 2 through each `[network] proxies` URL.
//! * **Fronting site**: a TCP connect to the site of an `ee` secret (its host name, or
//!   `[domain-fronting] ip`), then a few Telegram-shaped ClientHellos to learn its TLS 1.3
//!   first flight, as the proxy's scout does.
//! * **SNI-DNS match**: does the secret's host name resolve to this server's public address?
//!
//! Host names are resolved with mtpx's own resolver ([`crate::background::resolve`]), never libc's,
//! through the `[network] dns` server when one is set.
//! Every network step has a timeout (at most [`MAX_WAIT`]), so the whole run takes seconds.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::background::{resolve, scout};
use crate::config::{Config, Warning, WarningKind, fmt_duration};
use crate::formats::sntp::{self, NtpTimestamp};
use crate::proto::dc::{DEFAULT_DC, DcTable};
use crate::proto::secret::SecretKind;
use crate::proto::socks5::{self, Socks5Client, Socks5Error, Step, Target};
use crate::proto::tlsprofile::Profile;

/// The sections, in report order.
pub const SECTIONS: [&str; 6] = [
    "Config",
    "Time skew",
    "Telegram DCs",
    "SOCKS5 upstreams",
    "Fronting site",
    "SNI-DNS match",
];

/// The NTP server asked when none is given.
pub const DEFAULT_NTP: &str = "pool.ntp.org";
/// The NTP port.
pub const NTP_PORT: u16 = 123;
/// The longest any one connect, probe or NTP exchange may take.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// Time allowed for one NTP exchange with one address.
const NTP_WAIT: Duration = Duration::from_secs(3);
/// Addresses of one NTP host name tried at most.
const NTP_ADDRS: usize = 3;
/// Time allowed for resolving a host name.
const RESOLVE_WAIT: Duration = Duration::from_secs(5);
/// Probes sent to the fronting site.
pub const FRONTING_REPEATS: u32 = 3;

/// How a check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look (fails the run only with `--strict`).
    Warn,
    /// Broken: the run exits non-zero.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail` (the JSON value).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The mark in front of a line of the human report (as mtg's).
    pub fn icon(self) -> &'static str {
        match self {
            Status::Ok => "✅",
            Status::Warn => "⚠️",
            Status::Fail => "❌",
        }
    }
}

/// One result line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// One of [`SECTIONS`].
    pub section: &'static str,
    /// What was checked (a DC, a URL, a config key, ...).
    pub name: String,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do about it (for warnings and failures).
    pub hint: Option<String>,
}

impl Check {
    fn new(
        section: &'static str,
        name: impl Into<String>,
        status: Status,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Check {
        Check {
            section,
            name: name.into(),
            status,
            message: message.into(),
            hint,
        }
    }
}

/// What to check beyond the config itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// NTP servers as (host, port); empty means [`DEFAULT_NTP`].
    pub ntp: Vec<(String, u16)>,
    /// Probes sent to the fronting site (at least 1).
    pub fronting_repeats: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ntp: Vec::new(),
            fronting_repeats: FRONTING_REPEATS,
        }
    }
}

type Section<'a> = &'a (dyn Fn() -> Vec<Check> + Sync);

/// Runs every check. `each_section` is called once per section, in [`SECTIONS`] order, as soon
/// as that section (and every one before it) is done, so that a report can be printed while the
/// slower checks still run. Returns every check, in report order.
pub fn run(
    config: &Config,
    warnings: &[Warning],
    opts: &Options,
    mut each_section: impl FnMut(&'static str, &[Check]),
) -> Vec<Check> {
    let sections: [Section<'_>; 6] = [
        &|| config_checks(warnings),
        &|| time_checks(config, &opts.ntp),
        &|| dc_checks(config),
        &|| socks5_checks(config),
        &|| fronting_checks(config, opts.fronting_repeats),
        &|| sni_checks(config),
    ];
    let results = parallel(&sections, |f| f());
    let mut all = Vec::new();
    for (section, checks) in SECTIONS.iter().zip(results) {
        let checks = checks.unwrap_or_else(|| vec![crashed(section)]);
        each_section(section, &checks);
        all.extend(checks);
    }
    all
}

/// The check reported for a section or item whose thread died (a bug).
fn crashed(section: &'static str) -> Check {
    Check::new(
        section,
        "doctor",
        Status::Fail,
        "this check crashed (a bug in mtpx: please report it)",
        None,
    )
}

/// `f` over `items` on one thread each (inline when a thread cannot be started); results in
/// the order of `items`, `None` for a thread that died.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<Option<R>> {
    std::thread::scope(|s| {
        let f = &f;
        let started: Vec<_> = items
            .iter()
            .map(|item| {
                std::thread::Builder::new()
                    .name("mtpx-doctor".into())
                    .spawn_scoped(s, move || f(item))
                    .map_err(|_| item)
            })
            .collect();
        started
            .into_iter()
            .zip(items)
            .map(|(h, item)| match h {
                Ok(h) => h.join().ok(),
                Err(_) => Some(f(item)),
            })
            .collect()
    })
}

/// The exit status for `checks`: 1 if any failed (or, with `strict`, any warned), else 0.
pub fn exit_status(checks: &[Check], strict: bool) -> i32 {
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    match worst {
        Status::Fail => 1,
        Status::Warn if strict => 1,
        _ => 0,
    }
}

/// The human report of one section: its title, then `  <icon> <name>: <message>` lines, each
/// followed by an indented `hint:` line when there is a hint.
pub fn render_section(section: &str, checks: &[Check]) -> String {
    let mut out = format!("{section}\n");
    for c in checks {
        let _ = writeln!(out, "  {} {}: {}", c.status.icon(), c.name, c.message);
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "     hint: {h}");
        }
    }
    out
}

/// The last line of the human report: counts per status.
pub fn render_totals(checks: &[Check]) -> String {
    let n = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}, {}\n",
        plural(n(Status::Ok), "ok", "ok"),
        plural(n(Status::Warn), "warning", "warnings"),
        plural(n(Status::Fail), "failure", "failures"),
    )
}

/// The machine-readable report: a JSON array of
/// `{"section", "name", "status": "ok"|"warn"|"fail", "message", "hint": string|null}`,
/// one object per line, with a trailing newline.
pub fn render_json(checks: &[Check]) -> String {
    let mut out = String::from("[\n");
    for (i, c) in checks.iter().enumerate() {
        let hint = match &c.hint {
            Some(h) => json_string(h),
            None => "null".to_string(),
        };
        let _ = write!(
            out,
            "  {{\"section\": {}, \"name\": {}, \"status\": \"{}\", \"message\": {}, \"hint\": {}}}",
            json_string(c.section),
            json_string(&c.name),
            c.status.as_str(),
            json_string(&c.message),
            hint
        );
        out.push_str(if i + 1 < checks.len() { ",\n" } else { "\n" });
    }
    out.push_str("]\n");
    out
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses `HOST`, `HOST:PORT`, `IPv6`, `[IPv6]` or `[IPv6]:PORT` (`default_port` when there is
/// none). `None` for an empty host or a bad port.
pub fn parse_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    let (host, p) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<Ipv6Addr>().ok()?;
        let p = match after {
            "" => default_port,
            a => port(a.strip_prefix(':')?)?,
        };
        (inside, p)
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, default_port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, port(p)?),
            None => (s, default_port),
        }
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    ok.then(|| (host.to_string(), p))
}

// ----------------------------------------------------------------------------------------------
// Small helpers

/// An I/O error without the trailing ` (os error N)`.
fn short_err(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `12.3 ms` or `1.23 s`.
fn fmt_elapsed(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// The connect timeout: `[network.timeout] tcp`, at most [`MAX_WAIT`].
fn connect_wait(config: &Config) -> Duration {
    let t = config.timeouts.tcp;
    if t.is_zero() {
        MAX_WAIT
    } else {
        t.min(MAX_WAIT)
    }
}

/// Connects to the first of `addrs` that answers within `wait` each: the address, the time
/// it took, and the errors of the addresses tried before.
fn dial(
    addrs: &[SocketAddr],
    wait: Duration,
) -> (Option<(TcpStream, SocketAddr, Duration)>, Vec<String>) {
    let mut errors = Vec::new();
    for &addr in addrs {
        let start = Instant::now();
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(s) => return (Some((s, addr, start.elapsed())), errors),
            Err(e) => errors.push(format!("{addr}: {}", short_err(&e))),
        }
    }
    (None, errors)
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{x}");
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Config

fn config_checks(warnings: &[Warning]) -> Vec<Check> {
    const S: &str = "Config";
    if warnings.is_empty() {
        return vec![Check::new(
            S,
            "config",
            Status::Ok,
            "no deprecated, unknown or not yet implemented keys",
            None,
        )];
    }
    warnings
        .iter()
        .map(|w| {
            let hint = match w.kind {
                WarningKind::Deprecated => "mtg v2.3 drops it: move the value to the new key",
                WarningKind::UnknownKey => {
                    "ignored: a typo? config.example lists every key mtpx knows"
                }
                WarningKind::NotImplemented => {
                    "accepted so that mtg configs keep working, but mtpx does nothing with it yet"
                }
                WarningKind::Ignored => "ignored by mtg too: remove it",
                WarningKind::Fallback => "mtpx does what the message says instead",
            };
            let at = match (&w.file, w.line) {
                (Some(f), Some(l)) => format!(" ({f}:{l})"),
                (Some(f), None) => format!(" ({f})"),
                (None, Some(l)) => format!(" (line {l})"),
                (None, None) => String::new(),
            };
            Check::new(
                S,
                w.key.clone(),
                Status::Warn,
                format!("{}{at}", w.msg),
                Some(hint.to_string()),
            )
        })
        .collect()
}

// ----------------------------------------------------------------------------------------------
// Time skew

/// The verdict on a clock `offset_secs` away from NTP time, given the tolerance: the ratio
/// |offset| / tolerance under 0.3 is ok, under 0.7 a warning, else a failure.
pub fn skew_status(offset_secs: f64, tolerance: Duration) -> Status {
    let tol = tolerance.as_secs_f64();
    let ratio = if tol > 0.0 {
        offset_secs.abs() / tol
    } else if offset_secs == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    if ratio.is_nan() || ratio >= 0.7 {
        Status::Fail
    } else if ratio >= 0.3 {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn now_ntp() -> NtpTimestamp {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos()),
        Err(_) => NtpTimestamp::ZERO,
    }
}

/// One SNTP exchange with `addr` (RFC 4330), waiting at most `wait`.
pub fn sntp_query(addr: SocketAddr, wait: Duration) -> io::Result<sntp::Sample> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    let deadline = Instant::now() + wait;
    let sent = now_ntp();
    sock.send(&sntp::request(sent))?;
    let mut buf = [0u8; 512];
    let mut bad: Option<io::Error> = None;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer in {}", fmt_duration(wait)),
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(bad.unwrap_or_else(timed_out));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                let received = now_ntp();
                match sntp::parse_response(buf.get(..n).unwrap_or(&[]), sent, received) {
                    Ok(sample) => return Ok(sample),
                    // A stale or forged datagram: keep waiting for the real answer.
                    Err(sntp::SntpError::OriginateMismatch) => {
                        bad = Some(io::Error::new(
                            io::ErrorKind::InvalidData,
                            sntp::SntpError::OriginateMismatch.to_string(),
                        ));
                    }
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(bad.unwrap_or_else(timed_out));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn time_checks(config: &Config, servers: &[(String, u16)]) -> Vec<Check> {
    // --ntp flags first, then `[network] ntp` from the config, then pool.ntp.org.
    let from_config: Vec<(String, u16)> = config
        .ntp
        .iter()
        .filter_map(|s| parse_host_port(s, NTP_PORT))
        .collect();
    let default = [(DEFAULT_NTP.to_string(), NTP_PORT)];
    let servers = if !servers.is_empty() {
        servers
    } else if !from_config.is_empty() {
        &from_config[..]
    } else {
        &default[..]
    };
    parallel(servers, |(host, port)| time_check(config, host, *port))
        .into_iter()
        .map(|c| c.unwrap_or_else(|| crashed("Time skew")))
        .collect()
}

fn time_check(config: &Config, host: &str, port: u16) -> Check {
    const S: &str = "Time skew";
    let name = if port == NTP_PORT {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let unreachable_hint = || {
        Some(
            "no NTP answer, so the clock was not checked: UDP port 123 may be blocked here; \
             try another server with --ntp HOST"
                .to_string(),
        )
    };
    let addrs = match resolve::resolve(config.nameserver().as_ref(), host, port, RESOLVE_WAIT) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return Check::new(S, name, Status::Warn, "no address", unreachable_hint());
        }
        Err(e) => {
            return Check::new(S, name, Status::Warn, short_err(&e), unreachable_hint());
        }
    };
    let mut errors = Vec::new();
    for &addr in addrs.iter().take(NTP_ADDRS) {
        match sntp_query(addr, NTP_WAIT) {
            Ok(sample) => {
                let tol = config.tolerate_time_skewness;
                let mut status = skew_status(sample.offset, tol);
                // Only FakeTLS handshakes carry a timestamp the proxy checks.
                let faketls = config.secret.kind == SecretKind::FakeTls;
                if !faketls {
                    status = status.min(Status::Warn);
                }
                let off = sample.offset.abs();
                let way = if sample.offset > 0.0 {
                    "behind"
                } else {
                    "ahead of"
                };
                let pct = if tol.is_zero() {
                    100.0
                } else {
                    100.0 * off / tol.as_secs_f64()
                };
                let msg = format!(
                    "this clock is {off:.3} s {way} {addr} (stratum {}): {pct:.0}% of \
                     tolerate-time-skewness = {}",
                    sample.stratum,
                    fmt_duration(tol)
                );
                let hint = match status {
                    Status::Ok => None,
                    Status::Warn if !faketls => Some(
                        "the clock is off: no harm to classic and dd secrets, but an ee secret \
                         would reject clients; run an NTP client (chrony, systemd-timesyncd)"
                            .to_string(),
                    ),
                    Status::Warn => Some(
                        "the clock drifts towards the tolerance: run an NTP client \
                         (chrony, systemd-timesyncd)"
                            .to_string(),
                    ),
                    Status::Fail => Some(
                        "FakeTLS clients with a correct clock are (or soon will be) rejected: \
                         sync the clock (chrony, systemd-timesyncd) or raise \
                         tolerate-time-skewness"
                            .to_string(),
                    ),
                };
                return Check::new(S, name, status, msg, hint);
            }
            Err(e) => errors.push(format!("{addr}: {}", short_err(&e))),
        }
    }
    Check::new(
        S,
        name,
        Status::Warn,
        format!("unreachable ({})", errors.join("; ")),
        unreachable_hint(),
    )
}

// ----------------------------------------------------------------------------------------------
// Telegram DCs

fn dc_checks(config: &Config) -> Vec<Check> {
    const S: &str = "Telegram DCs";
    let table = DcTable::new(config.prefer_ip, &config.dc_overrides);
    let wait = connect_wait(config);
    let ids: Vec<i16> = table.known_ids().collect();
    if ids.is_empty() {
        return vec![Check::new(
            S,
            "DCs",
            Status::Fail,
            format!(
                "no DC address for prefer-ip = {}",
                config.prefer_ip.as_str()
            ),
            Some("set prefer-ip to a family this host has".into()),
        )];
    }
    parallel(&ids, |&id| {
        let name = format!("DC {id}");
        let overridden = config.dc_overrides.iter().any(|(d, _)| *d == id);
        let Some(addrs) = table.lookup(id) else {
            return Check::new(S, name, Status::Fail, "no address", None);
        };
        let (ok, errors) = dial(addrs, wait);
        match ok {
            Some((_, addr, t)) if errors.is_empty() => Check::new(
                S,
                name,
                Status::Ok,
                format!("{addr} in {}", fmt_elapsed(t)),
                None,
            ),
            Some((_, addr, t)) => Check::new(
                S,
                name,
                Status::Warn,
                format!(
                    "{addr} in {}, after {} failed",
                    fmt_elapsed(t),
                    errors.join("; ")
                ),
                Some(format!(
                    "every connection to this DC tries the failing address first: set \
                     prefer-ip (now {}) to the family that works here{}",
                    config.prefer_ip.as_str(),
                    if overridden {
                        ", or fix [network.dc-overrides]"
                    } else {
                        ""
                    }
                )),
            ),
            // With SOCKS5 upstreams the proxy never dials a DC directly.
            None if !config.proxies.is_empty() => Check::new(
                S,
                name,
                Status::Warn,
                errors.join("; "),
                Some(
                    "not reachable directly; the proxy goes through [network] proxies, so \
                     this matters only for the SOCKS5 checks below"
                        .into(),
                ),
            ),
            None => Check::new(
                S,
                name,
                Status::Fail,
                errors.join("; "),
                Some(if overridden {
                    "this DC's address comes from [network.dc-overrides]: check it".to_string()
                } else {
                    "Telegram is not reachable from this host: check the firewall and routing \
                     (prefer-ip = only-ipv4 if IPv6 is broken)"
                        .to_string()
                }),
            ),
        }
    })
    .into_iter()
    .map(|c| c.unwrap_or_else(|| crashed(S)))
    .collect()
}

// ----------------------------------------------------------------------------------------------
// SOCKS5 upstreams

/// The URL without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Why a SOCKS5 CONNECT failed: at the proxy itself, or at the target it was asked for.
enum SocksFailure {
    Proxy(String),
    Target(String),
}

fn socks5_checks(config: &Config) -> Vec<Check> {
    const S: &str = "SOCKS5 upstreams";
    if config.proxies.is_empty() {
        return vec![Check::new(
            S,
            "proxies",
            Status::Ok,
            "none configured: DCs are dialled directly",
            None,
        )];
    }
    let table = DcTable::new(config.prefer_ip, &config.dc_overrides);
    let targets: Vec<SocketAddr> = table
        .lookup(DEFAULT_DC)
        .map(<[SocketAddr]>::to_vec)
        .unwrap_or_default();
    let wait = connect_wait(config);
    let dns = config.nameserver();
    parallel(&config.proxies, |url| {
        socks5_check(url, dns.as_ref(), &targets, wait)
    })
    .into_iter()
    .map(|c| c.unwrap_or_else(|| crashed(S)))
    .collect()
}

fn socks5_check(
    url: &str,
    dns: Option<&crate::formats::dns::Nameserver>,
    targets: &[SocketAddr],
    wait: Duration,
) -> Check {
    const S: &str = "SOCKS5 upstreams";
    let name = redact(url);
    let p = match socks5::parse_url(url) {
        Ok(p) => p,
        Err(e) => {
            return Check::new(
                S,
                name,
                Status::Fail,
                e,
                Some("expected socks5://[user:password@]host[:port]".into()),
            );
        }
    };
    let servers = match &p.server {
        Target::Ip(a) => vec![*a],
        Target::Domain(h, port) => match resolve::resolve(dns, h, *port, RESOLVE_WAIT) {
            Ok(a) => a,
            Err(e) => {
                return Check::new(
                    S,
                    name,
                    Status::Fail,
                    short_err(&e),
                    Some("the proxy's host name must resolve from this server".into()),
                );
            }
        },
    };
    let mut failed = Vec::new();
    for &target in targets {
        match socks5_connect(&servers, p.auth.clone(), target, wait) {
            Ok((via, t)) => {
                let mut msg = format!(
                    "CONNECT to DC {DEFAULT_DC} at {target} through {via} in {}",
                    fmt_elapsed(t)
                );
                if failed.is_empty() {
                    return Check::new(S, name, Status::Ok, msg, None);
                }
                let _ = write!(msg, ", after {} failed", failed.join("; "));
                return Check::new(
                    S,
                    name,
                    Status::Warn,
                    msg,
                    Some("the proxy cannot reach the preferred DC address: check prefer-ip".into()),
                );
            }
            Err(SocksFailure::Target(e)) => failed.push(format!("{target}: {e}")),
            Err(SocksFailure::Proxy(e)) => {
                return Check::new(
                    S,
                    name,
                    Status::Fail,
                    e,
                    Some("check the proxy's address, port and credentials".into()),
                );
            }
        }
    }
    if failed.is_empty() {
        failed.push(format!("no address for DC {DEFAULT_DC}"));
    }
    Check::new(
        S,
        name,
        Status::Fail,
        format!(
            "the proxy could not reach DC {DEFAULT_DC}: {}",
            failed.join("; ")
        ),
        Some("the proxy answers, but cannot reach Telegram: check its network".into()),
    )
}

/// A SOCKS5 CONNECT to `target` through the first reachable of `servers`, driven by the
/// sans-IO client over a blocking socket; the whole exchange within `wait`.
fn socks5_connect(
    servers: &[SocketAddr],
    auth: Option<(String, String)>,
    target: SocketAddr,
    wait: Duration,
) -> Result<(SocketAddr, Duration), SocksFailure> {
    let start = Instant::now();
    let deadline = start + wait;
    let (stream, errors) = dial(servers, wait);
    let Some((mut stream, via, _)) = stream else {
        return Err(SocksFailure::Proxy(format!(
            "cannot reach the proxy: {}",
            errors.join("; ")
        )));
    };
    let io_err = |what: &str, e: io::Error| {
        SocksFailure::Proxy(format!("{what} the proxy at {via}: {}", short_err(&e)))
    };
    let mut client = Socks5Client::new(Target::Ip(target), auth);
    let mut out = [0u8; socks5::OUT_MAX];
    let n = client.initial(&mut out);
    let _ = stream.set_write_timeout(Some(wait));
    stream
        .write_all(out.get(..n).unwrap_or(&[]))
        .map_err(|e| io_err("cannot write to", e))?;
    let mut input = [0u8; 1024];
    let mut have = 0usize;
    loop {
        match client.handle(input.get(..have).unwrap_or(&[]), &mut out) {
            Step::NeedMore => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(SocksFailure::Proxy(format!(
                        "the proxy at {via} did not answer in {}",
                        fmt_duration(wait)
                    )));
                }
                let _ = stream.set_read_timeout(Some(left));
                let Some(room) = input.get_mut(have..).filter(|r| !r.is_empty()) else {
                    return Err(SocksFailure::Proxy("oversized reply".into()));
                };
                match stream.read(room) {
                    Ok(0) => {
                        return Err(SocksFailure::Proxy(format!(
                            "the proxy at {via} closed the connection"
                        )));
                    }
                    Ok(n) => have += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("no answer from", e)),
                }
            }
            Step::Send { consumed, len } => {
                stream
                    .write_all(out.get(..len).unwrap_or(&[]))
                    .map_err(|e| io_err("cannot write to", e))?;
                let consumed = consumed.min(have);
                input.copy_within(consumed..have, 0);
                have -= consumed;
            }
            Step::Connected { .. } => return Ok((via, start.elapsed())),
            Step::Failed(e) => {
                let target_side = matches!(
                    e,
                    Socks5Error::GeneralFailure
                        | Socks5Error::NotAllowed
                        | Socks5Error::NetworkUnreachable
                        | Socks5Error::HostUnreachable
                        | Socks5Error::ConnectionRefused
                        | Socks5Error::TtlExpired
                );
                return Err(if target_side {
                    SocksFailure::Target(e.to_string())
                } else {
                    SocksFailure::Proxy(format!("the proxy at {via} answered: {e}"))
                });
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Fronting site

fn not_fronting(config: &Config) -> Option<&'static str> {
    match config.secret.kind {
        SecretKind::FakeTls => None,
        SecretKind::Secure => {
            Some("not used: the secret is a dd secret (only ee secrets front a site)")
        }
        SecretKind::Classic => {
            Some("not used: the secret is a classic secret (only ee secrets front a site)")
        }
    }
}

fn fronting_checks(config: &Config, repeats: u32) -> Vec<Check> {
    const S: &str = "Fronting site";
    if let Some(why) = not_fronting(config) {
        return vec![Check::new(S, "fronting", Status::Ok, why, None)];
    }
    let host = config.secret.host.as_str();
    let port = config.domain_fronting.port;
    let wait = connect_wait(config);
    let addrs = match config.domain_fronting.ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match resolve::resolve(config.nameserver().as_ref(), host, port, RESOLVE_WAIT) {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                return vec![Check::new(S, host, Status::Fail, "no address", None)];
            }
            Err(e) => {
                return vec![Check::new(
                    S,
                    host,
                    Status::Fail,
                    short_err(&e),
                    Some(
                        "the secret's host must resolve from this server (or set \
                         [domain-fronting] ip)"
                            .into(),
                    ),
                )];
            }
        },
    };
    let mut out = Vec::new();
    let (ok, errors) = dial(&addrs, wait);
    let Some((stream, addr, t)) = ok else {
        out.push(Check::new(
            S,
            format!("{host}:{port}"),
            Status::Fail,
            format!("unreachable: {}", errors.join("; ")),
            Some(
                "connections that fail the FakeTLS check are passed to this site, so it must \
                 be reachable from the server: check [domain-fronting] ip / port"
                    .into(),
            ),
        ));
        return out;
    };
    drop(stream);
    out.push(Check::new(
        S,
        format!("{host}:{port}"),
        Status::Ok,
        format!("connected to {addr} in {}", fmt_elapsed(t)),
        None,
    ));
    // Probe the address that answered first, then the others.
    let mut order = vec![addr];
    order.extend(addrs.iter().copied().filter(|a| *a != addr));
    let profile = Mutex::new(Profile::default());
    let (summary, answered) = scout::raid(&order, host, repeats.max(1), wait, &profile);
    let name = "TLS shape";
    out.push(if answered == 0 {
        Check::new(
            S,
            name,
            Status::Warn,
            format!(
                "no TLS answer to {} Telegram-shaped ClientHello(s); the proxy falls back to its \
                 built-in handshake shape",
                repeats.max(1)
            ),
            Some(format!(
                "is {host}:{port} a TLS 1.3 (HTTPS) site? check [domain-fronting] port"
            )),
        )
    } else if summary.samples == 0 {
        Check::new(
            S,
            name,
            Status::Warn,
            format!("{answered} answer(s): {summary}"),
            Some(
                "the fake handshake cannot copy this site's: front a site that answers with \
                 TLS 1.3 and x25519"
                    .into(),
            ),
        )
    } else if let Some(advice) = summary.advice() {
        Check::new(
            S,
            name,
            Status::Warn,
            summary.to_string(),
            Some(advice.to_string()),
        )
    } else {
        Check::new(S, name, Status::Ok, summary.to_string(), None)
    });
    out
}

// ----------------------------------------------------------------------------------------------
// SNI-DNS match

fn sni_checks(config: &Config) -> Vec<Check> {
    const S: &str = "SNI-DNS match";
    if let Some(why) = not_fronting(config) {
        return vec![Check::new(
            S,
            "SNI",
            Status::Ok,
            why.replace("front a site", "carry a host name"),
            None,
        )];
    }
    let host = config.secret.host.as_str();
    let mut ips: Vec<IpAddr> =
        match resolve::resolve(config.nameserver().as_ref(), host, 443, RESOLVE_WAIT) {
            Ok(a) => a.iter().map(SocketAddr::ip).collect(),
            Err(e) => {
                return vec![Check::new(
                    S,
                    host,
                    Status::Fail,
                    short_err(&e),
                    Some(
                        "clients send this name in their TLS hello: a name that does not resolve \
                     stands out; pick a real site"
                            .into(),
                    ),
                )];
            }
        };
    ips.dedup();
    let publics: Vec<IpAddr> = config
        .public_ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(config.public_ipv6.map(IpAddr::V6))
        .collect();
    if publics.is_empty() {
        return vec![Check::new(
            S,
            host,
            Status::Warn,
            format!(
                "resolves to {}; this server's address is unknown",
                join(&ips)
            ),
            Some("set public-ipv4 / public-ipv6 to check".into()),
        )];
    }
    match ips.iter().find(|ip| publics.contains(ip)) {
        Some(ip) => vec![Check::new(
            S,
            host,
            Status::Ok,
            format!("resolves to {ip}, this server's public address"),
            None,
        )],
        None => vec![Check::new(
            S,
            host,
            Status::Warn,
            format!(
                "resolves to {}, not to this server ({})",
                join(&ips),
                join(&publics)
            ),
            Some(
                "a censor comparing the TLS name with the server's address sees a mismatch: \
                 front a domain whose DNS points here, or accept the risk"
                    .into(),
            ),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_bands() {
        let t = Duration::from_secs(10);
        assert_eq!(skew_status(0.0, t), Status::Ok);
        assert_eq!(skew_status(2.99, t), Status::Ok);
        assert_eq!(skew_status(-2.99, t), Status::Ok);
        assert_eq!(skew_status(3.0, t), Status::Warn);
        assert_eq!(skew_status(-6.99, t), Status::Warn);
        assert_eq!(skew_status(7.0, t), Status::Fail);
        assert_eq!(skew_status(-1e9, t), Status::Fail);
        assert_eq!(skew_status(f64::NAN, t), Status::Fail);
        assert_eq!(skew_status(0.0, Duration::ZERO), Status::Ok);
        assert_eq!(skew_status(0.1, Duration::ZERO), Status::Fail);
    }

    #[test]
    fn host_port_forms() {
        let hp = |s| parse_host_port(s, 123);
        assert_eq!(hp("pool.ntp.org"), Some(("pool.ntp.org".into(), 123)));
        assert_eq!(hp("127.0.0.1:1234"), Some(("127.0.0.1".into(), 1234)));
        assert_eq!(hp("::1"), Some(("::1".into(), 123)));
        assert_eq!(hp("[::1]"), Some(("::1".into(), 123)));
        assert_eq!(hp("[::1]:9"), Some(("::1".into(), 9)));
        for bad in [
            "", ":5", "a:0", "a:x", "[::1", "[x]:1", "[::1]x", "a b", "h:1:2",
        ] {
            assert_eq!(hp(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_escapes_and_shape() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
        let checks = vec![
            Check::new("Config", "k", Status::Warn, "m \"q\"", Some("h".into())),
            Check::new("Telegram DCs", "DC 2", Status::Ok, "x", None),
        ];
        assert_eq!(
            render_json(&checks),
            "[\n  {\"section\": \"Config\", \"name\": \"k\", \"status\": \"warn\", \"message\": \
             \"m \\\"q\\\"\", \"hint\": \"h\"},\n  {\"section\": \"Telegram DCs\", \"name\": \
             \"DC 2\", \"status\": \"ok\", \"message\": \"x\", \"hint\": null}\n]\n"
        );
        assert_eq!(render_json(&[]), "[\n]\n");
        assert_eq!(exit_status(&checks, false), 0);
        assert_eq!(exit_status(&checks, true), 1);
        assert_eq!(render_totals(&checks), "1 ok, 1 warning, 0 failures\n");
        assert_eq!(
            render_section("Config", &checks[..1]),
            "Config\n  ⚠️ k: m \"q\"\n     hint: h\n"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("socks5://u:pw@1.2.3.4:1080"),
            "socks5://u:***@1.2.3.4:1080"
        );
        assert_eq!(redact("socks5://u@h"), "socks5://u:***@h");
        assert_eq!(redact("socks5://h:1"), "socks5://h:1");
        assert_eq!(
            short_err(&io::Error::from_raw_os_error(111)),
            "Connection refused"
        );
    }
}
