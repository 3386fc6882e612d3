//! The handshake phase: reads the client's bytes into a buffer and hands them to the
//! [`Handshake`] machine, writes the server flight it produces, checks the client's address
//! after a PROXY header, and carries out the decision (dial the DC, dial the fronting site,
//! close). No protocol decision is made here.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::dial::Route;
use super::relay::{Half, write_some};
use super::{CLIENT, CloseReason, Conn, Ctx, Phase, R, Release, Role, TURN_BUDGET, W, Want};
use crate::io::pool::{BufId, Class, Pool};
use crate::io::shared::{SharedHellos, SharedReplay, SharedShapes};
use crate::io::sock::{Net, Sock};
use crate::io::stats::Stats;
use crate::io::users::{Lease, LiveUsers};
use crate::io::{FastRng, unix_now};
use crate::log::Level;
use crate::proto::Reject;
use crate::proto::handshake::{Admission, Admit, Close, Env, Expect, Handshake, Step};
use crate::proto::secret::SecretKind;
use crate::proto::shaping::{self, Pacer};
use crate::proto::users::{UserId, UserReject};

/// How long an incomplete handshake may stay quiet after the client's last byte before it
/// is fronted (issue 12: it was the whole handshake timeout, a tell). Above one TCP
/// retransmission of a hello's second segment (Linux's minimum RTO of 200 ms plus the
/// path's RTT, up to ~300 ms), well under a second; docs/ARCHITECTURE.md ("Grace fronting")
/// says what it costs.
pub(super) const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// The handshake phase's data.
pub(super) struct Hs {
    machine: Handshake,
    /// The bytes read so far: `buf[..machine.filled()]` (none before the first read).
    buf: Option<BufId>,
    /// The client sent EOF.
    eof: bool,
    /// The rest of the server flight that the socket did not take at once.
    flight: Half,
    /// The record timing toward the client (the flight starts its clock).
    pacer: Pacer,
    /// The users as they were when the handshake started (user ids are this snapshot's).
    live: Arc<LiveUsers>,
    /// The admitted user's hold on its limits (from admission to close).
    lease: Option<Lease>,
    /// When the handshake started (a waiting handshake is looked at every sweep).
    started: Instant,
}

impl Hs {
    pub(super) fn new(ctx: &Ctx<'_, impl Net>) -> Hs {
        let config = &ctx.shared.config;
        let live = ctx.shared.users.current();
        let has = |k| live.users.has_kind(k);
        let expect = Expect {
            proxy_header: config.proxy_protocol_listener,
            faketls: has(SecretKind::FakeTls),
            obfs2: has(SecretKind::Secure) || has(SecretKind::Classic),
        };
        Hs {
            machine: Handshake::new(expect, ctx.now + config.timeouts.handshake),
            buf: None,
            eof: false,
            flight: Half::default(),
            pacer: super::pacer(ctx),
            live,
            lease: None,
            started: ctx.now,
        }
    }

    /// When the handshake times out, or its grace ends; while it waits for its user's
    /// `max-connections`, now (the sweep asks the user's limits again).
    pub(super) fn deadline(&self) -> Instant {
        match self.machine.waiting() {
            Some(_) => self.started,
            None => self.machine.poll_timeout(),
        }
    }

    /// When the worker must run the handshake again, unless bytes come first: the end of
    /// its grace (a timer, not the quarter-second sweep: the grace is what a prober times).
    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.machine.quiet_until()
    }
}

/// A user's limits, as the handshake asks them: the lease of an admitted connection is kept.
struct Limits<'a> {
    live: &'a LiveUsers,
    ip: IpAddr,
    now_unix: u64,
    lease: &'a mut Option<Lease>,
}

impl Admission for Limits<'_> {
    fn admit(&mut self, user: UserId) -> Admit {
        match self.live.admit(user, self.ip, self.now_unix) {
            Ok(lease) => {
                *self.lease = Some(lease);
                Admit::Yes
            }
            Err(UserReject::MaxConnections) => Admit::Wait,
            Err(why) => Admit::No(why),
        }
    }
}

impl Release for Hs {
    fn release(mut self, pool: &mut Pool, _: &Stats) {
        if let Some(id) = self.buf.take() {
            pool.release(id);
        }
        self.flight.release(pool);
    }
}

/// What the machine is called with.
#[derive(Clone, Copy)]
enum Call {
    /// New bytes (count).
    Received(usize),
    /// Nothing new: move on with what is there.
    Handle,
    /// The client sent EOF.
    Eof,
}

/// Calls the machine on the bytes in `id` with a fresh environment (the users, the time, the
/// shared tables behind their locks, the worker's randomness and scratch space) for a client
/// at `ip`. The worker's time it takes is charged to `ip`'s source bucket: one over its share
/// gets only its hint tried (see [`crate::io::sources`]).
fn call<N: Net>(hs: &mut Hs, id: BufId, what: Call, ip: IpAddr, ctx: &mut Ctx<'_, N>) -> Step {
    let (sources, now) = (&ctx.shared.sources, ctx.now);
    let bucket = sources.bucket(ip);
    let search_all = sources.may_search(bucket, now);
    if !search_all {
        ctx.shared
            .stats
            .search_limited
            .fetch_add(1, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    let step = call_machine(hs, id, what, ip, search_all, ctx);
    ctx.shared.sources.charge(bucket, t0.elapsed(), now);
    step
}

fn call_machine<N: Net>(
    hs: &mut Hs,
    id: BufId,
    what: Call,
    ip: IpAddr,
    search_all: bool,
    ctx: &mut Ctx<'_, N>,
) -> Step {
    let Ctx {
        pool,
        shared,
        rng,
        keyshares,
        scratch,
        ..
    } = ctx;
    let config = &shared.config;
    let mut replay = SharedReplay(shared);
    let mut shapes = SharedShapes(shared);
    let mut hellos = SharedHellos(&shared.ja4);
    let now_unix = unix_now();
    let mut limits = Limits {
        live: &hs.live,
        ip,
        now_unix,
        lease: &mut hs.lease,
    };
    let mut env: Env<'_, FastRng> = Env {
        users: &hs.live.users,
        hint: shared.recent.get(ip),
        search_all,
        admission: &mut limits,
        tolerance_secs: config.tolerate_time_skewness.as_secs(),
        dcs: shared.dc.as_ref(),
        allow_unknown_dc: config.allow_fallback_on_unknown_dc,
        now_unix,
        rng,
        replay: &mut replay,
        shapes: &mut shapes,
        hellos: &mut hellos,
        key_shares: keyshares,
        scratch,
    };
    let buf = pool.get(id);
    match what {
        Call::Received(n) => hs.machine.received(buf, n, &mut env),
        Call::Handle => hs.machine.handle(buf, &mut env),
        Call::Eof => hs.machine.handle_eof(buf, &mut env),
    }
}

impl<S: Sock> Conn<S> {
    /// A turn of the handshake phase. (Not inlined into the worker loop, nor the other phase
    /// steps below: 0.8 KiB less code.)
    #[inline(never)]
    pub(super) fn handshake(
        &mut self,
        mut hs: Hs,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        // The grace after the client's last byte ended (a timer brought us here). Bytes
        // waiting to be read go first: a worker woken late must not front a client whose
        // next segment came in time (then the check comes once the socket is drained).
        if self.ready[CLIENT] & R == 0 || hs.eof {
            if let Some(step) = hs.machine.handle_timeout(ctx.now) {
                return match self.follow(hs, step, false, ctx) {
                    Ok(hs) => Phase::Handshake(hs),
                    Err(next) => next,
                };
            }
        }
        // Flush the rest of the server flight if there is one.
        if !hs.flight.is_empty() && self.ready[CLIENT] & W != 0 {
            match hs.flight.write_to(&self.client, ctx.pool) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.ready[CLIENT] &= !W,
                Err(e) => return self.closed(hs, CloseReason::Error(e.kind()), ctx),
            }
            if hs.flight.is_empty() {
                hs.flight.release(ctx.pool);
            }
        }
        if let Some(id) = hs.buf.filter(|_| hs.machine.filled() > 0) {
            // Bytes gathered before a pause (e.g. waiting for a pool buffer): look again.
            let step = call(&mut hs, id, Call::Handle, self.peer.ip(), ctx);
            match self.follow(hs, step, false, ctx) {
                Ok(hs_back) => hs = hs_back,
                Err(next) => return next,
            }
        }
        if self.ready[CLIENT] & R == 0 || hs.eof {
            return Phase::Handshake(hs);
        }
        let mut id = match hs.buf {
            Some(id) => id,
            // A small handshake buffer: a stalled handshake must not hold a relay buffer.
            None => match ctx.pool.checkout(Class::Handshake) {
                Some(id) => {
                    hs.buf = Some(id);
                    id
                }
                None => {
                    want.buffer = Some(Class::Handshake);
                    return Phase::Handshake(hs);
                }
            },
        };
        // Bytes read this turn, record headers included: empty records must not keep the
        // worker here.
        let mut raw = 0;
        loop {
            if raw >= TURN_BUDGET {
                want.requeue = true;
                return Phase::Handshake(hs);
            }
            let filled = hs.machine.filled();
            if filled >= ctx.pool.get(id).len() {
                // Outgrown: move to a relay buffer if 3/4 of them are free. Otherwise (under
                // pressure) decide on what we have: a hello this big is not a Telegram
                // client's, so it is fronted (which streams it on from here).
                // (A relay buffer that is full comes back unchanged: too large as well.)
                match ctx.pool.grow(id, filled, Class::Grown) {
                    Some(big) if big != id => {
                        id = big;
                        hs.buf = Some(big);
                    }
                    _ => {
                        let step = hs.machine.fail(Reject::TooLarge);
                        return match self.follow(hs, step, false, ctx) {
                            Ok(hs) => Phase::Handshake(hs),
                            Err(next) => next,
                        };
                    }
                }
            }
            let read = self.client.read(&mut ctx.pool.get(id)[filled..]);
            let step = match read {
                Ok(0) => {
                    hs.eof = true;
                    // Decide on what we have; an incomplete handshake then ends in Eof.
                    call(&mut hs, id, Call::Eof, self.peer.ip(), ctx)
                }
                Ok(n) => {
                    raw += n;
                    let step = call(&mut hs, id, Call::Received(n), self.peer.ip(), ctx);
                    hs.machine.heard(ctx.now, HANDSHAKE_GRACE);
                    step
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.ready[CLIENT] &= !R;
                    return self.quiet_timeout(hs, ctx);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.closed(hs, CloseReason::Error(e.kind()), ctx),
            };
            // (At EOF the machine always decides, so `Ok` means more bytes may come.)
            let eof = hs.eof;
            match self.follow(hs, step, eof, ctx) {
                Ok(back) if !eof => hs = back,
                Ok(back) => return Phase::Handshake(back),
                Err(next) => return next,
            }
        }
    }

    /// The end of a turn with nothing more to read: fails the handshake if the client stayed
    /// quiet past its grace (or the deadline passed).
    fn quiet_timeout(&mut self, mut hs: Hs, ctx: &mut Ctx<'_, impl Net<Sock = S>>) -> Phase<S> {
        match hs.machine.handle_timeout(ctx.now) {
            Some(step) => match self.follow(hs, step, false, ctx) {
                Ok(hs) => Phase::Handshake(hs),
                Err(next) => next,
            },
            None => Phase::Handshake(hs),
        }
    }

    /// The handshake's deadline passed (or, while it waits for its user's
    /// `max-connections`, a sweep came: ask again).
    #[inline(never)]
    pub(super) fn handshake_timeout(
        &mut self,
        mut hs: Hs,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        _: &mut Want,
    ) -> Phase<S> {
        let step = match hs.machine.handle_timeout(ctx.now) {
            Some(step) => step,
            None => match (hs.machine.waiting(), hs.buf) {
                (Some(_), Some(id)) => call(&mut hs, id, Call::Handle, self.peer.ip(), ctx),
                _ => return Phase::Handshake(hs),
            },
        };
        let eof = hs.eof;
        match self.follow(hs, step, eof, ctx) {
            Ok(hs) => Phase::Handshake(hs),
            Err(next) => next,
        }
    }

    /// Carries out the machine's steps until it needs more bytes (`Ok`: the handshake goes
    /// on) or decides (`Err`: the next phase). After EOF (`eof`), `Write` and `Peer` lead back
    /// to `handle_eof`. (Both sides are phase data moved by value, large by design.)
    #[allow(clippy::result_large_err)]
    fn follow(
        &mut self,
        mut hs: Hs,
        mut step: Step,
        eof: bool,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Result<Hs, Phase<S>> {
        let again = if eof { Call::Eof } else { Call::Handle };
        loop {
            step = match step {
                // (A waiting connection is asked again at each sweep and with new bytes.)
                Step::NeedMore | Step::Wait(_) => return Ok(hs),
                Step::Peer(source) => {
                    // The header was for us: take the client address it announces, and check
                    // that one against the IP lists.
                    if let Some(src) = source {
                        self.peer = src;
                    }
                    if !ctx.shared.admits(self.peer.ip()) {
                        return Err(self.closed(hs, CloseReason::Blocked, ctx));
                    }
                    let id = hs.buf.expect("a PROXY stage has bytes");
                    call(&mut hs, id, again, self.peer.ip(), ctx)
                }
                Step::Write(n) => {
                    if let Err(reason) = self.send_flight(&mut hs, n, ctx) {
                        return Err(self.closed(hs, reason, ctx));
                    }
                    let id = hs.buf.expect("a flight answers bytes");
                    call(&mut hs, id, again, self.peer.ip(), ctx)
                }
                Step::Connect(accepted) => {
                    let stats = &ctx.shared.stats;
                    stats.handshakes.fetch_add(1, Ordering::Relaxed);
                    ctx.shared.recent.remember(self.peer.ip(), accepted.user);
                    self.lease = hs.lease.take();
                    crate::log_event!(
                        Level::Debug,
                        "user-connected",
                        conn = self.id_str(),
                        client = self.peer,
                        user = self.user().unwrap_or(""),
                        dc = accepted.dc
                    );
                    self.role = Role::Dc(accepted.dc);
                    self.bytes[0] += accepted.early as u64;
                    // Records read after the frame stay raw after the held bytes: the relay
                    // takes them in first.
                    let taken = hs.machine.filled() - accepted.records;
                    let up = Half::holding(hs.buf, taken, hs.eof);
                    let route = Route::Dc {
                        dc: accepted.dc,
                        ciphers: accepted.ciphers,
                        tls: accepted.tls.map(|reader| (reader, hs.pacer)),
                        records: accepted.records,
                    };
                    // An ad tag (the user's own, from the snapshot the handshake pinned, else
                    // the top-level one): through a middle proxy instead.
                    let own_tag = hs.live.users.specs().get(accepted.user);
                    let own_tag = own_tag.and_then(|u| u.ad_tag);
                    let (route, up) = self.middle_route(route, up, own_tag, accepted.tag, ctx);
                    return Err(self.dial(route, up, hs.flight, ctx));
                }
                Step::Front(why) => return Err(self.front(hs, why, ctx)),
                Step::Refused { user, why } => {
                    // Its key verified: an app retrying costs one key, not the search.
                    ctx.shared.recent.remember(self.peer.ip(), user);
                    if let Some(s) = hs.live.stats.get(user) {
                        s.rejected(why);
                    }
                    let name = hs.live.users.get(user).map_or("", |u| u.name.as_str());
                    // Rate-limited: an app refused retries at will.
                    crate::log_probe!(
                        crate::log::Probe::UserRefused,
                        Level::Info,
                        "user-refused",
                        conn = self.id_str(),
                        client = self.peer,
                        user = name,
                        reason = why.as_str()
                    );
                    return Err(self.front(hs, Reject::UserLimit, ctx));
                }
                Step::Close(close) => {
                    let reason = match close {
                        Close::Rejected(r) => {
                            ctx.shared.stats.handshake_failed(r);
                            CloseReason::Rejected(r)
                        }
                        Close::UnknownDc(dc) => {
                            self.role = Role::Dc(dc);
                            CloseReason::UnknownDc
                        }
                        Close::Flight => CloseReason::Error(ErrorKind::OutOfMemory),
                    };
                    return Err(self.closed(hs, reason, ctx));
                }
            };
        }
    }

    /// Writes the server flight (`scratch[..n]`) at once: a fresh socket's send buffer takes
    /// it whole, so a handshake holds one pool buffer, never two (holding two would let
    /// handshakes deadlock each other on a small pool). Rarely, the rest waits in a buffer of
    /// its own until the socket is writable.
    fn send_flight(
        &mut self,
        hs: &mut Hs,
        n: usize,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Result<(), CloseReason> {
        let written = match write_some(&self.client, &ctx.scratch[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(CloseReason::Error(e.kind())),
        };
        if written < n {
            self.ready[CLIENT] &= !W;
            let rest = &ctx.scratch[written..n];
            if !hs.flight.fill_from(rest, ctx.pool, Class::Client) {
                return Err(CloseReason::Error(ErrorKind::OutOfMemory));
            }
        }
        if let Some(s) = ctx.shared.shaping.get() {
            // As mtg: the first record also waits one gap after the flight.
            hs.pacer
                .flight_sent(ctx.now, &s, shaping::draw(&mut *ctx.rng));
        }
        Ok(())
    }

    /// The handshake failed for `why` before the proxy answered: the connection is spliced to
    /// the fronting site, every byte read so far replayed unchanged, then both directions
    /// relayed byte for byte (PROTOCOL.md §6). Without a fronting address it is closed.
    fn front(&mut self, hs: Hs, why: Reject, ctx: &mut Ctx<'_, impl Net<Sock = S>>) -> Phase<S> {
        let stats = &ctx.shared.stats;
        stats.handshake_failed(why);
        // The site of the user the handshake named (its SNI, or the refused user), else the
        // default one.
        let host = hs.machine.front_user().and_then(|u| hs.live.users.get(u));
        let site = ctx.shared.site(host.map_or("", |u| u.secret.host.as_str()));
        if ctx.shared.sites.addr(site, 0).is_none() {
            return self.closed(hs, CloseReason::Rejected(why), ctx);
        }
        self.role = Role::Fronted(why);
        stats.fronted.fetch_add(1, Ordering::Relaxed);
        // Rate-limited: any prober can trigger it (issue 12).
        crate::log_probe!(
            crate::log::Probe::Fronting,
            Level::Info,
            "fronting",
            conn = self.id_str(),
            client = self.peer,
            reason = why.as_str()
        );
        // The bytes read so far stay in the up half exactly as received (and count as the
        // client's traffic to the site).
        let filled = hs.machine.filled();
        self.bytes[0] += filled as u64;
        let up = Half::holding(hs.buf, filled, hs.eof);
        self.dial(Route::Front(site), up, hs.flight, ctx)
    }
}
