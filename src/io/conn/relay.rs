//! The relay phase: bytes both ways between the client and the upstream, in place in one pool
//! buffer per direction. Two kinds: to a DC (obfuscated2 re-encryption through the
//! [`Ciphers`] seam, TLS records toward a FakeTLS client, paced by its [`Pacer`]) and to the
//! fronting site (byte for byte).
//!
//! * client → DC: [deframe TLS records] → `Ciphers::up` (decrypt with the client key, encrypt
//!   with the DC key);
//! * DC → client: `Ciphers::down` → [frame into TLS records, headers written in room left
//!   before each payload by one `readv`: no copy].
//!
//! Half-close: on EOF from one side, what it sent is flushed, then `shutdown(Write)` passes
//! the EOF on; a reset is passed on as a reset after the flush. The relay ends when both
//! directions are done.

use std::io::{self, ErrorKind, IoSliceMut};
use std::time::{Duration, Instant};

use super::{CLIENT, CloseReason, Ctx, R, Release, TURN_BUDGET, UPSTREAM, W, Want};
use crate::io::pool::{BufId, Class, Pool};
use crate::io::sock::{Net, Sock};
use crate::io::stats::Stats;
use crate::proto::faketls::{self, RecordReader};
use crate::proto::handshake::Ciphers;
use crate::proto::shaping::Pacer;

/// Length of a TLS record header.
const HDR: usize = faketls::RECORD_HEADER_LEN;

/// Records one `readv` may fill.
const MAX_SEGMENTS: usize = 4;

/// How long a direction may hold a relay buffer without writing a byte of it before the
/// connection is closed, when relay buffers run short ([`Pool::short`]; issue 12: unread
/// downloads held every buffer). Longer than the stalls of a mobile link (a handover, a
/// second or two); a reader that slow only while buffers are plentiful keeps its connection.
pub(super) const STALL: Duration = Duration::from_secs(3);

/// What is relayed, and how.
// By value, not boxed: it lives in the connection's slab slot (no allocation per connection).
#[allow(clippy::large_enum_variant)]
pub(super) enum RelayKind {
    /// A client of ours and its DC.
    Dc {
        dc: i16,
        ciphers: Ciphers,
        /// FakeTLS: the client's record deframer and the record timing toward it.
        tls: Option<(RecordReader, Pacer)>,
    },
    /// A fronted connection and the fronting site, byte for byte.
    Front,
    /// A client of ours and a middle proxy (ad tag): RPC packets, see [`super::middle`].
    Middle {
        dc: i16,
        /// Boxed: only this path pays for the codec and its second buffer.
        me: Box<super::middle::Middle>,
        /// FakeTLS: the client's record deframer and the record timing toward it.
        tls: Option<(RecordReader, Pacer)>,
    },
}

/// The relay phase's data.
pub(super) struct Relay<S> {
    pub(super) upstream: S,
    /// client → upstream
    pub(super) up: Half,
    /// upstream → client
    pub(super) down: Half,
    pub(super) kind: RelayKind,
    /// Closed when idle until then (moved on by traffic).
    pub(super) deadline: Instant,
}

impl<S> Relay<S> {
    /// When a direction holding a relay buffer will have written nothing for [`STALL`] (it is
    /// then closed if relay buffers run short).
    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        let stuck = |h: &Half| {
            h.since
                .filter(|_| !h.is_empty() && h.buf.is_some_and(|b| !Pool::is_small(b)))
        };
        match (stuck(&self.up), stuck(&self.down)) {
            (Some(a), Some(b)) => Some(a.min(b) + STALL),
            (a, b) => a.or(b).map(|t| t + STALL),
        }
    }

    /// When the connection must be looked at: its idle deadline, or a stall's.
    pub(super) fn next_deadline(&self) -> Instant {
        self.stall_deadline()
            .map_or(self.deadline, |s| s.min(self.deadline))
    }
}

impl<S> Relay<S> {
    /// Stops relaying either way (the user's quota ran out): what is buffered is flushed
    /// (toward a FakeTLS client, whole records: a record is framed whole when read), then
    /// both sides are shut and the relay ends once the client's EOF comes (its bytes until
    /// then are dropped: [`Half::discard`]) or at the idle timeout.
    pub(super) fn cut(&mut self) {
        self.down.eof = true;
        if matches!(self.kind, RelayKind::Middle { .. }) {
            self.up.eof = true;
        } else {
            self.up.discard = true;
        }
    }

    /// Takes in `n` raw client bytes (records) held after the up half's bytes, as if just
    /// read: their payload, re-encrypted, joins the half. Returns the payload length.
    pub(super) fn take_in_records(&mut self, n: usize, pool: &mut Pool) -> io::Result<usize> {
        if let (
            RelayKind::Middle {
                me,
                tls: Some((reader, _)),
                ..
            },
            Some(id),
        ) = (&mut self.kind, self.up.buf)
        {
            let half = &mut self.up;
            let buf = &mut pool.get(id)[half.end..half.end + n];
            let m = reader
                .deframe_in_place(buf)
                .map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
            me.ciphers.up(&mut buf[..m]);
            half.end += m;
            return Ok(m);
        }
        let (
            RelayKind::Dc {
                ciphers,
                tls: Some((reader, _)),
                ..
            },
            Some(id),
        ) = (&mut self.kind, self.up.buf)
        else {
            return Ok(0);
        };
        let half = &mut self.up;
        let buf = &mut pool.get(id)[half.end..half.end + n];
        let m = reader
            .deframe_in_place(buf)
            .map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
        ciphers.up(&mut buf[..m]);
        half.end += m;
        Ok(m)
    }
}

impl<S> Release for Relay<S> {
    fn release(mut self, pool: &mut Pool, stats: &Stats) {
        self.up.release(pool);
        self.down.release(pool);
        match self.kind {
            RelayKind::Dc { dc, .. } => stats.dc_relay(dc, false),
            RelayKind::Middle { dc, me, .. } => {
                stats.dc_relay(dc, false);
                me.release(pool, stats);
            }
            RelayKind::Front => {}
        }
    }
}

/// One direction of the relay and its buffer window `[start, end)`.
#[derive(Debug, Default)]
pub(super) struct Half {
    pub(super) buf: Option<BufId>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// The source sent EOF.
    pub(super) eof: bool,
    /// `shutdown(Write)` was sent to the destination after EOF and a full flush.
    pub(super) shut: bool,
    /// The source ended with a reset: after the flush, reset the destination too.
    pub(super) reset: bool,
    /// Shaped direction: bytes before this offset may be written now (the records whose
    /// send time came); the record starting here waits for its time.
    pub(super) limit: usize,
    /// The last write went with `MSG_MORE` ([`Sock::write_more`]): the destination may hold
    /// its tail until the next write or a [`Sock::push`].
    held: bool,
    /// Cut (the user's quota ran out): the source's bytes are read and dropped until its EOF
    /// (or the idle timeout), so that closing never resets the connection over unread bytes:
    /// a reset would destroy the records flushed before it (a site's lingering close does
    /// the same).
    pub(super) discard: bool,
    /// When bytes last left, or first waited after it was empty (`None` while empty): a
    /// direction that keeps bytes without writing is stalled ([`Relay::stall_deadline`]).
    pub(super) since: Option<Instant>,
}

impl Half {
    /// A half holding `buf[..end]` (the bytes a handshake read), with the source's EOF.
    pub(super) fn holding(buf: Option<BufId>, end: usize, eof: bool) -> Half {
        Half {
            buf,
            end: if buf.is_some() { end } else { 0 },
            eof,
            ..Half::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// One read from the client into `buf[self.end..]` (`buf`: this half's buffer): TLS
    /// records deframed and their payload turned into the upstream's bytes in place by `up`;
    /// EOF and a reset noted. Returns the raw bytes read and the payload bytes added (counted
    /// toward the client's traffic), or `None` when the client had nothing (would block).
    pub(super) fn read_client<S: Sock>(
        &mut self,
        ends: &mut Ends<'_, S>,
        buf: &mut [u8],
        tls: Option<&mut RecordReader>,
        up: impl FnOnce(&mut [u8]),
    ) -> Result<Option<(usize, usize)>, (usize, io::Error)> {
        match ends.client.read(&mut buf[self.end..]) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                let got = &mut buf[self.end..self.end + n];
                let m = match tls {
                    Some(t) => t
                        .deframe_in_place(got)
                        .map_err(|_| (CLIENT, io::Error::from(ErrorKind::InvalidData)))?,
                    None => n,
                };
                up(&mut buf[self.end..self.end + m]);
                self.end += m;
                ends.bytes[0] += m as u64;
                return Ok(Some((n, m)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                ends.ready[CLIENT] &= !R;
                return Ok(None);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.eof = true;
                self.reset = true;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err((CLIENT, e)),
        }
        Ok(Some((0, 0)))
    }

    /// The buffer held, if any.
    #[cfg(test)]
    pub(super) fn buf(&self) -> Option<BufId> {
        self.buf
    }

    /// Marks every byte held as written.
    #[cfg(test)]
    pub(super) fn consume_all(&mut self) {
        self.start = self.end;
    }

    pub(super) fn done(&self) -> bool {
        self.eof && self.is_empty()
    }

    /// Copies `data` into a fresh buffer of `class` (the half must be empty): for the rest of
    /// a server flight, written unshaped. False when the pool has none or it does not fit.
    pub(super) fn fill_from(&mut self, data: &[u8], pool: &mut Pool, class: Class) -> bool {
        let Some(id) = pool.checkout(class) else {
            return false;
        };
        let Some(dst) = pool.get(id).get_mut(..data.len()) else {
            pool.release(id);
            return false;
        };
        dst.copy_from_slice(data);
        self.buf = Some(id);
        self.start = 0;
        self.end = data.len();
        // Not shaped.
        self.limit = data.len();
        true
    }

    /// Puts `data` in front of the bytes held (the PROXY v2 header to the fronting site),
    /// leaving room for `room` bytes: takes a relay buffer if there is none yet or the one
    /// held (a handshake's) is too small. False when the pool has none.
    pub(super) fn prepend(&mut self, data: &[u8], room: usize, pool: &mut Pool) -> bool {
        if self.buf.is_none() {
            self.buf = pool.checkout(Class::Client);
        }
        let Some(mut id) = self.buf else {
            return false;
        };
        if self.end + room > pool.get(id).len() {
            // A full handshake buffer: the header needs a relay buffer.
            let Some(big) = pool.grow(id, self.end, Class::Client) else {
                return false;
            };
            id = big;
            self.buf = Some(big);
        }
        let buf = pool.get(id);
        if self.end + room > buf.len() {
            return false;
        }
        let n = data.len();
        buf.copy_within(self.start..self.end, self.start + n);
        buf[self.start..self.start + n].copy_from_slice(data);
        self.end += n;
        true
    }

    /// Leaves the handshake's small buffer for a relay buffer of `class` once the half is
    /// empty, if one is free (else keeps the small one rather than wait). Reading a busy client
    /// 2 KiB at a time took eight times the system calls of 16 KiB reads: an upload that
    /// follows the handshake without a pause never emptied the socket, so the small buffer
    /// stayed for good.
    pub(super) fn upgrade_small(&mut self, class: Class, pool: &mut Pool) {
        if self.is_empty() && self.buf.is_some_and(Pool::is_small) {
            if let Some(big) = pool.checkout_relay(class) {
                self.release(pool);
                self.buf = Some(big);
            }
        }
    }

    /// Writes what is buffered to `dst` once (the rest of a server flight).
    pub(super) fn write_to(&mut self, dst: &impl Sock, pool: &mut Pool) -> io::Result<()> {
        let id = self.buf.expect("non-empty half has a buffer");
        let n = write_some(dst, &pool.get(id)[self.start..self.end])?;
        self.start += n;
        Ok(())
    }

    /// The common tail of both pumps: writes what is buffered to `dst`, gives the buffer back
    /// once it is empty and the source has nothing more for now, and after the source's EOF
    /// passes it on (`shutdown(Write)`, or a reset after a reset). `src`/`dst` index `ready`.
    /// Returns whether bytes were written; errors name the failing side.
    /// With `paced`, only bytes before [`Half::limit`] are written. With `more`, the write
    /// says more bytes follow at once ([`Sock::write_more`]); the pump then calls
    /// [`Half::push`] before it stops.
    // Each argument is used per call; a struct of them would be built on every flush.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flush(
        &mut self,
        dst: &impl Sock,
        ready: &mut [u8; 2],
        (src, dst_side): (usize, usize),
        pool: &mut Pool,
        paced: bool,
        more: bool,
        now: Instant,
    ) -> Result<bool, (usize, io::Error)> {
        let mut progress = false;
        let upto = if paced {
            self.limit.min(self.end)
        } else {
            self.end
        };
        if !self.is_empty() && self.since.is_none() {
            // Bytes arrived since the half was last empty: its stall clock starts.
            self.since = Some(now);
        }
        if self.start < upto && ready[dst_side] & W != 0 {
            let id = self.buf.expect("non-empty half has a buffer");
            let buf = pool.get(id);
            let data = &buf[self.start..upto];
            let written = if more {
                write_with(data, |d| dst.write_more(d))
            } else {
                write_some(dst, data)
            };
            match written {
                Ok(n) => {
                    self.held = more;
                    self.start += n;
                    self.since = Some(now);
                    progress = true;
                    if self.is_empty() {
                        self.since = None;
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
                dst.reset_on_close();
                return Err((src, ErrorKind::ConnectionReset.into()));
            }
            let _ = dst.shutdown_write();
        }
        Ok(progress)
    }

    /// Sends what the last write left held (see [`Half::flush`]'s `more`).
    fn push(&mut self, dst: &impl Sock) {
        if std::mem::take(&mut self.held) {
            dst.push();
        }
    }

    pub(super) fn release(&mut self, pool: &mut Pool) {
        if let Some(id) = self.buf.take() {
            pool.release(id);
        }
        self.start = 0;
        self.end = 0;
        self.limit = 0;
        self.since = None;
    }
}

/// The parts of a `Conn` a relay turn uses besides its phase (a split borrow, so that the
/// relay runs in place in `Conn::phase`, never moved on the hot path).
pub(super) struct Ends<'a, S> {
    pub(super) client: &'a S,
    pub(super) ready: &'a mut [u8; 2],
    pub(super) bytes: &'a mut [u64; 2],
}

impl<S: Sock> Relay<S> {
    /// A turn of the relay: `Err` names why it must close (the caller releases it). Not
    /// inlined (size: one call per turn).
    #[inline(never)]
    pub(super) fn turn(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<(), CloseReason> {
        if matches!(self.kind, RelayKind::Middle { .. }) {
            return self.middle_turn(ends, ctx, want);
        }
        let moved_up = self
            .pump_up(ends, ctx, want)
            .map_err(|e| self.failed(ends, e))?;
        let moved_down = self
            .pump_down(ends, ctx, want)
            .map_err(|e| self.failed(ends, e))?;
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
    pub(super) fn failed(&self, ends: &Ends<'_, S>, (side, e): (usize, io::Error)) -> CloseReason {
        if e.kind() == ErrorKind::ConnectionReset && !(self.up.reset || self.down.reset) {
            match side {
                CLIENT => self.upstream.reset_on_close(),
                _ => ends.client.reset_on_close(),
            }
        }
        CloseReason::Error(e.kind())
    }

    /// client → upstream. Returns payload bytes moved.
    fn pump_up(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<usize, (usize, io::Error)> {
        // A fronted connection is relayed byte for byte.
        let (mut ciphers, mut tls, class) = match &mut self.kind {
            RelayKind::Dc { ciphers, tls, .. } => (
                Some(ciphers),
                tls.as_mut().map(|(reader, _)| reader),
                Class::Client,
            ),
            RelayKind::Front => (None, None, Class::Fronted),
            // Its own pumps (`middle_turn`).
            RelayKind::Middle { .. } => return Ok(0),
        };
        let half = &mut self.up;
        let mut moved = 0;
        // Bytes read from the socket, TLS record headers included: the turn budget counts
        // these, so a stream of empty records yields like any other (issue 12).
        let mut raw = 0;
        // The last read filled the room it had.
        let mut full = false;
        loop {
            let mut progress = false;
            // Fill (or, cut, drain).
            if half.discard && !half.eof && ends.ready[CLIENT] & R != 0 {
                let mut sink = [0u8; 4096];
                match ends.client.read(&mut sink) {
                    Ok(0) => {
                        half.eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        raw += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => ends.ready[CLIENT] &= !R,
                    Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        half.eof = true;
                        progress = true;
                    }
                }
            } else if !half.eof && ends.ready[CLIENT] & R != 0 {
                half.upgrade_small(class, ctx.pool);
                if half.buf.is_none() {
                    half.buf = ctx.pool.checkout(class);
                    if half.buf.is_none() {
                        want.buffer = Some(class);
                    }
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    if half.end < buf.len() {
                        let room = buf.len() - half.end;
                        let read = half.read_client(ends, buf, tls.as_deref_mut(), |b| {
                            if let Some(c) = ciphers.as_deref_mut() {
                                c.up(b);
                            }
                        })?;
                        if let Some((n, m)) = read {
                            raw += n;
                            full = n == room;
                            moved += m;
                            progress = true;
                        }
                    }
                }
            }
            // As toward the client: a full read from a client still readable means more
            // follows at once.
            let more = ctx.busy && full && !half.eof && ends.ready[CLIENT] & R != 0;
            progress |= half.flush(
                &self.upstream,
                ends.ready,
                (CLIENT, UPSTREAM),
                ctx.pool,
                false,
                more,
                ctx.now,
            )?;
            if raw >= TURN_BUDGET {
                want.requeue = true;
                break;
            }
            if !progress {
                break;
            }
        }
        if !want.requeue {
            half.push(&self.upstream);
        }
        Ok(moved)
    }

    /// upstream → client. Returns payload bytes moved.
    fn pump_down(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<usize, (usize, io::Error)> {
        let (mut ciphers, mut pacer, class) = match &mut self.kind {
            RelayKind::Dc { ciphers, tls, .. } => (
                Some(ciphers),
                tls.as_mut().map(|(_, pacer)| pacer),
                Class::Client,
            ),
            RelayKind::Front => (None, None, Class::Fronted),
            // Its own pumps (`middle_turn`).
            RelayKind::Middle { .. } => return Ok(0),
        };
        let framed = pacer.is_some();
        // Shaping applies to records toward a FakeTLS client of ours (never to fronting).
        let shaping = if framed {
            ctx.shared.shaping.get()
        } else {
            None
        };
        let half = &mut self.down;
        let mut moved = 0;
        loop {
            let mut progress = false;
            if !half.eof && ends.ready[UPSTREAM] & R != 0 {
                if half.buf.is_none() {
                    half.buf = ctx.pool.checkout(class);
                    if half.buf.is_none() {
                        want.buffer = Some(class);
                    }
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    let read = match pacer.as_deref_mut() {
                        Some(p) => {
                            let caps = p.caps(ctx.now, &mut *ctx.rng);
                            read_records(&self.upstream, buf, half.end, &caps)
                        }
                        None if half.end < buf.len() => self
                            .upstream
                            .read(&mut buf[half.end..])
                            .map(|n| Some((n, half.end + n))),
                        None => Ok(None),
                    };
                    match read {
                        Ok(None) => {}
                        Ok(Some((0, _))) => {
                            half.eof = true;
                            progress = true;
                        }
                        Ok(Some((n, new_end))) => {
                            if let Some(p) = pacer.as_deref_mut() {
                                // Payloads sit between the headers just written.
                                let mut at = half.end;
                                let mut records = 0;
                                while at < new_end {
                                    let len =
                                        usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
                                    if let Some(c) = ciphers.as_deref_mut() {
                                        c.down(&mut buf[at + HDR..at + HDR + len]);
                                    }
                                    at += HDR + len;
                                    records += 1;
                                }
                                p.framed(records, ctx.now);
                            } else if let Some(c) = ciphers.as_deref_mut() {
                                c.down(&mut buf[half.end..new_end]);
                            }
                            half.end = new_end;
                            moved += n;
                            ends.bytes[1] += n as u64;
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            ends.ready[UPSTREAM] &= !R;
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
            if let (Some(s), Some(p)) = (shaping.as_ref(), pacer.as_deref_mut()) {
                if half.start >= half.limit && !half.is_empty() {
                    // The next record may go (the one after waits a gap), or not yet.
                    let id = half.buf.expect("non-empty half has a buffer");
                    let buf = ctx.pool.get(id);
                    let at = half.start;
                    let payload = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
                    match p.delay(ctx.now, payload, s, &mut *ctx.rng) {
                        None => half.limit = at + HDR + payload,
                        Some(t) => want.wake_at = Some(t),
                    }
                }
            }
            // A busy worker, a full buffer from a source still readable: more follows at once,
            // so the kernel may send the client one big segment instead of one per read (a
            // loaded client is woken once per segment; see `Ctx::busy`). Never for shaped
            // records.
            let more = ctx.busy
                && shaping.is_none()
                && !half.eof
                && ends.ready[UPSTREAM] & R != 0
                && half
                    .buf
                    .is_some_and(|id| ctx.pool.get(id).len() - half.end <= HDR);
            progress |= half.flush(
                ends.client,
                ends.ready,
                (UPSTREAM, CLIENT),
                ctx.pool,
                shaping.is_some(),
                more,
                ctx.now,
            )?;
            if moved >= TURN_BUDGET {
                want.requeue = true;
                break;
            }
            if !progress {
                break;
            }
        }
        if !want.requeue {
            half.push(ends.client);
        }
        Ok(moved)
    }
}

/// Reads from `src` into `buf[end..]` as TLS application-data records, with one `readv`: each
/// payload segment (at most [`faketls::MAX_RECORD_PAYLOAD`] bytes) follows room for its header,
/// so framing costs no copy. `caps` bounds each record's payload (dynamic record sizing).
/// Writes the headers of the records that got bytes. Returns
/// `(payload bytes read, end of the framed bytes)`, or `None` when there is no room.
fn read_records(
    src: &impl Sock,
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
        let mut ios = segs.map(IoSliceMut::new);
        let n = loop {
            match src.read_vectored(&mut ios[..count]) {
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
pub(super) fn write_some(s: &impl Sock, data: &[u8]) -> io::Result<usize> {
    write_with(data, |d| s.write(d))
}

/// [`write_some`] through `write`.
fn write_with(data: &[u8], write: impl Fn(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match write(data) {
            Ok(0) if !data.is_empty() => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
