//! The middle-proxy route (ad tag): a client whose secret carries an ad tag is relayed through
//! one of Telegram's middle proxies instead of straight to its DC, over a TCP connection of its
//! own (one middle-proxy connection per client: see docs/ARCHITECTURE.md for why not a shared,
//! multiplexed one).
//!
//! ```text
//! Handshake ──(Connect, ad tag)──► Dial ──(up)──► Middle ──(RPC handshake)──► Relay(Middle)
//!                                  ▲              │
//!                                  └──────────────┘ refused, died, bad answer, 3 s: next one
//! ```
//!
//! I/O glue only: the protocol is [`crate::proto::middle`]'s (the handshake machine, the
//! streaming codec). Here: which middle proxy to try next ([`MiddleProxies::pick`]), the
//! handshake's bytes over the nonblocking socket (reads never go past the handshake answer, so
//! the session's first bytes stay in the socket for the relay), and the relay's two pumps:
//!
//! * client → middle proxy: [deframe TLS records] → the client's CTR decryption in place (the
//!   client's transport packets) → [`Encoder::encode`] into a *second* pool buffer (`wire`:
//!   each packet grows by its RPC header, so it cannot work in place) → the middle proxy;
//! * middle proxy → client: read into the buffer `HEADROOM` (+ a record header) ahead of the
//!   output, [`Decoder::decode`] in place → the client's CTR encryption → [a TLS record header
//!   in the room left] → the client, paced like direct mode.
//!
//! Nothing allocates once relaying: the codec state lives in the connection's one box (taken
//! when the handshake chose this route), the bytes in pool buffers.
//!
//! Ends: the client leaving sends `RPC_CLOSE_CONN` (at a packet boundary) and a FIN to the
//! middle proxy. The middle proxy ending the session (`RPC_CLOSE_EXT`, EOF, reset, a malformed
//! packet) flushes what it sent and closes the client's connection: the app opens a new one,
//! which picks a middle proxy afresh. A loss (all but `RPC_CLOSE_EXT`, Telegram's own close,
//! while the client was there) is counted (`middle_proxy_sessions_lost`).

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::dial::{Dial, Route, send_all};
use super::relay::{Ends, Half, Relay, RelayKind};
use super::{CLIENT, CloseReason, Conn, ConnId, Ctx, Phase, R, Role, TURN_BUDGET, UPSTREAM, Want};
use crate::background::middle::our_address;
use crate::background::telegram::MiddleProxies;
use crate::io::pool::{Class, Pool};
use crate::io::sock::{Net, Sock};
use crate::io::stats::Stats;
use crate::io::unix_now;
use crate::log::Level;
use crate::proto::Rng;
use crate::proto::dc::PreferIp;
use crate::proto::faketls::{self, MAX_RECORD_PAYLOAD};
use crate::proto::handshake::ClientCiphers;
use crate::proto::middle::codec::{Decoder, Encoder, HEADROOM, Link, MIN_OUT_ROOM, SessionParams};
use crate::proto::middle::handshake::{HsParams, HsStep, MeHandshake};
use crate::proto::middle::{MeError, process_id};
use crate::proto::obfs2::{FRAME_LEN, Tag};

/// The whole RPC handshake with one middle proxy (as MTProxy gives it).
const ME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The middle proxy's nonce packet (in clear).
const NONCE_ANSWER: usize = 44;
/// Length of a TLS record header.
const HDR: usize = faketls::RECORD_HEADER_LEN;

/// A client's middle-proxy state, boxed in its route and then its relay.
pub(super) struct Middle {
    /// The client's obfuscated2 streams (the middle proxy speaks no obfuscated2).
    pub(super) ciphers: ClientCiphers,
    tag: Tag,
    ad_tag: [u8; 16],
    proxies: Arc<MiddleProxies>,
    secret: Option<Arc<Vec<u8>>>,
    /// This connection's random start in the list (clients spread over it).
    rot: usize,
    conn_id: u64,
    /// The address the client connected to, as it sees it (public IP, our port).
    client_ours: SocketAddr,
    /// The middle proxy being tried.
    theirs: SocketAddr,
    /// Middle proxies that failed this connection so far.
    failures: u32,
    hs: Option<MeHandshake>,
    /// Our `RPC_HANDSHAKE` went out (the answer is expected).
    sent: bool,
    /// Handshake bytes read and not yet consumed.
    input: [u8; 64],
    len: usize,
    codec: Option<(Encoder, Decoder)>,
    /// Encrypted requests on their way to the middle proxy (the up direction's second buffer).
    wire: Half,
    /// `RPC_CLOSE_CONN` is written (or the client left mid-packet): nothing more to encode.
    closing: bool,
    /// The middle proxy ended the session while the client was still there.
    lost: bool,
}

impl Middle {
    /// The `k`-th middle proxy to try for `dc`; `None` past the end, and without a proxy
    /// secret (no handshake is possible).
    pub(super) fn target(&self, dc: i16, prefer: PreferIp, k: usize) -> Option<SocketAddr> {
        self.secret.as_ref()?;
        self.proxies.pick(dc, prefer, self.rot, k)
    }

    /// A connect attempt to `theirs` started.
    pub(super) fn attempt(&mut self, theirs: SocketAddr) {
        self.theirs = theirs;
        self.hs = None;
        self.sent = false;
        self.len = 0;
    }

    /// The attempt in progress failed (refused, silent, died, bad answer).
    pub(super) fn failed_attempt(&mut self) {
        self.failures += 1;
        self.hs = None;
    }

    /// No middle proxy is left to try: says why.
    pub(super) fn none_left(&self, conn: ConnId, dc: i16) {
        let why = if self.secret.is_none() {
            "no proxy secret loaded (proxy-secret-file / proxy-secret-url)"
        } else if self.failures == 0 {
            "no middle proxy for this DC in Telegram's proxy config"
        } else {
            "every middle proxy for this DC failed"
        };
        crate::log_event!(
            Level::Warn,
            "middle-proxy-unreachable",
            conn = conn,
            dc = dc,
            failed = self.failures,
            reason = why
        );
    }

    /// Drops `n` consumed handshake bytes.
    fn shift(&mut self, n: usize) {
        self.input.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Gives back the second buffer and counts the end of the middle-proxy connection.
    pub(super) fn release(mut self: Box<Self>, pool: &mut Pool, stats: &Stats) {
        self.wire.release(pool);
        stats.middle_proxy(false, false);
        if self.lost {
            stats.middle_proxy_lost();
        }
    }

    /// Client bytes of `input` into requests in `wire` (and queued pongs, and the close once
    /// the client left). Whether anything moved.
    fn encode(
        &mut self,
        input: &mut Half,
        pool: &mut Pool,
        want: &mut Want,
    ) -> Result<bool, (usize, io::Error)> {
        let Some((enc, _)) = self.codec.as_mut() else {
            return Ok(false);
        };
        let finish = input.eof && input.is_empty() && !self.closing;
        if input.is_empty() && !enc.has_queued() && !finish {
            return Ok(false);
        }
        if self.wire.buf.is_none() {
            self.wire.buf = pool.checkout(Class::Client);
        }
        let Some(wid) = self.wire.buf else {
            want.buffer = Some(Class::Client);
            return Ok(false);
        };
        let mut progress = false;
        if pool.get(wid).len() - self.wire.end >= MIN_OUT_ROOM {
            let done = match input.buf.filter(|_| !input.is_empty()) {
                Some(iid) => {
                    let (from, to) = pool.get2(iid, wid);
                    enc.encode(&from[input.start..input.end], &mut to[self.wire.end..])
                }
                None => enc.encode(&[], &mut pool.get(wid)[self.wire.end..]),
            }
            .map_err(|e| (CLIENT, bad_data(e)))?;
            input.start += done.consumed;
            if input.is_empty() {
                input.start = 0;
                input.end = 0;
            }
            self.wire.end += done.written;
            progress = done.consumed + done.written > 0;
        }
        if input.eof && input.is_empty() && !self.closing {
            // The client left: say so at a packet boundary (mid-packet there is nothing
            // sensible to say), then FIN.
            let out = &mut pool.get(wid)[self.wire.end..];
            if !enc.at_boundary() || out.len() >= MIN_OUT_ROOM {
                self.wire.end += enc.close(out);
                self.closing = true;
                self.wire.eof = true;
                self.wire.reset = input.reset;
                progress = true;
            }
        }
        Ok(progress)
    }
}

fn bad_data(e: MeError) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.as_str())
}

impl<S: Sock> Conn<S> {
    /// After the client's handshake: the route through a middle proxy when the client's
    /// secret has an ad tag, else `route` as it is. The client's early data, re-encrypted for
    /// a DC by the handshake, is turned back into its plaintext transport bytes, and the DC
    /// frame the handshake wrote in front of it is skipped.
    pub(super) fn middle_route(
        &mut self,
        route: Route,
        mut up: Half,
        own_tag: Option<[u8; 16]>,
        tag: Tag,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> (Route, Half) {
        let Some(ad_tag) = own_tag.or(ctx.shared.config.ad_tag) else {
            return (route, up);
        };
        let Route::Dc {
            dc,
            ciphers,
            tls,
            records,
        } = route
        else {
            return (route, up);
        };
        let early = match up.buf {
            Some(id) if up.end >= FRAME_LEN => &mut ctx.pool.get(id)[FRAME_LEN..up.end],
            _ => &mut [][..],
        };
        let ciphers = ciphers.into_client(early);
        if up.buf.is_some() && up.end >= FRAME_LEN {
            up.start = FRAME_LEN;
        }
        let telegram = &ctx.shared.telegram;
        let config = &ctx.shared.config;
        let local = self
            .client
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut r = [0u8; 16];
        ctx.rng.fill(&mut r);
        self.role = Role::Middle(dc);
        let me = Box::new(Middle {
            ciphers,
            tag,
            ad_tag,
            proxies: telegram.middle_proxies(),
            secret: telegram.proxy_secret(),
            rot: u64::from_le_bytes(r[..8].try_into().expect("8 bytes")) as usize,
            conn_id: u64::from_le_bytes(r[8..].try_into().expect("8 bytes")),
            client_ours: our_address(local, public_ips(config)),
            theirs: SocketAddr::from(([0, 0, 0, 0], 0)),
            failures: 0,
            hs: None,
            sent: false,
            input: [0; 64],
            len: 0,
            codec: None,
            wire: Half::default(),
            closing: false,
            lost: false,
        });
        let route = Route::Middle {
            dc,
            me,
            tls,
            records,
        };
        (route, up)
    }

    /// Connected to a middle proxy: send our nonce.
    pub(super) fn me_start(
        &mut self,
        mut dial: Dial<S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Phase<S> {
        let mut want = Want::default();
        let Route::Middle { me, .. } = &mut dial.route else {
            return self.next_address(dial, ctx, &mut want);
        };
        let Some(secret) = me.secret.clone() else {
            return self.next_address(dial, ctx, &mut want);
        };
        let local = dial
            .upstream
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let ours = our_address(local, public_ips(&ctx.shared.config));
        let now = unix_now() as u32;
        let mut r = [0u8; 18];
        ctx.rng.fill(&mut r);
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&r[..16]);
        let started = MeHandshake::new(&HsParams {
            secret: &secret,
            ours,
            theirs: me.theirs,
            now_unix: now,
            nonce,
            pid: process_id(ours.ip(), u16::from_le_bytes([r[16], r[17]]), now),
        });
        let n = match started {
            Ok(mut hs) => {
                let n = hs.start(ctx.scratch);
                me.hs = Some(hs);
                n
            }
            Err(e) => return self.me_failed(dial, e.as_str(), ctx, &mut want),
        };
        if !send_all(&dial.upstream, &ctx.scratch[..n]) {
            return self.me_failed(dial, "cannot send the nonce", ctx, &mut want);
        }
        dial.deadline = ctx.now + ME_HANDSHAKE_TIMEOUT;
        self.me_exchange(dial, ctx, &mut want)
    }

    /// A turn of the RPC handshake with what the middle proxy sent.
    #[inline(never)]
    pub(super) fn me_exchange(
        &mut self,
        mut dial: Dial<S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        loop {
            let Route::Middle { me, .. } = &mut dial.route else {
                return self.next_address(dial, ctx, want);
            };
            let Some(hs) = me.hs.as_mut() else {
                return self.me_failed(dial, "no handshake", ctx, want);
            };
            match hs.handle(&me.input[..me.len], ctx.scratch) {
                HsStep::NeedMore { consumed } => {
                    me.shift(consumed);
                    // Never read past the answer: what follows belongs to the relay.
                    let more = if me.sent {
                        16 - me.len % 16
                    } else {
                        NONCE_ANSWER.saturating_sub(me.len).max(1)
                    };
                    if me.len + more > me.input.len() {
                        return self.me_failed(dial, "malformed answer", ctx, want);
                    }
                    if self.ready[UPSTREAM] & R == 0 {
                        return Phase::Middle(dial);
                    }
                    match dial.upstream.read(&mut me.input[me.len..me.len + more]) {
                        Ok(0) => return self.me_failed(dial, "closed", ctx, want),
                        Ok(n) => me.len += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.ready[UPSTREAM] &= !R;
                            return Phase::Middle(dial);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return self.me_failed(dial, "read error", ctx, want),
                    }
                }
                HsStep::Send { consumed, len } => {
                    me.shift(consumed);
                    me.sent = true;
                    if !send_all(&dial.upstream, &ctx.scratch[..len]) {
                        return self.me_failed(dial, "cannot send the handshake", ctx, want);
                    }
                }
                HsStep::Connected { consumed, link } => {
                    me.shift(consumed);
                    me.hs = None;
                    if me.len != 0 {
                        return self.me_failed(dial, "bytes after the answer", ctx, want);
                    }
                    return self.me_relay(dial, link, ctx);
                }
                HsStep::Failed(e) => return self.me_failed(dial, e.as_str(), ctx, want),
            }
        }
    }

    /// This middle proxy failed: log it and try the next. (Not inlined: called from every
    /// failure path of the exchange.)
    #[inline(never)]
    pub(super) fn me_failed(
        &mut self,
        dial: Dial<S>,
        why: &str,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        if let Route::Middle { me, .. } = &dial.route {
            crate::log_event!(
                Level::Warn,
                "middle-proxy-failed",
                conn = self.id_str(),
                addr = me.theirs,
                error = why
            );
        }
        self.next_address(dial, ctx, want)
    }

    /// The RPC handshake is done: the session for this client, then the relay.
    fn me_relay(
        &mut self,
        dial: Dial<S>,
        link: Box<Link>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Phase<S> {
        let Dial {
            route,
            up,
            down,
            upstream,
            ..
        } = dial;
        let Route::Middle {
            dc,
            mut me,
            tls,
            records,
        } = route
        else {
            // (Only a middle route gets here.)
            return Phase::Closed(CloseReason::DcUnreachable);
        };
        me.codec = Some(link.session(&SessionParams {
            tag: me.tag,
            conn_id: me.conn_id,
            client: self.peer,
            ours: me.client_ours,
            ad_tag: Some(me.ad_tag),
        }));
        let stats = &ctx.shared.stats;
        stats.dc_relay(dc, true);
        stats.middle_proxy(true, me.failures > 0);
        crate::log_event!(
            Level::Debug,
            "middle-proxy-connected",
            conn = self.id_str(),
            dc = dc,
            addr = me.theirs,
            failed_before = me.failures
        );
        let kind = RelayKind::Middle { dc, me, tls };
        self.begin_relay(upstream, up, down, kind, records, ctx)
    }
}

/// The ad tag of the client's secret: its user's own (`[users.NAME] ad-tag`), else the
/// top-level `ad-tag`. `user` indexes the users in force: today the handshake tries the first
/// user's secret only (index 0), and once it searches all users it names the one found.
/// Single-secret configs read no snapshot (no lock).
fn public_ips(config: &crate::config::Config) -> (Option<IpAddr>, Option<IpAddr>) {
    (
        config.public_ipv4.map(IpAddr::V4),
        config.public_ipv6.map(IpAddr::V6),
    )
}

impl<S: Sock> Relay<S> {
    /// A relay turn through a middle proxy (see the module doc). Not inlined (size).
    #[inline(never)]
    pub(super) fn middle_turn(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<(), CloseReason> {
        let up = self
            .me_up(ends, ctx, want)
            .map_err(|e| self.me_broke(ends, e))?;
        let down = self
            .me_down(ends, ctx, want)
            .map_err(|e| self.me_broke(ends, e))?;
        // A ping answered by the decoder waits for the up direction.
        if let RelayKind::Middle { me, .. } = &self.kind {
            if me.codec.as_ref().is_some_and(|(e, _)| e.has_queued()) {
                self.me_up(ends, ctx, want)
                    .map_err(|e| self.me_broke(ends, e))?;
            }
        }
        if up + down > 0 {
            self.deadline = ctx.now + ctx.shared.config.timeouts.idle;
        }
        // The middle proxy ended the session (and what it sent is delivered), or the client
        // left (`RPC_CLOSE_CONN` and FIN delivered: nothing more comes for it): the
        // connection ends.
        if (self.down.done() && self.down.shut) || (self.up.done() && self.up.shut) {
            return Err(CloseReason::Done);
        }
        Ok(())
    }

    /// A socket failed or the middle proxy sent garbage; counted as a loss unless the client
    /// had left.
    #[inline(never)]
    fn me_broke(&mut self, ends: &Ends<'_, S>, e: (usize, io::Error)) -> CloseReason {
        if let RelayKind::Middle { me, .. } = &mut self.kind {
            if e.0 == UPSTREAM && !me.closing {
                me.lost = true;
            }
        }
        self.failed(ends, e)
    }

    /// client → middle proxy. Returns client payload bytes taken in.
    fn me_up(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<usize, (usize, io::Error)> {
        let RelayKind::Middle { me, tls, .. } = &mut self.kind else {
            return Ok(0);
        };
        let mut reader = tls.as_mut().map(|(reader, _)| reader);
        let half = &mut self.up;
        let (mut moved, mut raw) = (0, 0);
        loop {
            let mut progress = false;
            if !half.eof && ends.ready[CLIENT] & R != 0 {
                // The second buffer first, and none kept idle while waiting: client bytes
                // never sit in a relay buffer without room to encode them, so tagged
                // connections cannot hold the whole pool between them waiting for each other.
                if me.wire.buf.is_none() {
                    me.wire.buf = ctx.pool.checkout(Class::Client);
                }
                if me.wire.buf.is_some() {
                    half.upgrade_small(Class::Client, ctx.pool);
                    if half.buf.is_none() {
                        half.buf = ctx.pool.checkout(Class::Client);
                    }
                }
                if half.buf.is_none() {
                    if me.wire.is_empty() {
                        me.wire.release(ctx.pool);
                    }
                    want.buffer = Some(Class::Client);
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    if half.end < buf.len() {
                        let ciphers = &mut me.ciphers;
                        let read =
                            half.read_client(ends, buf, reader.as_deref_mut(), |b| ciphers.up(b))?;
                        if let Some((n, m)) = read {
                            raw += n;
                            moved += m;
                            progress = true;
                        }
                    }
                }
            }
            progress |= me.encode(half, ctx.pool, want)?;
            progress |= me.wire.flush(
                &self.upstream,
                ends.ready,
                (CLIENT, UPSTREAM),
                ctx.pool,
                false,
                false,
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
        // The input buffer goes back once empty and the client has nothing more for now.
        if half.is_empty() && half.buf.is_some() && (half.eof || ends.ready[CLIENT] & R == 0) {
            half.release(ctx.pool);
        }
        half.shut = me.wire.shut;
        Ok(moved)
    }

    /// middle proxy → client. Returns bytes read from the middle proxy.
    fn me_down(
        &mut self,
        ends: &mut Ends<'_, S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Result<usize, (usize, io::Error)> {
        let RelayKind::Middle { me, tls, .. } = &mut self.kind else {
            return Ok(0);
        };
        let mut pacer = tls.as_mut().map(|(_, pacer)| pacer);
        let shaping = if pacer.is_some() {
            ctx.shared.shaping.get()
        } else {
            None
        };
        let hdr = if pacer.is_some() { HDR } else { 0 };
        let half = &mut self.down;
        let mut moved = 0;
        loop {
            let mut progress = false;
            if !half.eof && ends.ready[UPSTREAM] & R != 0 {
                if half.buf.is_none() {
                    half.buf = ctx.pool.checkout(Class::Client);
                    if half.buf.is_none() {
                        want.buffer = Some(Class::Client);
                    }
                }
                if let Some(id) = half.buf {
                    let buf = ctx.pool.get(id);
                    // The output goes to `at` (after a record header), the input `HEADROOM`
                    // further: a record never exceeds its cap (dynamic record sizing).
                    let at = half.end + hdr;
                    let from = at + HEADROOM;
                    let mut room = buf.len().saturating_sub(from);
                    if let Some(p) = pacer.as_deref_mut() {
                        let [cap]: [usize; 1] = p.caps(ctx.now, &mut *ctx.rng);
                        room = room.min(cap.min(MAX_RECORD_PAYLOAD).saturating_sub(HEADROOM));
                    }
                    if room > 0 {
                        match self.upstream.read(&mut buf[from..from + room]) {
                            Ok(0) => {
                                half.eof = true;
                                me.lost |= !me.closing;
                                progress = true;
                            }
                            Ok(n) => {
                                let (enc, dec) = me
                                    .codec
                                    .as_mut()
                                    .ok_or((UPSTREAM, io::Error::from(ErrorKind::InvalidData)))?;
                                let d = dec
                                    .decode(buf, at, n, &mut *ctx.rng)
                                    .map_err(|e| (UPSTREAM, bad_data(e)))?;
                                if let Some(id) = d.ping {
                                    enc.queue_pong(id);
                                }
                                if d.out > 0 {
                                    me.ciphers.down(&mut buf[at..at + d.out]);
                                    if let Some(p) = pacer.as_deref_mut() {
                                        buf[half.end..at]
                                            .copy_from_slice(&faketls::record_header(d.out as u16));
                                        p.framed(1, ctx.now);
                                    }
                                    half.end = at + d.out;
                                    ends.bytes[1] += d.out as u64;
                                }
                                if d.closed {
                                    // RPC_CLOSE_EXT: Telegram closed this client's session.
                                    half.eof = true;
                                }
                                moved += n;
                                progress = true;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                ends.ready[UPSTREAM] &= !R;
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                            Err(e) => {
                                // A dead middle proxy: deliver what it sent, then a FIN.
                                let _ = e;
                                half.eof = true;
                                me.lost |= !me.closing;
                                progress = true;
                            }
                        }
                    }
                }
            }
            if let (Some(s), Some(p)) = (shaping.as_ref(), pacer.as_deref_mut()) {
                if half.start >= half.limit && !half.is_empty() {
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
            progress |= half.flush(
                ends.client,
                ends.ready,
                (UPSTREAM, CLIENT),
                ctx.pool,
                shaping.is_some(),
                false,
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
        Ok(moved)
    }
}
