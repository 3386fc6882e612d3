//! `mtpx doctor`: mtg's health checks of a config and of the network around it.
//!
//! Seven sections, run at the same time (each on its own thread; the DC and SOCKS5 checks fan out
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
//!   `[domain-fronting] ip`), then a few browser ClientHellos of each kind (x25519 only,
//!   X25519MLKEM768) to learn its TLS 1.3 first flight, as the proxy's scout does; a warning when
//!   the site does not answer today's post-quantum hello with X25519MLKEM768.
//! * **SNI-DNS match**: does the secret's host name resolve to this server's public address?
//! * **Middle proxies** (only with an `ad-tag`): Telegram's proxy config and proxy secret load
//!   (from the URLs or files the proxy uses) and one middle proxy for DC 2 accepts a TCP
//!   connection and the RPC handshake with that secret.
//!
//! Host names are resolved with mtpx's own resolver ([`crate::background::resolve`]), never libc's,
//! through the `[network] dns` server when one is set.
//! Every network step has a timeout (at most [`MAX_WAIT`]), so the whole run takes seconds.
//!
//! One file per check: `warnings.rs` (Config), `time.rs` (Time skew), `dc.rs` (Telegram DCs),
//! `upstreams.rs` (SOCKS5 upstreams), `fronting.rs` (Fronting site, SNI-DNS match), `middle.rs`
//! (Middle proxies); this file runs them and renders the report. `doctor` runs outside the event loop and touches the
//! clock and sockets itself (blocking, with timeouts).

mod dc;
mod fronting;
mod middle;
mod time;
mod upstreams;
mod warnings;

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dc::dc_checks;
use fronting::{fronting_checks, sni_checks};
use middle::middle_checks;
use time::time_checks;
pub use time::{skew_status, sntp_query};
use upstreams::socks5_checks;
use warnings::config_checks;

use crate::config::{Config, Warning};
use crate::formats::json;

/// The sections, in report order ("Middle proxies" has checks only with an `ad-tag`).
pub const SECTIONS: [&str; 7] = [
    "Config",
    "Time skew",
    "Telegram DCs",
    "SOCKS5 upstreams",
    "Fronting site",
    "SNI-DNS match",
    "Middle proxies",
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
    let sections: [Section<'_>; 7] = [
        &|| config_checks(warnings),
        &|| time_checks(config, &opts.ntp),
        &|| dc_checks(config),
        &|| socks5_checks(config),
        &|| fronting_checks(config, opts.fronting_repeats),
        &|| sni_checks(config),
        &|| middle_checks(config),
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
/// followed by an indented `hint:` line when there is a hint. Nothing for a section without
/// checks (one that does not apply to this config).
pub fn render_section(section: &str, checks: &[Check]) -> String {
    if checks.is_empty() {
        return String::new();
    }
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
            Some(h) => json::string(h),
            None => "null".to_string(),
        };
        let _ = write!(
            out,
            "  {{\"section\": {}, \"name\": {}, \"status\": \"{}\", \"message\": {}, \"hint\": {}}}",
            json::string(c.section),
            json::string(&c.name),
            c.status.as_str(),
            json::string(&c.message),
            hint
        );
        out.push_str(if i + 1 < checks.len() { ",\n" } else { "\n" });
    }
    out.push_str("]\n");
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
