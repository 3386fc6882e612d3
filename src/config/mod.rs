//! The TOML config file: text -> validated, typed [`Config`] plus [`Warning`]s.
//!
//! Every key of mtg v2's config is accepted (an mtg config runs unchanged); mtpx's own additions
//! are new keys (`workers`, `log-format`, `[buffers]`, `[network.dc-overrides]`). Defaults are the
//! values documented in `config.example`.
//!
//! Parsing is two passes: `toml.rs` (a strict pre-pass in front of nanoserde, for the nanoserde
//! behaviours it documents and tests) gives a map of keys, then `keys.rs` turns it into the typed
//! [`Config`] (values in `units.rs`), and [`Config::validate`] checks what spans several keys.
//!
//! Errors name the key, the line and what is wrong, e.g.
//! `config.toml:7: network.timeout.tcp: "5x" is not a duration (use 500ms, 5s, 1m30s)`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nanoserde::TomlParser;

mod keys;
mod toml;
mod units;
mod users;

use keys::Doc;
use toml::{UserItem, prepass};
pub use units::{fmt_bytes, fmt_duration, parse_bytes, parse_duration, parse_period};
pub use users::ListedUser;
use users::{Origin, check_users};

pub use crate::formats::dns::{Nameserver, Transport};
pub use crate::formats::metrics::TagFormat;
pub use crate::log::LogFormat;
use crate::proto::dc::PreferIp;
use crate::proto::secret::Secret;
use crate::proto::users::{DEFAULT_USER, Limits, UserSpec};

/// Telegram's proxy config, IPv4 and IPv6 (mtg's `auto-update` sources).
pub const PROXY_CONFIG_URLS: [&str; 2] = [
    "https://core.telegram.org/getProxyConfig",
    "https://core.telegram.org/getProxyConfigV6",
];
/// Telegram's middle-proxy secret.
pub const PROXY_SECRET_URL: &str = "https://core.telegram.org/getProxySecret";

/// Most workers mtpx will start.
pub const MAX_WORKERS: usize = 256;
/// Largest `concurrency`.
pub const MAX_CONCURRENCY: usize = 1_000_000;
/// Smallest `[buffers] size`.
pub const MIN_BUFFER_SIZE: usize = 4 * 1024;
/// Largest `[buffers] size`.
pub const MAX_BUFFER_SIZE: usize = 1024 * 1024;
/// Largest `[buffers] count`.
pub const MAX_BUFFER_COUNT: usize = 1 << 20;
/// Largest `[buffers] count × size`: 4 GiB (e.g. 262,144 buffers of 16 KiB, 256 times the
/// default). The pool is reserved at start-up in one allocation per worker; pages are only
/// touched when used, but Linux's default overcommit refuses a reservation much beyond RAM +
/// swap, and mtpx would then die at start. Past 4 GiB of buffers in flight, more buffers are
/// not what a proxy needs.
pub const MAX_BUFFER_MEMORY: u64 = 4 << 30;

/// Where the proxy sends connections that fail the FakeTLS check (`[domain-fronting]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainFronting {
    /// Connect to this IP instead of resolving the secret's host name.
    pub ip: Option<IpAddr>,
    /// Port of the fronting site (default 443).
    pub port: u16,
    /// Send a PROXY protocol v2 header to the fronting site.
    pub proxy_protocol: bool,
}

/// `[network.timeout]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a Telegram DC or the fronting site (default 10s).
    pub tcp: Duration,
    /// Whole-request timeout of HTTP clients (default 10s).
    pub http: Duration,
    /// A relayed connection with no traffic in either direction is closed (default 5m).
    pub idle: Duration,
    /// From accept until the client's handshake is complete (default 10s).
    pub handshake: Duration,
}

/// `[network.keep-alive]`: TCP keep-alive on connections to Telegram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// Turn keep-alive off.
    pub disabled: bool,
    /// Idle time before the first probe (default 15s).
    pub idle: Duration,
    /// Time between probes (default 15s).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (default 9).
    pub count: u32,
}

/// `[defense.anti-replay]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AntiReplay {
    /// On by default (unlike mtg).
    pub enabled: bool,
    /// Memory for remembered handshakes, in bytes (default 1 MiB, 20 bytes per handshake; for
    /// dd and classic secrets it alone bounds how long a handshake is remembered).
    pub max_size: usize,
    /// Accepted false-positive rate (default 0.001).
    pub error_rate: f64,
}

/// Most JA4 fingerprints `[stats] ja4-top` may keep per class.
pub const MAX_JA4_TOP: usize = 256;

/// `[defense.doppelganger]`: learning the fronting site's handshake shape, and shaping.
#[derive(Clone, Debug, PartialEq)]
pub struct Doppelganger {
    /// Probe the fronting site and shape the fake handshake like its answer (default true).
    pub learn: bool,
    /// Sites whose TLS traffic shape is learned.
    pub urls: Vec<String>,
    /// Requests per learning raid (default 10).
    pub repeats_per_raid: u32,
    /// Time between raids (default 6h).
    pub raid_each: Duration,
    /// Dynamic record sizing.
    pub drs: bool,
    /// Inter-record timing toward FakeTLS clients (default false).
    pub delays: bool,
    /// Weibull shape k of the gaps (default mtg's 0.378…).
    pub delay_shape: f64,
    /// Weibull scale λ of the gaps (default 1.73 ms).
    pub delay_scale: Duration,
    /// Bytes per second a download keeps at least while shaped (default 4 MiB; 0 = none).
    pub min_rate: u64,
    /// `post-quantum = "mirror"` (true, default): a hello offering X25519MLKEM768 gets the
    /// site's answer to such a hello; `"off"`: every hello gets an x25519 answer.
    pub post_quantum: bool,
}

/// `[defense.blocklist]` / `[defense.allowlist]`: FireHOL lists from files or http:// URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpList {
    /// Whether the list is used.
    pub enabled: bool,
    /// Parallel downloads (default 2).
    pub download_concurrency: u32,
    /// Files or http(s) URLs of FireHOL netsets.
    pub urls: Vec<String>,
    /// Reload period (default 24h).
    pub update_each: Duration,
}

/// `[stats.statsd]`: metrics over UDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statsd {
    /// Whether metrics are sent.
    pub enabled: bool,
    /// UDP `IP:port` of the StatsD server.
    pub address: Option<SocketAddr>,
    /// Metric name prefix (default `mtg`, so dashboards made for mtg keep working).
    pub metric_prefix: String,
    /// Tag format (default datadog).
    pub tag_format: TagFormat,
}

/// `[stats.prometheus]`: metrics over HTTP, served by mtpx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prometheus {
    /// Whether the HTTP endpoint is served.
    pub enabled: bool,
    /// `IP:port` of the HTTP endpoint.
    pub bind_to: Option<SocketAddr>,
    /// Path of the metrics page (default `/`).
    pub http_path: String,
    /// Metric name prefix (default `mtg`).
    pub metric_prefix: String,
}

/// The validated configuration. Defaults are those documented in `config.example`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Debug log level.
    pub debug: bool,
    /// The proxy secret.
    pub secret: Secret,
    /// Listening address.
    pub bind_to: SocketAddr,
    /// Reactor threads (default: one per CPU, at most 256).
    pub workers: usize,
    /// Most simultaneous client connections (default 8192).
    pub concurrency: usize,
    /// Most unauthenticated connections (handshakes, fronted) from one address at once
    /// (`concurrency-per-ip`; 0: no limit; default [`Config::per_ip_limit`]'s).
    pub concurrency_per_ip: Option<usize>,
    /// Size of one relay buffer (`[buffers] size`, default 16 KiB).
    pub buffer_size: usize,
    /// Relay buffers across all workers (`[buffers] count`, default 1024).
    pub buffer_count: usize,
    /// Which IP family is used to reach Telegram.
    pub prefer_ip: PreferIp,
    /// Public IPv4 address (for `access`).
    pub public_ipv4: Option<Ipv4Addr>,
    /// Public IPv6 address (for `access`).
    pub public_ipv6: Option<Ipv6Addr>,
    /// Accepted clock difference in FakeTLS handshakes (default 10s).
    pub tolerate_time_skewness: Duration,
    /// Send clients asking for an unknown DC to a known one instead of closing.
    pub allow_fallback_on_unknown_dc: bool,
    /// Accept PROXY protocol v1/v2 headers on the listener.
    pub proxy_protocol_listener: bool,
    /// Where failed handshakes are sent.
    pub domain_fronting: DomainFronting,
    /// Network timeouts.
    pub timeouts: Timeouts,
    /// Keep-alive on DC connections.
    pub keep_alive: KeepAlive,
    /// Replay protection.
    pub anti_replay: AntiReplay,
    /// Addresses used instead of the built-in ones, per DC id (sorted by id).
    pub dc_overrides: Vec<(i16, Vec<SocketAddr>)>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Keep DC 203's addresses current from Telegram's proxy config (hourly).
    pub auto_update: bool,
    /// The ad tag from @MTProxybot (`ad-tag`, 32 hex digits): sponsored channel via Telegram's
    /// middle proxies.
    pub ad_tag: Option<[u8; 16]>,
    /// Where Telegram's proxy config is fetched (`[network] proxy-config-urls`; default
    /// [`PROXY_CONFIG_URLS`]).
    pub proxy_config_urls: Vec<String>,
    /// Local copies of the proxy config used instead of the URLs (`[network]
    /// proxy-config-files`).
    pub proxy_config_files: Vec<String>,
    /// Where the middle proxies' secret is fetched (`[network] proxy-secret-url`).
    pub proxy_secret_url: String,
    /// A local copy of the proxy secret used instead of the URL (`[network] proxy-secret-file`).
    pub proxy_secret_file: Option<String>,
    /// DNS resolver URI (`[network] dns`); [`Config::nameserver`] is the server mtpx asks.
    pub dns: Option<String>,
    /// SOCKS5 upstreams for DC connections, tried in order (`[network] proxies`).
    pub proxies: Vec<String>,
    /// NTP servers `doctor` asks for the clock check (`[network] ntp`, `host[:port]`;
    /// default `pool.ntp.org`).
    pub ntp: Vec<String>,
    /// TLS-shape learning and dynamic record sizing (`[defense.doppelganger]`).
    pub doppelganger: Doppelganger,
    /// IP blocklist.
    pub blocklist: IpList,
    /// IP allowlist.
    pub allowlist: IpList,
    /// StatsD metrics.
    pub statsd: Statsd,
    /// Prometheus metrics.
    pub prometheus: Prometheus,
    /// Every user when the config defines users (`[users.NAME]`, `users-file`): the top-level
    /// `secret` as the user `default` first, then the tables in file order, then the users
    /// file's. Empty for a single-secret config (the one user is `default` with `secret`,
    /// see [`Config::user_specs`]); `secret` is then the first user's.
    pub users: Vec<UserSpec>,
    /// `users-file` (relative to the config file's directory once [`load`]ed).
    pub users_file: Option<PathBuf>,
    /// `state-dir`: where the quota state is kept. [`load`] defaults it to the config file's
    /// directory.
    pub state_dir: Option<PathBuf>,
    /// The config file, when [`load`]ed from one (reloads read it again).
    pub source: Option<PathBuf>,
    /// ClientHello JA4 fingerprints counted per class (`[stats] ja4-top`, default 16; 0 = off).
    pub ja4_top: usize,
}

/// The server mtpx asks for a `[network] dns` value: `udp://IP[:port]` and a bare IP in plain
/// DNS (port 53 by default); `tls://IP[:port]` in DNS over TLS (RFC 7858, port 853);
/// `https://IP[:port][/path]` in DNS over HTTPS (RFC 8484, port 443, path `/dns-query`).
/// `None` (a host name, which would need a resolver to find the resolver, or no usable
/// value): the nameservers of `/etc/resolv.conf`.
pub fn dns_server(uri: &str) -> Option<Nameserver> {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("udp", uri));
    let (authority, path) = match rest.find('/') {
        Some(i) if scheme == "https" => rest.split_at(i),
        _ => (rest, ""),
    };
    let (default_port, transport) = match scheme {
        "udp" => (53, Transport::Plain),
        "tls" => (853, Transport::Tls),
        "https" => {
            let path = if path.is_empty() { "/dns-query" } else { path };
            (443, Transport::Https(path.to_string()))
        }
        _ => return None,
    };
    let bare = authority
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(authority);
    let addr = match authority.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(bare.parse().ok()?, default_port),
    };
    Some(Nameserver { addr, transport })
}

/// For a `dns` value mtpx cannot follow as written (DoH/DoT named by a host name), what it
/// does instead, as a warning message. `None` when the value is used as written.
pub fn dns_warning(uri: &str) -> Option<String> {
    if dns_server(uri).is_some() || !(uri.starts_with("https://") || uri.starts_with("tls://")) {
        return None;
    }
    Some(format!(
        "{uri:?} names the DNS server by a host name, which would need another resolver to \
         find; asking the nameservers in /etc/resolv.conf instead; give its IP address \
         (as mtg's doh-ip did), e.g. dns = \"https://1.1.1.1/dns-query\""
    ))
}

/// Default number of workers: one per CPU, between 1 and [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

impl Config {
    /// The DNS server every lookup goes to (see [`dns_server`]); `None`: `/etc/resolv.conf`.
    #[inline(never)] // called from many places; keeps the binary small
    pub fn nameserver(&self) -> Option<Nameserver> {
        self.dns.as_deref().and_then(dns_server)
    }

    /// The per-address limit of unauthenticated connections in force (0: none): the
    /// configured one, else a quarter of `concurrency`, at most 64.
    pub fn per_ip_limit(&self) -> usize {
        self.concurrency_per_ip
            .unwrap_or((self.concurrency / 4).clamp(1, 64))
    }

    /// A config with every default, listening on `bind_to` with `secret`.
    pub fn simple(bind_to: SocketAddr, secret: Secret) -> Config {
        Config {
            debug: false,
            secret,
            bind_to,
            workers: default_workers(),
            concurrency: 8192,
            concurrency_per_ip: None,
            buffer_size: 16 * 1024,
            buffer_count: 1024,
            prefer_ip: PreferIp::default(),
            public_ipv4: None,
            public_ipv6: None,
            tolerate_time_skewness: Duration::from_secs(10),
            allow_fallback_on_unknown_dc: false,
            proxy_protocol_listener: false,
            domain_fronting: DomainFronting {
                ip: None,
                port: 443,
                proxy_protocol: false,
            },
            timeouts: Timeouts {
                tcp: Duration::from_secs(10),
                http: Duration::from_secs(10),
                idle: Duration::from_secs(300),
                handshake: Duration::from_secs(10),
            },
            keep_alive: KeepAlive {
                disabled: false,
                idle: Duration::from_secs(15),
                interval: Duration::from_secs(15),
                count: 9,
            },
            anti_replay: AntiReplay {
                enabled: true,
                max_size: 1024 * 1024,
                error_rate: 0.001,
            },
            dc_overrides: Vec::new(),
            log_format: LogFormat::Logfmt,
            auto_update: false,
            ad_tag: None,
            proxy_config_urls: PROXY_CONFIG_URLS.map(String::from).to_vec(),
            proxy_config_files: Vec::new(),
            proxy_secret_url: PROXY_SECRET_URL.to_string(),
            proxy_secret_file: None,
            dns: None,
            proxies: Vec::new(),
            ntp: vec![crate::doctor::DEFAULT_NTP.to_string()],
            doppelganger: Doppelganger {
                learn: true,
                urls: Vec::new(),
                repeats_per_raid: 10,
                raid_each: Duration::from_secs(6 * 3600),
                drs: false,
                delays: false,
                delay_shape: crate::proto::shaping::DEFAULT_SHAPE,
                delay_scale: crate::proto::shaping::DEFAULT_SCALE,
                min_rate: 4 << 20,
                post_quantum: true,
            },
            blocklist: IpList {
                enabled: false,
                download_concurrency: 2,
                urls: Vec::new(),
                update_each: Duration::from_secs(24 * 3600),
            },
            allowlist: IpList {
                enabled: false,
                download_concurrency: 2,
                urls: Vec::new(),
                update_each: Duration::from_secs(24 * 3600),
            },
            statsd: Statsd {
                enabled: false,
                address: None,
                metric_prefix: "mtg".to_string(),
                tag_format: TagFormat::Datadog,
            },
            prometheus: Prometheus {
                enabled: false,
                bind_to: None,
                http_path: "/".to_string(),
                metric_prefix: "mtg".to_string(),
            },
            users: Vec::new(),
            users_file: None,
            state_dir: None,
            source: None,
            ja4_top: 16,
        }
    }

    /// Whether some secret has an ad tag (the top-level `ad-tag` or a user's): middle proxies
    /// are then needed.
    pub fn has_ad_tag(&self) -> bool {
        self.ad_tag.is_some() || self.users.iter().any(|u| u.ad_tag.is_some())
    }

    /// The users: [`Config::users`], or the one user `default` with `secret`.
    pub fn user_specs(&self) -> Vec<UserSpec> {
        if !self.users.is_empty() {
            return self.users.clone();
        }
        vec![UserSpec {
            name: DEFAULT_USER.into(),
            secret: self.secret.clone(),
            limits: Limits::default(),
            ad_tag: None,
        }]
    }

    /// The quota state file: `<state-dir>/<config file stem>.state` (`None` without a config
    /// file).
    pub fn state_file(&self) -> Option<PathBuf> {
        let stem = self.source.as_ref()?.file_stem()?;
        let mut name = stem.to_os_string();
        name.push(".state");
        Some(self.state_dir.as_ref()?.join(name))
    }

    /// Checks ranges and cross-field rules. The error names the config key at fault (no line:
    /// [`parse`] adds it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::new(Some(key), msg));
        if self.bind_to.port() == 0 {
            return bad("bind-to", "port 0 is not allowed".into());
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return bad(
                "workers",
                format!("{} is out of range (1..={MAX_WORKERS})", self.workers),
            );
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return bad(
                "concurrency",
                format!(
                    "{} is out of range (1..={MAX_CONCURRENCY})",
                    self.concurrency
                ),
            );
        }
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&self.buffer_size) {
            return bad(
                "buffers.size",
                format!("{} bytes is out of range (4KiB..=1MiB)", self.buffer_size),
            );
        }
        if self.buffer_count > MAX_BUFFER_COUNT {
            return bad(
                "buffers.count",
                format!(
                    "{} is too large (at most {MAX_BUFFER_COUNT})",
                    self.buffer_count
                ),
            );
        }
        let memory = self.buffer_count as u64 * self.buffer_size as u64;
        if memory > MAX_BUFFER_MEMORY {
            return bad(
                "buffers.count",
                format!(
                    "{} buffers of {} bytes are {} MiB, more than the 4096 MiB allowed \
                     (count × size at most 4GiB)",
                    self.buffer_count,
                    self.buffer_size,
                    memory >> 20
                ),
            );
        }
        if self.buffer_count < 2 * self.workers {
            return bad(
                "buffers.count",
                format!(
                    "{} is too small: at least 2 per worker ({} workers need {})",
                    self.buffer_count,
                    self.workers,
                    2 * self.workers
                ),
            );
        }
        let skew = self.tolerate_time_skewness;
        if skew < Duration::from_secs(1) || skew > Duration::from_secs(24 * 3600) {
            return bad(
                "tolerate-time-skewness",
                format!("{} is out of range (1s..=24h)", fmt_duration(skew)),
            );
        }
        for (key, d) in [
            ("network.timeout.tcp", self.timeouts.tcp),
            ("network.timeout.http", self.timeouts.http),
            ("network.timeout.idle", self.timeouts.idle),
            ("network.timeout.handshake", self.timeouts.handshake),
        ] {
            if d.is_zero() {
                return bad(key, "must be longer than 0s".into());
            }
        }
        if self.domain_fronting.port == 0 {
            return bad("domain-fronting.port", "port 0 is not allowed".into());
        }
        let ar = &self.anti_replay;
        if !(1024..=1 << 30).contains(&ar.max_size) {
            return bad(
                "defense.anti-replay.max-size",
                format!("{} bytes is out of range (1KiB..=1GiB)", ar.max_size),
            );
        }
        if !(ar.error_rate > 0.0 && ar.error_rate < 1.0) {
            return bad(
                "defense.anti-replay.error-rate",
                format!(
                    "{} is out of range (between 0 and 1, e.g. 0.001)",
                    ar.error_rate
                ),
            );
        }
        if self.keep_alive.count == 0 || self.keep_alive.count > 1000 {
            return bad(
                "network.keep-alive.count",
                format!("{} is out of range (1..=1000)", self.keep_alive.count),
            );
        }
        for (dc, addrs) in &self.dc_overrides {
            if *dc == 0 {
                return bad("network.dc-overrides", "DC 0 does not exist".into());
            }
            if addrs.is_empty() {
                return bad(
                    &format!("network.dc-overrides.{dc}"),
                    "needs at least one IP:port address".into(),
                );
            }
            if addrs.len() > crate::proto::dc::MAX_DC_ADDRS {
                return bad(
                    &format!("network.dc-overrides.{dc}"),
                    format!(
                        "{} addresses; at most {}",
                        addrs.len(),
                        crate::proto::dc::MAX_DC_ADDRS
                    ),
                );
            }
        }
        if self.statsd.enabled && self.statsd.address.is_none() {
            return bad(
                "stats.statsd.address",
                "is required when stats.statsd is enabled".into(),
            );
        }
        if self.prometheus.enabled && self.prometheus.bind_to.is_none() {
            return bad(
                "stats.prometheus.bind-to",
                "is required when stats.prometheus is enabled".into(),
            );
        }
        Ok(())
    }
}

/// Why a config was refused. Display: `file:line: key: what is wrong` (missing parts omitted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, when loaded from one.
    pub file: Option<String>,
    /// 1-based line of the offending key or syntax, when known.
    pub line: Option<usize>,
    /// The dotted key at fault (`network.timeout.tcp`), when there is one.
    pub key: Option<String>,
    /// What is wrong.
    pub msg: String,
}

impl ConfigError {
    fn at(key: Option<&str>, line: Option<usize>, msg: String) -> ConfigError {
        ConfigError {
            file: None,
            line,
            key: key.map(str::to_string),
            msg,
        }
    }

    fn new(key: Option<&str>, msg: String) -> ConfigError {
        ConfigError {
            file: None,
            line: None,
            key: key.map(str::to_string),
            msg,
        }
    }
}

fn write_location(
    f: &mut fmt::Formatter<'_>,
    file: &Option<String>,
    line: Option<usize>,
) -> fmt::Result {
    match (file, line) {
        (Some(file), Some(line)) => write!(f, "{file}:{line}: "),
        (Some(file), None) => write!(f, "{file}: "),
        (None, Some(line)) => write!(f, "line {line}: "),
        (None, None) => Ok(()),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ConfigError {}

/// What a [`Warning`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// A key mtpx does not know (a typo?); ignored.
    UnknownKey,
    /// A key mtpx accepts but does not implement yet; ignored.
    NotImplemented,
    /// A setting mtpx cannot apply as written; the message says what it does instead.
    Fallback,
    /// A deprecated mtg key; still applied.
    Deprecated,
    /// A key that mtg ignores too.
    Ignored,
}

/// A non-fatal remark about the config. Display: `file:line: key: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// What the warning is about.
    pub kind: WarningKind,
    /// The config file, when loaded from one.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted key (or feature) concerned.
    pub key: String,
    /// The explanation.
    pub msg: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line)?;
        write!(f, "{}: {}", self.key, self.msg)
    }
}

/// Largest config or users file read.
const MAX_FILE: u64 = 16 << 20;

/// Reads a text file of at most `max` bytes (config, users and state files).
pub(crate) fn read_small(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind::InvalidData, Read as _};
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(InvalidData, "the file is too large"));
    }
    String::from_utf8(bytes).map_err(|_| Error::new(InvalidData, "not UTF-8 text"))
}

/// Reads a config or users file of at most [`MAX_FILE`] bytes.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    read_small(path, MAX_FILE)
        .map_err(|e| ConfigError::at(None, None, format!("cannot read the file: {e}")))
}

/// What one file gave: the config (`None` for a users file), its warnings, and its users with
/// where each was defined.
struct Parsed {
    config: Option<Config>,
    warnings: Vec<Warning>,
    users: Vec<UserSpec>,
    origins: Vec<Origin>,
}

/// Reads and parses the config file (`users_only`: a users file) at `path`; the file's name
/// goes into every error, warning and origin.
#[inline(never)]
fn parse_file(path: &Path, users_only: bool) -> Result<Parsed, ConfigError> {
    let name = path.display().to_string();
    let mut p = read_text(path)
        .and_then(|t| parse_doc(&t, users_only))
        .map_err(|mut e| {
            e.file.get_or_insert_with(|| name.clone());
            e
        })?;
    for w in &mut p.warnings {
        w.file = Some(name.clone());
    }
    for o in &mut p.origins {
        o.file = Some(name.clone());
    }
    Ok(p)
}

/// Reads and parses a config file, and the `users-file` it names. Errors and warnings carry
/// the path of the file they are about.
pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
    let Parsed {
        config,
        mut warnings,
        mut users,
        mut origins,
    } = parse_file(path, false)?;
    let Some(mut config) = config else {
        unreachable!("parse_file(_, false) gives a config")
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    config.source = Some(path.to_path_buf());
    config.users_file = config.users_file.map(|f| dir.join(f));
    config.state_dir = Some(config.state_dir.map_or(dir.clone(), |d| dir.join(d)));
    if let Some(file) = &config.users_file {
        let more = parse_file(file, true)?;
        warnings.extend(more.warnings);
        users.extend(more.users);
        origins.extend(more.origins);
        check_users(&users, &origins).map_err(|mut e| {
            e.file.get_or_insert_with(|| path.display().to_string());
            e
        })?;
        config.secret = users[0].secret.clone();
        config.users = users;
    }
    Ok((config, warnings))
}

/// Parses config text: the typed config and the warnings (unknown, deprecated and not yet
/// implemented keys), sorted by line. A `users-file` it names is not read (see [`load`]); a
/// config whose only users would come from there is refused.
pub fn parse(text: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
    let p = parse_doc(text, false)?;
    match p.config {
        Some(c) if !p.origins.is_empty() => Ok((c, p.warnings)),
        _ => Err(ConfigError::new(
            Some("users-file"),
            "is only read from a config file (mtpx run/access/users); this text defines no user"
                .into(),
        )),
    }
}

/// The smallest key that only one of two maps has (the first of their symmetric difference).
/// Without building sets: collecting keys into a `BTreeSet` links a copy of std's stable sort
/// (4 KiB of the static binary).
fn first_disagreement<'a, A, B>(
    a: &'a std::collections::BTreeMap<String, A>,
    b: &'a std::collections::BTreeMap<String, B>,
) -> Option<&'a String> {
    let only_a = a.keys().find(|k| !b.contains_key(*k));
    let only_b = b.keys().find(|k| !a.contains_key(*k));
    only_a.into_iter().chain(only_b).min()
}

/// The TOML document of `text`, checked against the pre-pass, and its `users` items.
fn read_doc(text: &str) -> Result<(Doc, Vec<UserItem>), ConfigError> {
    let pre = prepass(text)?;
    let map = TomlParser::parse(&pre.out).map_err(|e| ConfigError {
        file: None,
        line: Some(e.line + 1),
        key: None,
        msg: format!("invalid TOML: {}", e.msg.trim()),
    })?;
    // The pre-pass and nanoserde must agree on the key set; anything else is a parser bug that
    // would give silently wrong values.
    if let Some(k) = first_disagreement(&map, &pre.keys) {
        return Err(ConfigError {
            file: None,
            line: pre.keys.get(k).copied(),
            key: Some(k.clone()),
            msg: "the TOML parser cannot read this key reliably; please simplify it".into(),
        });
    }
    let doc = Doc {
        map,
        lines: pre.keys,
        used: BTreeSet::new(),
        warnings: pre.warnings,
    };
    Ok((doc, pre.users))
}

/// Parses a config (or, `users_only`, a users file's) text. A config's `users` are all its
/// users (the top-level secret's `default` included) even when its `users` field stays empty
/// (a single-secret config).
fn parse_doc(text: &str, users_only: bool) -> Result<Parsed, ConfigError> {
    let (mut doc, items) = read_doc(text)?;
    let (config, users, origins) = if users_only {
        let mut users = Vec::new();
        let mut origins = Vec::new();
        for (spec, line, secret_line) in doc.users(&items)? {
            users.push(spec);
            origins.push(Origin {
                file: None,
                line,
                secret_line,
                top: false,
            });
        }
        (None, users, origins)
    } else {
        let (config, origins) = doc.build(&items)?;
        if let Err(mut e) = config.validate() {
            e.line = e.key.as_ref().and_then(|k| doc.line(k));
            return Err(e);
        }
        let users = if origins.is_empty() {
            Vec::new()
        } else {
            config.user_specs()
        };
        (Some(config), users, origins)
    };
    doc.finish();
    let mut warnings = doc.warnings;
    crate::proto::sort_small_by_key(&mut warnings, |w| w.line.unwrap_or(usize::MAX));
    Ok(Parsed {
        config,
        warnings,
        users,
        origins,
    })
}

/// Parses the text of a `users-file`: `[users.NAME]` tables (see `config.example`), each with
/// the line of its table and of its `secret`. Other keys are warned about and ignored.
pub fn parse_users_text(text: &str) -> Result<(Vec<ListedUser>, Vec<Warning>), ConfigError> {
    let p = parse_doc(text, true)?;
    let listed = p
        .users
        .into_iter()
        .zip(p.origins)
        .map(|(u, o)| (u, o.line, o.secret_line))
        .collect();
    Ok((listed, p.warnings))
}

#[cfg(test)]
mod tests {
    use super::keys::check_dns;
    use super::*;

    #[test]
    fn first_disagreement_is_the_first_of_the_symmetric_difference() {
        use crate::proto::Rng as _;
        let mut rng = crate::proto::XorShift64(5);
        for _ in 0..500 {
            let mut a = std::collections::BTreeMap::new();
            let mut b = std::collections::BTreeMap::new();
            for _ in 0..rng.below(8) {
                a.insert(format!("k{}", rng.below(10)), ());
            }
            for _ in 0..rng.below(8) {
                b.insert(format!("k{}", rng.below(10)), 0u8);
            }
            let sa: BTreeSet<&String> = a.keys().collect();
            let sb: BTreeSet<&String> = b.keys().collect();
            let want = sa.symmetric_difference(&sb).next().copied();
            assert_eq!(first_disagreement(&a, &b), want, "{a:?} {b:?}");
        }
    }
    use crate::proto::secret::SecretKind;

    const SECRET_B64: &str = "7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t";
    const BASE: &str =
        "secret = \"7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t\"\nbind-to = \"0.0.0.0:443\"\n";

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/data/config/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ok(text: &str) -> (Config, Vec<Warning>) {
        parse(text).unwrap_or_else(|e| panic!("unexpected error: {e}\n--- config ---\n{text}"))
    }

    fn with(extra: &str) -> String {
        format!("{BASE}{extra}")
    }

    fn err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_mtg_minimal_fixtures() {
        let (c, w) = ok(&fixture("config-minimal.toml"));
        assert_eq!(c.secret.to_base64(), SECRET_B64);
        assert_eq!(c.bind_to, "0.0.0.0:3128".parse().unwrap());
        assert_eq!((c.public_ipv4, c.public_ipv6), (None, None));
        assert!(w.is_empty(), "{w:?}");

        let (c, _) = ok(&fixture("utils-minimal.toml"));
        assert_eq!(c.bind_to, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.secret.to_base64(), "7mqFMMq3P2Tvvt_rPx5qhmFnb29nbGUuY29t");
    }

    #[test]
    fn accepts_mtg_public_ip_fixtures() {
        let (c, _) = ok(&fixture("config-public_ip.toml"));
        assert_eq!(c.public_ipv4, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!(c.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        let (c, _) = ok(&fixture("config-public_ip_v4_only.toml"));
        assert_eq!(c.public_ipv4, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!(c.public_ipv6, None);
    }

    #[test]
    fn rejects_mtg_bad_fixtures_naming_key_and_line() {
        let e = err(&fixture("config-only_secret.toml"));
        assert_eq!(e.key.as_deref(), Some("bind-to"));
        let e = err(&fixture("config-public_ip_invalid.toml"));
        assert_eq!(e.key.as_deref(), Some("public-ipv4"));
        assert_eq!(e.line, Some(3));
        assert_eq!(
            e.to_string(),
            "line 3: public-ipv4: \"not-an-ip\" is not an IPv4 address"
        );
        let e = err(&fixture("config-broken.toml"));
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("s")));
        let e = err(&fixture("utils-broken.toml"));
        assert_eq!(e.line, Some(1));
        let e = err(&fixture("utils-empty.toml"));
        assert_eq!(e.key.as_deref(), Some("secret"));
        let e = err(&fixture("utils-missed-bindto.toml"));
        assert_eq!(e.key.as_deref(), Some("bind-to"));
        let e = err(&fixture("utils-missed-secret.toml"));
        assert_eq!(e.key.as_deref(), Some("secret"));
    }

    #[test]
    fn mtg_example_config_parses_without_warnings() {
        let (c, w) = ok(&fixture("mtg-example.toml"));
        // Every section is implemented, DoH included.
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.nameserver(),
            Some(Nameserver {
                addr: "1.1.1.1:443".parse().unwrap(),
                transport: Transport::Https("/dns-query".into())
            })
        );
        assert!(c.debug);
        assert_eq!(c.secret.kind, SecretKind::FakeTls);
        assert_eq!(c.secret.host, "storage.googleapis.com");
        assert_eq!(c.tolerate_time_skewness, Duration::from_secs(5));
        assert_eq!(c.timeouts.tcp, Duration::from_secs(5));
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(c.anti_replay.max_size, 1 << 20);
        assert_eq!(
            c.blocklist.urls,
            ["https://iplists.firehol.org/files/firehol_level1.netset"]
        );
        assert_eq!(
            c.prometheus.bind_to,
            Some("127.0.0.1:3129".parse().unwrap())
        );
    }

    #[test]
    fn every_mtg_key_is_accepted_and_typed() {
        let (c, w) = ok(&fixture("mtg-all-keys.toml"));
        assert!(w.iter().all(|w| w.kind != WarningKind::UnknownKey), "{w:?}");
        let deprecated: Vec<&str> = w
            .iter()
            .filter(|w| w.kind == WarningKind::Deprecated)
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(
            deprecated,
            [
                "domain-fronting-port",
                "domain-fronting-ip",
                "domain-fronting-proxy-protocol",
                "network.doh-ip"
            ]
        );
        // Each not-implemented feature is reported exactly once.
        let ni: Vec<&str> = w
            .iter()
            .filter(|w| w.kind == WarningKind::NotImplemented)
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(ni, ["defense.doppelganger.urls"]);
        assert!(!w.iter().any(|w| w.kind == WarningKind::Fallback), "{w:?}");
        assert_eq!(c.bind_to, "[::]:3128".parse().unwrap());
        assert!(c.proxy_protocol_listener && c.auto_update && c.allow_fallback_on_unknown_dc);
        assert_eq!(c.concurrency, 100);
        assert_eq!(c.prefer_ip, PreferIp::parse("only-ipv4").unwrap());
        // New-style ip wins; the deprecated port applies; proxy-protocol is OR-ed.
        assert_eq!(
            c.domain_fronting,
            DomainFronting {
                ip: Some("10.0.0.11".parse().unwrap()),
                port: 8443,
                proxy_protocol: true
            }
        );
        assert_eq!(c.tolerate_time_skewness, Duration::from_secs(90));
        assert_eq!(c.dns.as_deref(), Some("https://9.9.9.9"));
        assert_eq!(
            c.proxies,
            ["socks5://user:pass@127.0.0.1:1080", "socks5h://127.0.0.1"]
        );
        assert_eq!(
            c.timeouts,
            Timeouts {
                tcp: Duration::from_secs(3),
                http: Duration::from_secs(4),
                idle: Duration::from_secs(120),
                handshake: Duration::from_secs(7)
            }
        );
        assert_eq!(
            c.keep_alive,
            KeepAlive {
                disabled: true,
                idle: Duration::from_secs(20),
                interval: Duration::from_secs(5),
                count: 3
            }
        );
        assert_eq!(c.doppelganger.repeats_per_raid, 5);
        assert!(c.doppelganger.drs);
        assert_eq!(
            c.anti_replay,
            AntiReplay {
                enabled: false,
                max_size: 16 << 20,
                error_rate: 0.01
            }
        );
        assert_eq!(c.blocklist.download_concurrency, 4);
        assert_eq!(c.allowlist.update_each, Duration::from_secs(3600));
        assert_eq!(c.statsd.tag_format, TagFormat::Graphite);
        assert_eq!(c.statsd.metric_prefix, "proxy");
        assert_eq!(c.prometheus.http_path, "/metrics");
    }

    #[test]
    fn concurrency_per_ip_is_read_and_defaults_to_a_share_of_concurrency() {
        let (c, w) = ok(&format!("{BASE}concurrency = 50\nconcurrency-per-ip = 7\n"));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!((c.concurrency_per_ip, c.per_ip_limit()), (Some(7), 7));
        let (c, _) = ok(&format!("{BASE}concurrency = 50\n"));
        assert_eq!(c.per_ip_limit(), 12);
        let (c, _) = ok(&format!("{BASE}concurrency-per-ip = 0\n"));
        assert_eq!(c.per_ip_limit(), 0, "no limit");
    }

    #[test]
    fn defaults_match_the_struct_documentation() {
        let (c, w) = ok(BASE);
        assert!(w.is_empty());
        assert!(!c.debug);
        assert_eq!(c.workers, default_workers());
        assert!((1..=MAX_WORKERS).contains(&c.workers));
        assert_eq!(c.concurrency, 8192);
        assert_eq!((c.concurrency_per_ip, c.per_ip_limit()), (None, 64));
        assert_eq!((c.buffer_size, c.buffer_count), (16384, 1024));
        assert_eq!(c.prefer_ip, PreferIp::default());
        assert_eq!(c.tolerate_time_skewness, Duration::from_secs(10));
        assert!(!c.allow_fallback_on_unknown_dc);
        assert!(c.anti_replay.enabled);
        assert_eq!(c.anti_replay.max_size, 1 << 20);
        assert_eq!(c.domain_fronting.port, 443);
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(c.log_format, LogFormat::Logfmt);
        assert!(c.dc_overrides.is_empty());
    }

    #[test]
    fn telegram_config_keys_parse_and_default() {
        let (c, _) = ok(BASE);
        assert!(!c.auto_update && c.ad_tag.is_none());
        assert_eq!(c.proxy_config_urls, PROXY_CONFIG_URLS);
        assert!(c.proxy_config_files.is_empty());
        assert_eq!(c.proxy_secret_url, PROXY_SECRET_URL);
        assert_eq!(c.proxy_secret_file, None);
        let (c, w) = ok(&with(
            "auto-update = true\nad-tag = \"00112233445566778899AABBCCDDEEFF\"\n\
             [network]\nproxy-config-urls = [\"http://127.0.0.1:1/a\", \"https://[::1]/b\"]\n\
             proxy-config-files = [\"/var/lib/mtpx/v4\"]\n\
             proxy-secret-url = \"http://127.0.0.1:1/s\"\n\
             proxy-secret-file = \"/var/lib/mtpx/secret\"\n",
        ));
        assert!(c.auto_update);
        assert_eq!(
            c.ad_tag,
            Some([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ])
        );
        assert_eq!(
            c.proxy_config_urls,
            ["http://127.0.0.1:1/a", "https://[::1]/b"]
        );
        assert_eq!(c.proxy_config_files, ["/var/lib/mtpx/v4"]);
        assert_eq!(c.proxy_secret_url, "http://127.0.0.1:1/s");
        assert_eq!(c.proxy_secret_file.as_deref(), Some("/var/lib/mtpx/secret"));
        // Both are implemented: no warning.
        assert!(w.is_empty(), "{w:?}");
        // Files without anything that reads them are pointed out.
        let (_, w) = ok(&with(
            "[network]\nproxy-config-files = [\"/x\"]\nproxy-secret-file = \"/y\"\n",
        ));
        let ignored: Vec<&str> = w
            .iter()
            .filter(|w| w.kind == WarningKind::Ignored)
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(
            ignored,
            ["network.proxy-config-files", "network.proxy-secret-file"]
        );
    }

    #[test]
    fn telegram_config_keys_reject_bad_values_by_name() {
        for (text, key) in [
            ("ad-tag = \"0011\"\n", "ad-tag"),
            ("ad-tag = \"zz112233445566778899aabbccddeeff\"\n", "ad-tag"),
            (
                "ad-tag = \"00112233445566778899aabbccddeeff00\"\n",
                "ad-tag",
            ),
            (
                "[network]\nproxy-config-urls = [\"ftp://x/y\"]\n",
                "network.proxy-config-urls",
            ),
            (
                "[network]\nproxy-config-urls = \"http://x/y\"\n",
                "network.proxy-config-urls",
            ),
            (
                "[network]\nproxy-config-files = [\"\", \"/x\"]\n",
                "network.proxy-config-files",
            ),
            (
                "[network]\nproxy-secret-url = \"x\"\n",
                "network.proxy-secret-url",
            ),
        ] {
            let e = err(&with(text));
            assert_eq!(e.key.as_deref(), Some(key), "{text:?}: {e}");
        }
        let many: String = (0..17)
            .map(|i| format!("\"127.0.0.1:{}\", ", i + 1))
            .collect();
        let e = err(&with(&format!("[network.dc-overrides]\n2 = [{many}]\n")));
        assert_eq!(e.key.as_deref(), Some("network.dc-overrides.2"), "{e}");
    }

    #[test]
    fn mtpx_keys_parse() {
        let (c, w) = ok(&with(
            "workers = 3\nlog-format = \"json\"\n[buffers]\nsize = \"64KiB\"\ncount = 4096\n",
        ));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.workers, 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!((c.buffer_size, c.buffer_count), (65536, 4096));
    }

    #[test]
    fn dc_overrides_accept_single_list_and_negative_ids() {
        let (c, w) = ok(&with(
            "[network.dc-overrides]\n2 = \"127.0.0.1:9443\"\n-2 = [\"10.0.0.1:443\", \"[::1]:443\"]\n203 = ['192.0.2.1:80']\n",
        ));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.dc_overrides,
            vec![
                (
                    -2,
                    vec![
                        "10.0.0.1:443".parse().unwrap(),
                        "[::1]:443".parse().unwrap()
                    ]
                ),
                (2, vec!["127.0.0.1:9443".parse().unwrap()]),
                (203, vec!["192.0.2.1:80".parse().unwrap()]),
            ]
        );
        // A quoted key works the same; "02" and "2" are the same DC.
        let e = err(&with(
            "[network.dc-overrides]\n\"2\" = \"127.0.0.1:1\"\n02 = \"127.0.0.1:2\"\n",
        ));
        assert!(e.msg.contains("twice"), "{e}");
        let e = err(&with("[network.dc-overrides]\n2 = \"localhost:443\"\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("network.dc-overrides.2"))
        );
        let e = err(&with("[network.dc-overrides]\n2 = []\n"));
        assert!(e.msg.contains("at least one"), "{e}");
        let e = err(&with("[network.dc-overrides]\nx = \"127.0.0.1:1\"\n"));
        assert!(e.msg.contains("not a DC id"), "{e}");
        let e = err(&with("[network.dc-overrides]\n0 = \"127.0.0.1:1\"\n"));
        assert!(e.msg.contains("not a DC id"), "{e}");
        let e = err(&with("[network.dc-overrides]\n40000 = \"127.0.0.1:1\"\n"));
        assert!(e.msg.contains("not a DC id"), "{e}");
    }

    #[test]
    fn error_messages_name_file_line_key_and_problem() {
        let text = with("\n[network]\n\n[network.timeout]\ntcp = \"5x\"\n");
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "line 7: network.timeout.tcp: \"5x\" is not a duration (use 500ms, 5s, 1m30s)"
        );
        let dir = std::env::temp_dir().join(format!("mtpx-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, &text).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:7: network.timeout.tcp: \"5x\" is not a duration (use 500ms, 5s, 1m30s)",
                path.display()
            )
        );
        let e = load(&dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn type_and_range_errors() {
        let cases: [(&str, &str, &str); 17] = [
            ("debug = \"yes\"", "debug", "not a boolean"),
            ("concurrency = 0", "concurrency", "out of range"),
            ("concurrency = 1.5", "concurrency", "whole number"),
            ("concurrency = -4", "concurrency", "whole number"),
            ("workers = 0", "workers", "out of range"),
            ("workers = 300", "workers", "out of range"),
            ("prefer-ip = \"ipv5\"", "prefer-ip", "prefer-ipv6"),
            ("public-ipv6 = \"1.2.3.4\"", "public-ipv6", "IPv6"),
            (
                "tolerate-time-skewness = 5",
                "tolerate-time-skewness",
                "\"5s\"",
            ),
            (
                "tolerate-time-skewness = \"0s\"",
                "tolerate-time-skewness",
                "out of range",
            ),
            ("log-format = \"xml\"", "log-format", "logfmt or json"),
            ("[buffers]\nsize = \"1KiB\"", "buffers.size", "out of range"),
            (
                "workers = 8\n[buffers]\ncount = 10",
                "buffers.count",
                "at least 2 per worker",
            ),
            (
                "[buffers]\nsize = \"1MiB\"\ncount = 4097",
                "buffers.count",
                "4097 buffers of 1048576 bytes are 4097 MiB",
            ),
            (
                "[defense.anti-replay]\nerror-rate = 2",
                "defense.anti-replay.error-rate",
                "between 0 and 1",
            ),
            (
                "[domain-fronting]\nport = 70000",
                "domain-fronting.port",
                "too large",
            ),
            (
                "[network]\nproxies = [\"http://x\"]",
                "network.proxies",
                "SOCKS5",
            ),
        ];
        for (extra, key, needle) in cases {
            let e = err(&with(extra));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
            assert!(e.line.is_some(), "{extra}: {e}");
            assert!(e.msg.contains(needle), "{extra}: {e}");
        }
        let e = err("bind-to = \"0.0.0.0:443\"\nsecret = \"dd00\"\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("secret"), Some(2)));
        let e =
            err("secret = \"7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t\"\nbind-to = \"example.com:443\"");
        assert_eq!((e.key.as_deref(), e.line), (Some("bind-to"), Some(2)));
    }

    #[test]
    fn proxy_credentials_are_never_echoed_in_errors() {
        for url in [
            "alice:hunter2@127.0.0.1:1080",
            "socks5://alice:hunter2@127.0.0.1:0",
        ] {
            let e = err(&with(&format!("[network]\nproxies = [\"{url}\"]")));
            assert_eq!(e.key.as_deref(), Some("network.proxies"), "{e}");
            let text = e.to_string();
            assert!(
                !text.contains("hunter2") && !text.contains("alice"),
                "{text}"
            );
        }
    }

    #[test]
    fn secret_value_is_never_echoed_in_errors() {
        let secret = "ee00000000000000000000000000000000676f6f676c652e636f6d";
        let e = err(&format!("secret = \"{secret}\"\nbind-to = \"0.0.0.0:1\""));
        assert_eq!(e.key.as_deref(), Some("secret"));
        assert!(!e.to_string().contains(secret), "{e}");
    }

    #[test]
    fn unknown_and_ignored_keys_warn() {
        let (_, w) = ok(&with(
            "tcp-buffer = \"4kb\"\nbind_to = \"x\"\n[network]\ntimeouts = 1\n[[x]]\ny = 1\n",
        ));
        let got: Vec<(WarningKind, &str, Option<usize>)> =
            w.iter().map(|w| (w.kind, w.key.as_str(), w.line)).collect();
        assert_eq!(
            got,
            [
                (WarningKind::Ignored, "tcp-buffer", Some(3)),
                (WarningKind::UnknownKey, "bind_to", Some(4)),
                (WarningKind::UnknownKey, "network.timeouts", Some(6)),
                (WarningKind::UnknownKey, "x", Some(7)),
            ]
        );
        assert_eq!(
            w[1].to_string(),
            "line 4: bind_to: unknown key (a typo?); ignored"
        );
    }

    #[test]
    fn keys_after_an_array_table_keep_their_section() {
        // nanoserde alone would file `enabled` into the [[x]] element.
        let (c, _) = ok(&with(
            "[[x]]\na = 1\n[defense.anti-replay]\nenabled = false\n",
        ));
        assert!(!c.anti_replay.enabled);
    }

    #[test]
    fn toml_quirks_are_handled() {
        // Empty strings, literal strings, escapes, comments, arrays of booleans, CRLF,
        // exponent floats, hex ints, quoted keys, inline comments, BOM.
        let text = "\u{feff}# c\r\nsecret = '7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t' # inline\r\n\
                    \"bind-to\" = \"0.0.0.0:\\u0034\\u00343\"\r\n\
                    [network]\r\ndns = \"\"\r\n\
                    [defense.anti-replay]\nerror-rate = 1e-4\nmax-size = 0x10_000\n\
                    [defense.doppelganger]\nurls = [ # none\n  ]\ndrs = false\n\
                    [unknown]\nflags = [true,false]\nname = \"a\\\"b\\\\c\"\n";
        let (c, w) = ok(text);
        assert_eq!(c.bind_to, "0.0.0.0:443".parse().unwrap());
        assert_eq!(
            c.dns.as_deref(),
            Some("").filter(|_| false).or(c.dns.as_deref())
        );
        assert_eq!(c.anti_replay.error_rate, 0.0001);
        assert_eq!(c.anti_replay.max_size, 65536);
        let unknown: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(unknown, ["unknown.flags", "unknown.name"]);
    }

    #[test]
    fn empty_string_does_not_swallow_the_next_line() {
        let (c, w) = ok(
            "public-ipv4 = \"\"\nsecret = \"7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t\"\nbind-to = \"0.0.0.0:443\"\n",
        );
        assert_eq!(c.bind_to.port(), 443);
        assert_eq!(c.public_ipv4, None);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn toml_syntax_errors_are_reported_not_guessed() {
        let cases: [(&str, usize); 10] = [
            ("a = 1 b = 2", 3),
            ("a = \"unterminated", 3),
            ("a = { b = 1 }", 3),
            ("a = \"\"\"x\"\"\"", 3),
            ("a = 5s", 3),
            ("a = 1979-05-27", 3),
            ("[a", 3),
            ("debug = true\ndebug = false", 4),
            ("[x]\n[x]", 4),
            ("a = [1, 2", 3),
        ];
        for (extra, line) in cases {
            let e = err(&with(extra));
            assert_eq!(e.line, Some(line), "{extra}: {e}");
        }
        let e = err(&with("a = \"bad \\q escape\""));
        assert!(e.msg.contains("invalid escape"), "{e}");
    }

    #[test]
    fn deprecated_doh_ip_applies_when_dns_is_absent() {
        let (c, w) = ok(&with("[network]\ndoh-ip = \"2001:db8::53\"\n"));
        assert_eq!(c.dns.as_deref(), Some("https://[2001:db8::53]"));
        assert_eq!(w[0].kind, WarningKind::Deprecated);
        let (c, _) = ok(&with(
            "[network]\ndoh-ip = \"9.9.9.9\"\ndns = \"tls://dns.example\"\n",
        ));
        assert_eq!(c.dns.as_deref(), Some("tls://dns.example"));
    }

    #[test]
    fn dns_uris_map_to_a_server_and_transport() {
        let https = |p: &str| Transport::Https(p.into());
        let cases: [(&str, Option<(&str, Transport)>); 14] = [
            (
                "udp://127.0.0.53",
                Some(("127.0.0.53:53", Transport::Plain)),
            ),
            (
                "udp://127.0.0.1:5353",
                Some(("127.0.0.1:5353", Transport::Plain)),
            ),
            ("udp://[::1]:5353", Some(("[::1]:5353", Transport::Plain))),
            ("udp://[::1]", Some(("[::1]:53", Transport::Plain))),
            ("udp://::1", Some(("[::1]:53", Transport::Plain))),
            ("9.9.9.9", Some(("9.9.9.9:53", Transport::Plain))),
            (
                "2001:db8::53",
                Some(("[2001:db8::53]:53", Transport::Plain)),
            ),
            (
                "https://1.1.1.1",
                Some(("1.1.1.1:443", https("/dns-query"))),
            ),
            (
                "https://1.1.1.1:8443/q?x=1",
                Some(("1.1.1.1:8443", https("/q?x=1"))),
            ),
            (
                "https://[2606:4700::1111]/dns-query",
                Some(("[2606:4700::1111]:443", https("/dns-query"))),
            ),
            ("tls://9.9.9.9", Some(("9.9.9.9:853", Transport::Tls))),
            (
                "tls://[2620:fe::fe]:8853",
                Some(("[2620:fe::fe]:8853", Transport::Tls)),
            ),
            // A host name: /etc/resolv.conf.
            ("https://cloudflare-dns.com/dns-query", None),
            ("tls://dns.quad9.net:853", None),
        ];
        for (uri, want) in cases {
            let want = want.map(|(a, transport)| Nameserver {
                addr: a.parse().unwrap(),
                transport,
            });
            assert_eq!(dns_server(uri), want, "{uri}");
            assert!(check_dns(uri).is_some(), "{uri}");
        }
        for bad in [
            "udp://dns.example",
            "udp://1.2.3.4:0",
            "udp://",
            "dns.example",
        ] {
            assert_eq!(check_dns(bad), None, "{bad}");
        }
    }

    #[test]
    fn dns_by_host_name_warns_once_with_what_happens_instead() {
        let warned = |dns: &str| {
            let (c, w) = ok(&with(&format!("[network]\ndns = \"{dns}\"\n")));
            assert!(w.len() <= 1, "{w:?}");
            (c.nameserver(), w.first().map(|w| (w.kind, w.to_string())))
        };
        for fine in [
            "udp://127.0.0.1:5353",
            "127.0.0.1",
            "tls://[2620:fe::fe]:853",
            "https://1.1.1.1",
        ] {
            assert_eq!(warned(fine).1, None, "{fine}");
        }
        let (server, w) = warned("https://cloudflare-dns.com/dns-query");
        assert_eq!(server, None);
        let (kind, msg) = w.unwrap();
        assert_eq!(kind, WarningKind::Fallback);
        assert!(
            msg.starts_with("line 4: network.dns: \"https://cloudflare-dns.com/dns-query\" names the DNS server by a host name"),
            "{msg}"
        );
        assert!(
            msg.contains("asking the nameservers in /etc/resolv.conf instead"),
            "{msg}"
        );
        // The deprecated doh-ip still applies (as DoH to that address), with its warning.
        let (c, w) = ok(&with("[network]\ndoh-ip = \"9.9.9.9\"\n"));
        assert_eq!(
            c.nameserver().map(|n| n.addr),
            Some("9.9.9.9:443".parse().unwrap())
        );
        let kinds: Vec<_> = w.iter().map(|w| (w.kind, w.key.as_str())).collect();
        assert_eq!(kinds, [(WarningKind::Deprecated, "network.doh-ip")]);
    }

    #[test]
    fn sizes_are_base_1024_and_case_insensitive() {
        let b = |s| parse_bytes(s);
        assert_eq!(b("1MiB"), Some(1 << 20));
        assert_eq!(b("1mb"), Some(1 << 20));
        assert_eq!(b("16KB"), Some(16 << 10));
        assert_eq!(b("4kb"), Some(4096));
        assert_eq!(b("512k"), Some(512 << 10));
        assert_eq!(b("1.5 KiB"), Some(1536));
        assert_eq!(b("100"), Some(100));
        assert_eq!(b("2g"), Some(2 << 30));
        for bad in ["", "mb", "1xb", "1.", ".5k", "-1k", "99999999999999tb"] {
            assert_eq!(b(bad), None, "{bad}");
        }
    }

    #[test]
    fn simple_config_validates() {
        let secret = Secret::parse(SECRET_B64).unwrap();
        let c = Config::simple("127.0.0.1:443".parse().unwrap(), secret);
        assert!(c.validate().is_ok());
        let mut bad = c.clone();
        bad.workers = 0;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "workers: 0 is out of range (1..=256)"
        );
    }

    const EXAMPLE: &str = include_str!("../../config.example");

    fn example_with_secret() -> String {
        let line = EXAMPLE
            .lines()
            .find(|l| l.starts_with("secret = "))
            .expect("config.example has a secret line");
        EXAMPLE.replace(line, &format!("secret = \"{SECRET_B64}\""))
    }

    #[test]
    fn config_example_placeholder_is_refused_with_a_hint() {
        let e = err(EXAMPLE);
        assert_eq!(e.key.as_deref(), Some("secret"));
        assert!(e.to_string().contains("mtpx generate-secret"), "{e}");
    }

    #[test]
    fn config_example_documents_the_real_defaults() {
        let (c, w) = ok(&example_with_secret());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.bind_to, "0.0.0.0:443".parse().unwrap());
        let defaults = Config::simple(c.bind_to, c.secret.clone());
        assert_eq!(format!("{c:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn shaping_keys_parse_and_bad_values_name_the_key() {
        let base = "secret = \"ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d\"\n\
                    bind-to = \"127.0.0.1:3128\"\n[defense.doppelganger]\n";
        let (c, w) = ok(&format!(
            "{base}delays = true\ndelay-shape = 0.5\ndelay-scale = \"2.5ms\"\nmin-rate = \"1MiB\"\n"
        ));
        assert!(w.is_empty(), "{w:?}");
        let d = &c.doppelganger;
        assert!(d.delays);
        assert_eq!(d.delay_shape, 0.5);
        assert_eq!(d.delay_scale, Duration::from_micros(2500));
        assert_eq!(d.min_rate, 1 << 20);
        let (c, _) = ok(&format!("{base}min-rate = 0\n"));
        assert_eq!(c.doppelganger.min_rate, 0);
        assert!(c.doppelganger.post_quantum, "mirror by default");
        let (c, w) = ok(&format!("{base}post-quantum = \"off\"\n"));
        assert!(w.is_empty() && !c.doppelganger.post_quantum, "{w:?}");
        let (c, _) = ok(&format!("{base}post-quantum = \"mirror\"\n"));
        assert!(c.doppelganger.post_quantum);
        let top = base.replace("[defense.doppelganger]\n", "[stats]\nja4-top = 3\n");
        assert_eq!(ok(&top).0.ja4_top, 3);
        let e = parse(&top.replace("= 3", "= 257"))
            .expect_err("257")
            .to_string();
        assert!(e.contains("stats.ja4-top"), "{e}");
        assert!(!c.doppelganger.delays);
        for (bad, key) in [
            ("delay-shape = 0", "delay-shape"),
            ("delay-shape = -1.5", "delay-shape"),
            ("delay-shape = \"fast\"", "delay-shape"),
            ("delay-scale = \"0s\"", "delay-scale"),
            ("delay-scale = \"2\"", "delay-scale"),
            ("min-rate = \"lots\"", "min-rate"),
            ("delays = \"yes please\"", "delays"),
            ("post-quantum = \"on\"", "post-quantum"),
            ("post-quantum = true", "post-quantum"),
        ] {
            let e = parse(&format!("{base}{bad}\n")).expect_err(bad).to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn config_example_lists_every_key() {
        let mut keys: Vec<String> = prepass(&fixture("mtg-all-keys.toml"))
            .unwrap()
            .keys
            .into_keys()
            .collect();
        keys.extend(
            [
                "workers",
                "log-format",
                "buffers.size",
                "buffers.count",
                "network.dns",
                "defense.doppelganger.delays",
                "defense.doppelganger.delay-shape",
                "defense.doppelganger.delay-scale",
                "defense.doppelganger.min-rate",
                "defense.doppelganger.post-quantum",
                "stats.ja4-top",
                "ad-tag",
                "network.proxy-config-urls",
                "network.proxy-config-files",
                "network.proxy-secret-url",
                "network.proxy-secret-file",
            ]
            .map(String::from),
        );
        for key in keys {
            let last = key.rsplit('.').next().unwrap_or(&key);
            let set = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.contains(&format!("{last} ="))
                    || l.contains(&format!("{last},"))
                    || l.ends_with(last)
            });
            assert!(set, "config.example does not mention {key}");
        }
    }

    /// Every prefix and every single-byte corruption of a valid config gives Ok or an error,
    /// never a panic; errors always carry a line or a key.
    #[test]
    fn garbage_and_truncation_never_panic() {
        let full = fixture("mtg-all-keys.toml");
        let mut rng = crate::proto::XorShift64(7);
        for end in 0..=full.len() {
            if let Some(prefix) = full.get(..end) {
                if let Err(e) = parse(prefix) {
                    assert!(e.line.is_some() || e.key.is_some(), "{e}");
                }
            }
        }
        let noise = b"[]\"'=#.,\n\\{}-0a \t\r\x00\xff";
        let mut bytes = full.clone().into_bytes();
        for _ in 0..3000 {
            let i = (rng.next_u64() as usize) % bytes.len();
            let old = bytes[i];
            bytes[i] = noise[(rng.next_u64() as usize) % noise.len()];
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Err(e) = parse(text) {
                    assert!(e.line.is_some() || e.key.is_some(), "{e}");
                }
            }
            if rng.next_u64() % 2 == 0 {
                bytes[i] = old;
            }
        }
    }
}
