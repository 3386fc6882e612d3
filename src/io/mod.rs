//! The event loop: worker threads, each with its own mio `Poll`, connection slab and buffer
//! pool, and [`start`], which builds the [`Shared`] state, spawns the workers and the
//! background threads ([`crate::background`]) and hands back a [`Proxy`].
//!
//! I/O layer: with [`crate::background`] (and `doctor`, the log's timestamps) the only part of
//! mtpx that touches sockets, threads and the clock ([`crate::sys`] for the few calls std and
//! mio lack). Protocol decisions are made by [`crate::proto`]; [`conn`] glues the two together.

mod conn;
pub(crate) mod ja4stats;
mod pool;
pub(crate) mod rng;
mod shared;
mod sites;
mod sock;
mod sources;
pub(crate) mod stats;
mod timers;
pub mod users;
mod worker;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::background::users::UsersService;
use crate::background::{metrics, scout};
use crate::config::Config;
use crate::log::Level;
use crate::proto::secret::SecretKind;
pub(crate) use rng::{FastRng, OsRng};
pub use shared::ShapingCell;
pub(crate) use shared::{Shared, own_listeners, self_loop_test, socks_upstreams};
pub use stats::Stats;

/// Most scouts started (one per fronting site; the others keep the default shape).
pub(crate) const MAX_SCOUTS: usize = 16;

/// Starts the scout of fronting site `site` (`host`, learning into `profiles`); the default
/// site's also times the site's records when shaping is on. `None` for a site without a host
/// or when the thread cannot start (logged).
pub(crate) fn spawn_scout(
    shared: &Arc<Shared>,
    site: usize,
    host: &str,
    profiles: &Arc<std::sync::Mutex<crate::proto::tlsprofile::Profiles>>,
) -> Option<scout::Scout> {
    if host.is_empty() {
        return None;
    }
    let d = &shared.config.doppelganger;
    // The timing raid (shaping is process-wide) with the default site's scout only.
    let timing = (site == 0 && shared.shaping.is_on()).then(|| {
        let dns = shared.config.nameserver();
        scout::TimingRaid::new(&d.urls, shared.shaping.clone(), dns)
    });
    let s = shared.clone();
    let spawned = scout::spawn(
        move || (0..16).map_while(|i| s.sites.addr(site, i)).collect(),
        host.to_owned(),
        d.raid_each,
        d.repeats_per_raid,
        profiles.clone(),
        timing,
    );
    match spawned {
        Ok(s) => Some(s),
        Err(e) => {
            crate::log_event!(Level::Warn, "scout-not-started", error = e);
            None
        }
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
    /// One per fronting site known at start (the default one first).
    scouts: Vec<scout::Scout>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    users: Option<UsersService>,
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

    /// Reloads the users from the config file (and its users file) now (what SIGHUP does);
    /// returns at once. Nothing to do for a proxy without a config file.
    pub fn reload_users(&self) {
        if let Some(u) = &self.users {
            u.reload();
        }
    }

    /// The users in force and their counters.
    pub fn users(&self) -> Arc<users::LiveUsers> {
        self.shared.users.load()
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

    /// The per-source bucket `ip` counts in (two addresses in one bucket share their counts
    /// and their standing as a known client).
    pub fn source_bucket(&self, ip: IpAddr) -> u32 {
        self.shared.sources.bucket(ip)
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
        for s in self.scouts.drain(..) {
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
        // After the workers: the last save and StatsD's last flush see every connection's
        // bytes.
        self.users = None;
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
    let per_worker_conns = config.concurrency + 1;
    let per_worker_bufs = (config.buffer_count / workers).max(2);
    let shared = Arc::new(Shared::new(config, grace, local_addr));

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
    // Learn each fronting site's handshake shape (FakeTLS only: other secrets send none): one
    // scout per site known now; the sites thread scouts those that reloads add.
    let faketls_users = shared.users.load().users.has_kind(SecretKind::FakeTls);
    let learn = shared.config.doppelganger.learn;
    let mut scouts = Vec::new();
    let known = shared.sites.all();
    if faketls_users && learn {
        for (site, host, profiles) in known.iter().take(MAX_SCOUTS) {
            scouts.extend(spawn_scout(&shared, *site, host, profiles));
        }
    }
    // The sites' addresses (the default one's, other users' hosts', those reloads add), and
    // the scouts of sites added later.
    let later = learn.then_some(if faketls_users { known.len() } else { 0 });
    crate::background::front_dns::spawn(shared.clone(), later);
    let source = metrics::MetricsSource {
        secret_kind: shared.config.secret.kind.as_str(),
        ja4: Some(shared.ja4.clone()),
        stats: shared.stats.clone(),
        lists: Some(shared.lists.clone()),
        users: Some(shared.users.clone()),
        active: {
            let weak = Arc::downgrade(&shared);
            Arc::new(move || {
                weak.upgrade()
                    .map_or(0, |s| s.active.load(Ordering::Relaxed))
            })
        },
    };
    let services = metrics::start_services(&shared.config, &source);
    let users = UsersService::start(shared.users.clone(), &shared.config);
    Ok(Proxy {
        services,
        shared,
        scouts,
        wakers,
        threads,
        local_addr,
        users,
    })
}
