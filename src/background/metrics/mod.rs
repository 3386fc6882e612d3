//! Metrics export (PROTOCOL.md §8.8): a Prometheus endpoint served by a small mio loop on its
//! own thread, and a StatsD sender on another.
//!
//! I/O layer. Nothing here runs on a worker: workers only bump per-event atomics ([`Stats`],
//! [`Counters`], the lists' refusal counters) or store a per-worker value once per sweep
//! ([`Counters::pool`]); these threads read them when a scrape arrives or a flush is due.
//! Formatting is [`crate::formats::metrics`]'s.
//!
//! Names and labels are mtg's (prefix `mtg` by default, so dashboards keep working) where
//! mtpx has the data: `client_connections` (the total, without the `ip_family` split),
//! `telegram_connections{dc}`, `domain_fronting`, `concurrency_limited`, `replay_attacks`,
//! `ip_blocklisted{ip_list}`, `iplist_size{ip_list}`, `telegram_traffic{dc,direction}` and
//! `domain_fronting_traffic{direction}` (without mtg's `telegram_ip` label; bytes are counted
//! by the workers' 250 ms sweep and at close, so an open relay shows too). mtpx adds
//! `accepted_connections`, `handshakes`, `connections{secret_kind}`,
//! `handshake_failures{reason}`, `fronted_connections`, `dc_connect_failures` and
//! `buffer_pool_in_use` / `buffer_pool_capacity`, `handshake_buffers_in_use`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::background::lists::{Lists, Which};
use crate::config::Config;
use crate::formats::http::{self, RequestParse};
use crate::formats::metrics::{
    self as fmt, DIRECTION_FROM_CLIENT, DIRECTION_TO_CLIENT, Kind, LABEL_DIRECTION, LABEL_IP_LIST,
    LABEL_REASON, Metric, Sample, TagFormat,
};
use crate::io::Stats;
use crate::log::Level;
use crate::proto::Reject;

/// Every handshake failure reason, indexed by discriminant.
const REJECTS: [Reject; 14] = [
    Reject::RecordType,
    Reject::RecordVersion,
    Reject::TooManyFragments,
    Reject::TooLarge,
    Reject::Malformed,
    Reject::NoCipherSuite,
    Reject::Sni,
    Reject::Digest,
    Reject::TimeSkew,
    Reject::Replay,
    Reject::ObfsTag,
    Reject::ObfsTagNotAllowed,
    Reject::Timeout,
    Reject::Eof,
];

/// Largest StatsD datagram (fits a 1500-byte MTU with IPv6 and UDP headers).
pub(crate) const STATSD_DATAGRAM: usize = 1432;
/// How often StatsD is sent when the proxy wires it with the default.
pub(crate) const STATSD_EVERY: Duration = Duration::from_secs(10);
/// Scrapers served at once; more are closed at once.
pub(crate) const MAX_SCRAPERS: usize = 16;
/// Time a scraper has to send its request and read the answer.
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `dc` label of per-DC series: DCs 1–5 and 203 (media DCs count as their DC), anything
/// else (a fallback for an unknown DC) as `other`.
pub(crate) const DC_LABELS: [&str; 7] = ["1", "2", "3", "4", "5", "203", "other"];

/// Index into [`DC_LABELS`] for DC `dc`.
pub(crate) fn dc_slot(dc: i16) -> usize {
    match dc.unsigned_abs() {
        d @ 1..=5 => usize::from(d) - 1,
        203 => 5,
        _ => 6,
    }
}

/// Counters the workers bump that [`Stats`] does not have. Per event (handshake failure,
/// connection opened or closed) or per sweep (pool levels, bytes relayed since the last
/// sweep), never per packet.
#[derive(Debug)]
pub(crate) struct Counters {
    rejects: [AtomicU64; REJECTS.len()],
    front_closed: AtomicU64,
    front_up: AtomicU64,
    front_down: AtomicU64,
    /// Bytes client -> DC, DC -> client, and relays open, per [`DC_LABELS`] slot.
    dc_up: [AtomicU64; DC_LABELS.len()],
    dc_down: [AtomicU64; DC_LABELS.len()],
    dc_open: [AtomicU64; DC_LABELS.len()],
    pool_in_use: Box<[AtomicUsize]>,
    pool_capacity: Box<[AtomicUsize]>,
    handshake_bufs: Box<[AtomicUsize]>,
}

impl Counters {
    /// Counters for `workers` workers.
    pub(crate) fn new(workers: usize) -> Counters {
        let per_worker = || (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect();
        Counters {
            rejects: Default::default(),
            front_closed: AtomicU64::new(0),
            front_up: AtomicU64::new(0),
            front_down: AtomicU64::new(0),
            dc_up: Default::default(),
            dc_down: Default::default(),
            dc_open: Default::default(),
            pool_in_use: per_worker(),
            pool_capacity: per_worker(),
            handshake_bufs: per_worker(),
        }
    }

    /// A handshake failed for `why` (fronted or closed).
    pub(crate) fn handshake_failed(&self, why: Reject) {
        if let Some(c) = self.rejects.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A fronted connection closed.
    pub(crate) fn fronted_closed(&self) {
        self.front_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes a connection relayed since it last reported (to the fronting site, or to DC `dc`).
    pub(crate) fn traffic(&self, fronted: bool, dc: i16, up: u64, down: u64) {
        let (u, d) = if fronted {
            (&self.front_up, &self.front_down)
        } else {
            let i = dc_slot(dc);
            (&self.dc_up[i], &self.dc_down[i])
        };
        u.fetch_add(up, Ordering::Relaxed);
        d.fetch_add(down, Ordering::Relaxed);
    }

    /// A relay to DC `dc` opened (`true`) or closed.
    pub(crate) fn dc_relay(&self, dc: i16, open: bool) {
        let c = &self.dc_open[dc_slot(dc)];
        if open {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Worker `worker`'s buffer pool levels: relay buffers in use and in all, handshake
    /// buffers in use (call from its periodic sweep).
    pub(crate) fn pool(&self, worker: usize, in_use: usize, capacity: usize, handshake: usize) {
        if let Some(c) = self.pool_in_use.get(worker) {
            c.store(in_use, Ordering::Relaxed);
        }
        if let Some(c) = self.handshake_bufs.get(worker) {
            c.store(handshake, Ordering::Relaxed);
        }
        if let Some(c) = self.pool_capacity.get(worker) {
            c.store(capacity, Ordering::Relaxed);
        }
    }
}

/// Where the numbers come from.
#[derive(Clone)]
pub(crate) struct MetricsSource {
    pub(crate) stats: Arc<Stats>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) lists: Option<Arc<Lists>>,
    /// Client connections open now.
    pub(crate) active: Arc<dyn Fn() -> usize + Send + Sync>,
    /// The listener's secret kind (`faketls`, `dd`, `classic`): the `secret_kind` label.
    pub(crate) secret_kind: &'static str,
}

/// One reading of every metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) active: u64,
    pub(crate) accepted: u64,
    pub(crate) limited: u64,
    pub(crate) handshakes: u64,
    pub(crate) fronted: u64,
    pub(crate) fronted_open: u64,
    pub(crate) dc_failures: u64,
    pub(crate) rejects: [u64; REJECTS.len()],
    pub(crate) secret_kind: &'static str,
    pub(crate) dc_up: [u64; DC_LABELS.len()],
    pub(crate) dc_down: [u64; DC_LABELS.len()],
    pub(crate) dc_open: [u64; DC_LABELS.len()],
    pub(crate) front_up: u64,
    pub(crate) front_down: u64,
    /// `(size, refused)` per list (block, allow), `None` when disabled.
    pub(crate) lists: [Option<(u64, u64)>; 2],
    pub(crate) pool_in_use: u64,
    pub(crate) pool_capacity: u64,
    pub(crate) handshake_bufs: u64,
}

impl MetricsSource {
    /// Reads every counter now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let s = &self.stats;
        let (front_up, front_down) = (l(&c.front_up), l(&c.front_down));
        let sum = |v: &[AtomicUsize]| v.iter().map(|a| a.load(Ordering::Relaxed) as u64).sum();
        let list = |w: Which| {
            let lists = self.lists.as_ref()?;
            Some((lists.size(w)? as u64, lists.refused(w)))
        };
        Snapshot {
            active: (self.active)() as u64,
            accepted: l(&s.accepted),
            limited: l(&s.limited),
            handshakes: l(&s.handshakes),
            fronted: l(&s.fronted),
            fronted_open: l(&s.fronted).saturating_sub(l(&c.front_closed)),
            dc_failures: l(&s.dc_failures),
            rejects: std::array::from_fn(|i| c.rejects.get(i).map_or(0, l)),
            secret_kind: self.secret_kind,
            dc_up: std::array::from_fn(|i| l(&c.dc_up[i])),
            dc_down: std::array::from_fn(|i| l(&c.dc_down[i])),
            dc_open: std::array::from_fn(|i| l(&c.dc_open[i])),
            front_up,
            front_down,
            lists: [list(Which::Block), list(Which::Allow)],
            pool_in_use: sum(&c.pool_in_use),
            pool_capacity: sum(&c.pool_capacity),
            handshake_bufs: sum(&c.handshake_bufs),
        }
    }
}

const TO_CLIENT: [(&str, &str); 1] = [(LABEL_DIRECTION, DIRECTION_TO_CLIENT)];
const FROM_CLIENT: [(&str, &str); 1] = [(LABEL_DIRECTION, DIRECTION_FROM_CLIENT)];
const BLOCK: [(&str, &str); 1] = [(LABEL_IP_LIST, fmt::IP_LIST_BLOCK)];
const ALLOW: [(&str, &str); 1] = [(LABEL_IP_LIST, fmt::IP_LIST_ALLOW)];

/// Hands the metrics of `s` to `emit`. Counters are `s - base` when `base` is given (StatsD
/// deltas), else absolute (Prometheus).
fn with_metrics<R>(
    s: &Snapshot,
    base: Option<&Snapshot>,
    emit: impl FnOnce(&[Metric<'_>]) -> R,
) -> R {
    let d = |cur: u64, old: fn(&Snapshot) -> u64| (cur.saturating_sub(base.map_or(0, old))) as f64;
    let g = |v: u64| v as f64;
    let one = |value: f64| [Sample { labels: &[], value }];
    let reason_labels: Vec<[(&str, &str); 1]> = REJECTS
        .iter()
        .map(|r| [(LABEL_REASON, r.as_str())])
        .collect();
    let failures: Vec<Sample<'_>> = reason_labels
        .iter()
        .enumerate()
        .map(|(i, labels)| Sample {
            labels,
            value: s.rejects[i].saturating_sub(base.map_or(0, |b| b.rejects[i])) as f64,
        })
        .collect();
    let mut sizes = Vec::with_capacity(2);
    let mut refused = Vec::with_capacity(2);
    for (i, labels) in [&BLOCK, &ALLOW].into_iter().enumerate() {
        if let Some((size, n)) = s.lists[i] {
            let old = base.and_then(|b| b.lists[i]).map_or(0, |(_, n)| n);
            sizes.push(Sample {
                labels,
                value: g(size),
            });
            refused.push(Sample {
                labels,
                value: n.saturating_sub(old) as f64,
            });
        }
    }
    let client = one(g(s.active));
    let fronting = one(d(s.fronted, |b| b.fronted));
    let limited = one(d(s.limited, |b| b.limited));
    let replays = one(s.rejects[Reject::Replay as usize]
        .saturating_sub(base.map_or(0, |b| b.rejects[Reject::Replay as usize]))
        as f64);
    // Per DC, the DCs that ever had a relay.
    let used: Vec<usize> = (0..DC_LABELS.len())
        .filter(|&i| s.dc_up[i] + s.dc_down[i] + s.dc_open[i] > 0)
        .collect();
    let dc_dir_labels: Vec<[(&str, &str); 2]> = used
        .iter()
        .flat_map(|&i| {
            [DIRECTION_TO_CLIENT, DIRECTION_FROM_CLIENT]
                .map(|dir| [(fmt::LABEL_DC, DC_LABELS[i]), (LABEL_DIRECTION, dir)])
        })
        .collect();
    let tg: Vec<Sample<'_>> = dc_dir_labels
        .iter()
        .enumerate()
        .map(|(k, labels)| {
            let i = used[k / 2];
            let (cur, old) = if k % 2 == 0 {
                (s.dc_down[i], base.map_or(0, |b| b.dc_down[i]))
            } else {
                (s.dc_up[i], base.map_or(0, |b| b.dc_up[i]))
            };
            Sample {
                labels,
                value: cur.saturating_sub(old) as f64,
            }
        })
        .collect();
    let dc_labels: Vec<[(&str, &str); 1]> = used
        .iter()
        .map(|&i| [(fmt::LABEL_DC, DC_LABELS[i])])
        .collect();
    let tg_open: Vec<Sample<'_>> = dc_labels
        .iter()
        .zip(&used)
        .map(|(labels, &i)| Sample {
            labels,
            value: g(s.dc_open[i]),
        })
        .collect();
    let kind_label = [(fmt::LABEL_SECRET_KIND, s.secret_kind)];
    let by_kind = [Sample {
        labels: &kind_label,
        value: d(s.handshakes, |b| b.handshakes),
    }];
    let front = [
        Sample {
            labels: &TO_CLIENT,
            value: d(s.front_down, |b| b.front_down),
        },
        Sample {
            labels: &FROM_CLIENT,
            value: d(s.front_up, |b| b.front_up),
        },
    ];
    let accepted = one(d(s.accepted, |b| b.accepted));
    let handshakes = one(d(s.handshakes, |b| b.handshakes));
    let fronted_open = one(g(s.fronted_open));
    let dc_failures = one(d(s.dc_failures, |b| b.dc_failures));
    let in_use = one(g(s.pool_in_use));
    let capacity = one(g(s.pool_capacity));
    let handshake_bufs = one(g(s.handshake_bufs));
    let cat = |name: &'static str, samples| {
        let def = fmt::def(name);
        Metric {
            name: def.map_or(name, |d| d.name),
            help: def.map_or("", |d| d.help),
            kind: def.map_or(Kind::Counter, |d| d.kind),
            samples,
        }
    };
    let own = |name, help, kind, samples| Metric {
        name,
        help,
        kind,
        samples,
    };
    let metrics = [
        own(
            fmt::CLIENT_CONNECTIONS,
            "Number of client connections currently open (all IP families).",
            Kind::Gauge,
            &client[..],
        ),
        cat(fmt::DOMAIN_FRONTING, &fronting[..]),
        cat(fmt::CONCURRENCY_LIMITED, &limited[..]),
        cat(fmt::REPLAY_ATTACKS, &replays[..]),
        cat(fmt::IP_BLOCKLISTED, &refused[..]),
        cat(fmt::IPLIST_SIZE, &sizes[..]),
        own(
            fmt::TELEGRAM_TRAFFIC,
            "Bytes relayed to and from Telegram, by DC (counted every 250 ms and at close).",
            Kind::Counter,
            &tg[..],
        ),
        own(
            fmt::TELEGRAM_CONNECTIONS,
            "Relays to Telegram currently open, by DC.",
            Kind::Gauge,
            &tg_open[..],
        ),
        own(
            fmt::DOMAIN_FRONTING_TRAFFIC,
            "Bytes relayed to and from the fronting domain (counted every 250 ms and at close).",
            Kind::Counter,
            &front[..],
        ),
        cat(fmt::CONNECTIONS, &by_kind[..]),
        own(
            "accepted_connections",
            "Client connections accepted (within the concurrency limit).",
            Kind::Counter,
            &accepted[..],
        ),
        own(
            "handshakes",
            "Client handshakes that reached the DC-connect stage.",
            Kind::Counter,
            &handshakes[..],
        ),
        cat(fmt::HANDSHAKE_FAILURES, &failures[..]),
        cat(fmt::FRONTED_CONNECTIONS, &fronted_open[..]),
        own(
            "dc_connect_failures",
            "Connections for which no DC address could be reached.",
            Kind::Counter,
            &dc_failures[..],
        ),
        cat(fmt::BUFFER_POOL_IN_USE, &in_use[..]),
        cat(fmt::BUFFER_POOL_CAPACITY, &capacity[..]),
        own(
            "handshake_buffers_in_use",
            "Small handshake buffers in use (connections partway through their handshake).",
            Kind::Gauge,
            &handshake_bufs[..],
        ),
    ];
    emit(&metrics)
}

/// The Prometheus text exposition of `s`.
pub(crate) fn render_prometheus(out: &mut String, prefix: &str, s: &Snapshot) {
    with_metrics(s, None, |m| fmt::write_prometheus(out, prefix, m));
}

/// StatsD lines for `s`: counters as increases since `base`, gauges as levels.
pub(crate) fn render_statsd(
    out: &mut String,
    format: TagFormat,
    prefix: &str,
    s: &Snapshot,
    base: &Snapshot,
) {
    with_metrics(s, Some(base), |m| fmt::write_statsd(out, format, prefix, m));
}

/// The StatsD prefix for a configured `metric-prefix`: the configured value and a dot
/// (`mtg` → `mtg.client_connections`, as mtg's default). mtg itself glues a configured prefix
/// on without a dot (`mtgclient_connections`); config values can never contain a dot, so the
/// default cannot be told apart from a configured `mtg`, and the dotted form is the useful one.
pub(crate) fn statsd_prefix(configured: &str) -> String {
    if configured.is_empty() || configured.ends_with('.') {
        configured.to_string()
    } else {
        format!("{configured}.")
    }
}

fn tag_format(t: crate::config::TagFormat) -> TagFormat {
    match t {
        crate::config::TagFormat::Datadog => TagFormat::Datadog,
        crate::config::TagFormat::Influxdb => TagFormat::Influxdb,
        crate::config::TagFormat::Graphite => TagFormat::Graphite,
    }
}

// ---------------------------------------------------------------------------------------------
// Service handles
// ---------------------------------------------------------------------------------------------

/// A metrics thread. Dropping it stops the thread and joins it (a StatsD sender flushes once
/// more first).
pub(crate) struct Service {
    /// The address a Prometheus endpoint listens on (None for StatsD).
    pub(crate) addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    waker: Option<Arc<Waker>>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = &self.waker {
            let _ = w.wake();
        }
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts what `config` enables: the Prometheus endpoint and the StatsD sender (every
/// [`STATSD_EVERY`]). A failure is logged and the proxy runs without that exporter.
pub(crate) fn start_services(config: &Config, source: &MetricsSource) -> Vec<Service> {
    let mut services = Vec::new();
    let p = &config.prometheus;
    if let (true, Some(bind)) = (p.enabled, p.bind_to) {
        match spawn_prometheus(
            bind,
            p.http_path.clone(),
            p.metric_prefix.clone(),
            source.clone(),
        ) {
            Ok((addr, s)) => {
                crate::log_event!(
                    Level::Info,
                    "prometheus-started",
                    bind = addr,
                    path = p.http_path
                );
                services.push(s);
            }
            Err(e) => crate::log_event!(
                Level::Error,
                "prometheus-not-started",
                bind = bind,
                error = e
            ),
        }
    }
    let s = &config.statsd;
    if let (true, Some(addr)) = (s.enabled, s.address) {
        match spawn_statsd(
            addr,
            statsd_prefix(&s.metric_prefix),
            tag_format(s.tag_format),
            STATSD_EVERY,
            source.clone(),
        ) {
            Ok(svc) => services.push(svc),
            Err(e) => crate::log_event!(
                Level::Error,
                "statsd-not-started",
                address = addr,
                error = e
            ),
        }
    }
    services
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

struct Scrape {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The answer is ready (only writing is left).
    answered: bool,
    deadline: Instant,
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Scrape>>,
    path: String,
    prefix: String,
    source: MetricsSource,
    stop: Arc<AtomicBool>,
    body: String,
}

/// Serves `GET <path>` with the Prometheus text exposition on `bind` (404 for other paths,
/// 405 for other methods, 400 for malformed requests), at most [`MAX_SCRAPERS`] at once, each
/// within [`SCRAPE_TIMEOUT`]. Returns the bound address (for port 0) and the thread's handle.
pub(crate) fn spawn_prometheus(
    bind: SocketAddr,
    path: String,
    prefix: String,
    source: MetricsSource,
) -> io::Result<(SocketAddr, Service)> {
    let listener = TcpListener::bind(bind)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr()?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = Server {
        poll,
        listener,
        conns: (0..MAX_SCRAPERS).map(|_| None).collect(),
        path: normalise_path(&path),
        prefix,
        source,
        stop: stop.clone(),
        body: String::new(),
    };
    server
        .poll
        .registry()
        .register(&mut server.listener, LISTENER, Interest::READABLE)?;
    let thread = std::thread::Builder::new()
        .name("mtpx-prometheus".into())
        .spawn(move || server.run())?;
    Ok((
        addr,
        Service {
            addr: Some(addr),
            stop,
            waker: Some(waker),
            thread: Some(thread),
        },
    ))
}

/// `/metrics/` → `/metrics`; always a leading `/`.
fn normalise_path(p: &str) -> String {
    let t = p.trim().trim_matches('/');
    format!("/{t}")
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = self
                .conns
                .iter()
                .flatten()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    crate::log_event!(Level::Warn, "prometheus-poll-failed", error = e);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.drive(t.wrapping_sub(FIRST_CONN)),
                }
            }
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if self.conns[i].as_ref().is_some_and(|c| now >= c.deadline) {
                    self.close(i);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(i) = self.conns.iter().position(Option::is_none) else {
                        // Too many scrapers: close this one at once.
                        continue;
                    };
                    let token = Token(FIRST_CONN + i);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, interest)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns[i] = Some(Scrape {
                        stream,
                        input: Vec::with_capacity(1024),
                        output: Vec::new(),
                        written: 0,
                        answered: false,
                        deadline: Instant::now() + SCRAPE_TIMEOUT,
                    });
                    self.drive(i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log_event!(Level::Debug, "prometheus-accept-failed", error = e);
                    return;
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Reads, answers and writes as far as the socket allows; closes when done or broken.
    fn drive(&mut self, i: usize) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        if self.step(&mut c) {
            self.conns[i] = Some(c);
        } else {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// One round of [`Server::drive`]; `false` when the connection is finished.
    fn step(&mut self, c: &mut Scrape) -> bool {
        let mut chunk = [0u8; 2048];
        while !c.answered {
            match c.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    let room = http::MAX_HEAD.saturating_sub(c.input.len());
                    c.input.extend_from_slice(&chunk[..n.min(room)]);
                    self.answer(c);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(0) => return false,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Prepares the answer once the request head is complete (or cannot be).
    fn answer(&mut self, c: &mut Scrape) {
        let (status, head_only, metrics) = match http::parse_request(&c.input) {
            RequestParse::NeedMore => return,
            RequestParse::Invalid => (400, false, false),
            RequestParse::Request { method, path, .. } => {
                let head = method == "HEAD";
                if method != "GET" && !head {
                    (405, false, false)
                } else if normalise_path(path) != self.path {
                    (404, head, false)
                } else {
                    (200, head, true)
                }
            }
        };
        let (body, ctype) = if metrics {
            self.body.clear();
            render_prometheus(&mut self.body, &self.prefix, &self.source.snapshot());
            (self.body.as_bytes(), fmt::PROMETHEUS_CONTENT_TYPE)
        } else {
            (
                http::reason_phrase(status).as_bytes(),
                "text/plain; charset=utf-8",
            )
        };
        if head_only {
            http::write_response_head(&mut c.output, status, ctype, body.len());
        } else {
            http::write_response(&mut c.output, status, ctype, body);
        }
        c.answered = true;
    }
}

// ---------------------------------------------------------------------------------------------
// StatsD
// ---------------------------------------------------------------------------------------------

/// Sends every metric to `addr` over UDP every `every` (and once more when stopped): counters
/// as increases since the last send (`|c`, unchanged ones omitted), gauges as levels (`|g`),
/// several lines per datagram of at most [`STATSD_DATAGRAM`] bytes.
pub(crate) fn spawn_statsd(
    addr: SocketAddr,
    prefix: String,
    format: TagFormat,
    every: Duration,
    source: MetricsSource,
) -> io::Result<Service> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let every = every.max(Duration::from_millis(10));
    let thread = std::thread::Builder::new()
        .name("mtpx-statsd".into())
        .spawn(move || {
            let mut base = Snapshot::default();
            let mut out = String::new();
            let mut failing = false;
            let mut next = Instant::now() + every;
            loop {
                let stopping = stop2.load(Ordering::SeqCst);
                if stopping || Instant::now() >= next {
                    let now = source.snapshot();
                    out.clear();
                    render_statsd(&mut out, format, &prefix, &now, &base);
                    base = now;
                    let mut ok = true;
                    for packet in fmt::split_packets(&out, STATSD_DATAGRAM) {
                        if let Err(e) = socket.send(packet.as_bytes()) {
                            ok = false;
                            if !failing {
                                crate::log_event!(
                                    Level::Warn,
                                    "statsd-send-failed",
                                    address = addr,
                                    error = e
                                );
                            }
                        }
                    }
                    failing = !ok;
                    next = Instant::now() + every;
                }
                if stopping {
                    return;
                }
                std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            }
        })?;
    Ok(Service {
        addr: None,
        stop,
        waker: None,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> (MetricsSource, Arc<AtomicUsize>) {
        let active = Arc::new(AtomicUsize::new(0));
        let a = active.clone();
        (
            MetricsSource {
                stats: Arc::new(Stats::default()),
                counters: Arc::new(Counters::new(2)),
                lists: None,
                active: Arc::new(move || a.load(Ordering::Relaxed)),
                secret_kind: "dd",
            },
            active,
        )
    }

    fn line_value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    #[test]
    fn reject_table_matches_discriminants() {
        for (i, r) in REJECTS.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn prometheus_text_carries_the_counters() {
        let (src, active) = source();
        let s = &src.stats;
        s.accepted.store(5, Ordering::Relaxed);
        s.fronted.store(2, Ordering::Relaxed);
        s.limited.store(1, Ordering::Relaxed);
        s.handshakes.store(3, Ordering::Relaxed);
        let c = &src.counters;
        c.traffic(false, 2, 800, 2000);
        c.traffic(false, -2, 50, 500); // a media DC counts as its DC
        c.traffic(false, 4, 50, 200);
        c.traffic(true, 0, 100, 300);
        c.fronted_closed();
        c.dc_relay(2, true);
        c.dc_relay(2, true);
        c.dc_relay(4, true);
        c.dc_relay(4, false);
        src.counters.handshake_failed(Reject::Replay);
        src.counters.handshake_failed(Reject::Replay);
        src.counters.handshake_failed(Reject::Digest);
        src.counters.pool(0, 3, 10, 5);
        src.counters.pool(1, 1, 10, 2);
        src.counters.pool(7, 100, 100, 9); // no such worker: ignored
        active.store(4, Ordering::Relaxed);
        let mut out = String::new();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        let v = |n: &str| line_value(&out, n).unwrap_or_else(|| panic!("{n} missing:\n{out}"));
        assert_eq!(v("mtg_client_connections"), 4.0);
        assert_eq!(v("mtg_accepted_connections"), 5.0);
        assert_eq!(v("mtg_domain_fronting"), 2.0);
        assert_eq!(v("mtg_fronted_connections"), 1.0);
        assert_eq!(v("mtg_concurrency_limited"), 1.0);
        assert_eq!(v("mtg_replay_attacks"), 2.0);
        assert_eq!(v("mtg_handshake_failures{reason=\"replay\"}"), 2.0);
        assert_eq!(v("mtg_handshake_failures{reason=\"bad-digest\"}"), 1.0);
        assert_eq!(v("mtg_handshake_failures{reason=\"eof\"}"), 0.0);
        assert_eq!(
            v("mtg_telegram_traffic{dc=\"2\",direction=\"from_client\"}"),
            850.0
        );
        assert_eq!(
            v("mtg_telegram_traffic{dc=\"2\",direction=\"to_client\"}"),
            2500.0
        );
        assert_eq!(
            v("mtg_telegram_traffic{dc=\"4\",direction=\"to_client\"}"),
            200.0
        );
        // DCs without any relay have no series.
        assert!(!out.contains("dc=\"1\""), "{out}");
        assert_eq!(v("mtg_telegram_connections{dc=\"2\"}"), 2.0);
        assert_eq!(v("mtg_telegram_connections{dc=\"4\"}"), 0.0);
        assert_eq!(v("mtg_connections{secret_kind=\"dd\"}"), 3.0);
        assert_eq!(
            v("mtg_domain_fronting_traffic{direction=\"from_client\"}"),
            100.0
        );
        assert_eq!(
            v("mtg_domain_fronting_traffic{direction=\"to_client\"}"),
            300.0
        );
        assert_eq!(v("mtg_buffer_pool_in_use"), 4.0);
        assert_eq!(v("mtg_buffer_pool_capacity"), 20.0);
        assert_eq!(v("mtg_handshake_buffers_in_use"), 7.0);
        assert!(
            out.contains("# TYPE mtg_telegram_traffic counter\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE mtg_client_connections gauge\n"),
            "{out}"
        );
        // Lists disabled: no list series.
        assert!(!out.contains("iplist_size"), "{out}");
    }

    #[test]
    fn prometheus_text_has_list_series_for_enabled_lists() {
        let dir = std::env::temp_dir().join(format!("mtpx-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("block.netset");
        std::fs::write(&f, "10.0.0.0/8\n192.0.2.1\n").unwrap();
        let secret = crate::proto::secret::Secret::generate(
            crate::proto::secret::SecretKind::Secure,
            "",
            &mut crate::proto::XorShift64(1),
        );
        let mut c = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret);
        c.blocklist.enabled = true;
        c.blocklist.urls = vec![f.display().to_string()];
        let lists = Lists::new(&c);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = lists.admits("10.1.1.1".parse().unwrap());
        let (mut src, _) = source();
        src.lists = Some(lists);
        let mut out = String::new();
        render_prometheus(&mut out, "px", &src.snapshot());
        assert_eq!(
            line_value(&out, "px_iplist_size{ip_list=\"blocklist\"}"),
            Some(2.0),
            "{out}"
        );
        assert_eq!(
            line_value(&out, "px_ip_blocklisted{ip_list=\"blocklist\"}"),
            Some(1.0),
            "{out}"
        );
        assert!(!out.contains("allowlist"), "{out}");
    }

    #[test]
    fn statsd_sends_deltas_and_gauges() {
        let (src, active) = source();
        let recv = UdpSocket::bind("127.0.0.1:0").unwrap();
        recv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        src.stats.accepted.store(3, Ordering::Relaxed);
        active.store(2, Ordering::Relaxed);
        let svc = spawn_statsd(
            recv.local_addr().unwrap(),
            statsd_prefix("mtg"),
            TagFormat::Datadog,
            Duration::from_millis(100),
            src.clone(),
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = recv.recv(&mut buf).unwrap();
        assert!(n <= STATSD_DATAGRAM);
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            first.lines().any(|l| l == "mtg.accepted_connections:3|c"),
            "{first}"
        );
        assert!(
            first.lines().any(|l| l == "mtg.client_connections:2|g"),
            "{first}"
        );
        src.stats.accepted.store(10, Ordering::Relaxed);
        src.counters.traffic(false, 203, 0, 500);
        drop(svc);
        // Drain: the last datagram carries the delta since the previous send.
        let mut all = String::new();
        recv.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok(n) = recv.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
        }
        assert!(
            all.lines().any(|l| l == "mtg.accepted_connections:7|c"),
            "{all}"
        );
        assert!(
            all.lines()
                .any(|l| l == "mtg.telegram_traffic:500|c|#dc:203,direction:to_client"),
            "{all}"
        );
        // Unchanged counters are not repeated.
        assert!(
            !all.lines().any(|l| l == "mtg.accepted_connections:3|c"),
            "{all}"
        );
    }

    #[test]
    fn statsd_datagrams_stay_under_the_limit() {
        let (src, _) = source();
        for r in REJECTS {
            for _ in 0..3 {
                src.counters.handshake_failed(r);
            }
        }
        let mut out = String::new();
        render_statsd(
            &mut out,
            TagFormat::Influxdb,
            "averyveryverylongprefix.",
            &src.snapshot(),
            &Snapshot::default(),
        );
        let packets: Vec<&str> = fmt::split_packets(&out, STATSD_DATAGRAM).collect();
        assert!(!packets.is_empty());
        let mut lines = 0;
        for p in &packets {
            assert!(p.len() <= STATSD_DATAGRAM);
            lines += p.lines().count();
        }
        assert_eq!(lines, out.lines().count());
        assert!(
            out.contains("averyveryverylongprefix.handshake_failures,reason=timeout:3|c\n"),
            "{out}"
        );
    }

    fn scrape(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn prometheus_server_answers_get_404_405_400() {
        let (src, _) = source();
        src.stats.accepted.store(42, Ordering::Relaxed);
        let (addr, svc) = spawn_prometheus(
            "127.0.0.1:0".parse().unwrap(),
            "/metrics/".into(),
            "mtg".into(),
            src,
        )
        .unwrap();
        let r = scrape(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(
            r.contains("\r\nmtg_accepted_connections 42\n")
                || r.contains("\nmtg_accepted_connections 42\n"),
            "{r}"
        );
        let r = scrape(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let r = scrape(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = scrape(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = scrape(addr, b"\x16\x03\x01\x00\x10garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let r = scrape(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        // A request split over several writes.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /met").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"rics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        drop(svc);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn prometheus_server_bounds_scrapers_and_time() {
        let (src, _) = source();
        let (addr, svc) = spawn_prometheus(
            "127.0.0.1:0".parse().unwrap(),
            "/".into(),
            "mtg".into(),
            src,
        )
        .unwrap();
        // Fill every slot with silent connections.
        let idle: Vec<_> = (0..MAX_SCRAPERS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // One more is closed at once, without an answer.
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut b = [0u8; 16];
        assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)));
        // An oversized head is refused.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(http::MAX_HEAD + 100, b'a');
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        let r = scrape(addr, &big);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // Silent scrapers are dropped after the timeout.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(SCRAPE_TIMEOUT * 2)).unwrap();
        let t = Instant::now();
        assert!(matches!(slow.read(&mut b), Ok(0) | Err(_)));
        let waited = t.elapsed();
        assert!(
            waited >= SCRAPE_TIMEOUT - Duration::from_millis(100) && waited < SCRAPE_TIMEOUT * 2,
            "{waited:?}"
        );
        drop(svc);
    }
}
