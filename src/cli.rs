//! Command line: `run`, `simple-run`, `generate-secret`, `access`, `doctor`, as mtg v2 has them
//! (same names, same short flags), plus mtpx's own flags.
//!
//! [`parse_args`] is a pure function from an argument list to a [`Cli`] value (unit-tested
//! with arrays); [`main`] runs it. Exit codes: 0 success, 1 runtime or config error or a failed
//! `doctor` check, 2 usage error (unknown command or flag, bad flag value).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, Config, LogFormat, Warning, parse_bytes, parse_duration};
use crate::log::Level;
use crate::proto::Rng;
use crate::proto::dc::PreferIp;
use crate::proto::secret::{Secret, SecretKind, check_host};
use crate::proto::users::UserSpec;

// print!/eprintln! panic when the stream is gone (`mtpx doctor | head -1`); these ignore it.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// The operating system's random source (`getrandom`). A failure is remembered in `failed`
/// (the buffer is then left zeroed) so that the caller can refuse to use the output.
#[derive(Debug, Default)]
pub struct OsRng {
    /// Set when the OS random source failed at least once.
    pub failed: bool,
}

impl Rng for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if crate::io::rng::os_fill(buf).is_err() {
            buf.fill(0);
            self.failed = true;
        }
    }
}

/// `mtpx simple-run` arguments: a config built from flags.
#[derive(Clone, Debug, PartialEq)]
pub struct SimpleRun {
    /// Listening address.
    pub bind_to: SocketAddr,
    /// The proxy secret.
    pub secret: Secret,
    /// `-d/--debug`.
    pub debug: bool,
    /// `-c/--concurrency`.
    pub concurrency: Option<usize>,
    /// `-b/--tcp-buffer` (accepted and ignored, as in mtg).
    pub tcp_buffer: Option<String>,
    /// `-i/--prefer-ip`.
    pub prefer_ip: Option<PreferIp>,
    /// `-p/--domain-fronting-port`.
    pub domain_fronting_port: Option<u16>,
    /// `--domain-fronting-ip`.
    pub domain_fronting_ip: Option<IpAddr>,
    /// `-n/--doh-ip`: the DNS-over-HTTPS server (`https://<ip>/dns-query`).
    pub doh_ip: Option<IpAddr>,
    /// `-t/--timeout`: sets the tcp, http and idle timeouts, as in mtg.
    pub timeout: Option<Duration>,
    /// `-s/--socks5-proxy`, repeatable: DC connections go through these, in order.
    pub socks5_proxies: Vec<String>,
    /// `-a/--antireplay-cache-size`.
    pub antireplay_cache_size: Option<usize>,
    /// `-w/--workers`.
    pub workers: Option<usize>,
    /// `--dc-override DC=ADDR`, repeatable; in the order given.
    pub dc_overrides: Vec<(i16, SocketAddr)>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--tolerate-time-skewness`.
    pub tolerate_time_skewness: Option<Duration>,
    /// `--handshake-timeout`.
    pub handshake_timeout: Option<Duration>,
    /// `--drs`: dynamic record sizing toward FakeTLS clients.
    pub drs: bool,
    /// `--delays`: inter-record timing toward FakeTLS clients (mtg's gaps, 4 MiB/s floor).
    pub delays: bool,
}

/// `mtpx access` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The config file.
    pub config: PathBuf,
    /// `-i/--ipv4`.
    pub ipv4: Option<Ipv4Addr>,
    /// `-I/--ipv6`.
    pub ipv6: Option<Ipv6Addr>,
    /// `-p/--port` (default: the bind-to port).
    pub port: Option<u16>,
    /// `-x/--hex`: hex secrets in links.
    pub hex: bool,
    /// `--text`: plain links instead of JSON.
    pub text: bool,
    /// `--json`: JSON (the default, unless `--text` or `--qr` is given alone).
    pub json: bool,
    /// `--qr`: QR codes in the terminal.
    pub qr: bool,
    /// `-u/--user NAME`: only this user's links, in the single-secret shape.
    pub user: Option<String>,
}

/// `mtpx users` subcommands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsersCmd {
    /// `mtpx users list <config> [--json]`.
    List {
        /// The config file.
        config: PathBuf,
        /// `--json`: a JSON array instead of the table.
        json: bool,
    },
    /// `mtpx users reset-quota <config> <name>`.
    ResetQuota {
        /// The config file.
        config: PathBuf,
        /// The user.
        name: String,
    },
}

/// `mtpx doctor` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doctor {
    /// The config file.
    pub config: PathBuf,
    /// `--json`: a JSON array instead of the human report.
    pub json: bool,
    /// `--strict`: warnings fail the run too.
    pub strict: bool,
    /// `--ntp HOST[:PORT]`, repeatable (default: pool.ntp.org).
    pub ntp: Vec<(String, u16)>,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Cli {
    /// Print help: general (`None`) or for one command.
    Help(Option<&'static str>),
    /// Print the version.
    Version,
    /// `mtpx run <config>`.
    Run {
        /// The config file.
        config: PathBuf,
    },
    /// `mtpx simple-run <bind-to> <secret> [flags]`.
    SimpleRun(Box<SimpleRun>),
    /// `mtpx generate-secret [--hex] [--classic|--dd] <hostname>`.
    GenerateSecret {
        /// Which kind of secret.
        kind: SecretKind,
        /// Print hex instead of base64 (FakeTLS only; the others are always hex).
        hex: bool,
        /// The fronting host name (required for FakeTLS, ignored otherwise).
        host: Option<String>,
    },
    /// `mtpx access <config> [flags]`.
    Access(Access),
    /// `mtpx doctor <config> [flags]`.
    Doctor(Doctor),
    /// `mtpx users list|reset-quota ...`.
    Users(UsersCmd),
}

/// A usage error: printed with a hint to use `--help`; exit status 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError {
    /// What is wrong.
    pub msg: String,
    /// The command it concerns (for the `--help` hint).
    pub command: Option<&'static str>,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> CliError {
        CliError {
            msg: e.to_string(),
            command: None,
        }
    }
}

const COMMANDS: [&str; 6] = [
    "run",
    "simple-run",
    "generate-secret",
    "access",
    "doctor",
    "users",
];

/// The help text for `topic` (`None`: the general help).
pub fn help_text(topic: Option<&str>) -> &'static str {
    match topic {
        Some("run") => HELP_RUN,
        Some("simple-run") => HELP_SIMPLE_RUN,
        Some("generate-secret") => HELP_GENERATE_SECRET,
        Some("access") => HELP_ACCESS,
        Some("doctor") => HELP_DOCTOR,
        Some("users") => HELP_USERS,
        _ => HELP,
    }
}

const HELP: &str = "\
mtpx: a small, fast MTProto proxy for Telegram (mtg-compatible)

Usage: mtpx <command> [arguments]

Commands:
  generate-secret <hostname>     Print a new secret (FakeTLS, fronting <hostname>)
  run <config.toml>              Run the proxy with a config file
  simple-run <bind-to> <secret>  Run the proxy configured by flags only
  access <config.toml>           Print the tg:// and t.me links for a config (every user's)
  doctor <config.toml>           Check a config and the network: clock, DCs, fronting site
  users list <config.toml>       The users with their limits, quota usage and expiry
  users reset-quota <config.toml> <name>
                                 Set a user's quota usage back to zero

Options:
  -h, --help       Print help (also: mtpx <command> --help)
  -v, --version    Print the version

Quick start:
  mtpx generate-secret www.example.com     # a site you do NOT own works best
  mtpx simple-run 0.0.0.0:443 <secret>
";

const HELP_RUN: &str = "\
Run the proxy with a config file (see config.example; mtg v2 configs work unchanged).

Usage: mtpx run <config.toml>

Warnings about the config (unknown keys, deprecated or not yet implemented settings) are
logged at start. Stops gracefully on SIGTERM or SIGINT.

Options:
  -h, --help    Print this help
";

const HELP_SIMPLE_RUN: &str = "\
Run the proxy configured by flags only (no config file).

Usage: mtpx simple-run <bind-to> <secret> [options]

  <bind-to>    IP:port to listen on, e.g. 0.0.0.0:443 or [::]:443
  <secret>     a secret from `mtpx generate-secret` (hex or base64)

Options (as in mtg):
  -d, --debug                        Debug logging
  -c, --concurrency <N>              Most simultaneous clients [default: 8192]
  -b, --tcp-buffer <SIZE>            Accepted and ignored (as in mtg)
  -i, --prefer-ip <MODE>             prefer-ipv6, prefer-ipv4, only-ipv6, only-ipv4
                                     [default: prefer-ipv6]
  -p, --domain-fronting-port <PORT>  Port of the fronting site [default: 443]
      --domain-fronting-ip <IP>      Connect to this IP for fronting instead of resolving
  -n, --doh-ip <IP>                  DNS-over-HTTPS resolver (https://<IP>/dns-query)
  -t, --timeout <DURATION>           Sets the tcp, http and idle timeouts (as mtg does)
                                     [default: tcp 10s, http 10s, idle 5m]
  -s, --socks5-proxy <URL>           SOCKS5 upstream for DC connections, repeatable
  -a, --antireplay-cache-size <SIZE> Anti-replay memory [default: 1MiB]
mtpx options:
  -w, --workers <N>                  Worker threads [default: one per CPU]
      --dc-override <DC=IP:PORT>     Use this address for a DC; repeatable, e.g.
                                     --dc-override 2=127.0.0.1:9443 --dc-override -2=[::1]:443
      --log-format <FORMAT>          logfmt or json [default: logfmt]
      --tolerate-time-skewness <D>   Accepted client clock difference [default: 10s]
      --handshake-timeout <D>        Time allowed for a client handshake [default: 10s]
      --drs                          Dynamic record sizing toward FakeTLS clients
      --delays                       Inter-record timing toward FakeTLS clients (see
                                     [defense.doppelganger] in config.example)
  -h, --help                         Print this help

simple-run also allows fallback on unknown DCs (as mtg). Durations: 500ms, 10s, 1m30s.
Sizes: 512KiB, 1MiB (base 1024).
";

const HELP_GENERATE_SECRET: &str = "\
Print a new random secret.

Usage: mtpx generate-secret [options] <hostname>

By default a FakeTLS (ee) secret for <hostname> (the site the proxy pretends to be), printed
as URL-safe base64 like mtg does.

Options:
  -x, --hex      Print hex instead of base64
      --classic  A classic secret (32 hex digits); <hostname> is optional and ignored
      --dd       A dd secret (\"dd\" + 32 hex digits); <hostname> is optional and ignored
  -h, --help     Print this help
";

const HELP_ACCESS: &str = "\
Print the links clients use to connect, as JSON in mtg's format (without the QR-code URLs,
which would send the secret to a third-party service).

Usage: mtpx access <config.toml> [options]

Addresses come from the flags, else from public-ipv4/public-ipv6 in the config; mtpx never
asks a web service for them. A family with no known address is left out.

With several users ([users.NAME] tables, users-file), the JSON is an object keyed by user
name whose values have that shape, and --text/--qr print each user's links under a
`# NAME` line; --user NAME prints one user's links as for a single secret.

Options:
  -u, --user <NAME>   Only this user's links
  -i, --ipv4 <IP>     Public IPv4 address
  -I, --ipv6 <IP>     Public IPv6 address
  -p, --port <PORT>   Port in the links [default: the bind-to port]
  -x, --hex           Hex secret in the links
      --text          One link per line instead of JSON
      --json          JSON (the default; with --qr: JSON, then the QR codes)
      --qr            QR codes drawn in the terminal, made here (the secret goes nowhere).
                      Alone: each t.me link with its QR code below it. With --text or
                      --json: that output first, then each tg:// link with its QR code.
  -h, --help          Print this help
";

const HELP_DOCTOR: &str = "\
Check a config file and the network around it, as mtg's doctor does.

Usage: mtpx doctor <config.toml> [options]

Sections (run in parallel, each check on one line marked ✅ ok, ⚠️ warning or ❌ failure,
with a hint below warnings and failures):
  Config            deprecated mtg keys, unknown keys, keys not implemented yet
  Time skew         SNTP query; the clock offset against tolerate-time-skewness:
                    < 30% ok, < 70% warning, else failure (only a warning for classic
                    and dd secrets, whose handshakes carry no time); no answer is a warning
  Telegram DCs      TCP connect to each DC (1-5, 203 and [network.dc-overrides]) in the
                    prefer-ip order, with the time taken (timeout: [network.timeout] tcp, <= 10s);
                    with [network] proxies set, an unreachable DC is only a warning
  SOCKS5 upstreams  a CONNECT to DC 2 through each [network] proxies URL
  Fronting site     TCP connect to the ee secret's site (or [domain-fronting] ip), then 3
                    TLS probes: a warning when its handshake shape cannot be copied
  SNI-DNS match     whether the secret's host resolves to public-ipv4 / public-ipv6
  Middle proxies    with an ad-tag only: the proxy config and proxy secret load, and a
                    middle proxy for DC 2 answers the RPC handshake (timeout: 5s)

Exit status: 0 when nothing failed (warnings included, unless --strict), 1 when a check
failed or the config is invalid, 2 on a usage error.

Options:
      --json               A JSON array of {section, name, status (ok|warn|fail), message,
                           hint} instead of the report
      --strict             Warnings fail the run too (exit status 1)
      --ntp <HOST[:PORT]>  NTP server to ask, repeatable [default: pool.ntp.org]
  -h, --help               Print this help
";

const HELP_USERS: &str = "\
Users of a config ([users.NAME] tables and users-file; see config.example).

Usage: mtpx users list <config.toml> [--json]
       mtpx users reset-quota <config.toml> <name>

list         Each user: secret kind and host, limits, quota usage in the current period
             (from the state file, see state-dir) and when the period ends, expiry, and a
             status: ok, expired, over-quota or reset-pending. --json: a JSON array.
reset-quota  Sets the user's usage in the current period back to zero, through a request
             file beside the state file: a running proxy applies it within a few seconds
             (and logs user-quota-reset), else the proxy applies it when it next starts.
             Each request is applied exactly once, even across a crash.

Options:
      --json    JSON instead of the table (list)
  -h, --help    Print this help
";

fn usage(command: Option<&'static str>, msg: impl Into<String>) -> CliError {
    CliError {
        msg: msg.into(),
        command,
    }
}

fn text(cmd: &'static str, v: OsString, what: &str) -> Result<String, CliError> {
    v.into_string()
        .map_err(|_| usage(Some(cmd), format!("{what}: not valid UTF-8")))
}

/// Parses one flag value with `f`; `what` names the flag and `hint` says what is expected.
fn value<T>(
    cmd: &'static str,
    parser: &mut lexopt::Parser,
    what: &str,
    hint: &str,
    f: impl Fn(&str) -> Option<T>,
) -> Result<T, CliError> {
    // The generic part stays this small (one instance per value type): the rest is value_dyn.
    let mut out = None;
    value_dyn(cmd, parser, what, hint, &mut |s| {
        out = f(s);
        out.is_some()
    })?;
    out.ok_or_else(|| usage(Some(cmd), String::new())) // unreachable: value_dyn checked
}

/// `value` without its type: `f` parses the trimmed value and says whether it could.
fn value_dyn(
    cmd: &'static str,
    parser: &mut lexopt::Parser,
    what: &str,
    hint: &str,
    f: &mut dyn FnMut(&str) -> bool,
) -> Result<(), CliError> {
    let raw = parser
        .value()
        .map_err(|_| usage(Some(cmd), format!("{what} needs a value ({hint})")))?;
    let s = text(cmd, raw, what)?;
    if f(s.trim()) {
        Ok(())
    } else {
        Err(usage(Some(cmd), format!("{what}: {s:?} is not {hint}")))
    }
}

fn unexpected(cmd: &'static str, arg: lexopt::Arg<'_>) -> CliError {
    let shown = match arg {
        lexopt::Arg::Short(c) => format!("-{c}"),
        lexopt::Arg::Long(l) => format!("--{l}"),
        lexopt::Arg::Value(v) => format!("{:?}", v.to_string_lossy()),
    };
    usage(
        Some(cmd),
        format!("unexpected argument {shown} for `mtpx {cmd}`"),
    )
}

/// Parses the arguments (without the program name) into a [`Cli`].
pub fn parse_args<I, S>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args.into_iter().map(Into::into));
    let command = {
        match parser.next()? {
            None => return Err(usage(None, "a command is required")),
            Some(Short('h') | Long("help")) => return Ok(Cli::Help(None)),
            Some(Short('v') | Long("version")) => return Ok(Cli::Version),
            Some(Value(v)) => text("mtpx", v, "command")?,
            Some(arg) => {
                return Err(usage(None, format!("unknown option {}", arg_name(&arg))));
            }
        }
    };
    let cmd: &'static str = match COMMANDS.iter().find(|c| **c == command) {
        Some(c) => c,
        None if command == "help" => {
            let topic = match parser.next()? {
                Some(Value(v)) => {
                    let t = text("help", v, "command")?;
                    match COMMANDS.iter().find(|c| **c == t) {
                        Some(c) => Some(*c),
                        None => return Err(usage(None, format!("unknown command {t:?}"))),
                    }
                }
                _ => None,
            };
            return Ok(Cli::Help(topic));
        }
        None => {
            return Err(usage(
                None,
                format!(
                    "unknown command {command:?} (commands: {})",
                    COMMANDS.join(", ")
                ),
            ));
        }
    };
    match cmd {
        "run" => {
            let mut config = None;
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('h') | Long("help") => return Ok(Cli::Help(Some(cmd))),
                    Value(v) if config.is_none() => config = Some(PathBuf::from(v)),
                    arg => return Err(unexpected(cmd, arg)),
                }
            }
            let config = config.ok_or_else(|| usage(Some(cmd), "the config file is missing"))?;
            Ok(Cli::Run { config })
        }
        "doctor" => {
            let mut d = Doctor {
                config: PathBuf::new(),
                json: false,
                strict: false,
                ntp: Vec::new(),
            };
            let mut config = None;
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('h') | Long("help") => return Ok(Cli::Help(Some(cmd))),
                    Long("json") => d.json = true,
                    Long("strict") => d.strict = true,
                    Long("ntp") => d.ntp.push(value(
                        cmd,
                        &mut parser,
                        "--ntp",
                        "HOST or HOST:PORT (e.g. pool.ntp.org, 127.0.0.1:1123, [::1]:123)",
                        |s| crate::doctor::parse_host_port(s, crate::doctor::NTP_PORT),
                    )?),
                    Value(v) if config.is_none() => config = Some(PathBuf::from(v)),
                    arg => return Err(unexpected(cmd, arg)),
                }
            }
            d.config = config.ok_or_else(|| usage(Some(cmd), "the config file is missing"))?;
            Ok(Cli::Doctor(d))
        }
        "generate-secret" => {
            let (mut hex, mut kind, mut host) = (false, SecretKind::FakeTls, None);
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('h') | Long("help") => return Ok(Cli::Help(Some(cmd))),
                    Short('x') | Long("hex") => hex = true,
                    Long("classic") => kind = SecretKind::Classic,
                    Long("dd") => kind = SecretKind::Secure,
                    Value(v) if host.is_none() => host = Some(text(cmd, v, "hostname")?),
                    arg => return Err(unexpected(cmd, arg)),
                }
            }
            if kind == SecretKind::FakeTls {
                let h = host.as_deref().ok_or_else(|| {
                    usage(
                        Some(cmd),
                        "the hostname is missing (the site the proxy pretends to be, e.g. www.example.com)",
                    )
                })?;
                check_host(h.as_bytes())
                    .map_err(|e| usage(Some(cmd), format!("hostname {h:?}: {e}")))?;
            }
            Ok(Cli::GenerateSecret { kind, hex, host })
        }
        "access" => {
            let mut a = Access {
                config: PathBuf::new(),
                ipv4: None,
                ipv6: None,
                port: None,
                hex: false,
                text: false,
                json: false,
                qr: false,
                user: None,
            };
            let mut config = None;
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('h') | Long("help") => return Ok(Cli::Help(Some(cmd))),
                    Short('u') | Long("user") => {
                        a.user = Some(value(cmd, &mut parser, "--user", "a user name", |s| {
                            Some(s.to_string())
                        })?);
                    }
                    Short('i') | Long("ipv4") => {
                        a.ipv4 = Some(value(cmd, &mut parser, "--ipv4", "an IPv4 address", |s| {
                            s.parse().ok()
                        })?);
                    }
                    Short('I') | Long("ipv6") => {
                        a.ipv6 = Some(value(cmd, &mut parser, "--ipv6", "an IPv6 address", |s| {
                            s.parse().ok()
                        })?);
                    }
                    Short('p') | Long("port") => {
                        a.port = Some(value(
                            cmd,
                            &mut parser,
                            "--port",
                            "a port (1-65535)",
                            parse_port,
                        )?);
                    }
                    Short('x') | Long("hex") => a.hex = true,
                    Long("text") => a.text = true,
                    Long("json") => a.json = true,
                    Long("qr") => a.qr = true,
                    Value(v) if config.is_none() => config = Some(PathBuf::from(v)),
                    arg => return Err(unexpected(cmd, arg)),
                }
            }
            a.config = config.ok_or_else(|| usage(Some(cmd), "the config file is missing"))?;
            Ok(Cli::Access(a))
        }
        "users" => {
            let sub = match parser.next()? {
                Some(Short('h') | Long("help")) | None => return Ok(Cli::Help(Some(cmd))),
                Some(Value(v)) => text(cmd, v, "subcommand")?,
                Some(arg) => return Err(unexpected(cmd, arg)),
            };
            let mut json = false;
            let mut args: Vec<OsString> = Vec::new();
            while let Some(arg) = parser.next()? {
                match arg {
                    Short('h') | Long("help") => return Ok(Cli::Help(Some(cmd))),
                    Long("json") if sub == "list" => json = true,
                    Value(v) if args.len() < 2 => args.push(v),
                    arg => return Err(unexpected(cmd, arg)),
                }
            }
            let mut args = args.into_iter();
            let config = PathBuf::from(
                args.next()
                    .ok_or_else(|| usage(Some(cmd), "the config file is missing"))?,
            );
            match (sub.as_str(), args.next()) {
                ("list", None) => Ok(Cli::Users(UsersCmd::List { config, json })),
                ("reset-quota", Some(name)) => Ok(Cli::Users(UsersCmd::ResetQuota {
                    config,
                    name: text(cmd, name, "user name")?,
                })),
                ("reset-quota", None) => Err(usage(Some(cmd), "the user name is missing")),
                ("list", Some(_)) => Err(usage(Some(cmd), "`users list` takes one config file")),
                _ => Err(usage(
                    Some(cmd),
                    format!("unknown subcommand {sub:?} (list or reset-quota)"),
                )),
            }
        }
        _ => parse_simple_run(&mut parser),
    }
}

fn arg_name(arg: &lexopt::Arg<'_>) -> String {
    match arg {
        lexopt::Arg::Short(c) => format!("-{c}"),
        lexopt::Arg::Long(l) => format!("--{l}"),
        lexopt::Arg::Value(v) => format!("{:?}", v.to_string_lossy()),
    }
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

fn parse_dc_override(s: &str) -> Option<(i16, SocketAddr)> {
    let (dc, addr) = s.split_once('=')?;
    let dc = dc.trim().parse::<i16>().ok().filter(|&d| d != 0)?;
    let addr = addr
        .trim()
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)?;
    Some((dc, addr))
}

fn parse_simple_run(parser: &mut lexopt::Parser) -> Result<Cli, CliError> {
    use lexopt::prelude::*;
    const CMD: &str = "simple-run";
    let mut positional: Vec<String> = Vec::new();
    let mut s = SimpleRun {
        bind_to: SocketAddr::from(([0, 0, 0, 0], 0)),
        secret: Secret {
            kind: SecretKind::Classic,
            key: [0; 16],
            host: String::new(),
        },
        debug: false,
        concurrency: None,
        tcp_buffer: None,
        prefer_ip: None,
        domain_fronting_port: None,
        domain_fronting_ip: None,
        doh_ip: None,
        timeout: None,
        socks5_proxies: Vec::new(),
        antireplay_cache_size: None,
        workers: None,
        dc_overrides: Vec::new(),
        log_format: None,
        tolerate_time_skewness: None,
        handshake_timeout: None,
        drs: false,
        delays: false,
    };
    const DUR: &str = "a duration (500ms, 10s, 1m30s)";
    let count = |s: &str| s.parse::<usize>().ok();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(Some(CMD))),
            Short('d') | Long("debug") => s.debug = true,
            Long("drs") => s.drs = true,
            Long("delays") => s.delays = true,
            Short('c') | Long("concurrency") => {
                s.concurrency = Some(value(CMD, parser, "--concurrency", "a number", count)?);
            }
            Short('b') | Long("tcp-buffer") => {
                s.tcp_buffer = Some(value(CMD, parser, "--tcp-buffer", "a size", |v| {
                    Some(v.to_string())
                })?);
            }
            Short('i') | Long("prefer-ip") => {
                s.prefer_ip = Some(value(
                    CMD,
                    parser,
                    "--prefer-ip",
                    "one of prefer-ipv6, prefer-ipv4, only-ipv6, only-ipv4",
                    PreferIp::parse,
                )?);
            }
            Short('p') | Long("domain-fronting-port") => {
                s.domain_fronting_port = Some(value(
                    CMD,
                    parser,
                    "--domain-fronting-port",
                    "a port (1-65535)",
                    parse_port,
                )?);
            }
            Long("domain-fronting-ip") => {
                s.domain_fronting_ip = Some(value(
                    CMD,
                    parser,
                    "--domain-fronting-ip",
                    "an IP address",
                    |v| v.parse().ok(),
                )?);
            }
            Short('n') | Long("doh-ip") => {
                s.doh_ip = Some(value(CMD, parser, "--doh-ip", "an IP address", |v| {
                    v.parse().ok()
                })?);
            }
            Short('t') | Long("timeout") => {
                s.timeout = Some(value(CMD, parser, "--timeout", DUR, parse_duration)?);
            }
            Short('s') | Long("socks5-proxy") => {
                s.socks5_proxies.push(value(
                    CMD,
                    parser,
                    "--socks5-proxy",
                    "a socks5:// URL",
                    |v| {
                        (v.starts_with("socks5://") || v.starts_with("socks5h://"))
                            .then(|| v.to_string())
                    },
                )?);
            }
            Short('a') | Long("antireplay-cache-size") => {
                s.antireplay_cache_size = Some(value(
                    CMD,
                    parser,
                    "--antireplay-cache-size",
                    "a size (512KiB, 1MiB)",
                    |v| parse_bytes(v).and_then(|n| usize::try_from(n).ok()),
                )?);
            }
            Short('w') | Long("workers") => {
                s.workers = Some(value(CMD, parser, "--workers", "a number", count)?);
            }
            Long("dc-override") => {
                s.dc_overrides.push(value(
                    CMD,
                    parser,
                    "--dc-override",
                    "DC=IP:PORT (e.g. 2=127.0.0.1:9443 or -2=[::1]:443)",
                    parse_dc_override,
                )?);
            }
            Long("log-format") => {
                s.log_format = Some(value(
                    CMD,
                    parser,
                    "--log-format",
                    "logfmt or json",
                    LogFormat::parse,
                )?);
            }
            Long("tolerate-time-skewness") => {
                s.tolerate_time_skewness = Some(value(
                    CMD,
                    parser,
                    "--tolerate-time-skewness",
                    DUR,
                    parse_duration,
                )?);
            }
            Long("handshake-timeout") => {
                s.handshake_timeout = Some(value(
                    CMD,
                    parser,
                    "--handshake-timeout",
                    DUR,
                    parse_duration,
                )?);
            }
            Value(v) if positional.len() < 2 => positional.push(text(CMD, v, "argument")?),
            arg => return Err(unexpected(CMD, arg)),
        }
    }
    let [bind_to, secret] = positional.as_slice() else {
        return Err(usage(
            Some(CMD),
            "expected <bind-to> and <secret> (e.g. mtpx simple-run 0.0.0.0:443 <secret>)",
        ));
    };
    s.bind_to = bind_to.trim().parse().map_err(|_| {
        usage(
            Some(CMD),
            format!("<bind-to>: {bind_to:?} is not an IP:port address (e.g. 0.0.0.0:443)"),
        )
    })?;
    s.secret =
        Secret::parse(secret.trim()).map_err(|e| usage(Some(CMD), format!("<secret>: {e}")))?;
    Ok(Cli::SimpleRun(Box::new(s)))
}

impl SimpleRun {
    /// The config these flags describe, plus warnings for flags that are accepted but ignored.
    pub fn to_config(&self) -> Result<(Config, Vec<String>), config::ConfigError> {
        let mut c = Config::simple(self.bind_to, self.secret.clone());
        let mut warnings = Vec::new();
        c.debug = self.debug;
        c.doppelganger.drs = self.drs;
        c.doppelganger.delays = self.delays;
        c.allow_fallback_on_unknown_dc = true;
        c.anti_replay.enabled = true;
        if let Some(n) = self.concurrency {
            c.concurrency = n;
        }
        if self.tcp_buffer.is_some() {
            warnings.push("--tcp-buffer is ignored (as in mtg)".to_string());
        }
        if let Some(p) = self.prefer_ip {
            c.prefer_ip = p;
        }
        if let Some(p) = self.domain_fronting_port {
            c.domain_fronting.port = p;
        }
        c.domain_fronting.ip = self.domain_fronting_ip;
        if let Some(ip) = self.doh_ip {
            let dns = match ip {
                IpAddr::V4(v4) => format!("https://{v4}"),
                IpAddr::V6(v6) => format!("https://[{v6}]"),
            };
            c.dns = Some(dns);
        }
        if let Some(t) = self.timeout {
            c.timeouts.tcp = t;
            c.timeouts.http = t;
            c.timeouts.idle = t;
        }
        if !self.socks5_proxies.is_empty() {
            c.proxies = self.socks5_proxies.clone();
        }
        if let Some(n) = self.antireplay_cache_size {
            c.anti_replay.max_size = n;
        }
        if let Some(n) = self.workers {
            c.workers = n;
            // Keep the default pool valid for many workers.
            c.buffer_count = c.buffer_count.max(2 * n);
        }
        for (dc, addr) in &self.dc_overrides {
            match c.dc_overrides.iter_mut().find(|(d, _)| d == dc) {
                Some((_, addrs)) => addrs.push(*addr),
                None => c.dc_overrides.push((*dc, vec![*addr])),
            }
        }
        crate::proto::sort_small_by_key(&mut c.dc_overrides, |(dc, _)| *dc);
        if let Some(f) = self.log_format {
            c.log_format = f;
        }
        if let Some(d) = self.tolerate_time_skewness {
            c.tolerate_time_skewness = d;
        }
        if let Some(d) = self.handshake_timeout {
            c.timeouts.handshake = d;
        }
        c.validate()?;
        Ok((c, warnings))
    }
}

/// Entry point of the binary: parses `std::env::args_os()` and runs the command. Returns the
/// process exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match parse_args(args) {
        Ok(cli) => {
            let code = execute(cli);
            crate::log::flush();
            code
        }
        Err(e) => {
            let hint = match e.command {
                Some(c) => format!("mtpx {c} --help"),
                None => "mtpx --help".to_string(),
            };
            errln!("mtpx: {e}\nRun `{hint}` for usage.");
            2
        }
    }
}

fn log_config_warnings(warnings: &[Warning]) {
    for w in warnings {
        crate::log_event!(Level::Warn, "config-warning", message = w);
    }
}

fn load_config(path: &std::path::Path) -> Result<(Config, Vec<Warning>), i32> {
    config::load(path).map_err(|e| {
        errln!("mtpx: {e}");
        1
    })
}

fn execute(cli: Cli) -> i32 {
    match cli {
        Cli::Help(topic) => {
            out!("{}", help_text(topic));
            0
        }
        Cli::Version => {
            outln!("mtpx {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Cli::Run { config } => {
            let (c, warnings) = match load_config(&config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            crate::log::init(c.log_format, c.debug);
            log_config_warnings(&warnings);
            run_proxy(c)
        }
        Cli::SimpleRun(s) => {
            let (c, warnings) = match s.to_config() {
                Ok(v) => v,
                Err(e) => {
                    errln!("mtpx: {e}");
                    return 1;
                }
            };
            crate::log::init(c.log_format, c.debug);
            for w in &warnings {
                crate::log_event!(Level::Warn, "flag-warning", message = w);
            }
            run_proxy(c)
        }
        Cli::GenerateSecret { kind, hex, host } => {
            let mut rng = OsRng::default();
            let host_name = if kind == SecretKind::FakeTls {
                host.as_deref().unwrap_or("")
            } else {
                if let Some(h) = &host {
                    errln!(
                        "mtpx: note: hostname {h:?} is ignored: classic and dd secrets carry no host"
                    );
                }
                ""
            };
            let secret = Secret::generate(kind, host_name, &mut rng);
            if rng.failed {
                errln!("mtpx: the operating system's random source failed; no secret made");
                return 1;
            }
            if kind == SecretKind::FakeTls && !hex {
                outln!("{}", secret.to_base64());
            } else {
                outln!("{}", secret.to_hex());
            }
            0
        }
        Cli::Access(a) => access(&a),
        Cli::Users(u) => users_cmd(&u),
        Cli::Doctor(d) => doctor(&d),
    }
}

fn access(a: &Access) -> i32 {
    let (c, warnings) = match load_config(&a.config) {
        Ok(v) => v,
        Err(code) => return code,
    };
    crate::log::init(c.log_format, c.debug);
    log_config_warnings(&warnings);
    let ipv4 = a.ipv4.or(c.public_ipv4);
    let ipv6 = a.ipv6.or(c.public_ipv6);
    let port = a.port.unwrap_or(c.bind_to.port());
    if ipv4.is_none() && ipv6.is_none() {
        errln!(
            "mtpx: no public address known, so no links: pass -i/--ipv4 or -I/--ipv6, or \
             set public-ipv4/public-ipv6 in the config"
        );
    }
    if a.text && a.json {
        errln!("mtpx: --text and --json both given: printing both");
    }
    let all = c.user_specs();
    let users: Vec<&UserSpec> = match &a.user {
        Some(n) => match all.iter().find(|u| &u.name == n) {
            Some(u) => vec![u],
            None => return no_user(n, &a.config),
        },
        None => all.iter().collect(),
    };
    // One secret (mtg's config, or --user): mtg's output, unchanged.
    let single = a.user.is_some() || c.users.is_empty();
    let header = |u: &UserSpec| {
        if !single {
            outln!("# {}", u.name);
        }
    };
    let qr_alone = a.qr && !a.text && !a.json;
    if a.text {
        for u in &users {
            header(u);
            out!(
                "{}",
                crate::links::access_text(&u.secret, ipv4, ipv6, port, a.hex)
            );
        }
    }
    if a.json || (!a.text && !a.qr) {
        let json = if single {
            crate::links::access_json(&users[0].secret, ipv4, ipv6, port, a.hex)
        } else {
            crate::links::access_json_users(&users, ipv4, ipv6, port, a.hex)
        };
        outln!("{json}");
    }
    if a.qr {
        let ips: Vec<IpAddr> = ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(ipv6.map(IpAddr::V6))
            .collect();
        for (k, u) in users.iter().enumerate() {
            if !single && (k > 0 || !qr_alone) {
                outln!();
            }
            header(u);
            for (i, ip) in ips.iter().enumerate() {
                let link = if qr_alone {
                    crate::links::tme_url(&u.secret, *ip, port, a.hex)
                } else {
                    crate::links::tg_url(&u.secret, *ip, port, a.hex)
                };
                if i > 0 || (single && !qr_alone) {
                    outln!();
                }
                match qr_block(&link) {
                    Ok(block) => out!("{block}"),
                    Err(e) => {
                        errln!("mtpx: cannot draw a QR code for user {}: {e}", u.name);
                        return 1;
                    }
                }
            }
        }
    }
    0
}

/// "no user named ..." (exit status 1).
fn no_user(name: &str, config: &std::path::Path) -> i32 {
    errln!(
        "mtpx: no user named {name:?} in {} (`mtpx users list` shows them)",
        config.display()
    );
    1
}

fn users_cmd(cmd: &UsersCmd) -> i32 {
    let (path, name, json) = match cmd {
        UsersCmd::List { config, json } => (config, None, *json),
        UsersCmd::ResetQuota { config, name } => (config, Some(name), false),
    };
    let (c, _) = match load_config(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let users = c.user_specs();
    let sf = c.state_file().unwrap_or_default();
    let Some(name) = name else {
        let state = crate::background::users::load_state(&sf).unwrap_or_else(|e| {
            errln!("mtpx: {}: {e}; usage not shown", sf.display());
            None
        });
        let pending: Vec<String> = crate::background::users::pending_resets(&sf)
            .into_iter()
            .filter(|p| !state.as_ref().is_some_and(|s| s.applied.contains(&p.id)))
            .filter_map(|p| p.user.ok())
            .collect();
        let now = crate::io::unix_now();
        out!(
            "{}",
            crate::links::users_table(&users, state.as_ref(), &pending, now, json)
        );
        return 0;
    };
    if !users.iter().any(|u| &u.name == name) {
        return no_user(name, path);
    }
    let mut rng = OsRng::default();
    let mut id = [0u8; 8];
    rng.fill(&mut id);
    let r = crate::background::users::request_reset(&sf, name, u64::from_le_bytes(id));
    match r {
        Ok(f) if !rng.failed => {
            outln!(
                "reset of {name:?} requested ({}): a running proxy applies it within a few \
                 seconds, else it applies at the next start",
                f.display()
            );
            0
        }
        r => {
            let _ = r.map(std::fs::remove_file);
            errln!(
                "mtpx: cannot request the reset beside {} (state-dir must exist and be writable; \
                 the OS random source must work)",
                sf.display()
            );
            1
        }
    }
}

/// `link` on one line, then its QR code (ECC level M) drawn for a light-on-dark terminal.
pub fn qr_block(link: &str) -> Result<String, crate::formats::qr::QrError> {
    use crate::formats::qr;
    let code = qr::encode(link.as_bytes(), qr::Ecc::Medium)?;
    Ok(format!("{link}\n{}", qr::render_terminal(&code, true)))
}

fn doctor(d: &Doctor) -> i32 {
    let (c, warnings) = match load_config(&d.config) {
        Ok(v) => v,
        Err(code) => return code,
    };
    // The config's warnings are part of the report, not log lines.
    crate::log::init(c.log_format, c.debug);
    let opts = crate::doctor::Options {
        ntp: d.ntp.clone(),
        ..crate::doctor::Options::default()
    };
    let json = d.json;
    let checks = crate::doctor::run(&c, &warnings, &opts, |section, checks| {
        if !json {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(crate::doctor::render_section(section, checks).as_bytes());
            let _ = out.flush();
        }
    });
    if json {
        out!("{}", crate::doctor::render_json(&checks));
    } else {
        outln!();
        out!("{}", crate::doctor::render_totals(&checks));
    }
    crate::doctor::exit_status(&checks, d.strict)
}

fn run_proxy(c: Config) -> i32 {
    match crate::background::signals::run(c) {
        Ok(()) => 0,
        Err(e) => {
            crate::log_event!(Level::Error, "proxy-failed", error = e);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t";

    fn p(args: &[&str]) -> Result<Cli, CliError> {
        parse_args(args.iter().copied())
    }

    fn simple(args: &[&str]) -> SimpleRun {
        let mut all = vec!["simple-run", "127.0.0.1:3128", SECRET];
        all.extend_from_slice(args);
        match p(&all) {
            Ok(Cli::SimpleRun(s)) => *s,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--help"]), Ok(Cli::Help(None)));
        assert_eq!(p(&["-h"]), Ok(Cli::Help(None)));
        assert_eq!(p(&["-v"]), Ok(Cli::Version));
        assert_eq!(p(&["--version"]), Ok(Cli::Version));
        assert_eq!(p(&["run", "--help"]), Ok(Cli::Help(Some("run"))));
        assert_eq!(p(&["help", "access"]), Ok(Cli::Help(Some("access"))));
        assert_eq!(p(&["simple-run", "-h"]), Ok(Cli::Help(Some("simple-run"))));
        for c in COMMANDS {
            let text = help_text(Some(c));
            assert!(text.contains(&format!("mtpx {c}")), "{c}");
        }
        // Every simple-run flag is documented.
        for flag in [
            "--debug",
            "--concurrency",
            "--tcp-buffer",
            "--prefer-ip",
            "--domain-fronting-port",
            "--domain-fronting-ip",
            "--doh-ip",
            "--timeout",
            "--socks5-proxy",
            "--antireplay-cache-size",
            "--workers",
            "--dc-override",
            "--log-format",
            "--tolerate-time-skewness",
            "--handshake-timeout",
            "--drs",
            "--delays",
        ] {
            assert!(HELP_SIMPLE_RUN.contains(flag), "{flag}");
        }
    }

    #[test]
    fn usage_errors() {
        assert!(p(&[]).is_err());
        let e = p(&["frobnicate"]).unwrap_err();
        assert!(e.msg.contains("unknown command"), "{e}");
        let e = p(&["--bogus"]).unwrap_err();
        assert!(e.msg.contains("--bogus"), "{e}");
        let e = p(&["run", "a.toml", "--bogus"]).unwrap_err();
        assert_eq!(e.command, Some("run"));
        assert!(e.msg.contains("--bogus"), "{e}");
        assert!(p(&["run"]).is_err());
        assert!(p(&["run", "a", "b"]).is_err());
        assert!(p(&["generate-secret"]).is_err());
        assert!(p(&["generate-secret", "a b"]).is_err());
        assert!(p(&["simple-run", "127.0.0.1:1"]).is_err());
        assert!(p(&["simple-run", "localhost:1", SECRET]).is_err());
        assert!(p(&["simple-run", "127.0.0.1:1", "nope"]).is_err());
        assert!(p(&["simple-run", "127.0.0.1:1", SECRET, "-c"]).is_err());
        assert!(p(&["simple-run", "127.0.0.1:1", SECRET, "-t", "5"]).is_err());
        assert!(
            p(&[
                "simple-run",
                "127.0.0.1:1",
                SECRET,
                "--dc-override",
                "0=1.2.3.4:1"
            ])
            .is_err()
        );
        assert!(
            p(&[
                "simple-run",
                "127.0.0.1:1",
                SECRET,
                "--dc-override",
                "2=host:1"
            ])
            .is_err()
        );
        assert!(p(&["access", "c.toml", "-i", "::1"]).is_err());
        assert!(p(&["access", "c.toml", "-p", "0"]).is_err());
    }

    #[test]
    fn run_doctor_access() {
        assert_eq!(
            p(&["run", "/etc/mtpx.toml"]),
            Ok(Cli::Run {
                config: "/etc/mtpx.toml".into()
            })
        );
        assert_eq!(
            p(&["doctor", "c.toml"]),
            Ok(Cli::Doctor(Doctor {
                config: "c.toml".into(),
                json: false,
                strict: false,
                ntp: vec![],
            }))
        );
        assert_eq!(
            p(&[
                "doctor",
                "--json",
                "c.toml",
                "--strict",
                "--ntp",
                "127.0.0.1:1123",
                "--ntp=[::1]",
                "--ntp",
                "time.example"
            ]),
            Ok(Cli::Doctor(Doctor {
                config: "c.toml".into(),
                json: true,
                strict: true,
                ntp: vec![
                    ("127.0.0.1".into(), 1123),
                    ("::1".into(), 123),
                    ("time.example".into(), 123)
                ],
            }))
        );
        assert!(p(&["doctor", "c.toml", "--ntp"]).is_err());
        assert!(p(&["doctor", "c.toml", "--ntp", "h:0"]).is_err());
        assert!(p(&["doctor", "c.toml", "--bogus"]).is_err());
        assert!(p(&["doctor", "--json"]).is_err());
        for flag in ["--json", "--strict", "--ntp"] {
            assert!(HELP_DOCTOR.contains(flag), "{flag}");
        }
        assert_eq!(
            p(&[
                "access",
                "c.toml",
                "-i",
                "1.2.3.4",
                "--ipv6=2001:db8::1",
                "-p",
                "8443",
                "-x",
                "--text"
            ]),
            Ok(Cli::Access(Access {
                config: "c.toml".into(),
                ipv4: Some(Ipv4Addr::new(1, 2, 3, 4)),
                ipv6: Some("2001:db8::1".parse().unwrap()),
                port: Some(8443),
                hex: true,
                text: true,
                json: false,
                qr: false,
                user: None,
            }))
        );
        match p(&["access", "c.toml", "--user", "bob.smith"]) {
            Ok(Cli::Access(a)) => assert_eq!(a.user.as_deref(), Some("bob.smith")),
            other => panic!("{other:?}"),
        }
        assert!(p(&["access", "c.toml", "-u"]).is_err());
        match p(&["access", "c.toml", "--qr", "--json"]) {
            Ok(Cli::Access(a)) => assert!(a.qr && a.json && !a.text),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn users_subcommands() {
        assert_eq!(
            p(&["users", "list", "c.toml"]),
            Ok(Cli::Users(UsersCmd::List {
                config: "c.toml".into(),
                json: false
            }))
        );
        assert_eq!(
            p(&["users", "list", "--json", "c.toml"]),
            Ok(Cli::Users(UsersCmd::List {
                config: "c.toml".into(),
                json: true
            }))
        );
        assert_eq!(
            p(&["users", "reset-quota", "c.toml", "bob"]),
            Ok(Cli::Users(UsersCmd::ResetQuota {
                config: "c.toml".into(),
                name: "bob".into()
            }))
        );
        assert_eq!(p(&["users"]), Ok(Cli::Help(Some("users"))));
        assert_eq!(p(&["users", "list", "-h"]), Ok(Cli::Help(Some("users"))));
        for bad in [
            &["users", "frob", "c.toml"][..],
            &["users", "list"],
            &["users", "list", "a", "b"],
            &["users", "reset-quota", "c.toml"],
            &["users", "reset-quota", "c.toml", "a", "b"],
            &["users", "reset-quota", "--json", "c.toml", "a"],
            &["users", "--json"],
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.command, Some("users"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn generate_secret_forms() {
        assert_eq!(
            p(&["generate-secret", "google.com"]),
            Ok(Cli::GenerateSecret {
                kind: SecretKind::FakeTls,
                hex: false,
                host: Some("google.com".into())
            })
        );
        assert_eq!(
            p(&["generate-secret", "-x", "google.com"]),
            Ok(Cli::GenerateSecret {
                kind: SecretKind::FakeTls,
                hex: true,
                host: Some("google.com".into())
            })
        );
        assert_eq!(
            p(&["generate-secret", "--classic"]),
            Ok(Cli::GenerateSecret {
                kind: SecretKind::Classic,
                hex: false,
                host: None
            })
        );
        assert_eq!(
            p(&["generate-secret", "--dd", "ignored.example"]),
            Ok(Cli::GenerateSecret {
                kind: SecretKind::Secure,
                hex: false,
                host: Some("ignored.example".into())
            })
        );
    }

    #[test]
    fn simple_run_flags_map_to_config() {
        let s = simple(&[
            "-d",
            "-c",
            "100",
            "-b",
            "4KB",
            "-i",
            "only-ipv4",
            "-p",
            "8443",
            "--domain-fronting-ip",
            "10.0.0.1",
            "-n",
            "9.9.9.9",
            "-t",
            "3s",
            "-s",
            "socks5://127.0.0.1:1080",
            "-a",
            "2MiB",
            "-w",
            "3",
            "--dc-override",
            "2=127.0.0.1:9443",
            "--dc-override",
            "-2=[::1]:443",
            "--dc-override=2=127.0.0.2:9443",
            "--log-format",
            "json",
            "--tolerate-time-skewness",
            "30s",
            "--handshake-timeout",
            "4s",
            "--drs",
            "--delays",
        ]);
        let (c, warnings) = s.to_config().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(c.doppelganger.drs && c.doppelganger.delays);
        assert!(c.debug && c.allow_fallback_on_unknown_dc && c.anti_replay.enabled);
        assert_eq!(c.bind_to, "127.0.0.1:3128".parse().unwrap());
        assert_eq!(c.secret.to_base64(), SECRET);
        assert_eq!(c.concurrency, 100);
        assert_eq!(c.prefer_ip, PreferIp::parse("only-ipv4").unwrap());
        assert_eq!(c.domain_fronting.port, 8443);
        assert_eq!(c.domain_fronting.ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.dns.as_deref(), Some("https://9.9.9.9"));
        let t = Duration::from_secs(3);
        assert_eq!(
            (c.timeouts.tcp, c.timeouts.http, c.timeouts.idle),
            (t, t, t)
        );
        assert_eq!(c.timeouts.handshake, Duration::from_secs(4));
        assert_eq!(c.proxies, ["socks5://127.0.0.1:1080"]);
        assert_eq!(c.anti_replay.max_size, 2 << 20);
        assert_eq!(c.workers, 3);
        assert_eq!(
            c.dc_overrides,
            vec![
                (-2, vec!["[::1]:443".parse().unwrap()]),
                (
                    2,
                    vec![
                        "127.0.0.1:9443".parse().unwrap(),
                        "127.0.0.2:9443".parse().unwrap()
                    ]
                ),
            ]
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.tolerate_time_skewness, Duration::from_secs(30));
    }

    #[test]
    fn simple_run_defaults_and_validation() {
        let (c, warnings) = simple(&[]).to_config().unwrap();
        assert!(warnings.is_empty());
        assert!(c.allow_fallback_on_unknown_dc);
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(c.concurrency, 8192);
        let e = simple(&["-c", "0"]).to_config().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("concurrency"));
        let e = simple(&["-w", "0"]).to_config().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("workers"));
        // Many workers grow the default buffer pool instead of failing.
        let (c, _) = simple(&["-w", "200"]).to_config().unwrap();
        assert!(c.buffer_count >= 400);
    }

    #[test]
    fn os_rng_fills() {
        let mut rng = OsRng::default();
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        rng.fill(&mut a);
        rng.fill(&mut b);
        assert!(!rng.failed);
        assert_ne!(a, b);
    }
}
