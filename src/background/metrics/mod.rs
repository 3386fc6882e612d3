//! Metrics export (PROTOCOL.md §8.8): what is exported, read from the workers' counters
//! ([`Snapshot`]), and the two exporters, each on a thread of its own: the Prometheus endpoint
//! ([`prometheus`]) and the StatsD sender ([`statsd`]).
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
//! `handshake_failures{reason}`, `fronted_connections`, `dc_connect_failures`,
//! `fronting_self_loops`, `handshake_searches_limited`, `log_lines_dropped` and
//! `buffer_pool_in_use` / `buffer_pool_capacity`, `handshake_buffers_in_use`, and
//! `middle_proxy_connections`, `middle_proxy_reconnects`, `middle_proxy_sessions_lost`,
//! `middle_proxy_traffic{direction}` (ad-tag).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use mio::Waker;

mod prometheus;
mod statsd;

use prometheus::spawn_prometheus;
use statsd::{STATSD_EVERY, spawn_statsd, statsd_prefix};

use crate::background::lists::{Lists, Which};
use crate::config::Config;
use crate::formats::metrics::{
    self as fmt, DIRECTION_FROM_CLIENT, DIRECTION_TO_CLIENT, Kind, LABEL_DIRECTION, LABEL_IP_LIST,
    LABEL_REASON, Metric, Sample, TagFormat,
};
use crate::io::Stats;
use crate::io::stats::{DC_LABELS, ME_DOWN, ME_LOST, ME_OPEN, ME_RECONNECTS, ME_UP};
use crate::io::users::{UserCounts, UsersCell};
use crate::log::Level;
use crate::proto::Reject;
use crate::proto::users::UserReject;

/// Where the numbers come from.
#[derive(Clone)]
pub(crate) struct MetricsSource {
    pub(crate) stats: Arc<Stats>,
    pub(crate) lists: Option<Arc<Lists>>,
    /// Client connections open now.
    pub(crate) active: Arc<dyn Fn() -> usize + Send + Sync>,
    /// The listener's secret kind (`faketls`, `dd`, `classic`): the `secret_kind` label.
    pub(crate) secret_kind: &'static str,
    /// ClientHello fingerprints.
    pub(crate) ja4: Option<Arc<crate::io::ja4stats::Ja4Stats>>,
    /// The users and their counters (the `user_*` series).
    pub(crate) users: Option<Arc<UsersCell>>,
}

/// One user's counters in a [`Snapshot`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UserSnap {
    pub(crate) name: String,
    pub(crate) counts: UserCounts,
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
    pub(crate) front_self_loops: u64,
    pub(crate) search_limited: u64,
    pub(crate) log_dropped: u64,
    pub(crate) rejects: [u64; Reject::ALL.len()],
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
    /// Per user, in config order.
    pub(crate) users: Vec<UserSnap>,
    /// JA4 rows (class, fingerprint or "other", count).
    pub(crate) ja4: Vec<crate::io::ja4stats::Row>,
    /// Middle-proxy connections open, reconnects, bytes up, bytes down.
    pub(crate) me: [u64; 5],
}

impl MetricsSource {
    /// Reads every counter now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        let c = s;
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
            front_self_loops: l(&s.front_self_loops),
            search_limited: l(&s.search_limited),
            log_dropped: crate::log::dropped(),
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
            users: self.users.as_ref().map_or_else(Vec::new, |cell| {
                let live = cell.load();
                live.users
                    .specs()
                    .iter()
                    .zip(&live.stats)
                    .map(|(spec, st)| UserSnap {
                        name: spec.name.clone(),
                        counts: st.counts(),
                    })
                    .collect()
            }),
            ja4: self.ja4.as_ref().map_or_else(Vec::new, |j| j.rows()),
            me: std::array::from_fn(|i| l(&c.me[i])),
        }
    }
}

const TO_CLIENT: [(&str, &str); 1] = [(LABEL_DIRECTION, DIRECTION_TO_CLIENT)];
const FROM_CLIENT: [(&str, &str); 1] = [(LABEL_DIRECTION, DIRECTION_FROM_CLIENT)];
const BLOCK: [(&str, &str); 1] = [(LABEL_IP_LIST, fmt::IP_LIST_BLOCK)];
const ALLOW: [(&str, &str); 1] = [(LABEL_IP_LIST, fmt::IP_LIST_ALLOW)];

/// A per-user series' labels: its own (or an empty pair) and `user`.
type UserLabels<'a> = [(&'static str, &'a str); 2];

/// The per-user series of `s` (deltas from `base` for counters): labels, and per label the
/// family (0 traffic, 1 open, 2 admitted, 3 quota used, 4 rejections) and value. Users are
/// matched to their base by name (a reload may renumber them); reasons with a zero count have
/// no series. Out of line: both exporters use it.
#[inline(never)]
fn user_series<'a>(
    s: &'a Snapshot,
    base: Option<&Snapshot>,
) -> (Vec<UserLabels<'a>>, Vec<(usize, f64)>) {
    let mut labels: Vec<[(&str, &str); 2]> = Vec::new();
    let mut values: Vec<(usize, f64)> = Vec::new();
    for (i, u) in s.users.iter().enumerate() {
        let c = &u.counts;
        let old = base.and_then(|b| {
            b.users
                .get(i)
                .filter(|o| o.name == u.name)
                .or_else(|| b.users.iter().find(|o| o.name == u.name))
        });
        let was = |f: fn(&UserCounts) -> u64| old.map_or(0, |o| f(&o.counts));
        let user = (fmt::LABEL_USER, u.name.as_str());
        let mut add = |family: usize, label: (&'static str, &'static str), v: u64| {
            labels.push([label, user]);
            values.push((family, v as f64));
        };
        add(
            0,
            (LABEL_DIRECTION, DIRECTION_TO_CLIENT),
            c.to_client.saturating_sub(was(|o| o.to_client)),
        );
        add(
            0,
            (LABEL_DIRECTION, DIRECTION_FROM_CLIENT),
            c.from_client.saturating_sub(was(|o| o.from_client)),
        );
        add(1, ("", ""), c.open);
        add(2, ("", ""), c.admitted.saturating_sub(was(|o| o.admitted)));
        add(3, ("", ""), c.used);
        for (r, why) in UserReject::ALL.iter().enumerate() {
            if c.rejects[r] > 0 {
                let old = old.map_or(0, |o| o.counts.rejects[r]);
                add(
                    4,
                    (LABEL_REASON, why.as_str()),
                    c.rejects[r].saturating_sub(old),
                );
            }
        }
    }
    (labels, values)
}

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
    let reason_labels: Vec<[(&str, &str); 1]> = Reject::ALL
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
    let self_loops = one(d(s.front_self_loops, |b| b.front_self_loops));
    let search_limited = one(d(s.search_limited, |b| b.search_limited));
    let log_dropped = one(d(s.log_dropped, |b| b.log_dropped));
    let handshake_bufs = one(g(s.handshake_bufs));
    let (user_labels, user_values) = user_series(s, base);
    let family = |f: usize| -> Vec<Sample<'_>> {
        user_labels
            .iter()
            .zip(&user_values)
            .filter(|(_, (g, _))| *g == f)
            .map(|(l, &(_, value))| Sample {
                labels: if l[0].0.is_empty() { &l[1..] } else { &l[..] },
                value,
            })
            .collect()
    };
    let (user_traffic, user_open, user_admitted, user_used, user_rejects) =
        (family(0), family(1), family(2), family(3), family(4));
    let ja4_labels: Vec<[(&str, &str); 2]> = s
        .ja4
        .iter()
        .map(|(class, fp, _)| {
            let fp = fp.as_ref().and_then(|f| std::str::from_utf8(f).ok());
            [
                ("class", crate::io::ja4stats::CLASSES[*class]),
                ("ja4", fp.unwrap_or("other")),
            ]
        })
        .collect();
    let ja4: Vec<Sample<'_>> = s
        .ja4
        .iter()
        .zip(&ja4_labels)
        .map(|(row, labels)| {
            let old = base
                .and_then(|b| b.ja4.iter().find(|o| o.0 == row.0 && o.1 == row.1))
                .map_or(0, |o| o.2);
            Sample {
                labels,
                value: row.2.saturating_sub(old) as f64,
            }
        })
        .collect();
    let me_open = one(g(s.me[ME_OPEN]));
    let me_reconnects = one(d(s.me[ME_RECONNECTS], |b| b.me[ME_RECONNECTS]));
    let me_lost = one(d(s.me[ME_LOST], |b| b.me[ME_LOST]));
    let me_traffic = [
        Sample {
            labels: &TO_CLIENT,
            value: d(s.me[ME_DOWN], |b| b.me[ME_DOWN]),
        },
        Sample {
            labels: &FROM_CLIENT,
            value: d(s.me[ME_UP], |b| b.me[ME_UP]),
        },
    ];
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
        own(
            "fronting_self_loops",
            "Fronting addresses refused as this proxy's own listener (at start and per resolution).",
            Kind::Counter,
            &self_loops[..],
        ),
        own(
            "handshake_searches_limited",
            "Handshake steps run while their address was over its share of handshake work (a search there tries only the user the address used last).",
            Kind::Counter,
            &search_limited[..],
        ),
        own(
            "log_lines_dropped",
            "Log lines dropped because stderr did not keep up.",
            Kind::Counter,
            &log_dropped[..],
        ),
        cat(fmt::BUFFER_POOL_IN_USE, &in_use[..]),
        cat(fmt::BUFFER_POOL_CAPACITY, &capacity[..]),
        own(
            "handshake_buffers_in_use",
            "Small handshake buffers in use (connections partway through their handshake).",
            Kind::Gauge,
            &handshake_bufs[..],
        ),
        cat(fmt::USER_TRAFFIC, &user_traffic[..]),
        cat(fmt::USER_CONNECTIONS, &user_open[..]),
        cat(fmt::USER_HANDSHAKES, &user_admitted[..]),
        cat(fmt::USER_REJECTIONS, &user_rejects[..]),
        cat(fmt::USER_QUOTA_USED, &user_used[..]),
        own(
            "client_hello_ja4",
            "ClientHellos by JA4 fingerprint (the most frequent; class client or fronted).",
            Kind::Counter,
            &ja4[..],
        ),
        own(
            "middle_proxy_connections",
            "Connections to Telegram's middle proxies open now (ad-tag).",
            Kind::Gauge,
            &me_open[..],
        ),
        own(
            "middle_proxy_reconnects",
            "Middle-proxy connections opened to replace one that failed.",
            Kind::Counter,
            &me_reconnects[..],
        ),
        own(
            "middle_proxy_sessions_lost",
            "Client sessions a middle proxy ended (died, reset, bad packet) before the client left.",
            Kind::Counter,
            &me_lost[..],
        ),
        own(
            "middle_proxy_traffic",
            "Bytes relayed through Telegram's middle proxies (ad-tag).",
            Kind::Counter,
            &me_traffic[..],
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
            s.tag_format,
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn source() -> (MetricsSource, Arc<AtomicUsize>) {
        let active = Arc::new(AtomicUsize::new(0));
        let a = active.clone();
        (
            MetricsSource {
                ja4: None,
                stats: Arc::new(Stats::new(2)),
                lists: None,
                active: Arc::new(move || a.load(Ordering::Relaxed)),
                secret_kind: "dd",
                users: None,
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
    fn middle_proxy_counters_are_exported() {
        let (src, _) = source();
        let c = &src.stats;
        let mut out = String::new();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        let v = |out: &str, n: &str| line_value(out, n).unwrap_or_else(|| panic!("{n}:\n{out}"));
        // Registered (and zero) before any middle-proxy connection exists.
        assert_eq!(v(&out, "mtg_middle_proxy_connections"), 0.0);
        assert_eq!(v(&out, "mtg_middle_proxy_reconnects"), 0.0);
        c.middle_proxy(true, false);
        c.middle_proxy(true, true);
        c.middle_proxy(true, false);
        c.middle_proxy(false, false);
        c.middle_proxy_traffic(10, 200);
        c.middle_proxy_traffic(5, 0);
        out.clear();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        assert_eq!(v(&out, "mtg_middle_proxy_connections"), 2.0);
        assert_eq!(v(&out, "mtg_middle_proxy_reconnects"), 1.0);
        assert_eq!(
            v(&out, "mtg_middle_proxy_traffic{direction=\"from_client\"}"),
            15.0
        );
        assert_eq!(
            v(&out, "mtg_middle_proxy_traffic{direction=\"to_client\"}"),
            200.0
        );
    }

    #[test]
    fn prometheus_text_carries_the_counters() {
        let (src, active) = source();
        let s = &src.stats;
        s.accepted.store(5, Ordering::Relaxed);
        s.fronted.store(2, Ordering::Relaxed);
        s.limited.store(1, Ordering::Relaxed);
        s.handshakes.store(3, Ordering::Relaxed);
        let c = &src.stats;
        c.traffic(false, 2, 800, 2000);
        c.traffic(false, -2, 50, 500); // a media DC counts as its DC
        c.traffic(false, 4, 50, 200);
        c.traffic(true, 0, 100, 300);
        c.fronted_closed();
        c.dc_relay(2, true);
        c.dc_relay(2, true);
        c.dc_relay(4, true);
        c.dc_relay(4, false);
        src.stats.handshake_failed(Reject::Replay);
        src.stats.handshake_failed(Reject::Replay);
        src.stats.handshake_failed(Reject::Digest);
        src.stats.pool(0, 3, 10, 5);
        src.stats.pool(1, 1, 10, 2);
        src.stats.pool(7, 100, 100, 9); // no such worker: ignored
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

    fn with_users(names: &[(&str, u64)]) -> (MetricsSource, Arc<UsersCell>) {
        use crate::proto::users::{Limits, UserSpec, Users};
        let specs = names
            .iter()
            .map(|&(name, seed)| UserSpec {
                name: name.into(),
                secret: crate::proto::secret::Secret::generate(
                    crate::proto::secret::SecretKind::Secure,
                    "",
                    &mut crate::proto::XorShift64(seed),
                ),
                limits: Limits::default(),
                ad_tag: None,
            })
            .collect();
        let cell = Arc::new(UsersCell::new(Users::new(specs).unwrap(), 0));
        let (mut src, _) = source();
        src.users = Some(cell.clone());
        (src, cell)
    }

    #[test]
    fn prometheus_text_has_a_series_set_per_user() {
        let (src, cell) = with_users(&[("alice", 1), ("bob.smith", 2)]);
        // Registered before any traffic: every user's series are there at zero, no refusals.
        let mut out = String::new();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        for name in ["alice", "bob.smith"] {
            for series in [
                format!("mtg_user_traffic{{direction=\"to_client\",user=\"{name}\"}} 0"),
                format!("mtg_user_traffic{{direction=\"from_client\",user=\"{name}\"}} 0"),
                format!("mtg_user_connections{{user=\"{name}\"}} 0"),
                format!("mtg_user_handshakes{{user=\"{name}\"}} 0"),
                format!("mtg_user_quota_used{{user=\"{name}\"}} 0"),
            ] {
                assert!(out.lines().any(|l| l == series), "{series} missing:\n{out}");
            }
        }
        assert!(!out.contains("user_rejections"), "{out}");
        assert!(out.contains("# TYPE mtg_user_traffic counter\n"), "{out}");
        assert!(out.contains("# TYPE mtg_user_connections gauge\n"), "{out}");
        // Counted through a lease.
        let live = cell.load();
        let limits = crate::proto::users::Limits {
            quota: Some(10_000),
            ..Default::default()
        };
        let ip = "192.0.2.1".parse().unwrap();
        let lease = live.stats[1].admit(&limits, ip, 0).unwrap();
        assert!(lease.traffic(300, 4000));
        live.stats[0].rejected(UserReject::MaxIps);
        live.stats[0].rejected(UserReject::MaxIps);
        live.stats[1].rejected(UserReject::QuotaCut);
        out.clear();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        let v = |n: &str| line_value(&out, n).unwrap_or_else(|| panic!("{n} missing:\n{out}"));
        assert_eq!(
            v("mtg_user_traffic{direction=\"to_client\",user=\"bob.smith\"}"),
            4000.0
        );
        assert_eq!(
            v("mtg_user_traffic{direction=\"from_client\",user=\"bob.smith\"}"),
            300.0
        );
        assert_eq!(
            v("mtg_user_traffic{direction=\"to_client\",user=\"alice\"}"),
            0.0
        );
        assert_eq!(v("mtg_user_connections{user=\"bob.smith\"}"), 1.0);
        assert_eq!(v("mtg_user_handshakes{user=\"bob.smith\"}"), 1.0);
        assert_eq!(v("mtg_user_quota_used{user=\"bob.smith\"}"), 4300.0);
        assert_eq!(
            v("mtg_user_rejections{reason=\"max-ips\",user=\"alice\"}"),
            2.0
        );
        assert_eq!(
            v("mtg_user_rejections{reason=\"quota-cut\",user=\"bob.smith\"}"),
            1.0
        );
        assert!(!out.contains("reason=\"expired\""), "{out}");
        drop(lease);
        out.clear();
        render_prometheus(&mut out, "mtg", &src.snapshot());
        assert_eq!(
            line_value(&out, "mtg_user_connections{user=\"bob.smith\"}"),
            Some(0.0)
        );
        // Without users (a metrics source of its own), no user series at all.
        let (plain, _) = source();
        out.clear();
        render_prometheus(&mut out, "mtg", &plain.snapshot());
        assert!(!out.contains("user="), "{out}");
    }

    #[test]
    fn statsd_user_deltas_follow_names_across_a_reload() {
        use crate::proto::users::Users;
        let (src, cell) = with_users(&[("alice", 1), ("bob", 2)]);
        let ip = "192.0.2.1".parse().unwrap();
        let none = crate::proto::users::Limits::default();
        let live = cell.load();
        let lease = live.stats[1].admit(&none, ip, 0).unwrap();
        assert!(lease.traffic(10, 20));
        let base = src.snapshot();
        assert!(lease.traffic(1, 2));
        live.stats[1].rejected(UserReject::Expired);
        // Reload: carol first, bob second; alice gone. bob's base is found by name.
        let mut specs = vec![live.users.get(1).unwrap().clone()];
        specs.insert(
            0,
            crate::proto::users::tests::user(
                "carol",
                crate::proto::secret::SecretKind::Classic,
                "",
                9,
            ),
        );
        let _ = cell.replace(Users::new(specs).unwrap(), 0);
        let mut out = String::new();
        render_statsd(&mut out, TagFormat::Datadog, "mtg.", &src.snapshot(), &base);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("user")).collect();
        assert!(
            lines.contains(&"mtg.user_traffic:2|c|#direction:to_client,user:bob"),
            "{out}"
        );
        assert!(
            lines.contains(&"mtg.user_traffic:1|c|#direction:from_client,user:bob"),
            "{out}"
        );
        assert!(
            lines.contains(&"mtg.user_rejections:1|c|#reason:expired,user:bob"),
            "{out}"
        );
        assert!(
            lines.contains(&"mtg.user_connections:1|g|#user:bob"),
            "{out}"
        );
        assert!(
            lines.contains(&"mtg.user_connections:0|g|#user:carol"),
            "{out}"
        );
        // Unchanged counters are not sent; alice is gone.
        assert!(!out.contains("user_handshakes"), "{out}");
        assert!(!out.contains("alice"), "{out}");
        drop(lease);
    }
}
