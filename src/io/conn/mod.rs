//! One client connection: an explicit state machine driven by cached socket readiness.
//!
//! I/O layer glue between mio sockets and the pure [`crate::proto`] code.
//!
//! ```text
//! Handshake ──(valid client)──► Connecting ──(DC socket up)──► Relay ──► Closed
//!     │ (FakeTLS: ClientHello → ServerHello flight → obfuscated2 frame in app-data records;
//!     │  dd / classic: obfuscated2 frame)
//!     └─(bad handshake, timeout)──► Closed   (fronting replaces this in a later stage)
//! ```
//!
//! Invariants:
//! * Each direction ([`Half`]) holds a pool buffer only while bytes are in flight; an idle
//!   connection holds none. When the pool is empty the direction waits (backpressure).
//! * Bytes are transformed in place: client→DC = [deframe TLS records] → decrypt with the
//!   client key → encrypt with the DC key; DC→client = decrypt with the DC key → encrypt with
//!   the client key → [frame into TLS records, header written in reserved room].
//! * Readiness is edge-triggered: a bit is cleared only when an operation returns WouldBlock.
//! * A direction moves at most [`TURN_BUDGET`] bytes per turn, then the connection is requeued,
//!   so one bulk transfer cannot starve the others.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::pool::{BufId, Pool};
use super::{FastRng, Shared};
use crate::log::Level;
use crate::proto::Reject;
use crate::proto::Rng;
use crate::proto::faketls::{self, HelloRead, RecordReader};
use crate::proto::obfs2::{self, CompactCtr, Tag};
use crate::proto::secret::SecretKind;
use crate::proto::socks5::{Socks5Client, Step, Target};

/// Readiness bit: the socket may have bytes to read (or an EOF/error to report).
pub(crate) const R: u8 = 1;
/// Readiness bit: the socket may accept bytes (or has an error to report).
pub(crate) const W: u8 = 2;
/// Index of the client socket in [`Conn::ready`] and in tokens.
pub(crate) const CLIENT: usize = 0;
/// Index of the upstream (DC) socket.
pub(crate) const UPSTREAM: usize = 1;

/// Bytes a direction may move in one turn before yielding to other connections.
pub(crate) const TURN_BUDGET: usize = 256 * 1024;

/// Connect timeout for an address that has a fallback after it (the last one gets the full
/// `[network.timeout] tcp`).
const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A shaped record may leave this early (timers have 1 ms ticks).
const PACE_SLACK: Duration = Duration::from_micros(500);

/// How late a shaped record may have left without the next gap growing by as much.
const PACE_LATE_CREDIT: Duration = Duration::from_millis(2);

/// Length of a TLS record header.
const HDR: usize = faketls::RECORD_HEADER_LEN;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the client's handshake (FakeTLS hello and/or obfuscated2 frame).
    Handshake,
    /// Connecting to a datacenter address.
    Connecting,
    /// Asking a SOCKS5 upstream to connect us to the DC.
    Socks,
    /// Connecting to the fronting site after a failed handshake.
    FrontConnecting,
    /// Relaying bytes both ways (to a DC, or byte for byte to the fronting site).
    Relay,
    /// Done; the slot is freed at the end of the event batch.
    Closed,
}

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
    /// A malformed PROXY protocol header.
    BadProxyHeader,
    /// The client address is not allowed (blocklist / allowlist).
    Blocked,
    /// The client asked for a DC we do not know, and fallback is off.
    UnknownDc,
    /// No traffic for the idle timeout.
    Idle,
    /// A socket error (reset, broken pipe…).
    Error(ErrorKind),
    /// The proxy is shutting down.
    Shutdown,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::Rejected(r) => r.as_str(),
            CloseReason::DcUnreachable => "dc-unreachable",
            CloseReason::FrontUnreachable => "front-unreachable",
            CloseReason::BadProxyHeader => "bad-proxy-header",
            CloseReason::Blocked => "ip-blocked",
            CloseReason::UnknownDc => "unknown-dc",
            CloseReason::Idle => "idle-timeout",
            CloseReason::Error(_) => "socket-error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// One direction of the relay and its buffer window `[start, end)`.
#[derive(Debug, Default)]
pub(crate) struct Half {
    buf: Option<BufId>,
    start: usize,
    end: usize,
    /// The source sent EOF.
    eof: bool,
    /// `shutdown(Write)` was sent to the destination after EOF and a full flush.
    shut: bool,
    /// The source ended with a reset: after the flush, reset the destination too.
    reset: bool,
    /// Shaped direction: bytes before this offset may be written now (the records whose
    /// send time came); the record starting here waits for its time.
    limit: usize,
}

impl Half {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn done(&self) -> bool {
        self.eof && self.is_empty()
    }

    /// The common tail of both pumps: writes what is buffered to `dst`, gives the buffer back
    /// once it is empty and the source has nothing more for now, and after the source's EOF
    /// passes it on (`shutdown(Write)`, or a reset after a reset). `src`/`dst` index `ready`.
    /// Returns whether bytes were written; errors name the failing side.
    /// With `paced`, only bytes before [`Half::limit`] are written.
    fn flush(
        &mut self,
        dst: &TcpStream,
        ready: &mut [u8; 2],
        (src, dst_side): (usize, usize),
        pool: &mut Pool,
        paced: bool,
    ) -> Result<bool, (usize, io::Error)> {
        let mut progress = false;
        let upto = if paced {
            self.limit.min(self.end)
        } else {
            self.end
        };
        if self.start < upto && ready[dst_side] & W != 0 {
            let id = self.buf.expect("non-empty half has a buffer");
            let buf = pool.get(id);
            match write_some(dst, &buf[self.start..upto]) {
                Ok(n) => {
                    self.start += n;
                    progress = true;
                    if self.is_empty() {
                        self.start = 0;
                        self.end = 0;
                        self.limit = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => ready[dst_side] &= !W,
                Err(e) => return Err((dst_side, e)),
            }
        }
        if self.is_empty() && self.buf.is_some() && (self.eof || ready[src] & R == 0) {
            self.release(pool);
        }
        if self.done() && !self.shut {
            self.shut = true;
            if self.reset {
                // The source reset: what it sent is flushed, now reset the destination too.
                let _ = crate::sys::set_linger_zero(dst);
                return Err((src, ErrorKind::ConnectionReset.into()));
            }
            let _ = dst.shutdown(Shutdown::Write);
        }
        Ok(progress)
    }

    fn release(&mut self, pool: &mut Pool) {
        if let Some(id) = self.buf.take() {
            pool.release(id);
        }
        self.start = 0;
        self.end = 0;
        self.limit = 0;
    }
}

/// The four stream ciphers of a relayed connection.
pub(crate) struct Keys {
    /// client → proxy
    client_dec: CompactCtr,
    /// proxy → client
    client_enc: CompactCtr,
    /// proxy → DC
    dc_enc: CompactCtr,
    /// DC → proxy
    dc_dec: CompactCtr,
}

/// Gives an empty relay direction a buffer, or asks to be woken when there is one. A fronted
/// connection (no keys: not our client) only gets one of the spare half of the pool, so that
/// slow readers of a big page from the site cannot take every buffer from our clients.
fn relay_checkout(half: &mut Half, fronted: bool, ctx: &mut Ctx<'_>) {
    if fronted {
        half.buf = ctx.pool.checkout_spare();
        ctx.want_spare |= half.buf.is_none();
    } else {
        half.buf = ctx.pool.checkout();
        ctx.want_buffer |= half.buf.is_none();
    }
}

/// Per-turn context handed to a connection by its worker.
pub(crate) struct Ctx<'a> {
    pub(crate) pool: &'a mut Pool,
    pub(crate) shared: &'a Shared,
    pub(crate) registry: &'a Registry,
    pub(crate) rng: &'a mut FastRng,
    pub(crate) keyshares: &'a mut crate::proto::x25519::KeyShares,
    pub(crate) scratch: &'a mut [u8],
    pub(crate) now: Instant,
    /// Set by the connection: it needs a buffer and the pool is empty.
    pub(crate) want_buffer: bool,
    /// Set by a fronted connection: it needs a buffer and half of the pool is in use (fronted
    /// connections only get the spare half: see [`Pool::checkout_spare`]).
    pub(crate) want_spare: bool,
    /// Set by the connection: it stopped on its byte budget and must run again soon.
    pub(crate) requeue: bool,
    /// Set by the connection: run it again at this time (traffic shaping).
    pub(crate) wake_at: Option<Instant>,
}

/// A client connection and, once connected, its datacenter socket.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    slot: usize,
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Cached readiness bits ([`R`], [`W`]) of the client and upstream sockets.
    pub(crate) ready: [u8; 2],
    pub(crate) phase: Phase,
    /// client → DC
    up: Half,
    /// DC → client
    down: Half,
    /// Some once a FakeTLS client finished its hello: its bytes arrive in TLS records.
    tls: Option<RecordReader>,
    keys: Option<Keys>,
    /// Deadline of the current phase (handshake, connect) or of idleness (relay).
    pub(crate) deadline: Instant,
    started: Instant,
    /// DC requested by the client and the address being tried.
    dc: i16,
    dc_send: i16,
    addr_idx: usize,
    /// The SOCKS5 upstream (index) and DC address of the current attempt, if any.
    via: Option<(usize, SocketAddr)>,
    /// The SOCKS5 exchange in progress (only while connecting through an upstream).
    socks: Option<Box<SocksState>>,
    /// Dynamic record sizing of the records sent to a FakeTLS client.
    drs: Drs,
    /// With traffic shaping: when the next record to the client may leave.
    pace_at: Instant,
    /// A PROXY protocol header may still come first (`proxy-protocol-listener`).
    expect_proxy_header: bool,
    /// Why the handshake failed, once the connection is spliced to the fronting site.
    pub(crate) fronted: Option<Reject>,
    pub(crate) queued: bool,
    pub(crate) waiting_buf: bool,
    pub(crate) reason: CloseReason,
    /// Payload bytes received from the client / sent to the client (after the handshake).
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    /// `bytes_up` / `bytes_down` already reported to the metrics counters.
    counted: [u64; 2],
    /// Counted in the open-relays gauge of its DC.
    dc_relay: bool,
}

fn token(slot: usize, side: usize) -> Token {
    Token(slot << 1 | side)
}

fn apply(c: &mut CompactCtr, data: &mut [u8]) {
    c.apply_keystream(data);
}

impl Conn {
    /// Registers a freshly accepted client socket and starts its handshake.
    pub(crate) fn new(
        id: u64,
        slot: usize,
        mut client: TcpStream,
        peer: SocketAddr,
        ctx: &mut Ctx<'_>,
    ) -> io::Result<Conn> {
        ctx.registry.register(
            &mut client,
            token(slot, CLIENT),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        // TCP_NODELAY is inherited from the listening socket.
        Ok(Conn {
            id,
            peer,
            slot,
            client,
            upstream: None,
            ready: [0, 0],
            phase: Phase::Handshake,
            up: Half::default(),
            down: Half::default(),
            tls: None,
            keys: None,
            deadline: ctx.now + ctx.shared.config.timeouts.handshake,
            started: ctx.now,
            dc: 0,
            dc_send: 0,
            addr_idx: 0,
            via: None,
            socks: None,
            expect_proxy_header: ctx.shared.config.proxy_protocol_listener,
            drs: Drs::new(ctx.shared.config.doppelganger.drs, ctx.now),
            pace_at: ctx.now,
            fronted: None,
            queued: false,
            waiting_buf: false,
            reason: CloseReason::Done,
            bytes_up: 0,
            bytes_down: 0,
            counted: [0, 0],
            dc_relay: false,
        })
    }

    /// How long the connection has existed.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// DC the client asked for (0 before the handshake finished).
    pub(crate) fn dc(&self) -> i16 {
        self.dc
    }

    /// Releases buffers and sockets. Idempotent.
    pub(crate) fn close(&mut self, reason: CloseReason, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.reason = reason;
        self.up.release(ctx.pool);
        self.down.release(ctx.pool);
        // Closing a socket removes it from epoll: no deregister calls. The client socket is
        // closed when the slot is freed after this event batch; events for it until then find
        // the connection Closed and are ignored.
        self.upstream = None;
        self.keys = None;
    }

    /// Handles a deadline check. Call periodically; closes or moves on when the deadline passed.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed || ctx.now < self.deadline {
            return;
        }
        match self.phase {
            Phase::Handshake => self.reject(Reject::Timeout, ctx),
            Phase::Connecting | Phase::FrontConnecting | Phase::Socks => self.next_address(ctx),
            Phase::Relay => self.close(CloseReason::Idle, ctx),
            Phase::Closed => {}
        }
    }

    /// Drives the connection with its cached readiness. Call after new events, after a buffer
    /// became free if [`Ctx::want_buffer`] was set, and again soon if [`Ctx::requeue`] was set.
    pub(crate) fn ready(&mut self, ctx: &mut Ctx<'_>) {
        let result = match self.phase {
            Phase::Handshake => self.handshake(ctx),
            Phase::Connecting | Phase::FrontConnecting => self.connecting(ctx),
            Phase::Socks => self.socks_exchange(ctx),
            Phase::Relay => self.relay(ctx),
            Phase::Closed => Ok(()),
        };
        match result {
            Ok(()) => {}
            Err(CloseReason::Rejected(r)) if self.phase == Phase::Handshake => self.reject(r, ctx),
            Err(reason) => self.close(reason, ctx),
        }
    }

    /// The handshake failed. Until we have answered as a proxy (FakeTLS: sent our server
    /// flight), the connection is spliced to the fronting site: every byte read so far is
    /// replayed unchanged, then both directions are relayed byte for byte (PROTOCOL.md §6).
    /// Afterwards the only honest answer is to close, as mtg does.
    fn reject(&mut self, why: Reject, ctx: &mut Ctx<'_>) {
        ctx.shared.stats.handshake_failed(why);
        if self.tls.is_some() || ctx.shared.front_addr(0).is_none() {
            self.close(CloseReason::Rejected(why), ctx);
            return;
        }
        self.fronted = Some(why);
        ctx.shared
            .stats
            .fronted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::log_event!(
            Level::Info,
            "fronting",
            conn = self.id_str(),
            client = self.peer,
            reason = why.as_str()
        );
        // The bytes read so far stay in the up half exactly as received (and count as the
        // client's traffic to the site).
        self.up.start = 0;
        self.bytes_up += self.up.end as u64;
        self.addr_idx = 0;
        self.start_connect(ctx);
    }

    /// Prepends a PROXY v2 header to the bytes waiting for the fronting site.
    fn write_front_proxy_header(&mut self, front: SocketAddr, ctx: &mut Ctx<'_>) -> bool {
        use crate::proto::proxy_protocol;
        if self.up.buf.is_none() {
            self.up.buf = ctx.pool.checkout();
        }
        let Some(mut id) = self.up.buf else {
            return false;
        };
        if self.up.end + proxy_protocol::V2_MAX_LEN > ctx.pool.get(id).len() {
            // A full handshake buffer: the header needs a relay buffer.
            let Some(big) = ctx.pool.grow_handshake(id, self.up.end, false) else {
                return false;
            };
            id = big;
            self.up.buf = Some(big);
        }
        let buf = ctx.pool.get(id);
        if self.up.end + proxy_protocol::V2_MAX_LEN > buf.len() {
            return false;
        }
        let mut hdr = [0u8; proxy_protocol::V2_MAX_LEN];
        let n = proxy_protocol::write_v2(&mut hdr, self.peer, front);
        buf.copy_within(self.up.start..self.up.end, self.up.start + n);
        buf[self.up.start..self.up.start + n].copy_from_slice(&hdr[..n]);
        self.up.end += n;
        true
    }

    // ---------------------------------------------------------------- handshake

    fn handshake(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        // Flush the FakeTLS server flight if one is pending.
        if !self.down.is_empty() && self.ready[CLIENT] & W != 0 {
            let id = self.down.buf.expect("non-empty half has a buffer");
            let buf = ctx.pool.get(id);
            match write_some(&self.client, &buf[self.down.start..self.down.end]) {
                Ok(n) => self.down.start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.ready[CLIENT] &= !W,
                Err(e) => return Err(CloseReason::Error(e.kind())),
            }
            if self.down.is_empty() {
                self.down.release(ctx.pool);
            }
        }
        if self.up.end > 0 {
            // Bytes gathered before a pause (e.g. waiting for a pool buffer): look again.
            self.advance_handshake(ctx)?;
            if self.phase != Phase::Handshake {
                return Ok(());
            }
        }
        if self.ready[CLIENT] & R == 0 || self.up.eof {
            return Ok(());
        }
        if self.up.buf.is_none() {
            // A small handshake buffer: a stalled handshake must not hold a relay buffer.
            match ctx.pool.checkout_handshake() {
                Some(id) => self.up.buf = Some(id),
                None => {
                    ctx.want_buffer = true;
                    return Ok(());
                }
            }
        }
        loop {
            let mut id = self.up.buf.expect("checked out above");
            if self.up.end >= ctx.pool.get(id).len() {
                // Outgrown: move to a relay buffer if 3/4 of them are free. Otherwise (under
                // pressure) decide on what we have: a hello this big is not a Telegram
                // client's, so it is fronted (which streams it on from here).
                // (A relay buffer that is full comes back unchanged: too large as well.)
                match ctx.pool.grow_handshake(id, self.up.end, true) {
                    Some(big) if big != id => {
                        id = big;
                        self.up.buf = Some(big);
                    }
                    _ => return Err(CloseReason::Rejected(Reject::TooLarge)),
                }
            }
            let buf = ctx.pool.get(id);
            match (&self.client).read(&mut buf[self.up.end..]) {
                Ok(0) => {
                    self.up.eof = true;
                    // Decide on what we have; an incomplete handshake then ends in Eof.
                    self.advance_handshake(ctx)?;
                    if self.phase == Phase::Handshake {
                        return Err(CloseReason::Rejected(Reject::Eof));
                    }
                    return Ok(());
                }
                Ok(n) => {
                    if let Some(tls) = self.tls.as_mut() {
                        // After the hello: new bytes are TLS records; keep only their payload.
                        let m = tls
                            .deframe_in_place(&mut buf[self.up.end..self.up.end + n])
                            .map_err(CloseReason::Rejected)?;
                        self.up.end += m;
                    } else {
                        self.up.end += n;
                    }
                    self.advance_handshake(ctx)?;
                    if self.phase != Phase::Handshake {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.ready[CLIENT] &= !R;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseReason::Error(e.kind())),
            }
        }
    }

    /// Looks at the bytes gathered so far and moves the handshake on as far as they allow.
    fn advance_handshake(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        let kind = ctx.shared.config.secret.kind;
        if self.expect_proxy_header {
            use crate::proto::proxy_protocol::{self, Parse};
            let id = self.up.buf.expect("handshake reads into a buffer");
            let buf = ctx.pool.get(id);
            match proxy_protocol::parse(&buf[..self.up.end]) {
                Parse::NeedMore => return Ok(()),
                Parse::NotProxy => self.expect_proxy_header = false,
                Parse::Header { consumed, source } => {
                    // The header was for us, not for the client protocol (nor the fronting
                    // site): drop it, and take the client address it announces.
                    buf.copy_within(consumed..self.up.end, 0);
                    self.up.end -= consumed;
                    self.expect_proxy_header = false;
                    if let Some(src) = source {
                        self.peer = src;
                    }
                }
                Parse::Invalid => return Err(CloseReason::BadProxyHeader),
            }
            if !ctx.shared.admits(self.peer.ip()) {
                return Err(CloseReason::Blocked);
            }
        }
        if kind == SecretKind::FakeTls && self.tls.is_none() {
            let id = self.up.buf.expect("handshake reads into a buffer");
            let input = &ctx.pool.get(id)[..self.up.end];
            match faketls::read_client_hello(input, ctx.scratch) {
                HelloRead::NeedMore => return Ok(()),
                HelloRead::Invalid(r) => return Err(CloseReason::Rejected(r)),
                HelloRead::Complete { consumed, msg_len } => {
                    self.accept_hello(consumed, msg_len, ctx)?;
                }
            }
            if self.tls.is_none() {
                // Waiting for a buffer to answer the hello.
                return Ok(());
            }
        }
        if kind != SecretKind::FakeTls {
            // Real clients never start their frame with these bytes (they regenerate it), so
            // an HTTP request, a TLS hello or an abridged-only probe is fronted at once.
            let id = self.up.buf.expect("handshake reads into a buffer");
            let head = &ctx.pool.get(id)[self.up.start..self.up.end];
            if obfs2::is_forbidden_start(head) {
                return Err(CloseReason::Rejected(Reject::ObfsTag));
            }
        }
        if self.up.end - self.up.start >= obfs2::FRAME_LEN {
            self.accept_frame(ctx)?;
        }
        Ok(())
    }

    /// A complete ClientHello is in `scratch[..msg_len]`: verify it, answer with the server
    /// flight, and switch the client side to TLS records.
    fn accept_hello(
        &mut self,
        consumed: usize,
        msg_len: usize,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), CloseReason> {
        let shared = ctx.shared;
        let secret = &shared.config.secret;
        let msg = &ctx.scratch[..msg_len];
        let hello = faketls::parse_client_hello(msg)
            .and_then(|hello| {
                let now_unix = super::unix_now();
                faketls::verify_client_hello(
                    &hello,
                    msg,
                    &secret.key,
                    secret.host.as_bytes(),
                    now_unix,
                    shared.config.tolerate_time_skewness.as_secs(),
                )?;
                if shared.is_replay(&hello.random, now_unix) {
                    return Err(Reject::Replay);
                }
                Ok(hello)
            })
            .map_err(CloseReason::Rejected)?;
        // The flight is built in the worker's scratch space and written at once: a fresh
        // socket's send buffer takes it whole. So a handshake holds one pool buffer, never two
        // (holding two would let handshakes deadlock each other on a small pool).
        // Shaped like the fronting site's own first flight (learned by the scout).
        let shape = match shared.profile.lock() {
            Ok(p) => p.shape(),
            Err(p) => p.into_inner().shape(),
        };
        let public = ctx.keyshares.next(ctx.rng);
        let room = faketls::noise_room(&shape.template, hello.session_id_len, ctx.scratch.len());
        let noise = shape.noise_len(ctx.rng).min(room);
        let n = faketls::write_server_hello_as(
            ctx.scratch,
            &hello,
            &secret.key,
            ctx.rng,
            &shape.template,
            noise,
            &public,
        );
        if n == 0 {
            return Err(CloseReason::Error(ErrorKind::OutOfMemory));
        }
        // Whatever followed the hello is TLS records: keep their payload only.
        let id = self.up.buf.expect("hello was read into a buffer");
        let buf = ctx.pool.get(id);
        let rest = self.up.end - consumed;
        buf.copy_within(consumed..self.up.end, 0);
        let mut reader = RecordReader::new();
        let m = match reader.deframe_in_place(&mut buf[..rest]) {
            Ok(m) => m,
            Err(r) => {
                // The client proved it knows the secret, and the bytes read are no longer
                // what it sent: close (as after the flight), never front.
                self.tls = Some(reader);
                return Err(CloseReason::Rejected(r));
            }
        };
        self.up.start = 0;
        self.up.end = m;
        self.tls = Some(reader);
        let written = match write_some(&self.client, &ctx.scratch[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(CloseReason::Error(e.kind())),
        };
        if written < n {
            // Rare: the rest waits in a buffer of its own until the socket is writable.
            self.ready[CLIENT] &= !W;
            let Some(down) = ctx.pool.checkout() else {
                return Err(CloseReason::Error(ErrorKind::OutOfMemory));
            };
            if n - written > ctx.pool.buf_size() {
                ctx.pool.release(down);
                return Err(CloseReason::Error(ErrorKind::OutOfMemory));
            }
            ctx.pool.get(down)[..n - written].copy_from_slice(&ctx.scratch[written..n]);
            self.down.buf = Some(down);
            self.down.start = 0;
            self.down.end = n - written;
            // The rest of the flight is not shaped.
            self.down.limit = n - written;
        }
        if let Some(s) = ctx.shared.shaping.get() {
            // As mtg: the first record also waits one gap after the flight.
            let u = crate::proto::shaping::draw(ctx.rng);
            self.pace_at = ctx.now + s.delay(faketls::MAX_RECORD_PAYLOAD, u);
        }
        Ok(())
    }

    /// The obfuscated2 frame is at `up[start..start+64]`: derive keys, pick the DC, replace the
    /// frame in place with our frame toward the DC, re-encrypt what followed, start connecting.
    fn accept_frame(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        let shared = ctx.shared;
        let secret = &shared.config.secret;
        let id = self.up.buf.expect("frame was read into a buffer");
        let buf = ctx.pool.get(id);
        let s = self.up.start;
        let mut frame = [0u8; obfs2::FRAME_LEN];
        frame.copy_from_slice(&buf[s..s + obfs2::FRAME_LEN]);
        let hs = obfs2::client_handshake(&frame, &secret.key).map_err(CloseReason::Rejected)?;
        if secret.kind == SecretKind::Secure && hs.tag != Tag::Padded {
            return Err(CloseReason::Rejected(Reject::ObfsTagNotAllowed));
        }
        if secret.kind != SecretKind::FakeTls {
            // FakeTLS hellos were checked against replay already; here the frame is the nonce.
            if shared.is_replay(&obfs2::replay_key(&frame), super::unix_now()) {
                return Err(CloseReason::Rejected(Reject::Replay));
            }
        }
        self.dc = hs.dc;
        let Some((dc_send, _)) = shared
            .dc
            .lookup_or_fallback(hs.dc, shared.config.allow_fallback_on_unknown_dc)
        else {
            return Err(CloseReason::UnknownDc);
        };
        self.dc_send = dc_send;
        let mut dch = obfs2::dc_handshake(ctx.rng, hs.tag, dc_send);
        let mut client_dec = hs.decrypt;
        // Our frame replaces the client's, then the client's early data follows re-encrypted.
        buf[s..s + obfs2::FRAME_LEN].copy_from_slice(&dch.frame);
        let rest = &mut buf[s + obfs2::FRAME_LEN..self.up.end];
        apply(&mut client_dec, rest);
        apply(&mut dch.encrypt, rest);
        self.bytes_up += rest.len() as u64;
        self.keys = Some(Keys {
            client_dec,
            client_enc: hs.encrypt,
            dc_enc: dch.encrypt,
            dc_dec: dch.decrypt,
        });
        ctx.shared
            .stats
            .handshakes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.addr_idx = 0;
        self.start_connect(ctx);
        Ok(())
    }

    // ---------------------------------------------------------------- connecting

    /// The `idx`-th way to try: the address to connect to and, when going through a SOCKS5
    /// upstream, which one and the DC address to ask it for. Fronting is always direct; with
    /// upstreams, each DC address is tried through every upstream, those that failed recently
    /// last (PROTOCOL.md §8.5).
    fn route_at(
        &self,
        idx: usize,
        shared: &Shared,
    ) -> Option<(SocketAddr, Option<(usize, SocketAddr)>)> {
        if self.fronted.is_some() {
            return shared.front_addr(idx).map(|a| (a, None));
        }
        let addrs = shared
            .dc
            .lookup_or_fallback(self.dc, shared.config.allow_fallback_on_unknown_dc)
            .map(|(_, a)| a)?;
        let n = shared.socks.len();
        if n == 0 {
            return addrs.get(idx).map(|&a| (a, None));
        }
        let dc = *addrs.get(idx / n)?;
        let proxy = shared.socks_order(idx % n);
        // An upstream whose name did not resolve gets an address that cannot be connected to,
        // so the attempt fails at once and the next one is tried (never a direct connection).
        let via = shared.socks[proxy].addr.unwrap_or(UNROUTABLE);
        Some((via, Some((proxy, dc))))
    }

    /// Starts a nonblocking connect to the current address, skipping addresses that fail at once.
    fn start_connect(&mut self, ctx: &mut Ctx<'_>) {
        let fronting = self.fronted.is_some();
        self.phase = if fronting {
            Phase::FrontConnecting
        } else {
            Phase::Connecting
        };
        let shared = ctx.shared;
        loop {
            let Some((addr, via)) = self.route_at(self.addr_idx, shared) else {
                if fronting {
                    crate::log_event!(
                        Level::Warn,
                        "fronting-failed",
                        conn = self.id_str(),
                        reason = "no fronting address could be reached"
                    );
                    self.close(CloseReason::FrontUnreachable, ctx);
                } else {
                    shared
                        .stats
                        .dc_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.close(CloseReason::DcUnreachable, ctx);
                }
                return;
            };
            let connected = if addr.port() == 0 {
                Err(io::Error::from(ErrorKind::AddrNotAvailable))
            } else {
                TcpStream::connect(addr)
            };
            match connected {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(
                            &mut s,
                            token(self.slot, UPSTREAM),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        self.upstream = Some(s);
                        self.via = via;
                        self.ready[UPSTREAM] = 0;
                        // While other addresses remain (IPv6 then IPv4, or a second DC
                        // address), a silent one is given up sooner: a host whose IPv6 is
                        // configured but broken must not cost every client the full timeout.
                        let mut wait = shared.config.timeouts.tcp;
                        if self.route_at(self.addr_idx + 1, shared).is_some() {
                            wait = wait.min(FALLBACK_CONNECT_TIMEOUT);
                        }
                        self.deadline = ctx.now + wait;
                        return;
                    }
                }
                Err(e) => {
                    crate::log_event!(
                        Level::Debug,
                        "dc-connect-failed",
                        conn = self.id_str(),
                        dc = self.dc,
                        addr = addr,
                        error = e
                    );
                }
            }
            self.addr_idx += 1;
        }
    }

    /// The current address failed or timed out: try the next one.
    fn next_address(&mut self, ctx: &mut Ctx<'_>) {
        // Dropping the socket closes it, which also removes it from epoll.
        self.upstream = None;
        if let Some((proxy, _)) = self.via.take() {
            ctx.shared.socks_failed(proxy);
        }
        self.socks = None;
        self.addr_idx += 1;
        self.start_connect(ctx);
    }

    fn connecting(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        // The client may hang up while we connect.
        if self.ready[UPSTREAM] == 0 {
            return Ok(());
        }
        let Some(up) = self.upstream.as_ref() else {
            return Ok(());
        };
        let failed = match up.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match up.peer_addr() {
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    // Spurious wake-up: still connecting.
                    self.ready[UPSTREAM] = 0;
                    return Ok(());
                }
                Err(_) => true,
            },
        };
        if failed {
            crate::log_event!(
                Level::Debug,
                "dc-connect-failed",
                conn = self.id_str(),
                dc = self.dc
            );
            self.next_address(ctx);
            return Ok(());
        }
        let _ = up.set_nodelay(true);
        let ka = &ctx.shared.config.keep_alive;
        if self.fronted.is_none() && !ka.disabled {
            // DC connections live long and idle: find a vanished DC or upstream.
            let _ = crate::sys::set_keepalive(up, ka.idle, ka.interval, ka.count);
        }
        if self.fronted.is_some() && ctx.shared.front_proxy_protocol {
            let front = up.peer_addr().unwrap_or(self.peer);
            if !self.write_front_proxy_header(front, ctx) {
                return Err(CloseReason::Error(ErrorKind::OutOfMemory));
            }
        }
        if let Some((proxy, dc)) = self.via {
            return self.start_socks(proxy, dc, ctx);
        }
        self.enter_relay(ctx)
    }

    /// Connected (directly or through SOCKS5): relay from now on.
    fn enter_relay(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        self.phase = Phase::Relay;
        self.deadline = ctx.now + ctx.shared.config.timeouts.idle;
        if self.fronted.is_none() {
            self.dc_relay = true;
            ctx.shared.stats.dc_relay(self.dc, true);
        }
        self.relay(ctx)
    }

    /// Reports the bytes relayed since the last report, and at the end the relay's close, to
    /// the metrics counters (from the worker's sweep and when the slot is freed).
    pub(crate) fn report(&mut self, counters: &super::Stats, last: bool) {
        let (up, down) = (
            self.bytes_up - self.counted[0],
            self.bytes_down - self.counted[1],
        );
        if up | down != 0 {
            counters.traffic(self.fronted.is_some(), self.dc, up, down);
            self.counted = [self.bytes_up, self.bytes_down];
        }
        if last && self.dc_relay {
            self.dc_relay = false;
            counters.dc_relay(self.dc, false);
        }
    }

    /// Connected to a SOCKS5 upstream: send the greeting.
    fn start_socks(
        &mut self,
        proxy: usize,
        dc: SocketAddr,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), CloseReason> {
        let up = &ctx.shared.socks[proxy];
        // Boxed and only on this path: a connection without upstreams pays nothing for it.
        let mut st = Box::new(SocksState {
            client: Socks5Client::new(Target::Ip(dc), up.auth.clone()),
            input: [0u8; SOCKS_IN],
            len: 0,
        });
        let n = st.client.initial(ctx.scratch);
        self.socks = Some(st);
        self.phase = Phase::Socks;
        if !self.socks_send(n, ctx) {
            self.next_address(ctx);
            return Ok(());
        }
        self.socks_exchange(ctx)
    }

    /// Writes `scratch[..n]` to the upstream in one go (SOCKS5 messages are tiny; a fresh
    /// socket always takes them whole). False if it did not.
    fn socks_send(&mut self, n: usize, ctx: &mut Ctx<'_>) -> bool {
        let Some(up) = self.upstream.as_ref() else {
            return false;
        };
        n == 0 || matches!(write_some(up, &ctx.scratch[..n]), Ok(w) if w == n)
    }

    /// Drives the SOCKS5 exchange with what the upstream sent.
    fn socks_exchange(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        loop {
            let (Some(up), Some(st)) = (self.upstream.as_ref(), self.socks.as_mut()) else {
                return Ok(());
            };
            let step = st.client.handle(&st.input[..st.len], ctx.scratch);
            match step {
                Step::Send { consumed, len } => {
                    st.input.copy_within(consumed..st.len, 0);
                    st.len -= consumed;
                    if !self.socks_send(len, ctx) {
                        self.next_address(ctx);
                        return Ok(());
                    }
                }
                Step::Connected { consumed } => {
                    // A DC never speaks first, so nothing may follow the reply.
                    if consumed != st.len {
                        self.next_address(ctx);
                        return Ok(());
                    }
                    self.socks = None;
                    self.via = None;
                    return self.enter_relay(ctx);
                }
                Step::Failed(e) => {
                    crate::log_event!(
                        Level::Warn,
                        "socks5-failed",
                        conn = self.id_str(),
                        error = e.as_str()
                    );
                    self.next_address(ctx);
                    return Ok(());
                }
                Step::NeedMore => {
                    if self.ready[UPSTREAM] & R == 0 || st.len == SOCKS_IN {
                        if st.len == SOCKS_IN {
                            self.next_address(ctx);
                        }
                        return Ok(());
                    }
                    match (&*up).read(&mut st.input[st.len..]) {
                        Ok(0) => {
                            self.next_address(ctx);
                            return Ok(());
                        }
                        Ok(n) => st.len += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.ready[UPSTREAM] &= !R;
                            return Ok(());
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.next_address(ctx);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- relay

    fn relay(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CloseReason> {
        let moved_up = self.pump_up(ctx).map_err(|e| self.socket_failed(e))?;
        let moved_down = self.pump_down(ctx).map_err(|e| self.socket_failed(e))?;
        if moved_up + moved_down > 0 {
            self.deadline = ctx.now + ctx.shared.config.timeouts.idle;
        }
        if self.up.done() && self.down.done() && self.up.shut && self.down.shut {
            return Err(CloseReason::Done);
        }
        Ok(())
    }

    /// A socket of the pair failed. A reset is passed on as a reset (not a FIN) to the other
    /// side, so that through the proxy a peer sees exactly how the far end closed.
    fn socket_failed(&self, (side, e): (usize, io::Error)) -> CloseReason {
        if e.kind() == ErrorKind::ConnectionReset && !(self.up.reset || self.down.reset) {
            let _ = match side {
                CLIENT => self.upstream.as_ref().map(crate::sys::set_linger_zero),
                _ => Some(crate::sys::set_linger_zero(&self.client)),
            };
        }
        CloseReason::Error(e.kind())
    }

    /// client → DC. Returns payload bytes moved.
    fn pump_up(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, (usize, io::Error)> {
        let Some(upstream) = self.upstream.as_ref() else {
            return Ok(0);
        };
        // No keys: a fronted connection, relayed byte for byte.
        let mut keys = self.keys.as_mut();
        let half = &mut self.up;
        let mut moved = 0;
        loop {
            let mut progress = false;
            // Fill.
            if !half.eof && self.ready[CLIENT] & R != 0 {
                if half.buf.is_none() {
                    relay_checkout(half, keys.is_none(), ctx);
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    if half.end < buf.len() {
                        match (&self.client).read(&mut buf[half.end..]) {
                            Ok(0) => {
                                half.eof = true;
                                progress = true;
                            }
                            Ok(n) => {
                                let m = match self.tls.as_mut() {
                                    Some(t) => t
                                        .deframe_in_place(&mut buf[half.end..half.end + n])
                                        .map_err(|_| {
                                            (CLIENT, io::Error::from(ErrorKind::InvalidData))
                                        })?,
                                    None => n,
                                };
                                if let Some(k) = keys.as_deref_mut() {
                                    let data = &mut buf[half.end..half.end + m];
                                    apply(&mut k.client_dec, data);
                                    apply(&mut k.dc_enc, data);
                                }
                                half.end += m;
                                moved += m;
                                self.bytes_up += m as u64;
                                progress = true;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                self.ready[CLIENT] &= !R;
                            }
                            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                                half.eof = true;
                                half.reset = true;
                                progress = true;
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                            Err(e) => return Err((CLIENT, e)),
                        }
                    }
                }
            }
            progress |= half.flush(
                upstream,
                &mut self.ready,
                (CLIENT, UPSTREAM),
                ctx.pool,
                false,
            )?;
            if moved >= TURN_BUDGET {
                ctx.requeue = true;
                break;
            }
            if !progress {
                break;
            }
        }
        Ok(moved)
    }

    /// DC → client. Returns payload bytes moved.
    fn pump_down(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, (usize, io::Error)> {
        let Some(upstream) = self.upstream.as_ref() else {
            return Ok(0);
        };
        let mut keys = self.keys.as_mut();
        let framed = self.tls.is_some();
        // Shaping applies to records toward a FakeTLS client of ours (never to fronting).
        let shaping = if framed && keys.is_some() {
            ctx.shared.shaping.get()
        } else {
            None
        };
        let half = &mut self.down;
        let mut moved = 0;
        loop {
            let mut progress = false;
            if !half.eof && self.ready[UPSTREAM] & R != 0 {
                if half.buf.is_none() {
                    relay_checkout(half, keys.is_none(), ctx);
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    let read = if framed {
                        let caps = self.drs.caps(ctx.now, ctx.rng);
                        read_records(upstream, buf, half.end, &caps)
                    } else if half.end < buf.len() {
                        (&*upstream)
                            .read(&mut buf[half.end..])
                            .map(|n| Some((n, half.end + n)))
                    } else {
                        Ok(None)
                    };
                    match read {
                        Ok(None) => {}
                        Ok(Some((0, _))) => {
                            half.eof = true;
                            progress = true;
                        }
                        Ok(Some((n, new_end))) => {
                            if framed {
                                // Payloads sit between the headers just written.
                                let mut p = half.end;
                                let mut records = 0;
                                while p < new_end {
                                    let len =
                                        usize::from(u16::from_be_bytes([buf[p + 3], buf[p + 4]]));
                                    if let Some(k) = keys.as_deref_mut() {
                                        let data = &mut buf[p + HDR..p + HDR + len];
                                        apply(&mut k.dc_dec, data);
                                        apply(&mut k.client_enc, data);
                                    }
                                    p += HDR + len;
                                    records += 1;
                                }
                                self.drs.sent(records, ctx.now);
                            } else if let Some(k) = keys.as_deref_mut() {
                                let data = &mut buf[half.end..new_end];
                                apply(&mut k.dc_dec, data);
                                apply(&mut k.client_enc, data);
                            }
                            half.end = new_end;
                            moved += n;
                            self.bytes_down += n as u64;
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.ready[UPSTREAM] &= !R;
                        }
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                            half.eof = true;
                            half.reset = true;
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                        Err(e) => return Err((UPSTREAM, e)),
                    }
                }
            }
            if let Some(s) = shaping {
                if half.start >= half.limit && !half.is_empty() {
                    if ctx.now + PACE_SLACK >= self.pace_at {
                        // The next record may go; the one after waits a gap.
                        let id = half.buf.expect("non-empty half has a buffer");
                        let buf = ctx.pool.get(id);
                        let p = half.start;
                        let payload = usize::from(u16::from_be_bytes([buf[p + 3], buf[p + 4]]));
                        half.limit = p + HDR + payload;
                        let u = crate::proto::shaping::draw(ctx.rng);
                        // Timer lateness (ms ticks, loop latency) is not added to the next gap,
                        // so a backlog really moves at the floor rate.
                        let base = ctx.now.checked_sub(PACE_LATE_CREDIT).unwrap_or(ctx.now);
                        self.pace_at = self.pace_at.max(base) + s.delay(payload, u);
                    } else {
                        ctx.wake_at = Some(self.pace_at);
                    }
                }
            }
            let paced = shaping.is_some();
            progress |= half.flush(
                &self.client,
                &mut self.ready,
                (UPSTREAM, CLIENT),
                ctx.pool,
                paced,
            )?;
            if moved >= TURN_BUDGET {
                ctx.requeue = true;
                break;
            }
            if !progress {
                break;
            }
        }
        Ok(moved)
    }

    /// Closes the connection for shutdown if it has not started relaying.
    pub(crate) fn in_handshake(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshake | Phase::Connecting | Phase::Socks | Phase::FrontConnecting
        )
    }

    /// The connection's id as logged (hex).
    pub(crate) fn id_str(&self) -> ConnId {
        ConnId(self.id)
    }
}

/// Stands for an upstream that has no address (port 0 is refused by `connect`).
const UNROUTABLE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Room for a SOCKS5 reply (the longest: a 255-byte bound domain name).
const SOCKS_IN: usize = 4 + 1 + 255 + 2;

/// A SOCKS5 exchange with an upstream, kept only while it lasts.
struct SocksState {
    client: Socks5Client,
    input: [u8; SOCKS_IN],
    len: usize,
}

/// Dynamic record sizing (PROTOCOL.md §7.3), as TLS servers do it: after an idle second the
/// first 40 records carry about one MSS (1450 − U[0,100) bytes), the next 20 about 4 KiB
/// (4096 − U[0,100)), then full records. Off: always full records.
struct Drs {
    on: bool,
    records: u32,
    last: Instant,
}

impl Drs {
    fn new(on: bool, now: Instant) -> Drs {
        Drs {
            on,
            records: 0,
            last: now,
        }
    }

    /// Payload caps for the next records of one read.
    fn caps(&mut self, now: Instant, rng: &mut FastRng) -> [usize; MAX_SEGMENTS] {
        let mut caps = [faketls::MAX_RECORD_PAYLOAD; MAX_SEGMENTS];
        if !self.on {
            return caps;
        }
        if now.saturating_duration_since(self.last) > Duration::from_secs(1) {
            self.records = 0;
        }
        for (i, cap) in caps.iter_mut().enumerate() {
            let k = self.records + i as u32;
            let jitter = rng.below(100) as usize;
            *cap = match k {
                0..40 => 1450 - jitter,
                40..60 => 4096 - jitter,
                _ => faketls::MAX_RECORD_PAYLOAD,
            };
        }
        caps
    }

    /// `records` records were framed.
    fn sent(&mut self, records: u32, now: Instant) {
        if self.on {
            self.records = self.records.saturating_add(records);
            self.last = now;
        }
    }
}

/// Records one `readv` may fill.
const MAX_SEGMENTS: usize = 4;

/// Reads from `src` into `buf[end..]` as TLS application-data records, with one `readv`: each
/// payload segment (at most [`faketls::MAX_RECORD_PAYLOAD`] bytes) follows room for its header,
/// so framing costs no copy. `caps` bounds each record's payload (dynamic record sizing).
/// Writes the headers of the records that got bytes. Returns
/// `(payload bytes read, end of the framed bytes)`, or `None` when there is no room.
fn read_records(
    src: &TcpStream,
    buf: &mut [u8],
    end: usize,
    caps: &[usize; MAX_SEGMENTS],
) -> io::Result<Option<(usize, usize)>> {
    let mut sizes = [0usize; MAX_SEGMENTS];
    let mut count = 0;
    {
        let mut segs: [&mut [u8]; MAX_SEGMENTS] = Default::default();
        let mut rest = buf.get_mut(end..).unwrap_or_default();
        while count < MAX_SEGMENTS && rest.len() > HDR {
            let (_, r) = rest.split_at_mut(HDR);
            let take = r.len().min(caps[count]);
            let (seg, r) = r.split_at_mut(take);
            sizes[count] = take;
            segs[count] = seg;
            rest = r;
            count += 1;
        }
        if count == 0 {
            return Ok(None);
        }
        let mut ios = segs.map(std::io::IoSliceMut::new);
        let n = loop {
            match (&*src).read_vectored(&mut ios[..count]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(Some((0, end)));
        }
        // Headers for the segments that got bytes (each full but the last).
        let mut left = n;
        let mut p = end;
        for &size in &sizes[..count] {
            if left == 0 {
                break;
            }
            let len = left.min(size);
            buf[p..p + HDR].copy_from_slice(&faketls::record_header(len as u16));
            p += HDR + len;
            left -= len;
        }
        Ok(Some((n, p)))
    }
}

/// One `write`, retried on EINTR. `Ok(0)` from the kernel becomes `WriteZero`.
fn write_some(mut s: &TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match s.write(data) {
            Ok(0) if !data.is_empty() => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A connection id, displayed as 12 hex digits (worker index in the top bits).
#[derive(Clone, Copy)]
pub(crate) struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_state_stays_small() {
        // An idle connection costs its slab slot and nothing else (no buffers), so this size
        // is the per-connection memory floor of the proxy (issue: ≤ 2 KiB per idle connection).
        let size = std::mem::size_of::<Option<Conn>>();
        eprintln!(
            "Option<Conn> = {size} bytes, Keys = {}",
            std::mem::size_of::<Keys>()
        );
        assert!(size <= 640, "Option<Conn> grew to {size} bytes");
    }
}
