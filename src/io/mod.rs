//! The reactor: worker threads, each with its own mio `Poll`, connection slab and buffer pool.
//!
//! I/O layer: the only part of mtpx that touches sockets, threads and the clock (with
//! [`crate::sys`] for the few calls std and mio lack). Protocol decisions are made by
//! [`crate::proto`]; [`conn`] glues the two together.

mod conn;
pub(crate) mod fetch;
mod ja4stats;
pub(crate) mod lists;
pub(crate) mod metrics;
pub mod middle;
mod pool;
pub mod resolve;
pub mod scout;
pub(crate) mod telegram;
mod timers;
mod tls;
mod worker;

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
use crate::proto::replay::ReplayFilter;

/// Counters shared by all workers; touched per connection event, never per packet.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted (within the concurrency limit).
    pub accepted: AtomicU64,
    /// Connections closed at once because `concurrency` was reached.
    pub limited: AtomicU64,
    /// Handshakes that reached the DC-connect stage.
    pub handshakes: AtomicU64,
    /// Handshakes rejected (bad secret, probe, timeout, replay…).
    pub rejected: AtomicU64,
    /// Connections spliced to the fronting site after a failed handshake.
    pub fronted: AtomicU64,
    /// Connections for which no DC address could be reached.
    pub dc_failures: AtomicU64,
    /// Connections closed (for any reason).
    pub closed: AtomicU64,
    /// Fronting addresses refused because they reach mtpx's own listener (at start and
    /// after each resolution of the fronting host).
    pub front_self_loops: AtomicU64,
    /// Payload bytes from clients to DCs (counted when a connection closes).
    pub bytes_up: AtomicU64,
    /// Payload bytes from DCs to clients (counted when a connection closes).
    pub bytes_down: AtomicU64,
}

/// State shared by all workers.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The DC table in force (DC 203 follows Telegram's proxy config with `auto-update`).
    pub(crate) dc: Arc<telegram::LiveDc>,
    /// Telegram's proxy config: its updater and what it published.
    pub(crate) telegram: Arc<telegram::Telegram>,
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
    pub(crate) profile: Arc<Mutex<crate::proto::tlsprofile::Profiles>>,
    /// IP block/allow lists.
    pub(crate) lists: Arc<lists::Lists>,
    /// Counters only the metrics exporters read.
    pub(crate) counters: Arc<metrics::Counters>,
    /// Where this process listens (the proxy, the metrics endpoint): never a fronting target.
    own_listeners: Vec<SocketAddr>,
    /// JA4 fingerprints of the ClientHellos that arrive (`[stats] ja4-top`).
    pub(crate) ja4: Arc<ja4stats::Ja4Stats>,
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
    stream: Option<mtpx_ctr::Stream>,
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
            crate::log::flush();
            std::process::abort();
        }
    }
}

impl Rng for FastRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if self.stream.is_none() || self.used >= RESEED_EVERY {
            let mut seed = [0u8; 48];
            OsRng::os_fill(&mut seed);
            let key: [u8; 32] = seed[..32].try_into().expect("32 bytes");
            let iv: [u8; 16] = seed[32..].try_into().expect("16 bytes");
            // mtpx's own counter mode (crates/ctr-hot): the `ctr` crate's keystream XOR is a
            // byte loop in the size-optimised build, a few µs per fake server flight.
            self.stream = Some(mtpx_ctr::Stream::new(&key, &iv, 0));
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

    /// Reloads the IP lists and Telegram's proxy config now (what SIGHUP does).
    pub fn reload_lists(&self) {
        self.shared.lists.reload();
        self.shared.telegram.reload();
    }

    /// The DC 203 addresses `auto-update` put in force (empty until a config was loaded).
    pub fn cdn_addresses(&self) -> Vec<SocketAddr> {
        self.shared.dc.cdn()
    }

    /// Where the proxy dials DC `dc` now, in order (`None`: unknown DC).
    pub fn dc_addresses(&self, dc: i16) -> Option<Vec<SocketAddr>> {
        self.shared
            .dc
            .lookup_or_fallback(dc, false)
            .map(|(_, a)| a.to_vec())
    }

    /// The middle proxies `(dc, address)` loaded for the ad tag (empty until loaded).
    pub fn middle_proxies(&self) -> Vec<(i16, SocketAddr)> {
        self.shared.telegram.middle_proxies().entries.clone()
    }

    /// The length of the middle proxies' secret loaded for the ad tag, if any.
    pub fn proxy_secret_len(&self) -> Option<usize> {
        self.shared.telegram.proxy_secret().map(|s| s.len())
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

    /// What the scout learned of the fronting site's answer to `kind` of ClientHello.
    pub fn tls_summary(
        &self,
        kind: crate::proto::tlsprofile::HelloKind,
    ) -> crate::proto::tlsprofile::Summary {
        let p = self.shared.profile.lock();
        p.unwrap_or_else(|p| p.into_inner()).get(kind).summary()
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
        self.shared.telegram.stop();
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
    // From here on, a slow stderr must not stall a worker: log lines go through a ring.
    crate::log::start_writer();

    let workers = config.workers.max(1);
    let replay = if config.anti_replay.enabled {
        let mut key = [0u8; 16];
        OsRng::os_fill(&mut key);
        // A FakeTLS hello is remembered for the whole window in which its timestamp stays
        // acceptable (a timestamp up to `tolerance` in the future stays valid until
        // 2 × tolerance later); an obfuscated2 frame (dd, classic) has no timestamp, so it is
        // never forgotten for its age, only to make room.
        let filter = if config.secret.kind == crate::proto::secret::SecretKind::FakeTls {
            let window = 2 * config.tolerate_time_skewness.as_secs() + 2;
            ReplayFilter::new(config.anti_replay.max_size, window, key)
        } else {
            ReplayFilter::capacity_only(config.anti_replay.max_size, key)
        };
        Some(Mutex::new(filter))
    } else {
        None
    };
    let dc = Arc::new(telegram::LiveDc::new(&config));
    let per_worker_conns = config.concurrency + 1;
    let per_worker_bufs = (config.buffer_count / workers).max(2);
    // Never front to ourselves (a loop through the proxy): checked here and after every
    // resolution of the fronting host.
    let stats = Arc::new(Stats::default());
    let own = own_listeners(&config, local_addr);
    let front_configured = initial_front_addrs(&config);
    let front_addrs = drop_self_loops(front_configured.clone(), &own, &stats);
    let socks = socks_upstreams(&config);
    let front_proxy_protocol = config.domain_fronting.proxy_protocol;
    let upstreams: Vec<fetch::Upstream> = socks.iter().map(|u| (u.addr, u.auth.clone())).collect();
    let lists = lists::Lists::start(&config, upstreams.clone());
    let telegram = telegram::Telegram::start(&config, dc.clone(), upstreams);
    let shared = Arc::new(Shared {
        telegram,
        lists,
        counters: Arc::new(metrics::Counters::new(workers)),
        ja4: Arc::new(ja4stats::Ja4Stats::new(config.ja4_top)),
        front_addrs: Mutex::new(front_addrs),
        front_proxy_protocol,
        shaping: Arc::new(ShapingCell::new(&config)),
        socks,
        profile: Arc::new(Mutex::new(crate::proto::tlsprofile::Profiles::new(
            config.doppelganger.post_quantum,
        ))),
        dc,
        replay,
        active: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        grace,
        stats,
        own_listeners: own,
        config,
    });

    if front_configured.is_empty() && !shared.config.secret.host.is_empty() {
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
        ja4: Some(shared.ja4.clone()),
        stats: shared.stats.clone(),
        counters: shared.counters.clone(),
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

/// Why [`socks5_tunnel`] failed: what to say, and the SOCKS5 reply when the upstream refused
/// the CONNECT (its target side, rather than the upstream itself, may be at fault).
#[derive(Debug)]
pub(crate) struct TunnelError(
    pub(crate) String,
    pub(crate) Option<crate::proto::socks5::Socks5Error>,
);

/// A blocking SOCKS5 CONNECT to `target` over `s`, a connection to the upstream at `via` (the
/// sans-IO client over a plain socket), all within `deadline`. For background threads and the
/// CLI, never a worker.
#[inline(never)]
pub(crate) fn socks5_negotiate(
    s: &mut std::net::TcpStream,
    via: SocketAddr,
    auth: Option<(String, String)>,
    target: crate::proto::socks5::Target,
    deadline: std::time::Instant,
) -> Result<(), TunnelError> {
    use crate::proto::socks5::{OUT_MAX, Socks5Client, Step};
    use std::io::{Read, Write};
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let err = |what: &str, e: &dyn std::fmt::Display| {
        TunnelError(format!("{what} the proxy at {via}: {e}"), None)
    };
    let mut client = Socks5Client::new(target, auth);
    let mut out = [0u8; OUT_MAX];
    let n = client.initial(&mut out);
    let _ = s.set_write_timeout(Some(left().max(Duration::from_millis(1))));
    s.write_all(&out[..n])
        .map_err(|e| err("cannot write to", &e))?;
    let mut input = [0u8; 1024];
    let mut have = 0usize;
    loop {
        match client.handle(&input[..have], &mut out) {
            Step::NeedMore => {
                let wait = left();
                if wait.is_zero() {
                    return Err(TunnelError(
                        format!("the proxy at {via} did not answer in time"),
                        None,
                    ));
                }
                if have == input.len() {
                    return Err(TunnelError("oversized reply".into(), None));
                }
                let _ = s.set_read_timeout(Some(wait));
                match s.read(&mut input[have..]) {
                    Ok(0) => {
                        return Err(TunnelError(
                            format!("the proxy at {via} closed the connection"),
                            None,
                        ));
                    }
                    Ok(n) => have += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err("no answer from", &e)),
                }
            }
            Step::Send { consumed, len } => {
                s.write_all(&out[..len])
                    .map_err(|e| err("cannot write to", &e))?;
                let consumed = consumed.min(have);
                input.copy_within(consumed..have, 0);
                have -= consumed;
            }
            Step::Connected { .. } => return Ok(()),
            Step::Failed(e) => {
                return Err(TunnelError(
                    format!("the proxy at {via} answered: {e}"),
                    Some(e),
                ));
            }
        }
    }
}

/// Parses `[network] proxies` and resolves the upstreams' host names (once, at start).
pub(crate) fn socks_upstreams(config: &Config) -> Vec<SocksUpstream> {
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

/// Where this process listens: the proxy's listener (as bound) and the Prometheus endpoint's
/// (when it names a port).
pub(crate) fn own_listeners(config: &Config, proxy: SocketAddr) -> Vec<SocketAddr> {
    let mut own = vec![proxy];
    if config.prometheus.enabled {
        own.extend(config.prometheus.bind_to.filter(|a| a.port() != 0));
    }
    own
}

/// Whether a connection to an address would reach one of `own` listeners
/// ([`crate::proto::fronting::reaches_listener`], with [`is_local_address`] asked afresh:
/// addresses change with DHCP, VPNs...).
pub(crate) fn self_loop_test(own: &[SocketAddr]) -> impl Fn(&SocketAddr) -> bool + '_ {
    move |a| crate::proto::fronting::reaches_listener(*a, own, is_local_address)
}

/// Whether `ip` is one of this host's addresses, as the kernel's routing sees it: a UDP socket
/// "connected" to it (a route lookup; nothing is sent) gets `ip` itself as its source address
/// only when `ip` is local (an interface address, whose route is in the local table).
/// `getifaddrs(3)` tells the same for interface addresses but misses "AnyIP" local routes,
/// needs `unsafe` and costs 1.5 KiB more of static binary (musl's netlink code); binding to
/// `ip` would be wrong with `ip_nonlocal_bind` on.
pub(crate) fn is_local_address(ip: std::net::IpAddr) -> bool {
    let any: SocketAddr = match ip {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect((ip, 9)).and_then(|()| s.local_addr()))
        .is_ok_and(|local| local.ip() == ip)
}

/// The fronting addresses that do not reach one of `own` listeners. Fronting to one of ours
/// would feed a failed handshake back to the proxy, which fronts it again: hundreds of hops
/// for one probe, and every slot taken. Those are dropped (failed handshakes are closed when
/// none is left), with one warning and a count per resolution.
fn drop_self_loops(addrs: Vec<SocketAddr>, own: &[SocketAddr], stats: &Stats) -> Vec<SocketAddr> {
    let (loops, good): (Vec<_>, Vec<_>) = addrs.into_iter().partition(self_loop_test(own));
    if let Some(first) = loops.first() {
        stats
            .front_self_loops
            .fetch_add(loops.len() as u64, Ordering::Relaxed);
        crate::log_event!(
            Level::Warn,
            "fronting-self-loop",
            address = first,
            refused = loops.len(),
            kept = good.len(),
            hint = "the fronting site's address is this proxy's own listener; failed handshakes \
                    are closed instead: set [domain-fronting] ip and port to the real site"
        );
    }
    good
}

/// How often the fronting site's host name is resolved again.
const FRONT_REFRESH: Duration = Duration::from_secs(300);

/// Why accepting must pause for a moment after `e`, if it must: the process or the system is
/// out of descriptors (EMFILE, ENFILE) or of socket memory (ENOBUFS, ENOMEM). Retrying at
/// once would fail again and spin the worker; the connections wait in the backlog meanwhile.
/// Other errors (ECONNABORTED, a reset before accept...) concern one connection only.
pub(crate) fn accept_pause_reason(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some("out of file descriptors"),
        libc::ENOBUFS | libc::ENOMEM => Some("out of memory"),
        _ => None,
    }
}

/// Socket options of a connection to a DC (or to a SOCKS5 upstream toward one): keep-alive
/// as configured (`[network.keep-alive]`), and `TCP_USER_TIMEOUT` ([`dc_user_timeout`]).
pub(crate) fn dc_socket_options(sock: &impl std::os::fd::AsRawFd, config: &Config) {
    let ka = &config.keep_alive;
    if !ka.disabled {
        let _ = crate::sys::set_keepalive(sock, ka.idle, ka.interval, ka.count);
    }
    let _ = crate::sys::set_user_timeout(sock, dc_user_timeout(config));
}

/// How long data sent to a DC may stay unacknowledged before the kernel gives the connection
/// up. Without a limit Linux retransmits for about 15 minutes (`tcp_retries2`), all that time
/// holding the relay's buffers for a DC that is gone. Linux also applies this limit to
/// unanswered keep-alive probes, so with keep-alive on it is the keep-alive detection time,
/// idle + interval × count (2m30s by default): a vanished DC is found as fast whether or not
/// data was in flight. With keep-alive off, the idle timeout: a relay that moves nothing for
/// that long is closed anyway.
pub(crate) fn dc_user_timeout(config: &Config) -> Duration {
    let ka = &config.keep_alive;
    if ka.disabled {
        config.timeouts.idle
    } else {
        ka.idle
            .saturating_add(ka.interval.saturating_mul(ka.count.clamp(1, 127)))
    }
}

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
                            shared.set_front_addrs(drop_self_loops(
                                addrs,
                                &shared.own_listeners,
                                &shared.stats,
                            ));
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
    let pq = if config.doppelganger.post_quantum {
        "mirror"
    } else {
        "off"
    };
    let proxy = start(config)?;
    crate::log_event!(
        Level::Info,
        "proxy-started",
        bind = proxy.local_addr(),
        workers = workers,
        secret_kind = secret_kind.as_str(),
        drs = drs,
        delays = delays,
        post_quantum = pq
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
    crate::log::flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::x25519;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn local_addresses_are_told_by_the_routing_table() {
        // (Loopback only: tests never look up routes toward other hosts.)
        assert!(super::is_local_address([127, 0, 0, 1].into()));
        assert!(super::is_local_address(
            std::net::Ipv6Addr::LOCALHOST.into()
        ));
        // 127.0.0.2 is local too, but its route's source is 127.0.0.1: reaches_listener
        // counts all of 127/8 as local by itself.
        assert!(!super::is_local_address([127, 0, 0, 2].into()));
        // No route at all (a link-local address without an interface): not local.
        assert!(!super::is_local_address("fe80::1".parse().unwrap()));
    }

    #[test]
    fn accept_pauses_on_resource_errors_only() {
        let err = std::io::Error::from_raw_os_error;
        for (code, pause) in [
            (libc::EMFILE, true),
            (libc::ENFILE, true),
            (libc::ENOBUFS, true),
            (libc::ENOMEM, true),
            (libc::ECONNABORTED, false),
            (libc::EPROTO, false),
            (libc::EPERM, false),
        ] {
            assert_eq!(
                super::accept_pause_reason(&err(code)).is_some(),
                pause,
                "{code}"
            );
        }
        let would_block = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        assert_eq!(super::accept_pause_reason(&would_block), None);
    }

    #[test]
    fn dc_sockets_get_keepalive_and_a_user_timeout() {
        let secret = crate::proto::secret::Secret::generate(
            crate::proto::secret::SecretKind::Secure,
            "",
            &mut crate::proto::XorShift64(1),
        );
        let mut config = crate::config::Config::simple(([127, 0, 0, 1], 443).into(), secret);
        config.keep_alive.idle = Duration::from_secs(20);
        config.keep_alive.interval = Duration::from_secs(5);
        config.keep_alive.count = 4;
        config.timeouts.idle = Duration::from_secs(77);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let opt = |s: &std::net::TcpStream, level, name| {
            crate::sys::getsockopt_int(s.as_raw_fd(), level, name)
        };
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        super::dc_socket_options(&s, &config);
        // 20 s + 4 × 5 s, in milliseconds.
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 40_000);
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 20);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
        // Keep-alive off: the idle timeout.
        config.keep_alive.disabled = true;
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        super::dc_socket_options(&s, &config);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 77_000);
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    }

    /// CPU per ServerHello key share: the former linked stream (the previous share times a
    /// random 32-bit scalar), the independent [`x25519::random_share`], and a full key pair.
    #[test]
    #[ignore = "timing printout: cargo test --release --lib key_share_cost -- --ignored --nocapture"]
    fn key_share_cost() {
        let mut rng = super::FastRng::default();
        let n = 2000;
        let (_, mut cur) = x25519::keypair(&mut rng);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let mut k = [0u8; 32];
            crate::proto::Rng::fill(&mut rng, &mut k[..4]);
            k[3] |= 0x80;
            cur = x25519::ladder(&k, 32, &cur);
        }
        let old = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(x25519::random_share(&mut rng));
        }
        let new = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(x25519::keypair(&mut rng));
        }
        let full = t.elapsed() / n;
        eprintln!("per share: linked 32-bit step {old:?}, random_share {new:?}, key pair {full:?}");
    }

    #[test]
    fn fast_rng_is_one_keystream_across_fills_of_any_size() {
        let mut rng = FastRng::default();
        let mut a = vec![0u8; 10_000];
        for chunk in a.chunks_mut(7) {
            rng.fill(chunk);
        }
        assert_eq!(rng.used, 10_000);
        assert_ne!(a[..16], [0u8; 16]);
        // Different fills give different bytes (no repeated keystream).
        let mut b = vec![0u8; 10_000];
        rng.fill(&mut b);
        assert_ne!(a, b);
        let ones = a.iter().map(|x| x.count_ones()).sum::<u32>() as f64 / 80_000.0;
        assert!((0.45..0.55).contains(&ones), "bit balance {ones}");
    }
}
