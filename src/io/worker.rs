//! One worker thread: its own `Poll`, connection slab, buffer pool and timer sweep.
//!
//! I/O layer. Every worker registers its own clone of the listening socket, so whichever
//! worker wakes first accepts; accepted sockets are never handed between threads. Nothing here
//! takes a lock on the data path: the only shared state touched per connection is the global
//! connection counter (at accept and close) and the anti-replay filter (once per handshake).

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::conn::{CLIENT, CloseReason, Conn, Ctx, Next, R, Turn, UPSTREAM, W};
use super::pool::Pool;
use super::sock::{MioNet, token};
use super::timers::Timers;
use super::{FastRng, Shared};
use crate::log::Level;
use crate::proto::x25519::KeyShares;

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// Connections accepted per loop turn before other work runs.
const ACCEPT_BATCH: usize = 64;
/// Size of a handshake buffer: a Telegram client's ClientHello (517 bytes for TDLib) with
/// its first records, or a browser's hello (about 1.8 KB with a post-quantum key share). A
/// bigger handshake moves to a relay buffer.
const HANDSHAKE_BUF_SIZE: usize = 2048;

/// Most small buffers per worker (2 KiB each, pages touched only when used: 128 MiB of
/// address space at most, resident only as far as connections use them at once).
const MAX_HANDSHAKE_BUFFERS: usize = 64 * 1024;

/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Pause after the process ran out of file descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// A per-turn [`Ctx`] over the worker's fields (a macro, so that the slab can stay borrowed).
macro_rules! ctx {
    ($w:expr, $now:expr) => {
        ctx!($w, $now, false)
    };
    ($w:expr, $now:expr, $busy:expr) => {
        Ctx {
            pool: &mut $w.pool,
            shared: &$w.shared,
            net: &mut MioNet {
                registry: $w.poll.registry(),
            },
            rng: &mut $w.rng,
            keyshares: &mut $w.keyshares,
            scratch: &mut $w.scratch,
            now: $now,
            busy: $busy,
        }
    };
}

/// A slab entry: a connection and the worker's bookkeeping about it.
struct Slot {
    conn: Conn<TcpStream>,
    /// In the run queue (this turn's or the next).
    queued: bool,
    /// In a buffer waiters' queue.
    waiting: bool,
    /// Counted as unauthenticated in this source bucket ([`super::sources::Sources`]) until
    /// its handshake succeeds or it closes.
    source: Option<u32>,
}

/// A worker's state. Created on the spawning thread, then moved into its own thread.
pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    slab: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    pool: Pool,
    scratch: Vec<u8>,
    rng: FastRng,
    keyshares: KeyShares,
    run_queue: Vec<usize>,
    next_queue: Vec<usize>,
    buf_waiters: VecDeque<usize>,
    /// Fronted connections waiting for a spare buffer ([`Pool::checkout_spare`]).
    spare_waiters: VecDeque<usize>,
    to_free: Vec<usize>,
    /// Wake-ups of shaped connections.
    timers: Timers,
    accept_pending: bool,
    accept_paused_until: Option<Instant>,
    next_id: u64,
}

impl Worker {
    /// Prepares a worker: registers its listener clone and allocates its slab and pool.
    pub(crate) fn new(
        index: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
        max_conns: usize,
        buffers: usize,
    ) -> io::Result<Worker> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let buf_size = shared.config.buffer_size;
        let mut rng = FastRng::default();
        let mut slab = Vec::with_capacity(max_conns);
        slab.resize_with(0, || None);
        Ok(Worker {
            index,
            poll,
            listener: Some(listener),
            // Every connection this worker may hold gets two small buffers if it needs them:
            // one for its handshake, one per relay direction when relay buffers run short
            // (capped: past that, connections wait for buffers).
            pool: Pool::new(
                buffers,
                buf_size,
                (2 * max_conns).min(MAX_HANDSHAKE_BUFFERS),
                HANDSHAKE_BUF_SIZE,
            ),
            // Room for a reassembled ClientHello or a whole fake server flight (<= 16.8 KB).
            scratch: vec![0u8; buf_size.max(32 * 1024)],
            keyshares: KeyShares::new(&mut rng),
            rng,
            slab,
            free_slots: Vec::with_capacity(max_conns),
            run_queue: Vec::with_capacity(max_conns),
            next_queue: Vec::with_capacity(max_conns),
            buf_waiters: VecDeque::with_capacity(max_conns),
            spare_waiters: VecDeque::with_capacity(max_conns),
            to_free: Vec::with_capacity(max_conns),
            // Sized for the slab only when shaping is on (otherwise never armed).
            timers: Timers::new(
                Instant::now(),
                if shared.shaping.is_on() { max_conns } else { 0 },
            ),
            accept_pending: true,
            accept_paused_until: None,
            next_id: (index as u64) << 48,
            shared,
        })
    }

    /// Runs the loop until shutdown completes.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut timeout = next_sweep.saturating_duration_since(now);
            if !self.next_queue.is_empty() || (self.accept_pending && self.can_accept(now)) {
                timeout = Duration::ZERO;
            }
            if let Some(until) = self.accept_paused_until {
                timeout = timeout.min(until.saturating_duration_since(now));
            }
            if let Some(at) = self.timers.next_wake() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    crate::log_event!(Level::Error, "poll-failed", worker = self.index, error = e);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            std::mem::swap(&mut self.run_queue, &mut self.next_queue);
            let (slab, run_queue) = (&mut self.slab, &mut self.run_queue);
            self.timers.expire(now, |slot| {
                if let Some(Some(s)) = slab.get_mut(slot) {
                    if !s.queued {
                        s.queued = true;
                        run_queue.push(slot);
                    }
                }
            });
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
                    Token(t) => {
                        let (slot, side) = (t >> 1, t & 1);
                        let Some(Some(s)) = self.slab.get_mut(slot) else {
                            continue;
                        };
                        let mut bits = 0;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            bits |= R;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            bits |= W;
                        }
                        s.conn
                            .readiness(if side == 0 { CLIENT } else { UPSTREAM }, bits);
                        if !s.queued {
                            s.queued = true;
                            self.run_queue.push(slot);
                        }
                    }
                }
            }

            let stopping = self.shared.stop.load(Ordering::Relaxed);
            if stopping && stop_deadline.is_none() {
                stop_deadline = Some(now + self.shared.grace);
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                self.close_unestablished(now);
            }
            if !stopping && self.accept_pending && self.can_accept(now) {
                self.accept(now);
            }
            self.run_connections(now);
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_EVERY;
            }
            self.free_closed();
            if let Some(deadline) = stop_deadline {
                let live = self.slab.iter().flatten().count();
                if live == 0 {
                    break;
                }
                if now >= deadline {
                    self.close_all(now);
                    self.free_closed();
                    break;
                }
            }
        }
    }

    fn can_accept(&self, now: Instant) -> bool {
        self.listener.is_some() && self.accept_paused_until.is_none_or(|t| now >= t)
    }

    fn accept(&mut self, now: Instant) {
        self.accept_paused_until = None;
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Out of descriptors or socket memory (issue 12: ENOBUFS spun the loop).
                Err(e) if accept_pause_reason(&e).is_some() => {
                    crate::log_event!(
                        Level::Warn,
                        "accept-paused",
                        worker = self.index,
                        reason = accept_pause_reason(&e).unwrap_or_default()
                    );
                    self.accept_paused_until = Some(now + EMFILE_PAUSE);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends: the next connection may be fine.
                    crate::log_event!(
                        Level::Debug,
                        "accept-failed",
                        worker = self.index,
                        error = e
                    );
                }
            }
        }
        // Batch used up: more may be waiting, and no new edge will tell us.
        self.accept_pending = true;
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let shared = &self.shared;
        // IP lists (with a PROXY listener, the connection checks the announced address).
        if !shared.config.proxy_protocol_listener && !shared.admits(peer.ip()) {
            drop(stream);
            return;
        }
        let limit = shared.config.concurrency;
        let active = shared.active.fetch_add(1, Ordering::AcqRel);
        // Per source address and the reserve for known clients (issue 12). Behind a PROXY
        // listener every connection comes from the load balancer: not applied.
        let source =
            (!shared.config.proxy_protocol_listener).then(|| shared.sources.bucket(peer.ip()));
        let refused = active >= limit
            || source.is_some_and(|b| shared.sources.admit(b, active, now).is_err());
        if refused {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            shared.stats.limited.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            return;
        }
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slab.push(None);
                self.slab.len() - 1
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        // TCP_NODELAY is inherited from the listening socket.
        let registered = self.poll.registry().register(
            &mut stream,
            token(slot, CLIENT),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => {
                let ctx = ctx!(self, now);
                let conn = Conn::new(id, slot, stream, peer, &ctx);
                self.slab[slot] = Some(Slot {
                    conn,
                    queued: true,
                    waiting: false,
                    source,
                });
                self.run_queue.push(slot);
            }
            Err(e) => {
                crate::log_event!(
                    Level::Debug,
                    "register-failed",
                    worker = self.index,
                    error = e
                );
                self.shared.active.fetch_sub(1, Ordering::AcqRel);
                if let Some(b) = source {
                    self.shared.sources.release(b);
                }
                self.free_slots.push(slot);
            }
        }
    }

    fn run_connections(&mut self, now: Instant) {
        // Other connections wait their turn: a relay may hold back part of a segment.
        let busy = self.run_queue.len() > 1;
        let mut i = 0;
        while i < self.run_queue.len() {
            let slot = self.run_queue[i];
            i += 1;
            let in_use_before = self.pool.all_in_use();
            let Some(Some(s)) = self.slab.get_mut(slot) else {
                continue;
            };
            s.queued = false;
            let mut ctx = ctx!(self, now, busy);
            let Turn { next, wake_at } = s.conn.ready(&mut ctx);
            if let Some(b) = s.source.filter(|_| s.conn.is_authenticated()) {
                s.source = None;
                self.shared.sources.established(b, now);
            }
            match wake_at {
                Some(at) => self.timers.arm(slot, at),
                None => self.timers.disarm(slot),
            }
            match next {
                Next::Closed(_) => {
                    self.to_free.push(slot);
                    // Mark so it is not pushed again this turn.
                    s.queued = true;
                }
                Next::Requeue if !s.queued => {
                    s.queued = true;
                    self.next_queue.push(slot);
                }
                Next::WaitBuffer(class) if !s.waiting => {
                    s.waiting = true;
                    if class.waits_for_spare() {
                        self.spare_waiters.push_back(slot);
                    } else {
                        self.buf_waiters.push_back(slot);
                    }
                }
                _ => {}
            }
            // Buffers came back: let waiting connections try again this turn.
            let freed = in_use_before.saturating_sub(self.pool.all_in_use());
            self.wake_waiters(freed, false);
        }
        self.run_queue.clear();
    }

    /// Lets connections that wait for a buffer try again, this turn or (`later`) the next: one
    /// per buffer that came back (`freed`), and one more while a buffer they can use is free
    /// (buffers released elsewhere). Our clients' waiters first; fronted connections only while
    /// the spare half has a buffer. A waiter that then fails leaves no buffer it could use, so
    /// waking cannot go round forever (which is why a free handshake buffer wakes nobody here:
    /// a waiter for a relay buffer would fail, queue again and be woken again).
    fn wake_waiters(&mut self, freed: usize, later: bool) {
        let relay_free = self.pool.in_use() < self.pool.capacity();
        for _ in 0..freed.max(usize::from(relay_free)) {
            let Some(w) = self.buf_waiters.pop_front() else {
                break;
            };
            self.wake(w, later);
        }
        for _ in 0..freed.max(1) {
            if !self.pool.spare_free() {
                break;
            }
            let Some(w) = self.spare_waiters.pop_front() else {
                break;
            };
            self.wake(w, later);
        }
    }

    /// Runs a connection that waited for a buffer again, this turn or (`later`) the next.
    fn wake(&mut self, slot: usize, later: bool) {
        if let Some(Some(c)) = self.slab.get_mut(slot) {
            c.waiting = false;
            if !c.queued {
                c.queued = true;
                if later {
                    self.next_queue.push(slot);
                } else {
                    self.run_queue.push(slot);
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let (in_use, capacity) = (self.pool.in_use(), self.pool.capacity());
        let handshake = self.pool.all_in_use() - in_use;
        self.shared
            .stats
            .pool(self.index, in_use, capacity, handshake);
        for slot in 0..self.slab.len() {
            let Some(Some(s)) = self.slab.get_mut(slot) else {
                continue;
            };
            s.conn.report(&self.shared.stats);
            if s.conn.deadline().is_none_or(|d| now < d) {
                continue;
            }
            let mut ctx = ctx!(self, now);
            let turn = s.conn.handle_timeout(&mut ctx);
            if let Next::Closed(_) = turn.next {
                self.timers.disarm(slot);
                self.to_free.push(slot);
                s.queued = true;
            } else if !s.queued {
                // A new connect attempt may already have results.
                s.queued = true;
                self.next_queue.push(slot);
            }
        }
        // Connections closed here gave their buffers back: waiters run next turn.
        let free = self.pool.capacity() - self.pool.in_use();
        self.wake_waiters(free, true);
    }

    fn close_unestablished(&mut self, now: Instant) {
        self.close_where(now, |c| c.in_handshake());
    }

    fn close_all(&mut self, now: Instant) {
        self.close_where(now, |_| true);
    }

    fn close_where(&mut self, now: Instant, pick: impl Fn(&Conn<TcpStream>) -> bool) {
        for slot in 0..self.slab.len() {
            let Some(Some(s)) = self.slab.get_mut(slot) else {
                continue;
            };
            if s.conn.is_closed() || !pick(&s.conn) {
                continue;
            }
            let mut ctx = ctx!(self, now);
            s.conn.close(CloseReason::Shutdown, &mut ctx);
            self.to_free.push(slot);
            s.queued = true;
        }
    }

    /// Frees the slots of connections closed during this turn (after all events were handled,
    /// so that no stale event reaches a reused slot).
    fn free_closed(&mut self) {
        let now = Instant::now();
        while let Some(slot) = self.to_free.pop() {
            let Some(Slot {
                mut conn,
                source,
                waiting,
                ..
            }) = self.slab.get_mut(slot).and_then(Option::take)
            else {
                continue;
            };
            if waiting {
                // Not left behind for a later connection in this slot (issue 12). A slot
                // waits in one queue at most once; the last waiter takes its place.
                for q in [&mut self.buf_waiters, &mut self.spare_waiters] {
                    if let Some(i) = q.iter().position(|&s| s == slot) {
                        q.swap_remove_back(i);
                    }
                }
            }
            if let Some(b) = source {
                self.shared.sources.release(b);
            }
            conn.report(&self.shared.stats);
            self.timers.disarm(slot);
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            if conn.is_fronted() {
                self.shared.stats.fronted_closed();
            }
            let stats = &self.shared.stats;
            let [bytes_up, bytes_down] = conn.bytes();
            stats.bytes_up.fetch_add(bytes_up, Ordering::Relaxed);
            stats.bytes_down.fetch_add(bytes_down, Ordering::Relaxed);
            // After the bytes: whoever sees the close (Acquire) sees its bytes too.
            stats.closed.fetch_add(1, Ordering::Release);
            let reason = conn.close_reason().unwrap_or(CloseReason::Done);
            if let CloseReason::Rejected(r) = reason {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                // Rate-limited: any prober can trigger it (issue 12).
                crate::log_probe!(
                    crate::log::Probe::Rejected,
                    Level::Info,
                    "handshake-rejected",
                    conn = conn.id_str(),
                    client = conn.peer(),
                    reason = r.as_str(),
                    age_ms = conn.age(now).as_millis()
                );
            } else {
                crate::log_event!(
                    Level::Debug,
                    "conn-closed",
                    conn = conn.id_str(),
                    client = conn.peer(),
                    reason = reason.as_str(),
                    user = conn.user().unwrap_or(""),
                    dc = conn.dc(),
                    bytes_up = bytes_up,
                    bytes_down = bytes_down,
                    age_ms = conn.age(now).as_millis()
                );
            }
            self.free_slots.push(slot);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{CLIENT, Pool, R, W, Worker};
    use crate::config::Config;
    use crate::io::Shared;
    use crate::proto::XorShift64;
    use crate::proto::secret::{Secret, SecretKind};

    /// Issue 12: a connection that closes while it waits for a buffer leaves the waiter
    /// queues (its entry would otherwise stay, and wake whatever connection gets the slot
    /// next, the queue growing past its capacity). One relay buffer, no small ones: A's
    /// handshake holds the buffer, B waits, B's handshake times out before A's.
    #[test]
    fn a_waiter_that_closes_leaves_the_queue() {
        let secret = Secret::generate(SecretKind::Secure, "", &mut XorShift64(12));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = Config::simple(addr, secret);
        cfg.timeouts.handshake = Duration::from_millis(100);
        let shared = Arc::new(Shared::new(cfg, Duration::from_secs(1), addr));
        let mut w = Worker::new(0, mio::Poll::new().unwrap(), listener, shared, 4, 1).unwrap();
        w.pool = Pool::new(1, 4096, 0, 2048);
        let t0 = Instant::now();
        let run = |w: &mut Worker, now: Instant| {
            std::thread::sleep(Duration::from_millis(50));
            w.accept(now);
            for s in w.slab.iter_mut().flatten() {
                s.conn.readiness(CLIENT, R | W);
            }
            w.run_connections(now);
        };
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        a.write_all(&[1]).unwrap();
        run(&mut w, t0 + Duration::from_secs(1));
        assert_eq!(w.pool.in_use(), 1, "A's handshake holds the relay buffer");
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        b.write_all(&[1]).unwrap();
        run(&mut w, t0);
        assert_eq!(w.buf_waiters.len(), 1, "B waits");
        w.sweep(t0 + Duration::from_millis(200));
        w.free_closed();
        assert_eq!(w.slab.iter().flatten().count(), 1, "B closed, A not");
        assert!(w.buf_waiters.is_empty(), "{:?}", w.buf_waiters);
        assert!(w.spare_waiters.is_empty());
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
}
