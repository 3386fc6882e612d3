//! The proxy's counters, kept once: every worker bumps these atomics per event (accept,
//! handshake, close) or per sweep (pool levels, bytes relayed since the last sweep), never per
//! packet; the metrics exporters ([`crate::background::metrics`]), the shutdown log line and
//! tests read them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::proto::Reject;

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

/// Indices of [`Stats`]' middle-proxy counters.
pub(crate) const ME_OPEN: usize = 0;
pub(crate) const ME_RECONNECTS: usize = 1;
pub(crate) const ME_UP: usize = 2;
pub(crate) const ME_DOWN: usize = 3;
pub(crate) const ME_LOST: usize = 4;

/// Counters shared by all workers; touched per connection event or per sweep, never per packet.
#[derive(Debug)]
pub struct Stats {
    /// Connections accepted (within the concurrency limit).
    pub accepted: AtomicU64,
    /// Connections closed at once because `concurrency` was reached.
    pub limited: AtomicU64,
    /// Handshakes that reached the DC-connect stage.
    pub handshakes: AtomicU64,
    /// Connections closed after a rejected handshake (not fronted: the reason is in
    /// [`Stats::failures`] either way).
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
    /// Handshake steps run while their address was over its share of handshake work (a
    /// search for the user in such a step tries only the hint; see `io::sources`).
    pub search_limited: AtomicU64,
    /// Payload bytes from clients of connections that closed (DC and fronted alike).
    pub bytes_up: AtomicU64,
    /// Payload bytes to clients of connections that closed (DC and fronted alike).
    pub bytes_down: AtomicU64,
    /// Failed handshakes (fronted or closed) by reason, indexed by [`Reject::ALL`].
    pub(crate) rejects: [AtomicU64; Reject::ALL.len()],
    /// Fronted connections that closed (`fronted` minus this = open ones).
    pub(crate) front_closed: AtomicU64,
    /// Bytes from and to clients of fronted connections, counted every sweep and at close.
    pub(crate) front_up: AtomicU64,
    pub(crate) front_down: AtomicU64,
    /// Bytes client -> DC, DC -> client, counted every sweep and at close, and relays open,
    /// per [`DC_LABELS`] slot.
    pub(crate) dc_up: [AtomicU64; DC_LABELS.len()],
    pub(crate) dc_down: [AtomicU64; DC_LABELS.len()],
    pub(crate) dc_open: [AtomicU64; DC_LABELS.len()],
    /// Per worker: relay buffers in use and in all, handshake buffers in use.
    pub(crate) pool_in_use: Box<[AtomicUsize]>,
    pub(crate) pool_capacity: Box<[AtomicUsize]>,
    pub(crate) handshake_bufs: Box<[AtomicUsize]>,
    /// Middle-proxy (ad-tag) connections: open now, reconnects, bytes client -> ME -> client,
    /// sessions the middle proxy ended while the client was still there.
    pub(crate) me: [AtomicU64; 5],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(1)
    }
}

impl Stats {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> Stats {
        let per_worker = || (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect();
        Stats {
            accepted: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            fronted: AtomicU64::new(0),
            dc_failures: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            front_self_loops: AtomicU64::new(0),
            search_limited: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
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
            me: Default::default(),
        }
    }

    /// A middle-proxy connection opened (`true`) or closed; `reconnect`: it replaces one that
    /// failed (another middle proxy of the list).
    pub(crate) fn middle_proxy(&self, open: bool, reconnect: bool) {
        if open {
            self.me[ME_OPEN].fetch_add(1, Ordering::Relaxed);
        } else {
            self.me[ME_OPEN].fetch_sub(1, Ordering::Relaxed);
        }
        if reconnect {
            self.me[ME_RECONNECTS].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes relayed through middle proxies since the last report.
    pub(crate) fn middle_proxy_traffic(&self, up: u64, down: u64) {
        self.me[ME_UP].fetch_add(up, Ordering::Relaxed);
        self.me[ME_DOWN].fetch_add(down, Ordering::Relaxed);
    }

    /// A middle proxy ended a client's session (died, reset, sent garbage) before the client
    /// left.
    pub(crate) fn middle_proxy_lost(&self) {
        self.me[ME_LOST].fetch_add(1, Ordering::Relaxed);
    }

    /// The middle-proxy counters: connections open now, reconnects, bytes from and to
    /// clients (reported by the sweep and at close), sessions lost.
    pub fn middle_proxy_counters(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.me[i].load(Ordering::Relaxed))
    }

    /// A handshake failed for `why` (fronted or closed).
    pub(crate) fn handshake_failed(&self, why: Reject) {
        if let Some(c) = self.rejects.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed handshakes for `why` so far.
    pub fn failures(&self, why: Reject) -> u64 {
        self.rejects
            .get(why as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
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
