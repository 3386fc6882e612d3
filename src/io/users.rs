//! The users' live state, shared by all workers: the current [`Users`] snapshot with one
//! [`UserStats`] per user (counters, quota usage, open connections and their addresses), and
//! the [`UsersCell`] a reload swaps.
//!
//! Per event only (a connection admitted or closed, a sweep's bytes): a connection holds a
//! [`Lease`] (an `Arc` of its user's stats) from admission to close, so counting never looks
//! the user up again and a reload never loses a count: a user kept across a reload keeps its
//! `UserStats`, a removed user's stays alive until its last connection closes. Admission takes
//! the user's own short lock (its address set), never a global one.
//!
//! How the connection layer uses it (issue 15's wiring):
//! ```text
//! let live = cell.load();                        // Arc<LiveUsers>; cache it per worker by
//!                                                // cell.generation()
//! let hint = recent.get(peer.ip());              // proto::users::RecentUsers
//! let found = live.users.find_faketls(..., hint) // or find_obfs2(frame, hint)
//! recent.remember(peer.ip(), found.user);
//! let spec = live.users.get(found.user);
//! match live.stats[found.user].admit(&spec.limits, peer.ip(), now_unix) {
//!     Ok(lease) => relay, calling lease.traffic(up, down) each sweep: false = cut at the
//!                  next record boundary (then stats.rejected(QuotaCut));
//!     Err(MaxConnections) => wait (bounded by the handshake timeout) and admit again;
//!     Err(why) => stats.rejected(why), front the connection.
//! }
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::users::{Diff, Limits, UserReject, Users, diff};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One user's counters and live connections.
#[derive(Debug, Default)]
pub struct UserStats {
    /// The user's name (logs; never the secret).
    name: Box<str>,
    /// Bumped when the user is removed or its secret changes: leases taken before are revoked
    /// (their connections closed).
    epoch: AtomicU64,
    /// Bytes from the client since start (metrics).
    pub(crate) from_client: AtomicU64,
    /// Bytes to the client since start (metrics).
    pub(crate) to_client: AtomicU64,
    /// Bytes both ways in the current quota period (persisted in the state file).
    used: AtomicU64,
    /// Unix time the current quota period started.
    period_start: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
    /// Connections admitted since start.
    pub(crate) admitted: AtomicU64,
    /// Connections refused (or cut) by a limit, per [`UserReject::ALL`].
    rejects: [AtomicU64; UserReject::ALL.len()],
    /// Client addresses with open connections and how many each (only while the user has
    /// `max-ips`; at most that many entries).
    ips: Mutex<Vec<(IpAddr, u32)>>,
}

/// A reading of one user's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserCounts {
    pub from_client: u64,
    pub to_client: u64,
    pub used: u64,
    pub period_start: u64,
    pub open: u64,
    pub admitted: u64,
    pub rejects: [u64; UserReject::ALL.len()],
}

impl UserStats {
    /// Fresh counters whose quota period starts at `period_start`.
    pub fn new(period_start: u64) -> UserStats {
        let s = UserStats::default();
        s.period_start.store(period_start, Ordering::Relaxed);
        s
    }

    /// Fresh counters of user `name` (see [`UserStats::new`]).
    pub fn named(name: &str, period_start: u64) -> UserStats {
        UserStats {
            name: name.into(),
            ..UserStats::new(period_start)
        }
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Revokes every lease taken so far (the user was removed or got a new secret): their
    /// connections are closed at the next sweep. Returns the new epoch.
    pub fn revoke(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current epoch (see [`UserStats::revoke`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Admits a connection from `ip` under `limits` at `now_unix`, or says which limit refuses
    /// it: `Expired`, `Quota`, `MaxIps` (front it), `MaxConnections` (wait for one of the
    /// user's connections to end, admit again, front when the handshake time is up). The
    /// refusal is not counted: call [`UserStats::rejected`] once the connection is fronted.
    pub fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        ip: IpAddr,
        now_unix: u64,
    ) -> Result<Lease, UserReject> {
        self.admit_at(limits, ip, now_unix, self.epoch())
    }

    /// [`UserStats::admit`] for a client found in a snapshot in which the user's epoch was
    /// `epoch`: the lease is revoked at once if the user was revoked since.
    pub fn admit_at(
        self: &Arc<Self>,
        limits: &Limits,
        ip: IpAddr,
        now_unix: u64,
        epoch: u64,
    ) -> Result<Lease, UserReject> {
        if let Some(why) = limits.refuse(now_unix, self.used.load(Ordering::Relaxed)) {
            return Err(why);
        }
        let mut ips = lock(&self.ips);
        let slot = ips.iter().position(|(a, _)| *a == ip);
        if let Some(max) = limits.max_ips {
            if slot.is_none() && ips.len() >= max as usize {
                return Err(UserReject::MaxIps);
            }
        }
        if let Some(max) = limits.max_connections {
            if self.open.load(Ordering::Relaxed) >= u64::from(max) {
                return Err(UserReject::MaxConnections);
            }
        }
        let tracked = limits.max_ips.is_some();
        if tracked {
            match slot {
                Some(i) => ips[i].1 += 1,
                None => ips.push((ip, 1)),
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        drop(ips);
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            stats: self.clone(),
            ip: tracked.then_some(ip),
            quota: limits.quota,
            epoch,
        })
    }

    /// A connection was refused (or cut) for `why`.
    pub fn rejected(&self, why: UserReject) {
        self.rejects[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes used in the current quota period.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Distinct client addresses tracked now (users with `max-ips`).
    pub fn ips(&self) -> usize {
        lock(&self.ips).len()
    }

    /// Reads every counter.
    pub fn counts(&self) -> UserCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UserCounts {
            from_client: l(&self.from_client),
            to_client: l(&self.to_client),
            used: l(&self.used),
            period_start: l(&self.period_start),
            open: l(&self.open),
            admitted: l(&self.admitted),
            rejects: std::array::from_fn(|i| l(&self.rejects[i])),
        }
    }

    /// Starts the quota period that holds `now_unix` if the current one is over (usage back to
    /// zero; bytes counted meanwhile are kept). True when it did.
    pub fn roll(&self, period: Option<u64>, now_unix: u64) -> bool {
        let start = self.period_start.load(Ordering::Relaxed);
        match crate::proto::users::quota::roll(period, start, now_unix) {
            Some(new) => {
                self.period_start.store(new, Ordering::Relaxed);
                self.reset();
                true
            }
            None => false,
        }
    }

    /// Sets the usage back to zero (by hand: the period schedule stays).
    pub fn reset(&self) {
        let seen = self.used.load(Ordering::Relaxed);
        self.used.fetch_sub(seen, Ordering::Relaxed);
    }

    /// Takes over the usage and period start saved in the state file (at start).
    pub fn restore(&self, used: u64, period_start: u64) {
        self.used.fetch_add(used, Ordering::Relaxed);
        self.period_start.store(period_start, Ordering::Relaxed);
    }
}

/// An admitted connection's hold on its user: counts its traffic, and gives its connection
/// slot and address back when dropped.
#[derive(Debug)]
pub struct Lease {
    stats: Arc<UserStats>,
    ip: Option<IpAddr>,
    quota: Option<u64>,
    epoch: u64,
}

impl Lease {
    /// Counts bytes relayed since the last call. False once the user's quota is used up: cut
    /// the connection at the next record boundary.
    pub fn traffic(&self, from_client: u64, to_client: u64) -> bool {
        let s = &self.stats;
        s.from_client.fetch_add(from_client, Ordering::Relaxed);
        s.to_client.fetch_add(to_client, Ordering::Relaxed);
        let both = from_client.saturating_add(to_client);
        let used = s
            .used
            .fetch_add(both, Ordering::Relaxed)
            .saturating_add(both);
        self.quota.is_none_or(|q| used < q)
    }

    /// The user's stats.
    pub fn stats(&self) -> &Arc<UserStats> {
        &self.stats
    }

    /// Whether the user has a quota (then traffic is counted every relay turn, not only at
    /// the sweep).
    pub fn has_quota(&self) -> bool {
        self.quota.is_some()
    }

    /// Whether the user was removed or got a new secret since this lease was taken: close
    /// the connection.
    pub fn revoked(&self) -> bool {
        self.stats.epoch() != self.epoch
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let s = &self.stats;
        let mut ips = lock(&s.ips);
        if let Some(ip) = self.ip {
            if let Some(i) = ips.iter().position(|(a, _)| *a == ip) {
                ips[i].1 -= 1;
                if ips[i].1 == 0 {
                    ips.swap_remove(i);
                }
            }
        }
        s.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A users snapshot with its live state, index for index.
pub struct LiveUsers {
    /// The users.
    pub users: Users,
    /// Their stats (`stats[id]` is user `id`'s).
    pub stats: Vec<Arc<UserStats>>,
    /// Each user's epoch in this snapshot (see [`UserStats::revoke`]).
    pub epochs: Vec<u64>,
    /// Bumped by each reload.
    pub generation: u64,
}

impl LiveUsers {
    /// Admits a client of `user` from `ip` at `now_unix` under this snapshot's limits (see
    /// [`UserStats::admit`]).
    pub fn admit(&self, user: usize, ip: IpAddr, now_unix: u64) -> Result<Lease, UserReject> {
        let (Some(spec), Some(stats), Some(&epoch)) = (
            self.users.get(user),
            self.stats.get(user),
            self.epochs.get(user),
        ) else {
            return Err(UserReject::Expired);
        };
        stats.admit_at(&spec.limits, ip, now_unix, epoch)
    }

    /// Whether some user has a quota (then usage is persisted).
    pub fn has_quota(&self) -> bool {
        self.users.specs().iter().any(|s| s.limits.quota.is_some())
    }
}

/// The users in force; a reload swaps them.
pub struct UsersCell {
    current: Mutex<Arc<LiveUsers>>,
    generation: AtomicU64,
    /// Tells cells apart in the per-thread cache.
    id: u64,
}

static NEXT_CELL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: std::cell::RefCell<Option<(u64, u64, Arc<LiveUsers>)>> =
        const { std::cell::RefCell::new(None) };
}

impl UsersCell {
    /// The cell for `users`, every quota period starting at `now_unix`.
    pub fn new(users: Users, now_unix: u64) -> UsersCell {
        let stats = users
            .specs()
            .iter()
            .map(|s| Arc::new(UserStats::named(&s.name, now_unix)))
            .collect();
        UsersCell {
            current: Mutex::new(Arc::new(LiveUsers {
                epochs: vec![0; users.len()],
                users,
                stats,
                generation: 0,
            })),
            generation: AtomicU64::new(0),
            id: NEXT_CELL.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The users in force (hold on to the `Arc` while handling one connection).
    pub fn load(&self) -> Arc<LiveUsers> {
        lock(&self.current).clone()
    }

    /// [`UsersCell::load`] through a per-thread cache: a worker looks at the lock only after
    /// a reload (one atomic load otherwise).
    pub fn current(&self) -> Arc<LiveUsers> {
        let generation = self.generation();
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            match &*c {
                Some((id, g, live)) if *id == self.id && *g == generation => live.clone(),
                _ => {
                    let live = self.load();
                    *c = Some((self.id, live.generation, live.clone()));
                    live
                }
            }
        })
    }

    /// Bumped by each reload: a worker compares it to its cached snapshot's.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `users` in force; users kept or changed (same name) keep their stats, new ones
    /// start a quota period at `now_unix`. Removed users and users with a new secret are
    /// revoked ([`UserStats::revoke`]): their connections are closed. Returns the new snapshot
    /// and what changed.
    pub fn replace(&self, users: Users, now_unix: u64) -> (Arc<LiveUsers>, Diff) {
        let mut cur = lock(&self.current);
        let d = diff(&cur.users, &users);
        for &o in &d.removed {
            cur.stats[o].revoke();
        }
        for c in d.changed.iter().filter(|c| c.secret) {
            cur.stats[c.old].revoke();
        }
        let stats: Vec<Arc<UserStats>> = users
            .specs()
            .iter()
            .map(|s| match cur.users.id(&s.name) {
                Some(old) => cur.stats[old].clone(),
                None => Arc::new(UserStats::named(&s.name, now_unix)),
            })
            .collect();
        let generation = cur.generation + 1;
        let next = Arc::new(LiveUsers {
            epochs: stats.iter().map(|s| s.epoch()).collect(),
            users,
            stats,
            generation,
        });
        *cur = next.clone();
        self.generation.store(generation, Ordering::Release);
        (next, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::secret::SecretKind;
    use crate::proto::users::tests::user;
    use crate::proto::users::{UserSpec, Users};

    fn ip(i: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, i])
    }

    #[test]
    fn admit_applies_every_limit_and_a_lease_gives_its_share_back() {
        let s = Arc::new(UserStats::new(0));
        let limits = Limits {
            max_connections: Some(3),
            max_ips: Some(2),
            quota: Some(1000),
            quota_period: None,
            expires: Some(5000),
        };
        let a1 = s.admit(&limits, ip(1), 100).unwrap();
        let a2 = s.admit(&limits, ip(1), 100).unwrap();
        let b = s.admit(&limits, ip(2), 100).unwrap();
        assert_eq!(s.ips(), 2);
        // A third address is refused; the same addresses then hit max-connections.
        assert_eq!(s.admit(&limits, ip(3), 100).err(), Some(UserReject::MaxIps));
        assert_eq!(
            s.admit(&limits, ip(1), 100).err(),
            Some(UserReject::MaxConnections)
        );
        drop(a1);
        let a3 = s.admit(&limits, ip(1), 100).unwrap();
        drop((a2, a3));
        assert_eq!(s.ips(), 1);
        let c = s.admit(&limits, ip(3), 100).unwrap();
        assert_eq!(s.counts().open, 2);
        // Traffic counts toward the quota; the connection that uses it up hears so.
        assert!(b.traffic(300, 600));
        assert!(!c.traffic(50, 50));
        assert_eq!(s.admit(&limits, ip(3), 100).err(), Some(UserReject::Quota));
        assert_eq!(
            s.admit(&limits, ip(3), 5000).err(),
            Some(UserReject::Expired)
        );
        s.rejected(UserReject::Quota);
        s.rejected(UserReject::QuotaCut);
        let n = s.counts();
        assert_eq!(
            (n.from_client, n.to_client, n.used, n.admitted),
            (350, 650, 1000, 5)
        );
        assert_eq!(n.rejects, [0, 1, 0, 0, 1]);
        drop((b, c));
        assert_eq!((s.counts().open, s.ips()), (0, 0));
        // Without max-ips no address is kept.
        let free = s.admit(&Limits::default(), ip(9), 0).unwrap();
        assert_eq!(s.ips(), 0);
        assert!(free.traffic(u64::MAX, u64::MAX));
    }

    #[test]
    fn admit_is_exact_under_contention() {
        let s = Arc::new(UserStats::new(0));
        let limits = Limits {
            max_connections: Some(10),
            max_ips: Some(4),
            ..Limits::default()
        };
        let peak = Arc::new(AtomicU64::new(0));
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let (s, peak) = (s.clone(), peak.clone());
                scope.spawn(move || {
                    for i in 0..2000u32 {
                        if let Ok(l) = s.admit(&limits, ip(t % 6), 0) {
                            let open = s.counts().open;
                            peak.fetch_max(open, Ordering::Relaxed);
                            assert!(s.ips() <= 4);
                            if i % 3 == 0 {
                                std::thread::yield_now();
                            }
                            drop(l);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 10);
        assert_eq!((s.counts().open, s.ips()), (0, 0));
    }

    #[test]
    fn periods_roll_and_resets_keep_later_bytes() {
        let s = UserStats::new(1000);
        s.restore(500, 1000);
        assert!(!s.roll(Some(100), 1099));
        assert_eq!(s.used(), 500);
        assert!(s.roll(Some(100), 1250));
        assert_eq!((s.used(), s.counts().period_start), (0, 1200));
        assert!(!s.roll(None, u64::MAX));
        s.restore(7, 1200);
        s.reset();
        assert_eq!(s.used(), 0);
    }

    fn users(specs: &[UserSpec]) -> Users {
        Users::new(specs.to_vec()).unwrap()
    }

    #[test]
    fn replace_keeps_the_stats_of_users_that_stay() {
        let a = user("alice", SecretKind::Secure, "", 1);
        let b = user("bob", SecretKind::Secure, "", 2);
        let c = user("carol", SecretKind::Secure, "", 3);
        let cell = UsersCell::new(users(&[a.clone(), b.clone()]), 10);
        let before = cell.load();
        let lease = before.stats[1].admit(&b.limits, ip(1), 0).unwrap();
        assert!(lease.traffic(5, 5));
        let mut b2 = b.clone();
        b2.limits.quota = Some(1 << 30);
        let (after, d) = cell.replace(users(&[c, b2]), 20);
        assert_eq!((d.added, d.removed), (vec![0], vec![0]));
        assert_eq!(cell.generation(), 1);
        assert_eq!(after.generation, 1);
        // bob (now id 1, changed limits) keeps his counters, and the live lease counts there.
        assert!(Arc::ptr_eq(&after.stats[1], &before.stats[1]));
        assert!(lease.traffic(1, 0));
        assert_eq!(cell.load().stats[1].used(), 11);
        // carol is new: her period starts now.
        assert_eq!(after.stats[0].counts().period_start, 20);
        // The old snapshot (and alice's stats) stay valid for whoever still holds them.
        assert_eq!(before.users.get(0).map(|u| u.name.as_str()), Some("alice"));
        drop(lease);
        assert_eq!(after.stats[1].counts().open, 0);
    }

    #[test]
    fn a_reload_revokes_removed_users_and_changed_secrets_only() {
        let a = user("alice", SecretKind::Secure, "", 1);
        let b = user("bob", SecretKind::Secure, "", 2);
        let c = user("carol", SecretKind::Secure, "", 3);
        let d = user("dave", SecretKind::Secure, "", 4);
        let cell = UsersCell::new(users(&[a.clone(), b.clone(), c.clone(), d.clone()]), 0);
        let old = cell.current();
        let lease =
            |live: &LiveUsers, name: &str| live.admit(live.users.id(name).unwrap(), ip(1), 0);
        let [la, lb, lc, ld] = ["alice", "bob", "carol", "dave"].map(|n| lease(&old, n).unwrap());
        assert_eq!(la.stats().name(), "alice");
        // bob removed, carol gets a new secret, dave new limits, alice unchanged.
        let mut c2 = user("carol", SecretKind::Secure, "", 33);
        c2.limits = c.limits;
        let mut d2 = d.clone();
        d2.limits.max_connections = Some(9);
        cell.replace(users(&[a, c2, d2]), 0);
        assert!(!la.revoked() && !ld.revoked());
        assert!(lb.revoked() && lc.revoked());
        // The cache follows the reload.
        let new = cell.current();
        assert_eq!(new.generation, 1);
        assert!(new.users.id("bob").is_none());
        // New leases of carol (new secret) stand; one admitted under the old snapshot after
        // the reload (a handshake that began before it) is revoked at once.
        assert!(!lease(&new, "carol").unwrap().revoked());
        assert!(lease(&old, "carol").unwrap().revoked());
        assert!(!lease(&old, "dave").unwrap().revoked());
    }
}
