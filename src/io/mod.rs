//! The reactor: worker threads, each with its own mio `Poll`, connection slab and buffer pool.
//!
//! I/O layer: the only part of mtpx that touches sockets, threads and the clock (with
//! [`crate::sys`] for the few calls std and mio lack). Protocol decisions are made by
//! [`crate::proto`]; [`conn`] glues the two together.

mod conn;
mod pool;
pub(crate) mod stats;
mod timers;
mod worker;

use crate::background::{lists, metrics, resolve, scout};
pub use stats::Stats;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::config::Config;
use crate::log::Level;
use crate::proto::Rng;
use crate::proto::dc::DcTable;
use crate::proto::obfs2::AesCtr;
use crate::proto::replay::ReplayFilter;

/// State shared by all workers.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dc: DcTable,
    replay: Option<Mutex<ReplayFilter>>,
    pub(crate) active: AtomicUsize,
    pub(crate) stop: AtomicBool,
    pub(crate) grace: Duration,
    pub(crate) stats: Arc<Stats>,
    /// Addresses of the fronting site (refreshed in the background for a host name).
    front_addrs: Mutex<Vec<SocketAddr>>,
    /// Send a PROXY v2 header to the fronting site.
    pub(crate) front_proxy_protocol: bool,
    /// Inter-record timing toward FakeTLS clients (`[defense.doppelganger] delays`).
    pub(crate) shaping: Arc<ShapingCell>,
    /// SOCKS5 upstreams toward the DCs (`[network] proxies`), in order.
    pub(crate) socks: Vec<SocksUpstream>,
    /// What the fronting site's TLS first flight looks like (learned by the scout).
    pub(crate) profile: Arc<Mutex<crate::proto::tlsprofile::Profile>>,
    /// IP block/allow lists.
    pub(crate) lists: Arc<lists::Lists>,
}

/// The inter-record timing in force: the configured Weibull parameters, replaced by the ones
/// the scout fits to the site's traffic. Read per shaped record, lock-free (two atomics).
pub struct ShapingCell {
    on: bool,
    min_rate: u64,
    shape: AtomicU64,
    scale_ns: AtomicU64,
}

impl ShapingCell {
    /// From `[defense.doppelganger]`: on with `delays` (FakeTLS secrets only).
    pub fn new(config: &Config) -> ShapingCell {
        let d = &config.doppelganger;
        ShapingCell {
            on: d.delays && config.secret.kind == crate::proto::secret::SecretKind::FakeTls,
            min_rate: d.min_rate,
            shape: AtomicU64::new(d.delay_shape.to_bits()),
            scale_ns: AtomicU64::new(d.delay_scale.as_nanos().min(u128::from(u64::MAX)) as u64),
        }
    }

    /// The shaping to apply now, if on.
    pub fn get(&self) -> Option<crate::proto::shaping::Shaping> {
        if !self.on {
            return None;
        }
        let (k, scale) = self.params();
        crate::proto::shaping::Shaping::new(k, scale, self.min_rate)
    }

    /// The Weibull parameters `(k, λ)` in force.
    pub fn params(&self) -> (f64, Duration) {
        let k = f64::from_bits(self.shape.load(Ordering::Relaxed));
        (
            k,
            Duration::from_nanos(self.scale_ns.load(Ordering::Relaxed)),
        )
    }

    /// Installs fitted parameters (ignored unless valid).
    pub fn set(&self, k: f64, scale: Duration) {
        if crate::proto::shaping::Shaping::new(k, scale, 0).is_some() {
            self.shape.store(k.to_bits(), Ordering::Relaxed);
            self.scale_ns
                .store(scale.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Whether shaping is on.
    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// A SOCKS5 upstream: where it listens, its credentials, and when it last failed.
pub(crate) struct SocksUpstream {
    /// Resolved at start; `None` if its host name could not be resolved.
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) auth: Option<(String, String)>,
    /// Unix milliseconds until which a failure is remembered (tried last until then).
    failed_until: AtomicU64,
}

/// How long a failed SOCKS5 upstream is tried last.
const SOCKS_FAILURE_MEMORY_MS: u64 = 30_000;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// The `k`-th upstream to try: healthy ones in config order, then recently failed ones.
    pub(crate) fn socks_order(&self, k: usize) -> usize {
        let now = unix_ms();
        let healthy = |i: &usize| self.socks[*i].failed_until.load(Ordering::Relaxed) <= now;
        let mut order = (0..self.socks.len()).filter(healthy);
        let mut failed = (0..self.socks.len()).filter(|i| !healthy(i));
        let h = (0..self.socks.len()).filter(healthy).count();
        if k < h {
            order.nth(k).unwrap_or(0)
        } else {
            failed.nth(k - h).unwrap_or(0)
        }
    }

    /// Remembers that upstream `i` failed.
    pub(crate) fn socks_failed(&self, i: usize) {
        if let Some(u) = self.socks.get(i) {
            u.failed_until
                .store(unix_ms() + SOCKS_FAILURE_MEMORY_MS, Ordering::Relaxed);
        }
    }

    /// Whether a client from `ip` may use the proxy (IP allow/block lists).
    pub(crate) fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.lists.admits(ip) == lists::Admit::Ok
    }

    /// The `idx`-th address of the fronting site, if any.
    pub(crate) fn front_addr(&self, idx: usize) -> Option<SocketAddr> {
        match self.front_addrs.lock() {
            Ok(a) => a.get(idx).copied(),
            Err(p) => p.into_inner().get(idx).copied(),
        }
    }

    /// Replaces the fronting site's addresses (after a new resolution).
    pub(crate) fn set_front_addrs(&self, addrs: Vec<SocketAddr>) {
        match self.front_addrs.lock() {
            Ok(mut a) => *a = addrs,
            Err(p) => *p.into_inner() = addrs,
        }
    }

    /// True if this handshake nonce was seen within the clock-skew window (and records it).
    pub(crate) fn is_replay(&self, digest: &[u8], now_unix: u64) -> bool {
        match &self.replay {
            Some(m) => match m.lock() {
                Ok(mut f) => f.check_and_insert(digest, now_unix),
                Err(poisoned) => poisoned.into_inner().check_and_insert(digest, now_unix),
            },
            None => false,
        }
    }
}

/// A worker's random source: an AES-256-CTR keystream keyed from the operating system's
/// generator and re-keyed every [`RESEED_EVERY`] bytes (the construction of OpenBSD's
/// arc4random). Fake-handshake noise, key shares and frames need a few KiB per connection;
/// a system call for each would dominate the handshake's cost.
#[derive(Default)]
pub(crate) struct FastRng {
    stream: Option<AesCtr>,
    used: usize,
}

/// Bytes produced before the keystream is re-keyed from the OS.
const RESEED_EVERY: usize = 1 << 20;

/// The operating system's random source itself (one system call per `fill`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsRng;

impl Rng for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        OsRng::os_fill(buf);
    }
}

impl OsRng {
    fn os_fill(buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            // The OS random source does not fail on Linux once seeded; if it ever does, a
            // proxy without randomness must not go on.
            crate::log_event!(Level::Error, "fatal", reason = "getrandom failed");
            std::process::abort();
        }
    }
}

impl Rng for FastRng {
    fn fill(&mut self, buf: &mut [u8]) {
        use aes::cipher::{KeyIvInit, StreamCipher};
        if self.stream.is_none() || self.used >= RESEED_EVERY {
            let mut seed = [0u8; 48];
            OsRng::os_fill(&mut seed);
            let key: [u8; 32] = seed[..32].try_into().expect("32 bytes");
            let iv: [u8; 16] = seed[32..].try_into().expect("16 bytes");
            self.stream = Some(AesCtr::new(&key.into(), &iv.into()));
            self.used = 0;
        }
        buf.fill(0);
        if let Some(s) = self.stream.as_mut() {
            s.apply_keystream(buf);
        }
        self.used += buf.len();
    }
}

/// Seconds since the Unix epoch by the system clock.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A running proxy: its workers, its address and its counters.
pub struct Proxy {
    shared: Arc<Shared>,
    services: Vec<metrics::Service>,
    scout: Option<scout::Scout>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Proxy {
    /// The address the proxy listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the IP lists now (what SIGHUP does).
    pub fn reload_lists(&self) {
        self.shared.lists.reload();
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Where the Prometheus endpoint listens, if it runs (the bound address: `bind-to` may
    /// name port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.services.iter().find_map(|s| s.addr)
    }

    /// The inter-record timing in force, `(k, λ)`: configured, or fitted by the scout.
    pub fn shaping(&self) -> (f64, Duration) {
        self.shared.shaping.params()
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets relayed connections finish for up to the grace period, then
    /// closes what is left and joins the workers.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.scout.take() {
            s.stop();
        }
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.lists.stop();
        // After the workers: StatsD's last flush sees every connection's bytes.
        self.services.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds the listener and starts the workers. Returns once the proxy accepts connections.
pub fn start(config: Config) -> io::Result<Proxy> {
    start_with_grace(config, Duration::from_secs(10))
}

/// [`start`] with a chosen shutdown grace period.
pub fn start_with_grace(config: Config, grace: Duration) -> io::Result<Proxy> {
    let listener = mio::net::TcpListener::bind(config.bind_to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", config.bind_to),
        )
    })?;
    let listener: std::net::TcpListener = listener.into();
    let _ = crate::sys::set_listen_backlog(&listener, 4096);
    // Accepted sockets inherit TCP_NODELAY and the keep-alive settings: system calls here
    // instead of per client.
    let _ = crate::sys::set_nodelay(&listener);
    let ka = &config.keep_alive;
    if !ka.disabled {
        if let Err(e) = crate::sys::set_keepalive(&listener, ka.idle, ka.interval, ka.count) {
            crate::log_event!(Level::Warn, "keepalive-not-set", error = e);
        }
    }
    let local_addr = listener.local_addr()?;

    let workers = config.workers.max(1);
    let replay = if config.anti_replay.enabled {
        let mut key = [0u8; 16];
        OsRng::os_fill(&mut key);
        // Remember handshakes for the whole window in which their timestamps stay acceptable:
        // a timestamp up to `tolerance` in the future stays valid until 2 × tolerance later.
        let window = 2 * config.tolerate_time_skewness.as_secs() + 2;
        Some(Mutex::new(ReplayFilter::new(
            config.anti_replay.max_size,
            window,
            key,
        )))
    } else {
        None
    };
    let dc = DcTable::new(config.prefer_ip, &config.dc_overrides);
    let per_worker_conns = config.concurrency + 1;
    let per_worker_bufs = (config.buffer_count / workers).max(2);
    let front_addrs = initial_front_addrs(&config);
    let socks = socks_upstreams(&config);
    let front_proxy_protocol = config.domain_fronting.proxy_protocol;
    let lists = lists::Lists::start(&config);
    let shared = Arc::new(Shared {
        lists,
        front_addrs: Mutex::new(front_addrs),
        front_proxy_protocol,
        shaping: Arc::new(ShapingCell::new(&config)),
        socks,
        profile: Arc::new(Mutex::new(crate::proto::tlsprofile::Profile::default())),
        dc,
        replay,
        active: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        grace,
        stats: Arc::new(Stats::new(workers)),
        config,
    });

    if shared.front_addr(0).is_none() && !shared.config.secret.host.is_empty() {
        spawn_front_resolver(shared.clone());
    }
    let mut wakers = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
        let worker = worker::Worker::new(
            index,
            poll,
            listener.try_clone()?,
            shared.clone(),
            per_worker_conns,
            per_worker_bufs,
        )?;
        let handle = std::thread::Builder::new()
            .name(format!("mtpx-worker-{index}"))
            .spawn(move || worker.run())?;
        wakers.push(waker);
        threads.push(handle);
    }
    // Learn the fronting site's handshake shape (FakeTLS only: other secrets send none).
    let scout = if shared.config.secret.kind == crate::proto::secret::SecretKind::FakeTls
        && shared.config.doppelganger.learn
    {
        let s = shared.clone();
        let d = &shared.config.doppelganger;
        match scout::spawn(
            move || (0..16).map_while(|i| s.front_addr(i)).collect(),
            shared.config.secret.host.clone(),
            d.raid_each,
            d.repeats_per_raid,
            shared.profile.clone(),
            shared.shaping.is_on().then(|| {
                let dns = shared.config.nameserver();
                scout::TimingRaid::new(&d.urls, shared.shaping.clone(), dns)
            }),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::log_event!(Level::Warn, "scout-not-started", error = e);
                None
            }
        }
    } else {
        None
    };
    let source = metrics::MetricsSource {
        secret_kind: shared.config.secret.kind.as_str(),
        stats: shared.stats.clone(),
        lists: Some(shared.lists.clone()),
        active: {
            let weak = Arc::downgrade(&shared);
            Arc::new(move || {
                weak.upgrade()
                    .map_or(0, |s| s.active.load(Ordering::Relaxed))
            })
        },
    };
    let services = metrics::start_services(&shared.config, &source);
    Ok(Proxy {
        services,
        shared,
        scout,
        wakers,
        threads,
        local_addr,
    })
}

/// Parses `[network] proxies` and resolves the upstreams' host names (once, at start).
fn socks_upstreams(config: &Config) -> Vec<SocksUpstream> {
    use crate::proto::socks5::{Target, parse_url};
    let mut out = Vec::new();
    for url in &config.proxies {
        let parsed = match parse_url(url) {
            Ok(p) => p,
            Err(e) => {
                crate::log_event!(Level::Warn, "socks5-url-invalid", error = e);
                continue;
            }
        };
        let addr = match &parsed.server {
            Target::Ip(a) => Some(*a),
            Target::Domain(host, port) => {
                match resolve::resolve(
                    config.nameserver().as_ref(),
                    host,
                    *port,
                    Duration::from_secs(10),
                ) {
                    Ok(a) => a.first().copied(),
                    Err(e) => {
                        crate::log_event!(
                            Level::Warn,
                            "socks5-resolve-failed",
                            host = host,
                            error = e
                        );
                        None
                    }
                }
            }
        };
        out.push(SocksUpstream {
            addr,
            auth: parsed.auth,
            failed_until: AtomicU64::new(0),
        });
    }
    out
}

/// The fronting site's addresses known without a DNS query: `[domain-fronting] ip`, or the
/// secret's host when it is an IP literal or `localhost`. Host names are resolved later.
fn initial_front_addrs(config: &Config) -> Vec<SocketAddr> {
    let port = config.domain_fronting.port;
    if let Some(ip) = config.domain_fronting.ip {
        return vec![SocketAddr::new(ip, port)];
    }
    let host = config.secret.host.as_str();
    if host.is_empty() {
        return Vec::new();
    }
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
        return vec![SocketAddr::new(ip, port)];
    }
    if host.eq_ignore_ascii_case("localhost") {
        return vec![
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
        ];
    }
    Vec::new()
}

/// How often the fronting site's host name is resolved again.
const FRONT_REFRESH: Duration = Duration::from_secs(300);

/// Resolves the fronting site's host name now and every [`FRONT_REFRESH`], on a thread of its
/// own (a DNS query never blocks a worker). Until the first answer, failed handshakes are
/// closed instead of fronted. Ends when the proxy stops.
fn spawn_front_resolver(shared: Arc<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("mtpx-front-dns".into())
        .spawn(move || {
            let host = shared.config.secret.host.clone();
            let port = shared.config.domain_fronting.port;
            let dns = shared.config.nameserver();
            let mut next = std::time::Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                if std::time::Instant::now() >= next {
                    let mut retry = Duration::from_secs(30);
                    match resolve::resolve(dns.as_ref(), &host, port, Duration::from_secs(10)) {
                        Ok(addrs) if !addrs.is_empty() => {
                            retry = FRONT_REFRESH;
                            crate::log_event!(
                                Level::Debug,
                                "fronting-resolved",
                                host = host,
                                addresses = addrs.len()
                            );
                            shared.set_front_addrs(addrs);
                        }
                        Ok(_) => {}
                        Err(e) => crate::log_event!(
                            Level::Warn,
                            "fronting-resolve-failed",
                            host = host,
                            error = e,
                            hint = "set [domain-fronting] ip to skip DNS"
                        ),
                    }
                    next = std::time::Instant::now() + retry;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    if let Err(e) = spawned {
        crate::log_event!(Level::Warn, "fronting-resolver-not-started", error = e);
    }
}

/// Runs the proxy in the foreground until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(config: Config) -> io::Result<()> {
    crate::sys::install_signal_handlers()?;
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) => {
            // Each relayed connection holds two sockets.
            let need = 2 * config.concurrency as u64 + 64;
            if soft < need {
                crate::log_event!(
                    Level::Warn,
                    "fd-limit-low",
                    limit = soft,
                    concurrency = config.concurrency,
                    fits = soft.saturating_sub(64) / 2,
                    hint = "lower concurrency or raise the hard open-files limit"
                );
            }
        }
        Err(e) => crate::log_event!(Level::Warn, "fd-limit-unknown", error = e),
    }
    let secret_kind = config.secret.kind;
    let workers = config.workers;
    let (drs, delays) = (config.doppelganger.drs, ShapingCell::new(&config).is_on());
    let proxy = start(config)?;
    crate::log_event!(
        Level::Info,
        "proxy-started",
        bind = proxy.local_addr(),
        workers = workers,
        secret_kind = secret_kind.as_str(),
        drs = drs,
        delays = delays
    );
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let sig = crate::sys::take_signals();
        if sig & crate::sys::SIG_RELOAD != 0 {
            proxy.reload_lists();
        }
        if sig & crate::sys::SIG_STOP != 0 {
            crate::log_event!(Level::Info, "shutdown-started", active = proxy.active());
            break;
        }
    }
    let stats = proxy.stats();
    proxy.shutdown();
    crate::log_event!(
        Level::Info,
        "proxy-stopped",
        accepted = stats.accepted.load(Ordering::Relaxed),
        handshakes = stats.handshakes.load(Ordering::Relaxed),
        rejected = stats.rejected.load(Ordering::Relaxed),
        bytes_up = stats.bytes_up.load(Ordering::Relaxed),
        bytes_down = stats.bytes_down.load(Ordering::Relaxed)
    );
    Ok(())
}
