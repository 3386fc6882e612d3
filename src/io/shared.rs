//! State shared by all workers and the background threads: the config, the DC table, the
//! anti-replay filter, the fronting site's addresses and learned TLS shape, the shaping
//! parameters, SOCKS5 upstreams, IP lists and the counters.
//!
//! What a worker touches here per handshake: the anti-replay filter and the learned TLS shape
//! (one short `Mutex` each), the fronting site's addresses when it fronts (a third); per relay
//! nothing but atomics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Stats;
use super::ja4stats::Ja4Stats;
use super::rng::OsRng;
use crate::background::fetch::Upstream;
use crate::background::lists::{self, Lists};
use crate::background::resolve;
use crate::background::telegram::{LiveDc, Telegram};
use crate::config::Config;
use crate::log::Level;
use crate::proto::Rng;
use crate::proto::faketls::ClientHello;
use crate::proto::handshake::{Datacenters, Hellos, Replay, Shapes};
use crate::proto::replay::ReplayFilter;
use crate::proto::secret::SecretKind;
use crate::proto::tlsprofile::{FlightShape, Profiles};

/// State shared by all workers.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The DC table in force (DC 203 follows Telegram's proxy config with `auto-update`).
    pub(crate) dc: Arc<LiveDc>,
    /// Telegram's proxy config: its updater and what it published.
    pub(crate) telegram: Arc<Telegram>,
    replay: Option<Mutex<ReplayFilter>>,
    pub(crate) active: AtomicUsize,
    /// Unauthenticated connections per source address, the reserve for known clients.
    pub(crate) sources: super::sources::Sources,
    pub(crate) stop: AtomicBool,
    pub(crate) grace: Duration,
    pub(crate) stats: Arc<Stats>,
    /// The fronting sites: the default one (site 0) and one per other FakeTLS host of the
    /// users, with their addresses (refreshed in the background for host names) and shapes.
    pub(crate) sites: super::sites::Sites,
    /// Which user each client address used last (the handshake tries it first).
    pub(crate) recent: crate::proto::users::RecentUsers,
    /// Send a PROXY v2 header to the fronting site.
    pub(crate) front_proxy_protocol: bool,
    /// Inter-record timing toward FakeTLS clients (`[defense.doppelganger] delays`).
    pub(crate) shaping: Arc<ShapingCell>,
    /// SOCKS5 upstreams toward the DCs (`[network] proxies`), in order.
    pub(crate) socks: Vec<SocksUpstream>,
    /// What the fronting site's TLS first flight looks like, per kind of ClientHello (learned
    /// by the scout).
    pub(crate) profile: Arc<Mutex<Profiles>>,
    /// IP block/allow lists.
    pub(crate) lists: Arc<lists::Lists>,
    /// The users in force (swapped by a reload) and their live counters.
    pub(crate) users: Arc<super::users::UsersCell>,
    /// Where this process listens (the proxy, the metrics endpoint): never a fronting target.
    pub(crate) own_listeners: Vec<SocketAddr>,
    /// JA4 fingerprints of the ClientHellos that arrive (`[stats] ja4-top`).
    pub(crate) ja4: Arc<Ja4Stats>,
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
            on: d.delays
                && config
                    .user_specs()
                    .iter()
                    .any(|u| u.secret.kind == SecretKind::FakeTls),
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
    /// The shared state for `config`: DC table, anti-replay filter (keyed from the OS), SOCKS5
    /// upstreams (their host names resolved now), IP lists (their fetcher started), counters
    /// for `config.workers` workers. Spawns no worker.
    /// The shared state for `config` and the proxy listening on `listener`: DC table,
    /// anti-replay filter (keyed from the OS), SOCKS5 upstreams (their host names resolved
    /// now), IP lists (their fetcher started), counters for `config.workers` workers, the
    /// fronting addresses known without DNS (never one of our own listeners). Spawns no worker.
    pub(crate) fn new(config: Config, grace: Duration, listener: SocketAddr) -> Shared {
        let workers = config.workers.max(1);
        let replay = if config.anti_replay.enabled {
            let mut key = [0u8; 16];
            OsRng.fill(&mut key);
            // A FakeTLS hello is remembered for the whole window in which its timestamp stays
            // acceptable (a timestamp up to `tolerance` in the future stays valid until
            // 2 × tolerance later); an obfuscated2 frame (dd, classic) has no timestamp, so it
            // is never forgotten for its age, only to make room.
            // (With FakeTLS users among others, frames are forgotten after the window too.)
            let faketls = config
                .user_specs()
                .iter()
                .any(|u| u.secret.kind == SecretKind::FakeTls);
            let filter = if faketls {
                let window = 2 * config.tolerate_time_skewness.as_secs() + 2;
                ReplayFilter::new(config.anti_replay.max_size, window, key)
            } else {
                ReplayFilter::capacity_only(config.anti_replay.max_size, key)
            };
            Some(Mutex::new(filter))
        } else {
            None
        };
        // Never front to ourselves (a loop through the proxy): checked here and after every
        // resolution of the fronting host.
        let stats = Arc::new(Stats::new(workers));
        let own = own_listeners(&config, listener);
        let front_configured = initial_front_addrs(&config);
        let front_unresolved = front_configured.is_empty();
        let front_addrs = drop_self_loops(front_configured, &own, &stats);
        let profile = Arc::new(Mutex::new(Profiles::new(config.doppelganger.post_quantum)));
        let sites = super::sites::Sites::new(
            &config.secret.host,
            front_addrs,
            front_unresolved && !config.secret.host.is_empty(),
            profile.clone(),
            config.domain_fronting.port,
            config.doppelganger.post_quantum,
        );
        let specs = config.user_specs();
        for u in specs
            .iter()
            .filter(|u| u.secret.kind == SecretKind::FakeTls)
        {
            sites.index(&u.secret.host, |a| drop_self_loops(a, &own, &stats));
        }
        let mut hint_key = [0u8; 16];
        OsRng.fill(&mut hint_key);
        // A few slots per expected client address keeps hints alive.
        let hint_slots = (8 * specs.len()).max(config.concurrency.saturating_mul(2));
        let dc = Arc::new(LiveDc::new(&config));
        let socks = socks_upstreams(&config);
        let upstreams: Vec<Upstream> = socks.iter().map(|u| (u.addr, u.auth.clone())).collect();
        Shared {
            lists: Lists::start(&config, upstreams.clone()),
            users: Arc::new(super::users::UsersCell::new(
                // The config checked its users.
                crate::proto::users::Users::new(specs)
                    .unwrap_or_else(|_| unreachable!("a validated config has valid users")),
                super::unix_now(),
            )),
            telegram: Telegram::start(&config, dc.clone(), upstreams),
            ja4: Arc::new(Ja4Stats::new(config.ja4_top)),
            sites,
            recent: crate::proto::users::RecentUsers::new(hint_slots, hint_key),
            front_proxy_protocol: config.domain_fronting.proxy_protocol,
            shaping: Arc::new(ShapingCell::new(&config)),
            socks,
            profile,
            dc,
            replay,
            active: AtomicUsize::new(0),
            sources: super::sources::Sources::new(
                config.concurrency,
                config.per_ip_limit(),
                std::time::Instant::now(),
            ),
            stop: AtomicBool::new(false),
            grace,
            stats,
            own_listeners: own,
            config,
        }
    }

    /// Replaces fronting site `site`'s addresses after a resolution, minus our own listeners.
    pub(crate) fn set_resolved_front_addrs(&self, site: usize, addrs: Vec<SocketAddr>) {
        let addrs = drop_self_loops(addrs, &self.own_listeners, &self.stats);
        self.sites.set_addrs(site, addrs);
    }

    /// The fronting site of `host` (added if new; `""`: the default site).
    pub(crate) fn site(&self, host: &str) -> usize {
        self.sites.index(host, |a| {
            drop_self_loops(a, &self.own_listeners, &self.stats)
        })
    }
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

/// The shared anti-replay filter, as a handshake consults it (the first of the two locks a
/// handshake takes).
pub(crate) struct SharedReplay<'a>(pub(crate) &'a Shared);

impl Replay for SharedReplay<'_> {
    fn seen(&mut self, nonce: &[u8], now_unix: u64) -> bool {
        self.0.is_replay(nonce, now_unix)
    }
}

impl Datacenters for LiveDc {
    fn dc_for(&self, dc: i16, fallback: bool) -> Option<i16> {
        self.lookup_or_fallback(dc, fallback).map(|(n, _)| n)
    }
}

/// The fake flight's shape as the scout learned it from the user's site for the hello's kind
/// (the second lock a handshake takes, once, for a FakeTLS hello that verified; a third, the
/// site table's, for a host other than the default one).
pub(crate) struct SharedShapes<'a>(pub(crate) &'a Shared);

impl Shapes for SharedShapes<'_> {
    fn shape(&mut self, hello: &ClientHello, host: &str) -> FlightShape {
        let shared = self.0;
        let theirs = if host == shared.config.secret.host {
            None
        } else {
            shared.sites.profiles(shared.site(host))
        };
        let profiles = theirs.as_ref().unwrap_or(&shared.profile);
        let p = profiles.lock().unwrap_or_else(|p| p.into_inner());
        p.shape_for(hello.kind())
    }
}

/// The JA4 statistics, told of each complete ClientHello (a third short lock, when
/// `[stats] ja4-top` is on).
pub(crate) struct SharedHellos<'a>(pub(crate) &'a Ja4Stats);

impl Hellos for SharedHellos<'_> {
    fn seen(&mut self, msg: &[u8], verified: bool) {
        self.0
            .record(verified, crate::proto::ja4::fingerprint(msg).as_ref());
    }
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
    super::sites::literal_addrs(&config.secret.host, port).unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
}
