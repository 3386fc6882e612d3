//! One client connection: an explicit state machine whose phases own their data, driven by
//! cached socket readiness.
//!
//! I/O layer glue between sockets ([`Sock`], [`Net`]) and the pure [`crate::proto`] code: the
//! protocol decisions are [`crate::proto::handshake`]'s (who the client is, where it goes),
//! the record timing is [`Pacer`]'s; here bytes are moved, buffers taken and given back, and
//! the decisions carried out.
//!
//! ```text
//! Handshake ──(Connect)──► Dial ──(up)──► [Socks ──(CONNECT ok)──►] Relay(Dc) ──► Closed
//!     │                     └─(failed, timeout: next address; none left)──────────► Closed
//!     │   (ad tag: Dial ──► Middle ──(RPC handshake)──► Relay(Middle), [`middle`])
//!     └─(Front: bad handshake, timeout, EOF)──► Dial ──(up)──► Relay(Front) ──────► Closed
//!                                                  (byte for byte to the fronting site)
//! ```
//!
//! Each [`Phase`] carries what only it needs and is moved by value into the next:
//! [`Handshake`](handshake::Hs) (the machine, the bytes read, the rest of a server flight, the
//! pacer), [`Dial`](dial::Dial) (the route, the address cursor, the socket being connected, the
//! bytes waiting for it), the SOCKS5 exchange, and [`Relay`](relay::Relay) (the two halves and
//! the relay kind: to a DC with its ciphers, or to the fronting site).
//!
//! The worker drives a connection through [`Conn::ready`] and [`Conn::handle_timeout`], each
//! returning a [`Turn`]: what the worker must do next. Nothing else passes between them.
//!
//! Invariants:
//! * Each relay direction holds a pool buffer only while bytes are in flight; an idle
//!   connection holds none. When the pool has no buffer of the class needed, the connection
//!   waits ([`Next::WaitBuffer`]: backpressure).
//! * Readiness is edge-triggered: a bit is cleared only when an operation returns WouldBlock.
//! * A direction (and a handshake) reads at most [`TURN_BUDGET`] bytes per turn, counted as read
//!   from the socket (record headers included), then the connection is requeued
//!   ([`Next::Requeue`]), so one bulk transfer (or a stream of empty records) cannot starve the
//!   others.

mod dial;
mod handshake;
mod middle;
mod relay;
#[cfg(test)]
mod tests;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::pool::{Class, Pool};
use super::sock::{Net, Sock};
use super::stats::Stats;
use super::users::Lease;
use super::{FastRng, Shared};
use crate::proto::Reject;
use crate::proto::shaping::Pacer;
use crate::proto::x25519::KeyShares;

pub(crate) use super::sock::{CLIENT, UPSTREAM};

/// Readiness bit: the socket may have bytes to read (or an EOF/error to report).
pub(crate) const R: u8 = 1;
/// Readiness bit: the socket may accept bytes (or has an error to report).
pub(crate) const W: u8 = 2;

/// Bytes a direction may move in one turn before yielding to other connections.
pub(crate) const TURN_BUDGET: usize = 256 * 1024;

/// Why a connection ended (for logs and statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Both directions finished cleanly.
    Done,
    /// The client's handshake was rejected.
    Rejected(Reject),
    /// No datacenter address could be reached.
    DcUnreachable,
    /// The fronting site could not be reached.
    FrontUnreachable,
    /// The client address is not allowed (blocklist / allowlist).
    Blocked,
    /// The client asked for a DC we do not know, and fallback is off.
    UnknownDc,
    /// No traffic for the idle timeout.
    Idle,
    /// A direction held a relay buffer without writing while they ran short.
    Stalled,
    /// A socket error (reset, broken pipe…).
    Error(ErrorKind),
    /// The proxy is shutting down.
    Shutdown,
    /// The client's user was removed or got a new secret (a reload).
    Revoked,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::Rejected(r) => r.as_str(),
            CloseReason::DcUnreachable => "dc-unreachable",
            CloseReason::FrontUnreachable => "front-unreachable",
            CloseReason::Blocked => "ip-blocked",
            CloseReason::UnknownDc => "unknown-dc",
            CloseReason::Idle => "idle-timeout",
            CloseReason::Stalled => "stalled",
            CloseReason::Error(_) => "socket-error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Revoked => "user-revoked",
        }
    }
}

/// What the worker does with a connection after its turn.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Turn {
    /// What comes next.
    pub(crate) next: Next,
    /// Run it again at this time (traffic shaping), whatever `next` is.
    pub(crate) wake_at: Option<Instant>,
}

/// See [`Turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing to do until a socket event (or `wake_at`).
    Idle,
    /// It stopped on its byte budget with work left: run it again next turn.
    Requeue,
    /// It needs a buffer of this class and the pool had none: run it again when one comes
    /// back.
    WaitBuffer(Class),
    /// Closed for this reason: free its slot after this event batch.
    Closed(CloseReason),
}

/// What a connection asks of its worker, gathered during one turn.
#[derive(Clone, Copy, Debug, Default)]
struct Want {
    requeue: bool,
    buffer: Option<Class>,
    wake_at: Option<Instant>,
}

/// Per-turn context handed to a connection by its worker.
pub(crate) struct Ctx<'a, N: Net> {
    pub(crate) pool: &'a mut Pool,
    pub(crate) shared: &'a Shared,
    pub(crate) net: &'a mut N,
    pub(crate) rng: &'a mut FastRng,
    pub(crate) keyshares: &'a mut KeyShares,
    /// Work space: a reassembled ClientHello, a server flight, a SOCKS5 message.
    pub(crate) scratch: &'a mut [u8],
    pub(crate) now: Instant,
    /// The worker has other connections to turn now: it is busy, so a woken peer would take
    /// its CPU. A relay then writes a full buffer with more to follow (`MSG_MORE`), one
    /// segment per ~64 KiB instead of one per read; alone, it writes each read at once (the
    /// peer starts sooner, which costs less here).
    pub(crate) busy: bool,
}

/// What a connection turned out to be, once its handshake decided (for counters and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Still in its handshake.
    Client,
    /// A client of ours relayed to DC `dc` (the DC it asked for).
    Dc(i16),
    /// A client of ours (ad tag) relayed to DC `dc` through a middle proxy.
    Middle(i16),
    /// Not a client of ours: spliced to the fronting site for this reason.
    Fronted(Reject),
}

/// Where a connection is in its life; each phase owns its data.
enum Phase<S> {
    /// Reading the client's handshake.
    Handshake(handshake::Hs),
    /// Connecting to a DC address or the fronting site.
    Dial(dial::Dial<S>),
    /// Asking a SOCKS5 upstream to connect us to the DC.
    Socks(dial::Socks<S>),
    /// The RPC handshake with a middle proxy (ad tag).
    Middle(dial::Dial<S>),
    /// Relaying bytes both ways.
    Relay(relay::Relay<S>),
    /// Done; the slot is freed at the end of the event batch.
    Closed(CloseReason),
}

/// A client connection and, once connected, its upstream socket.
pub(crate) struct Conn<S: Sock> {
    id: u64,
    peer: SocketAddr,
    slot: usize,
    client: S,
    /// Cached readiness bits ([`R`], [`W`]) of the client and upstream sockets.
    ready: [u8; 2],
    phase: Phase<S>,
    role: Role,
    started: Instant,
    /// Payload bytes received from / sent to the client: up, down.
    bytes: [u64; 2],
    /// `bytes` already reported to the counters.
    counted: [u64; 2],
    /// The client's hold on its user (admitted by the user's limits): counts the user's
    /// traffic, gives the user's slot back when the connection is dropped.
    lease: Option<Lease>,
    /// `bytes` already counted toward the user.
    user_counted: [u64; 2],
    /// The user's quota ran out: the relay was cut (it ends once what it holds is flushed).
    cut: bool,
}

impl<S: Sock> Conn<S> {
    /// A freshly accepted client socket (registered by the worker), starting its handshake.
    pub(crate) fn new(
        id: u64,
        slot: usize,
        client: S,
        peer: SocketAddr,
        ctx: &Ctx<'_, impl Net>,
    ) -> Self {
        Conn {
            id,
            peer,
            slot,
            client,
            ready: [0, 0],
            phase: Phase::Handshake(handshake::Hs::new(ctx)),
            role: Role::Client,
            started: ctx.now,
            bytes: [0, 0],
            counted: [0, 0],
            lease: None,
            user_counted: [0, 0],
            cut: false,
        }
    }

    /// The client's user, once admitted (for logs).
    pub(crate) fn user(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.stats().name())
    }

    /// Counts the bytes relayed since the last call toward the user (traffic and quota).
    /// Once the user's quota is used up (by this connection or another of the user's), the
    /// relay is cut at the next record boundary: nothing more is read either way, what is
    /// buffered (toward the client: whole TLS records) is flushed, then both sides are shut.
    fn feed_user(&mut self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let [up, down] = [
            self.bytes[0] - self.user_counted[0],
            self.bytes[1] - self.user_counted[1],
        ];
        self.user_counted = self.bytes;
        if lease.traffic(up, down) || self.cut {
            return;
        }
        if let Phase::Relay(r) = &mut self.phase {
            r.cut();
            self.cut = true;
            lease
                .stats()
                .rejected(crate::proto::users::UserReject::QuotaCut);
        }
    }

    /// Whether the client's user was removed or got a new secret since it was admitted.
    fn revoked(&self) -> bool {
        self.lease.as_ref().is_some_and(Lease::revoked)
    }

    /// New readiness `bits` ([`R`], [`W`]) for the socket on `side` ([`CLIENT`], [`UPSTREAM`]).
    pub(crate) fn readiness(&mut self, side: usize, bits: u8) {
        if let Some(r) = self.ready.get_mut(side) {
            *r |= bits;
        }
    }

    /// When [`Conn::handle_timeout`] has something to do (`None` once closed): the handshake's
    /// deadline, the connect timeout, or the idle timeout of the relay.
    /// A relay whose user was revoked, or that was cut and is flushing, is due at once.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake(hs) => Some(hs.deadline()),
            Phase::Dial(d) => Some(d.deadline),
            Phase::Socks(s) => Some(s.dial.deadline),
            Phase::Middle(d) => Some(d.deadline),
            Phase::Relay(_) if self.cut || self.revoked() => Some(self.started),
            Phase::Relay(r) => Some(r.next_deadline()),
            Phase::Closed(_) => None,
        }
    }

    /// Whether it closed (why: [`Conn::close_reason`]).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// Why it closed (`None` while open).
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// Whether it has not started relaying (closed first at shutdown).
    pub(crate) fn in_handshake(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshake(_) | Phase::Dial(_) | Phase::Socks(_) | Phase::Middle(_)
        )
    }

    /// Whether its handshake succeeded (a client of ours, whatever happened next).
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.role, Role::Dc(_))
    }

    /// Whether it was spliced to the fronting site.
    pub(crate) fn is_fronted(&self) -> bool {
        matches!(self.role, Role::Fronted(_))
    }

    /// DC the client asked for (0 before the handshake finished, and when fronted).
    pub(crate) fn dc(&self) -> i16 {
        match self.role {
            Role::Dc(dc) | Role::Middle(dc) => dc,
            _ => 0,
        }
    }

    /// The client's address (the one a PROXY header announced, if any).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Payload bytes received from and sent to the client.
    pub(crate) fn bytes(&self) -> [u64; 2] {
        self.bytes
    }

    /// How long the connection has existed.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The connection's id as logged (hex).
    pub(crate) fn id_str(&self) -> ConnId {
        ConnId(self.id)
    }

    /// Drives the connection with its cached readiness. Call after new events, when a buffer
    /// came back after [`Next::WaitBuffer`], again soon after [`Next::Requeue`], and at
    /// [`Turn::wake_at`].
    pub(crate) fn ready(&mut self, ctx: &mut Ctx<'_, impl Net<Sock = S>>) -> Turn {
        let mut want = Want::default();
        // The phases before the relay are moved by value from one to the next; the relay (the
        // hot path) runs in place.
        if !matches!(self.phase, Phase::Relay(_) | Phase::Closed(_)) {
            let phase = std::mem::replace(&mut self.phase, Phase::Closed(CloseReason::Done));
            self.phase = match phase {
                Phase::Handshake(hs) => self.handshake(hs, ctx, &mut want),
                Phase::Dial(d) => self.connecting(d, ctx, &mut want),
                Phase::Socks(s) => self.socks_exchange(s, ctx, &mut want),
                Phase::Middle(d) => self.me_exchange(d, ctx, &mut want),
                other => other,
            };
            if let Phase::Handshake(hs) = &self.phase {
                want.wake_at = hs.wake_at();
            }
        }
        self.relay_turn(ctx, &mut want);
        self.turn(want)
    }

    /// A relay turn, in place, if the connection is relaying (just entered, or since before).
    fn relay_turn(&mut self, ctx: &mut Ctx<'_, impl Net<Sock = S>>, want: &mut Want) {
        let Phase::Relay(r) = &mut self.phase else {
            return;
        };
        let mut ends = relay::Ends {
            client: &self.client,
            ready: &mut self.ready,
            bytes: &mut self.bytes,
        };
        if let Err(reason) = r.turn(&mut ends, ctx, want) {
            self.close(reason, ctx);
            return;
        }
        // A user with a quota is counted every turn (one turn moves at most TURN_BUDGET each
        // way): the cut comes at most that late.
        if self.lease.as_ref().is_some_and(Lease::has_quota) {
            self.feed_user();
        }
    }

    /// Handles the deadline ([`Conn::deadline`]); call when it passed. A handshake fails
    /// (fronted, or closed once answered), a connect attempt moves on to the next address, an
    /// idle relay closes, and so does a stalled one while relay buffers run short, a revoked
    /// user's relay closes, a cut relay flushes.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_, impl Net<Sock = S>>) -> Turn {
        let mut want = Want::default();
        if self.deadline().is_none_or(|d| ctx.now < d) {
            return self.turn(want);
        }
        if matches!(self.phase, Phase::Relay(_)) {
            if self.revoked() {
                self.close(CloseReason::Revoked, ctx);
                return self.turn(want);
            }
            // A cut relay flushes (each sweep too), until idle for the idle timeout.
            let idle = matches!(&self.phase, Phase::Relay(r) if ctx.now >= r.deadline);
            if self.cut && !idle {
                self.relay_turn(ctx, &mut want);
                return self.turn(want);
            }
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Closed(CloseReason::Done));
        self.phase = match phase {
            Phase::Handshake(hs) => self.handshake_timeout(hs, ctx, &mut want),
            Phase::Dial(d) => self.next_address(d, ctx, &mut want),
            Phase::Socks(s) => self.next_address(s.dial, ctx, &mut want),
            Phase::Middle(d) => self.me_failed(d, "no answer in time", ctx, &mut want),
            Phase::Relay(r) if ctx.now >= r.deadline => self.closed(r, CloseReason::Idle, ctx),
            Phase::Relay(r)
                if r.stall_deadline().is_some_and(|t| ctx.now >= t) && ctx.pool.short() =>
            {
                self.closed(r, CloseReason::Stalled, ctx)
            }
            relay @ Phase::Relay(_) => relay,
            closed @ Phase::Closed(_) => closed,
        };
        self.turn(want)
    }

    /// Closes the connection (shutdown), releasing its buffers and upstream socket.
    pub(crate) fn close(&mut self, reason: CloseReason, ctx: &mut Ctx<'_, impl Net<Sock = S>>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Closed(reason));
        self.phase = match phase {
            Phase::Handshake(hs) => self.closed(hs, reason, ctx),
            Phase::Dial(d) => self.closed(d, reason, ctx),
            Phase::Socks(s) => self.closed(s.dial, reason, ctx),
            Phase::Middle(d) => self.closed(d, reason, ctx),
            Phase::Relay(r) => self.closed(r, reason, ctx),
            closed @ Phase::Closed(_) => closed,
        };
    }

    /// The phase after closing `phase` for `reason`: its buffers go back to the pool, its
    /// upstream socket is dropped (closed, which also removes it from epoll: no deregister
    /// calls; the client socket is closed when the slot is freed after this event batch, and
    /// events for it until then find the connection closed). Not inlined: called from every
    /// phase's error paths.
    #[inline(never)]
    fn closed(
        &mut self,
        phase: impl Release,
        reason: CloseReason,
        ctx: &mut Ctx<'_, impl Net>,
    ) -> Phase<S> {
        phase.release(ctx.pool, ctx.shared.stats.as_ref());
        Phase::Closed(reason)
    }

    /// The turn's outcome for the worker.
    fn turn(&self, want: Want) -> Turn {
        let next = match self.phase {
            Phase::Closed(reason) => Next::Closed(reason),
            _ if want.requeue => Next::Requeue,
            _ => want.buffer.map_or(Next::Idle, Next::WaitBuffer),
        };
        let wake_at = want.wake_at.filter(|_| !self.is_closed());
        Turn { next, wake_at }
    }

    /// Reports the bytes relayed since the last report to the counters (from the worker's
    /// sweep, and when the slot is freed).
    pub(crate) fn report(&mut self, stats: &Stats) {
        let [up, down] = [
            self.bytes[0] - self.counted[0],
            self.bytes[1] - self.counted[1],
        ];
        if up | down != 0 {
            stats.traffic(self.is_fronted(), self.dc(), up, down);
            if matches!(self.role, Role::Middle(_)) {
                stats.middle_proxy_traffic(up, down);
            }
            self.counted = self.bytes;
        }
        self.feed_user();
    }
}

/// What a phase gives back when the connection closes in it.
trait Release {
    /// Returns its buffers to `pool` (and updates the counters it kept).
    fn release(self, pool: &mut Pool, stats: &Stats);
}

/// A connection id, displayed as 12 hex digits (worker index in the top bits).
#[derive(Clone, Copy)]
pub(crate) struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// A new pacer for a connection starting now (dynamic record sizing per the config).
fn pacer<N: Net>(ctx: &Ctx<'_, N>) -> Pacer {
    Pacer::new(ctx.shared.config.doppelganger.drs, ctx.now)
}
