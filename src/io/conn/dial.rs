//! The dial phases: connecting to a DC address (directly or through a SOCKS5 upstream) or to
//! the fronting site, trying the next address when one fails or stays silent, then the SOCKS5
//! exchange (the pure [`Socks5Client`] machine) when going through an upstream.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::relay::{Half, Relay, RelayKind};
use super::{CloseReason, Conn, Ctx, Phase, R, Release, UPSTREAM, Want};
use crate::io::Shared;
use crate::io::pool::Pool;
use crate::io::sock::{Net, Sock};
use crate::io::stats::Stats;
use crate::log::Level;
use crate::proto::faketls::RecordReader;
use crate::proto::handshake::Ciphers;
use crate::proto::proxy_protocol;
use crate::proto::shaping::Pacer;
use crate::proto::socks5::{Socks5Client, Step, Target};

/// Connect timeout for an address that has a fallback after it (the last one gets the full
/// `[network.timeout] tcp`).
const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Stands for an upstream that has no address (port 0 is refused by `connect`).
const UNROUTABLE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Room for a SOCKS5 reply (the longest: a 255-byte bound domain name).
const SOCKS_IN: usize = 4 + 1 + 255 + 2;

/// Where a connection is going, decided by its handshake.
// By value, not boxed: it lives in the connection's slab slot (no allocation per connection).
#[allow(clippy::large_enum_variant)]
pub(super) enum Route {
    /// A client of ours, to the DC it asked for.
    Dc {
        /// The DC the client asked for (addresses: it, or the default one for an unknown DC).
        dc: i16,
        ciphers: Ciphers,
        /// FakeTLS: the client's record deframer and the record timing toward it.
        tls: Option<(RecordReader, Pacer)>,
        /// Raw client bytes (records) after the up half's, read with the frame but not taken
        /// in: the relay takes them in first.
        records: usize,
    },
    /// Not a client of ours (or one refused by its user's limits): to this fronting site
    /// ([`crate::io::Shared::sites`]), byte for byte.
    Front(usize),
    /// A client of ours with an ad tag, to a middle proxy for its DC.
    Middle {
        /// The DC the client asked for (negative: media).
        dc: i16,
        /// Boxed: the handshake machine, then the codec (only this path pays for them).
        me: Box<super::middle::Middle>,
        /// FakeTLS: the client's record deframer and the record timing toward it.
        tls: Option<(RecordReader, Pacer)>,
        /// As in [`Route::Dc`].
        records: usize,
    },
}

/// Connecting: the route, the bytes waiting for the upstream (up) and for the client (down:
/// the rest of a server flight), and the attempt in progress.
pub(super) struct Dial<S> {
    pub(super) route: Route,
    pub(super) up: Half,
    pub(super) down: Half,
    pub(super) upstream: S,
    /// Which way of [`route_at`] is being tried.
    idx: usize,
    /// The SOCKS5 upstream (index) and DC address of this attempt, if any.
    pub(super) via: Option<(usize, SocketAddr)>,
    /// When this attempt is given up.
    pub(super) deadline: Instant,
}

/// A SOCKS5 exchange with an upstream, on top of the connection it is made on.
pub(super) struct Socks<S> {
    pub(super) dial: Dial<S>,
    /// Boxed and only on this path: a connection without upstreams pays nothing for it.
    state: Box<SocksState>,
}

/// The SOCKS5 client and the reply bytes read so far.
struct SocksState {
    client: Socks5Client,
    input: [u8; SOCKS_IN],
    len: usize,
}

impl<S> Release for Dial<S> {
    fn release(mut self, pool: &mut Pool, _: &Stats) {
        self.up.release(pool);
        self.down.release(pool);
    }
}

/// The `idx`-th way to try: the address to connect to and, when going through a SOCKS5
/// upstream, which one and the DC address to ask it for. Fronting and middle proxies are
/// always direct; with
/// upstreams, each DC address is tried through every upstream, those that failed recently
/// last (PROTOCOL.md §8.5).
fn route_at(
    route: &Route,
    idx: usize,
    shared: &Shared,
) -> Option<(SocketAddr, Option<(usize, SocketAddr)>)> {
    let n = shared.socks.len();
    let k = idx.checked_div(n).unwrap_or(idx);
    let dc = match route {
        Route::Front(site) => return shared.sites.addr(*site, idx).map(|a| (a, None)),
        Route::Dc { dc, .. } => *shared
            .dc
            .lookup_or_fallback(*dc, shared.config.allow_fallback_on_unknown_dc)
            .map(|(_, a)| a)?
            .get(k)?,
        // Directly, never through an upstream: the RPC keys include the address and port the
        // middle proxy sees, which an upstream would change.
        Route::Middle { dc, me, .. } => {
            return me
                .target(*dc, shared.config.prefer_ip, idx)
                .map(|a| (a, None));
        }
    };
    if n == 0 {
        return Some((dc, None));
    }
    let proxy = shared.socks_order(idx % n);
    // An upstream whose name did not resolve gets an address that cannot be connected to,
    // so the attempt fails at once and the next one is tried (never a direct connection).
    let via = shared.socks[proxy].addr.unwrap_or(UNROUTABLE);
    Some((via, Some((proxy, dc))))
}

impl<S: Sock> Conn<S> {
    /// Starts dialing `route` from its first address.
    pub(super) fn dial(
        &mut self,
        route: Route,
        up: Half,
        down: Half,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Phase<S> {
        self.connect_from(route, up, down, 0, ctx)
    }

    /// Starts a nonblocking connect to the `idx`-th address, skipping addresses that fail at
    /// once; closes when none is left.
    fn connect_from(
        &mut self,
        mut route: Route,
        up: Half,
        down: Half,
        mut idx: usize,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Phase<S> {
        let shared = ctx.shared;
        loop {
            let Some((addr, via)) = route_at(&route, idx, shared) else {
                let reason = match route {
                    Route::Front(_) => {
                        // Rate-limited: any prober can trigger it (issue 12).
                        crate::log_probe!(
                            crate::log::Probe::FrontingFailed,
                            Level::Warn,
                            "fronting-failed",
                            conn = self.id_str(),
                            reason = "no fronting address could be reached"
                        );
                        CloseReason::FrontUnreachable
                    }
                    Route::Dc { .. } => {
                        shared.stats.dc_failures.fetch_add(1, Ordering::Relaxed);
                        CloseReason::DcUnreachable
                    }
                    Route::Middle { dc, ref me, .. } => {
                        me.none_left(self.id_str(), dc);
                        shared.stats.dc_failures.fetch_add(1, Ordering::Relaxed);
                        CloseReason::DcUnreachable
                    }
                };
                let mut waiting = (up, down);
                waiting.0.release(ctx.pool);
                waiting.1.release(ctx.pool);
                return Phase::Closed(reason);
            };
            let connected = if addr.port() == 0 {
                Err(io::Error::from(ErrorKind::AddrNotAvailable))
            } else {
                ctx.net.connect(addr, self.slot)
            };
            match connected {
                Ok(upstream) => {
                    self.ready[UPSTREAM] = 0;
                    if let Route::Middle { me, .. } = &mut route {
                        me.attempt(via.map_or(addr, |v| v.1));
                    }
                    // While other addresses remain (IPv6 then IPv4, or a second DC address),
                    // a silent one is given up sooner: a host whose IPv6 is configured but
                    // broken must not cost every client the full timeout.
                    let mut wait = shared.config.timeouts.tcp;
                    if route_at(&route, idx + 1, shared).is_some() {
                        wait = wait.min(FALLBACK_CONNECT_TIMEOUT);
                    }
                    return Phase::Dial(Dial {
                        route,
                        up,
                        down,
                        upstream,
                        idx,
                        via,
                        deadline: ctx.now + wait,
                    });
                }
                Err(e) => {
                    crate::log_event!(
                        Level::Debug,
                        "dc-connect-failed",
                        conn = self.id_str(),
                        dc = self.dc(),
                        addr = addr,
                        error = e
                    );
                }
            }
            idx += 1;
        }
    }

    /// The current address failed or timed out: try the next one.
    pub(super) fn next_address(
        &mut self,
        dial: Dial<S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        _: &mut Want,
    ) -> Phase<S> {
        let Dial {
            route,
            up,
            down,
            upstream,
            idx,
            via,
            ..
        } = dial;
        // Dropping the socket closes it, which also removes it from epoll.
        drop(upstream);
        let mut route = route;
        if let Route::Middle { me, .. } = &mut route {
            me.failed_attempt();
        }
        if let Some((proxy, _)) = via {
            ctx.shared.socks_failed(proxy);
        }
        self.connect_from(route, up, down, idx + 1, ctx)
    }

    /// A turn of the dial phase: did the connect finish?
    #[inline(never)]
    pub(super) fn connecting(
        &mut self,
        mut dial: Dial<S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        // The client may hang up while we connect.
        if self.ready[UPSTREAM] == 0 {
            return Phase::Dial(dial);
        }
        match dial.upstream.connect_state() {
            Ok(true) => {}
            Ok(false) => {
                // Spurious wake-up: still connecting.
                self.ready[UPSTREAM] = 0;
                return Phase::Dial(dial);
            }
            Err(_) => {
                crate::log_event!(
                    Level::Debug,
                    "dc-connect-failed",
                    conn = self.id_str(),
                    dc = self.dc()
                );
                return self.next_address(dial, ctx, want);
            }
        }
        let fronted = matches!(dial.route, Route::Front(_));
        // DC connections: keep-alive, and TCP_USER_TIMEOUT for data left unacknowledged.
        dial.upstream
            .connected((!fronted).then_some(&ctx.shared.config));
        if fronted && ctx.shared.front_proxy_protocol {
            let front = dial.upstream.peer_addr().unwrap_or(self.peer);
            if !self.write_front_proxy_header(&mut dial.up, front, ctx.pool) {
                return self.closed(dial, CloseReason::Error(ErrorKind::OutOfMemory), ctx);
            }
        }
        if let Some((proxy, dc)) = dial.via {
            return self.start_socks(dial, proxy, dc, ctx, want);
        }
        self.enter_relay(dial, ctx)
    }

    /// Prepends a PROXY v2 header to the bytes waiting for the fronting site.
    fn write_front_proxy_header(&self, up: &mut Half, front: SocketAddr, pool: &mut Pool) -> bool {
        let mut hdr = [0u8; proxy_protocol::V2_MAX_LEN];
        let n = proxy_protocol::write_v2(&mut hdr, self.peer, front);
        up.prepend(&hdr[..n], proxy_protocol::V2_MAX_LEN, pool)
    }

    /// Connected (directly or through SOCKS5): relay from now on.
    fn enter_relay(&mut self, dial: Dial<S>, ctx: &mut Ctx<'_, impl Net<Sock = S>>) -> Phase<S> {
        let (kind, records) = match dial.route {
            Route::Dc {
                dc,
                ciphers,
                tls,
                records,
            } => {
                ctx.shared.stats.dc_relay(dc, true);
                (RelayKind::Dc { dc, ciphers, tls }, records)
            }
            Route::Front(_) => (RelayKind::Front, 0),
            Route::Middle { .. } => return self.me_start(dial, ctx),
        };
        self.begin_relay(dial.upstream, dial.up, dial.down, kind, records, ctx)
    }

    /// The relay of `kind` over `upstream`, taking in the `records` raw client bytes held
    /// after the up half's. Its first turn comes right after this one (`Conn::ready`), in
    /// place.
    pub(super) fn begin_relay(
        &mut self,
        upstream: S,
        up: Half,
        down: Half,
        kind: RelayKind,
        records: usize,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
    ) -> Phase<S> {
        let mut relay = Relay {
            upstream,
            up,
            down,
            kind,
            deadline: ctx.now + ctx.shared.config.timeouts.idle,
        };
        if records > 0 {
            match relay.take_in_records(records, ctx.pool) {
                Ok(m) => self.bytes[0] += m as u64,
                Err(e) => return self.closed(relay, CloseReason::Error(e.kind()), ctx),
            }
        }
        Phase::Relay(relay)
    }

    /// Connected to a SOCKS5 upstream: send the greeting.
    fn start_socks(
        &mut self,
        dial: Dial<S>,
        proxy: usize,
        dc: SocketAddr,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        let auth = ctx.shared.socks[proxy].auth.clone();
        let mut state = Box::new(SocksState {
            client: Socks5Client::new(Target::Ip(dc), auth),
            input: [0u8; SOCKS_IN],
            len: 0,
        });
        let n = state.client.initial(ctx.scratch);
        if !send_all(&dial.upstream, &ctx.scratch[..n]) {
            return self.next_address(dial, ctx, want);
        }
        self.socks_exchange(Socks { dial, state }, ctx, want)
    }

    /// A turn of the SOCKS5 exchange with what the upstream sent.
    pub(super) fn socks_exchange(
        &mut self,
        mut socks: Socks<S>,
        ctx: &mut Ctx<'_, impl Net<Sock = S>>,
        want: &mut Want,
    ) -> Phase<S> {
        loop {
            let st = &mut socks.state;
            match st.client.handle(&st.input[..st.len], ctx.scratch) {
                Step::Send { consumed, len } => {
                    st.input.copy_within(consumed..st.len, 0);
                    st.len -= consumed;
                    if !send_all(&socks.dial.upstream, &ctx.scratch[..len]) {
                        return self.next_address(socks.dial, ctx, want);
                    }
                }
                Step::Connected { consumed } => {
                    // A DC never speaks first, so nothing may follow the reply.
                    if consumed != st.len {
                        return self.next_address(socks.dial, ctx, want);
                    }
                    let mut dial = socks.dial;
                    dial.via = None;
                    return self.enter_relay(dial, ctx);
                }
                Step::Failed(e) => {
                    crate::log_event!(
                        Level::Warn,
                        "socks5-failed",
                        conn = self.id_str(),
                        error = e.as_str()
                    );
                    return self.next_address(socks.dial, ctx, want);
                }
                Step::NeedMore => {
                    if st.len == SOCKS_IN {
                        return self.next_address(socks.dial, ctx, want);
                    }
                    if self.ready[UPSTREAM] & R == 0 {
                        return Phase::Socks(socks);
                    }
                    match socks.dial.upstream.read(&mut st.input[st.len..]) {
                        Ok(0) => return self.next_address(socks.dial, ctx, want),
                        Ok(n) => st.len += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.ready[UPSTREAM] &= !R;
                            return Phase::Socks(socks);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return self.next_address(socks.dial, ctx, want),
                    }
                }
            }
        }
    }
}

/// Writes `data` to the upstream in one go (SOCKS5 messages are tiny; a fresh socket always
/// takes them whole). False if it did not.
pub(super) fn send_all(upstream: &impl Sock, data: &[u8]) -> bool {
    data.is_empty() || matches!(super::relay::write_some(upstream, data), Ok(w) if w == data.len())
}
