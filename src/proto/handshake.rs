//! A client's handshake, as a sans-IO state machine: from the first byte a client sends to
//! the decision what to do with the connection (relay to a DC, splice to the fronting site, or
//! close).
//!
//! Pure / no I/O: bytes, the Unix time (`now_unix`, for the FakeTLS clock-skew check) and
//! randomness come in through [`Env`]; so do the anti-replay table ([`Replay`]) and the shape
//! of the fake server flight ([`Shapes`]), so that the two shared tables a handshake consults
//! (in the proxy: two short locks) stay outside. The handshake's own deadline is
//! [`Handshake::poll_timeout`]; the caller passes time to [`Handshake::handle_timeout`].
//! Spec: PROTOCOL.md §2 (FakeTLS), §3 (obfuscated2), §6 (fronting), §8.6 (PROXY protocol).
//!
//! ```text
//! ExpectProxyHeader ─(header or none: Step::Peer)─┬─► ExpectClientHello ─(hello ok: Step::Write flight)─┐
//!   (proxy-protocol-listener)                     │     (ee secrets)                                   │
//!                                                 └─► ExpectFrame ◄──── (records, user of the hello) ───┘
//!                                                       (dd / classic)
//! ExpectFrame ─(frame ok)─► Step::Connect { dc, ciphers, user }      any bad byte ─► Step::Front(reason)
//!                                                                    (after the flight: Step::Close)
//! ```
//!
//! The caller keeps the bytes in its own buffer: it reads into `buf[filled()..]` and calls
//! [`Handshake::received`] with the count. The machine edits the buffer in place: it drops a
//! PROXY header, strips the ClientHello once answered and the record headers after it, and on
//! `Connect` leaves there what goes to the DC first (our obfuscated2 frame, then the client's
//! early data re-encrypted). On `Front` the buffer holds exactly the client's bytes since the
//! PROXY header, to be replayed to the site unchanged.
//!
//! The users ([`Env::users`], a precomputed [`Users`] snapshot) are searched with the user the
//! same client address used last first ([`Env::hint`]): the one whose key verifies the
//! ClientHello HMAC or decrypts the obfuscated2 frame to an allowed tag wins, and its index
//! comes back as [`Accepted::user`]. A listener with both FakeTLS and `dd`/classic users tells
//! them apart by the first bytes (a TLS handshake record `16 03 01` is a hello; anything else a
//! frame). A client address that spent its share of handshake work gets only its hint tried
//! ([`Env::search_all`]).
//!
//! Once the user is known (and its hello or frame is no replay) the machine asks
//! [`Env::admission`] whether the user's limits let the connection in, *before* it answers: a
//! refusal is [`Step::Refused`] (fronted to that user's site, the site sees the hello as sent),
//! [`Admit::Wait`] is [`Step::Wait`] (the user is at `max-connections`: call
//! [`Handshake::handle`] again later; at the deadline the wait ends in `Refused`). Whatever
//! ends in fronting names whose site to front to: [`Handshake::front_user`] (the user whose
//! host the hello's SNI names, or the refused user).
//!
//! Invariants:
//! * no input panics; every byte string ends in `NeedMore` or a decision;
//! * decisions and the bytes written do not depend on how the input is split into calls
//!   (`fuzz/fuzz_targets/handshake.rs`);
//! * a connection is fronted only before the proxy answered (FakeTLS: before the server flight);
//!   afterwards the only honest end is to close, as mtg does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::dc::DcTable;
use super::faketls::{self, ClientHello, HelloRead, RecordReader};
use super::obfs2::{self, CompactCtr, FRAME_LEN, Tag};
use super::proxy_protocol::{self, Parse};
use super::replay::ReplayFilter;
use super::tlsprofile::{FlightShape, Profile};
use super::users::{UserId, UserReject, Users};
use super::x25519::KeyShares;
use super::{Reject, Rng};

/// What a user's limits say to one more connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// In (the caller keeps what it needs to release the slot at close).
    Yes,
    /// Not now: `max-connections` is reached; ask again when one of the user's connections
    /// ended.
    Wait,
    /// Refused for this reason: front the connection to the user's site.
    No(UserReject),
}

/// The users' limits, as a handshake sees them.
pub trait Admission {
    /// Whether `user` may have one more connection now.
    fn admit(&mut self, user: UserId) -> Admit;
}

/// No limits: everybody is let in.
impl Admission for () {
    fn admit(&mut self, _: UserId) -> Admit {
        Admit::Yes
    }
}

/// The anti-replay table, as a handshake sees it.
pub trait Replay {
    /// True when `nonce` was seen within the window; records it either way.
    fn seen(&mut self, nonce: &[u8], now_unix: u64) -> bool;
}

impl Replay for ReplayFilter {
    fn seen(&mut self, nonce: &[u8], now_unix: u64) -> bool {
        self.check_and_insert(nonce, now_unix)
    }
}

/// No anti-replay table (`[defense.anti-replay] enabled = false`): nothing is ever a replay.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl Replay for NoReplay {
    fn seen(&mut self, _: &[u8], _: u64) -> bool {
        false
    }
}

/// Where the fake server flight's shape comes from: in the proxy, the fronting site's first
/// flight as the scout learned it. Given the ClientHello, so that the shape may depend on what
/// the client offered.
pub trait Shapes {
    /// The shape of the flight answering `hello`, sent by a client of a user fronting to
    /// `host` (each host's site has a shape of its own).
    fn shape(&mut self, hello: &ClientHello, host: &str) -> FlightShape;
}

impl Shapes for FlightShape {
    fn shape(&mut self, _: &ClientHello, _: &str) -> FlightShape {
        *self
    }
}

impl Shapes for Profile {
    fn shape(&mut self, _: &ClientHello, _: &str) -> FlightShape {
        Profile::shape(self)
    }
}

/// The datacenters, as a handshake sees them.
pub trait Datacenters {
    /// The DC our frame names for a client asking for `dc` (media ids and 0 as their DC), or
    /// with `fallback` the default DC for an unknown one; `None`: unknown.
    fn dc_for(&self, dc: i16, fallback: bool) -> Option<i16>;
}

impl Datacenters for DcTable {
    fn dc_for(&self, dc: i16, fallback: bool) -> Option<i16> {
        self.lookup_or_fallback(dc, fallback).map(|(n, _)| n)
    }
}

/// What the proxy records of each complete ClientHello (its JA4 statistics): the message, and
/// whether it verified under one of the secrets and was no replay.
pub trait Hellos {
    /// A complete ClientHello `msg` (`01 | u24 length | body`) was judged.
    fn seen(&mut self, msg: &[u8], verified: bool);
}

/// Records nothing.
impl Hellos for () {
    fn seen(&mut self, _: &[u8], _: bool) {}
}

/// What a handshake step needs besides the bytes: the listener's secrets and policy, the time,
/// randomness and the shared tables. Built per call (references only).
pub struct Env<'a, R: Rng> {
    /// The users, with their precomputed keys.
    pub users: &'a Users,
    /// The user to try first (the one this client address used last).
    pub hint: Option<UserId>,
    /// Whether to try the users other than `hint`: `false` while the client's address has
    /// spent its share of a worker's time on handshakes (a search over many users is costly,
    /// and one address must not be able to pin a worker with hellos that match nobody).
    pub search_all: bool,
    /// The users' limits.
    pub admission: &'a mut dyn Admission,
    /// Largest tolerated difference between the hello's timestamp and `now_unix`, seconds.
    pub tolerance_secs: u64,
    /// The datacenters.
    pub dcs: &'a dyn Datacenters,
    /// Send a client asking for an unknown DC to the default one (else close).
    pub allow_unknown_dc: bool,
    /// Seconds since the Unix epoch.
    pub now_unix: u64,
    /// Randomness (flight noise, key shares, our frame toward the DC).
    pub rng: &'a mut R,
    /// The anti-replay table.
    pub replay: &'a mut dyn Replay,
    /// The fake flight's shape.
    pub shapes: &'a mut dyn Shapes,
    /// Where complete ClientHellos are reported.
    pub hellos: &'a mut dyn Hellos,
    /// Genuine X25519 public keys for the ServerHello.
    pub key_shares: &'a mut KeyShares,
    /// Work space: a reassembled ClientHello, then the server flight written for
    /// [`Step::Write`]. The largest hello accepted is as long as this.
    pub scratch: &'a mut [u8],
}

/// The four stream ciphers of an accepted client, and the seam through which the relay
/// transforms bytes.
#[derive(Debug)]
pub struct Ciphers {
    /// client → proxy
    client_dec: CompactCtr,
    /// proxy → client
    client_enc: CompactCtr,
    /// proxy → DC
    dc_enc: CompactCtr,
    /// DC → proxy
    dc_dec: CompactCtr,
}

impl Ciphers {
    /// Client bytes (already out of their TLS records) on their way to the DC, in place: one
    /// pass decrypting with the client's stream and re-encrypting with the DC's.
    pub fn up(&mut self, data: &mut [u8]) {
        CompactCtr::apply_pair(&mut self.client_dec, &mut self.dc_enc, data);
    }

    /// DC bytes on their way to the client, in place (one pass, as [`Ciphers::up`]).
    pub fn down(&mut self, data: &mut [u8]) {
        CompactCtr::apply_pair(&mut self.dc_dec, &mut self.client_enc, data);
    }

    /// For a middle proxy (which speaks no obfuscated2): the client's two streams alone.
    /// `early` is the client data the handshake left after its frame, which it re-encrypted
    /// for the DC ([`Accepted::early`] bytes, the last the DC stream took): they are turned
    /// back into the client's plaintext.
    pub fn into_client(self, early: &mut [u8]) -> ClientCiphers {
        self.dc_enc
            .rewound(early.len() as u64)
            .apply_keystream(early);
        ClientCiphers {
            dec: self.client_dec,
            enc: self.client_enc,
        }
    }
}

/// The client's streams of an accepted client relayed through a middle proxy.
#[derive(Debug)]
pub struct ClientCiphers {
    /// client → proxy
    dec: CompactCtr,
    /// proxy → client
    enc: CompactCtr,
}

impl ClientCiphers {
    /// Client bytes (out of their TLS records), decrypted in place.
    pub fn up(&mut self, data: &mut [u8]) {
        self.dec.apply_keystream(data);
    }

    /// Bytes for the client, encrypted in place.
    pub fn down(&mut self, data: &mut [u8]) {
        self.enc.apply_keystream(data);
    }
}

/// A finished handshake: where to relay, and how.
#[derive(Debug)]
pub struct Accepted {
    /// The user (index in [`Env::users`]) whose secret the client used.
    pub user: UserId,
    /// The DC index the client asked for (negative: media; 0: default).
    pub dc: i16,
    /// The DC our frame names (`dc`, or the default DC for an unknown one).
    pub dc_send: i16,
    /// The client's transport.
    pub tag: Tag,
    /// The relay's ciphers, positioned after the bytes left in the buffer.
    pub ciphers: Ciphers,
    /// FakeTLS: the deframer of the client's records, positioned after the bytes read.
    pub tls: Option<RecordReader>,
    /// Client payload bytes after its frame that are already in the buffer (re-encrypted).
    pub early: usize,
    /// FakeTLS: raw bytes (records) after those, not taken in yet: the relay deframes and
    /// re-encrypts them (with [`Accepted::tls`] and [`Accepted::ciphers`]) as if they had
    /// just been read.
    pub records: usize,
}

/// Why a handshake ends in a close rather than a relay or fronting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Rejected after the proxy answered (FakeTLS: the flight went out): no fronting.
    Rejected(Reject),
    /// The client asked for this DC, which is unknown, and fallback is off.
    UnknownDc(i16),
    /// The server flight does not fit [`Env::scratch`].
    Flight,
}

/// What the caller does next.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Read more into `buf[filled()..]`, then call [`Handshake::received`].
    NeedMore,
    /// A PROXY protocol stage ended: the client's real address (`None`: no header, or one
    /// without an address, so the socket's). Check it against the IP lists, then call
    /// [`Handshake::handle`].
    Peer(Option<SocketAddr>),
    /// Send `scratch[..len]` (the FakeTLS server flight) to the client, then call
    /// [`Handshake::handle`] (the bytes read may already hold the frame).
    Write(usize),
    /// Relay to a DC; the buffer holds what goes to the DC first. Final. (By value, not
    /// boxed: a handshake allocates nothing.)
    Connect(Accepted),
    /// Not a client of ours: splice the connection to the fronting site (the site of
    /// [`Handshake::front_user`], else the default one), replaying the buffer's bytes
    /// unchanged. Final.
    Front(Reject),
    /// A client of `user`, refused by its limits: front it to `user`'s site like a failed
    /// handshake (the buffer holds the client's bytes unchanged). Final.
    Refused {
        /// The user.
        user: UserId,
        /// The limit.
        why: UserReject,
    },
    /// `user` is at its `max-connections`: call [`Handshake::handle`] again when one of its
    /// connections ended (or now and then); the deadline turns the wait into
    /// [`Step::Refused`].
    Wait(UserId),
    /// Close the connection. Final.
    Close(Close),
}

/// What the machine is waiting for.
#[derive(Clone, Copy, Debug)]
enum State {
    /// A PROXY protocol header may come first.
    ExpectProxyHeader,
    /// FakeTLS: the ClientHello. `waiting`: it verified for this user and was no replay, and
    /// the user's admission said wait.
    ExpectClientHello { waiting: Option<UserId> },
    /// The obfuscated2 frame; after a FakeTLS hello of `user`, inside records. `waiting` as
    /// for the hello (dd / classic frames).
    ExpectFrame {
        tls: Option<(RecordReader, UserId)>,
        waiting: Option<UserId>,
    },
    /// Decided.
    Done(Final),
}

/// A final decision, remembered so that a further call repeats it.
#[derive(Clone, Copy, Debug)]
enum Final {
    Connected,
    Front(Reject),
    Refused(UserId, UserReject),
    Close(Close),
}

/// What comes first on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// A PROXY protocol header may come first (`proxy-protocol-listener`).
    pub proxy_header: bool,
    /// Some users have FakeTLS (`ee`) secrets: a ClientHello may come first, then the frame
    /// in records.
    pub faketls: bool,
    /// Some users have `dd` or classic secrets: an obfuscated2 frame may come first.
    pub obfs2: bool,
}

/// How long part of a bare obfuscated2 frame may stay quiet before it is fronted (see
/// [`Handshake::heard`]): within the jitter of a path to the site, and room for a client
/// that writes its frame in two calls back to back.
pub const FRAME_GRACE: Duration = Duration::from_millis(20);

/// One client's handshake. See the module documentation.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    /// After the PROXY stage: the state it leads to.
    first: State,
    /// Bytes of the caller's buffer taken in.
    len: usize,
    /// Bytes after those, read but not taken in yet (after the hello: records to deframe).
    raw: usize,
    deadline: Instant,
    /// Both kinds may come: the first bytes decide.
    mixed: bool,
    /// Whose site a fronted connection goes to (see [`Handshake::front_user`]).
    front_user: Option<UserId>,
    /// Set by [`Handshake::heard`]: an incomplete handshake still quiet at this time fails.
    quiet: Option<Instant>,
}

impl Handshake {
    /// A handshake that must be done by `deadline`.
    pub fn new(expect: Expect, deadline: Instant) -> Handshake {
        let first = if expect.faketls {
            State::ExpectClientHello { waiting: None }
        } else {
            State::ExpectFrame {
                tls: None,
                waiting: None,
            }
        };
        Handshake {
            state: if expect.proxy_header {
                State::ExpectProxyHeader
            } else {
                first
            },
            first,
            len: 0,
            raw: 0,
            deadline,
            mixed: expect.faketls && expect.obfs2,
            front_user: None,
            quiet: None,
        }
    }

    /// The user whose site a fronted connection goes to: the user a refusal names, or the
    /// first user whose host the ClientHello's SNI names; `None`: the default site.
    pub fn front_user(&self) -> Option<UserId> {
        self.front_user
    }

    /// The client's bytes last arrived at `now`: if the handshake is still incomplete, not
    /// answered and has bytes, it fails (is fronted) once the client stays quiet for `grace`,
    /// long before the handshake deadline, as a site answers a cut request at once (issue
    /// 12). Each call restarts the grace; before the first byte only the deadline counts (a
    /// site waits for a silent client too), and so does a client waiting for its user's
    /// `max-connections`. Call after [`Handshake::received`].
    ///
    /// A bare obfuscated2 frame (`dd`/classic, not inside records) gets at most
    /// [`FRAME_GRACE`]: its 64 bytes are one write of every client, so they arrive in one
    /// segment or not at all (a lost segment is resent whole), and only a prober sends part
    /// of them; the site answers such bytes at once, and so must we (a 64-byte threshold
    /// with a fixed delay before it is the tell published attacks look for).
    pub fn heard(&mut self, now: Instant, grace: Duration) {
        let open = !self.answered() && !matches!(self.state, State::Done(_));
        let grace = match self.state {
            State::ExpectFrame { tls: None, .. } => grace.min(FRAME_GRACE),
            _ => grace,
        };
        self.quiet = (open && self.filled() > 0).then(|| now + grace);
    }

    /// When the grace of [`Handshake::heard`] ends, if it applies now.
    pub fn quiet_until(&self) -> Option<Instant> {
        self.quiet
            .filter(|_| !self.answered() && self.waiting().is_none())
    }

    /// Bytes of the caller's buffer in use: read the next bytes to `buf[filled()..]`.
    pub fn filled(&self) -> usize {
        self.len + self.raw
    }

    /// True once the proxy answered (the FakeTLS flight was handed out): from then on a
    /// failure closes the connection instead of fronting it.
    pub fn answered(&self) -> bool {
        matches!(self.state, State::ExpectFrame { tls: Some(_), .. })
    }

    /// When the handshake times out, or its grace ends (call [`Handshake::handle_timeout`]
    /// then).
    pub fn poll_timeout(&self) -> Instant {
        self.quiet_until()
            .map_or(self.deadline, |q| q.min(self.deadline))
    }

    /// The decision for a handshake that failed for `why` (timeout, EOF, or a hello too large
    /// for the caller's buffer): front it, or close it once answered. Final.
    #[inline(never)]
    pub fn fail(&mut self, why: Reject) -> Step {
        if self.answered() {
            self.finish(Final::Close(Close::Rejected(why)))
        } else {
            self.finish(Final::Front(why))
        }
    }

    /// The deadline or the grace passed: the handshake failed (`Some`), unless it is decided
    /// already. A connection waiting for its user's `max-connections` is refused.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Step> {
        if now < self.poll_timeout() || matches!(self.state, State::Done(_)) {
            return None;
        }
        if let Some(user) = self.waiting() {
            return Some(self.refuse(user, UserReject::MaxConnections));
        }
        Some(self.fail(Reject::Timeout))
    }

    /// The user whose admission said wait, while it waits.
    pub fn waiting(&self) -> Option<UserId> {
        match self.state {
            State::ExpectClientHello { waiting } | State::ExpectFrame { waiting, .. } => waiting,
            _ => None,
        }
    }

    /// Refuses the connection of `user` for `why`: fronted to its site. Final.
    fn refuse(&mut self, user: UserId, why: UserReject) -> Step {
        self.front_user = Some(user);
        self.finish(Final::Refused(user, why))
    }

    /// `n` new bytes were read into `buf[filled()..]`: takes them in and moves on as far as
    /// the bytes allow.
    pub fn received<R: Rng>(&mut self, buf: &mut [u8], n: usize, env: &mut Env<'_, R>) -> Step {
        self.raw += n;
        self.handle(buf, env)
    }

    /// Takes in the bytes read. After the hello they are TLS records, of which only the
    /// payload is kept, and only up to the frame: the records after it are the relay's (see
    /// [`Accepted::records`]), so that a bad record following a complete frame counts after
    /// the frame whether both came in one segment or not. An error for records that are not
    /// valid.
    fn take_in(&mut self, buf: &mut [u8]) -> Result<(), Reject> {
        let end = self.len.saturating_add(self.raw);
        if end > buf.len() {
            return Err(Reject::TooLarge);
        }
        let State::ExpectFrame {
            tls: Some((reader, _)),
            ..
        } = &mut self.state
        else {
            self.len = end;
            self.raw = 0;
            return Ok(());
        };
        // Payload never outgrows its records: a piece of `FRAME_LEN - len` raw bytes cannot
        // overshoot the frame.
        let mut r = self.len;
        while r < end && self.len < FRAME_LEN {
            let piece = (FRAME_LEN - self.len).min(end - r);
            let m = reader.deframe_in_place(&mut buf[r..r + piece])?;
            buf.copy_within(r..r + m, self.len);
            self.len += m;
            r += piece;
        }
        buf.copy_within(r..end, self.len);
        self.raw = end - r;
        Ok(())
    }

    /// Moves on with the bytes read so far (after [`Step::Peer`] or [`Step::Write`]).
    pub fn handle<R: Rng>(&mut self, buf: &mut [u8], env: &mut Env<'_, R>) -> Step {
        if !matches!(self.state, State::Done(_)) {
            match self.take_in(buf) {
                Ok(()) => {}
                Err(Reject::TooLarge) => return self.fail(Reject::TooLarge),
                // Not records after an accepted hello.
                Err(r) => return self.finish(Final::Close(Close::Rejected(r))),
            }
        }
        let len = self.len.min(buf.len());
        match self.state {
            State::Done(Final::Connected) => Step::NeedMore,
            State::Done(Final::Front(r)) => Step::Front(r),
            State::Done(Final::Refused(user, why)) => Step::Refused { user, why },
            State::Done(Final::Close(c)) => Step::Close(c),
            State::ExpectProxyHeader => match proxy_protocol::parse(&buf[..len]) {
                Parse::NeedMore => Step::NeedMore,
                Parse::NotProxy => {
                    self.state = self.first;
                    Step::Peer(None)
                }
                Parse::Header { consumed, source } => {
                    // The header was for us, not for the client protocol (nor the fronting
                    // site): drop it.
                    buf.copy_within(consumed..len, 0);
                    self.len = len - consumed;
                    self.state = self.first;
                    Step::Peer(source)
                }
                // Fronted like any failed handshake, the bytes as received.
                Parse::Invalid => self.fail(Reject::ProxyHeader),
            },
            State::ExpectClientHello { waiting } => {
                if self.mixed && waiting.is_none() {
                    // A TLS handshake record is a hello; anything else a frame.
                    let tls = [0x16, 0x03, 0x01];
                    let n = len.min(3);
                    if buf[..n] != tls[..n] {
                        self.state = State::ExpectFrame {
                            tls: None,
                            waiting: None,
                        };
                        return self.handle(buf, env);
                    }
                }
                match faketls::read_client_hello(&buf[..len], env.scratch) {
                    HelloRead::NeedMore => Step::NeedMore,
                    HelloRead::Invalid(r) => self.fail(r),
                    HelloRead::Complete { consumed, msg_len } => {
                        self.accept_hello(buf, consumed, msg_len, waiting, env)
                    }
                }
            }
            State::ExpectFrame { tls, waiting } => {
                // Real clients never start their frame with these bytes (they regenerate it),
                // so an HTTP request, a TLS hello or an abridged-only probe is fronted at once.
                if tls.is_none() && obfs2::is_forbidden_start(&buf[..len]) {
                    return self.fail(Reject::ObfsTag);
                }
                if len < FRAME_LEN {
                    return Step::NeedMore;
                }
                self.accept_frame(buf, tls.map(|(_, user)| user), waiting, env)
            }
        }
    }

    /// No more bytes will come: decides on what arrived. Returns `Write`/`Peer` steps like
    /// [`Handshake::handle`] (handle them and call again), then a final step.
    pub fn handle_eof<R: Rng>(&mut self, buf: &mut [u8], env: &mut Env<'_, R>) -> Step {
        match self.handle(buf, env) {
            Step::NeedMore => self.fail(Reject::Eof),
            step => step,
        }
    }

    #[inline(never)]
    fn finish(&mut self, f: Final) -> Step {
        self.state = State::Done(f);
        match f {
            Final::Front(r) => Step::Front(r),
            Final::Refused(user, why) => Step::Refused { user, why },
            Final::Close(c) => Step::Close(c),
            Final::Connected => Step::NeedMore,
        }
    }

    /// A complete ClientHello is in `scratch[..msg_len]`, `consumed` bytes of `buf`: find the
    /// user whose key made it (or, `waiting`, the one it verified for before), check it
    /// against replay and the user's limits, write the server flight, strip the hello.
    fn accept_hello<R: Rng>(
        &mut self,
        buf: &mut [u8],
        consumed: usize,
        msg_len: usize,
        waiting: Option<UserId>,
        env: &mut Env<'_, R>,
    ) -> Step {
        let Some(msg) = env.scratch.get(..msg_len) else {
            return self.fail(Reject::TooLarge);
        };
        let hello = match faketls::parse_client_hello(msg) {
            Ok(h) => h,
            Err(r) => {
                env.hellos.seen(msg, false);
                return self.fail(r);
            }
        };
        let user = match waiting {
            // Verified (and recorded against replay) before the wait.
            Some(user) => user,
            None => {
                let tolerance = env.tolerance_secs;
                let found = env.users.find_faketls(
                    &hello,
                    msg,
                    env.now_unix,
                    tolerance,
                    env.hint,
                    env.search_all,
                );
                let user = match found {
                    Ok(m) => m.user,
                    Err(why) => {
                        env.hellos.seen(msg, false);
                        // Fronted to the site the SNI names, as a browser would reach it.
                        self.front_user = env.users.sni_user(&hello, msg);
                        return self.fail(why);
                    }
                };
                if env.replay.seen(&hello.random, env.now_unix) {
                    env.hellos.seen(msg, false);
                    self.front_user = Some(user);
                    return self.fail(Reject::Replay);
                }
                env.hellos.seen(msg, true);
                user
            }
        };
        match env.admission.admit(user) {
            Admit::Yes => {}
            Admit::Wait => {
                self.state = State::ExpectClientHello {
                    waiting: Some(user),
                };
                return Step::Wait(user);
            }
            Admit::No(why) => return self.refuse(user, why),
        }
        // Shaped like the fronting site's own first flight; a genuine key share.
        let Some(spec) = env.users.get(user) else {
            return self.fail(Reject::Digest);
        };
        let shape = env.shapes.shape(&hello, &spec.secret.host);
        let public = env.key_shares.next(env.rng);
        let room = faketls::noise_room(&shape.template, hello.session_id_len, env.scratch.len());
        let noise = shape.noise_len(env.rng).min(room);
        let key = &spec.secret.key;
        let n = faketls::write_server_hello_as(
            env.scratch,
            &hello,
            key,
            env.rng,
            &shape.template,
            noise,
            &public,
        );
        if n == 0 {
            return self.finish(Final::Close(Close::Flight));
        }
        // Whatever followed the hello is TLS records, taken in (deframed) on the next call,
        // after the flight went out, as if it had come later: a bad record then closes (the
        // client knows the secret, and the buffer no longer holds what it sent).
        let len = self.len.min(buf.len());
        buf.copy_within(consumed..len, 0);
        self.len = 0;
        self.raw = len - consumed;
        self.state = State::ExpectFrame {
            tls: Some((RecordReader::new(), user)),
            waiting: None,
        };
        Step::Write(n)
    }

    /// The obfuscated2 frame is at `buf[..64]`: derive the keys (of `user`'s secret after a
    /// FakeTLS hello, else of the `dd`/classic user whose key decrypts an allowed tag, or the
    /// one found before a wait), check replay and the user's limits, pick the DC, replace the
    /// frame in place with ours toward the DC and re-encrypt what followed.
    fn accept_frame<R: Rng>(
        &mut self,
        buf: &mut [u8],
        user: Option<UserId>,
        waiting: Option<UserId>,
        env: &mut Env<'_, R>,
    ) -> Step {
        let Some(frame) = buf.first_chunk::<FRAME_LEN>().copied() else {
            return Step::NeedMore;
        };
        let (user, hs) = match user {
            // After a hello: its user's key only (admitted at the hello).
            Some(u) => {
                let key = env.users.get(u).map(|s| s.secret.key);
                match key.map_or(Err(Reject::ObfsTag), |k| {
                    obfs2::client_handshake(&frame, &k)
                }) {
                    Ok(hs) => (u, hs),
                    Err(r) => return self.fail(r),
                }
            }
            None => {
                let found = env
                    .users
                    .find_obfs2(&frame, waiting.or(env.hint), env.search_all);
                let m = match found {
                    Ok(m) => m,
                    Err(r) => return self.fail(r),
                };
                if waiting.is_none() {
                    // Here the frame is the nonce (FakeTLS hellos were checked already).
                    if env.replay.seen(&obfs2::replay_key(&frame), env.now_unix) {
                        self.front_user = Some(m.user);
                        return self.fail(Reject::Replay);
                    }
                }
                match env.admission.admit(m.user) {
                    Admit::Yes => {}
                    Admit::Wait => {
                        self.state = State::ExpectFrame {
                            tls: None,
                            waiting: Some(m.user),
                        };
                        return Step::Wait(m.user);
                    }
                    Admit::No(why) => return self.refuse(m.user, why),
                }
                (m.user, m.handshake)
            }
        };
        let Some(dc_send) = env.dcs.dc_for(hs.dc, env.allow_unknown_dc) else {
            return self.finish(Final::Close(Close::UnknownDc(hs.dc)));
        };
        let dch = obfs2::dc_handshake(env.rng, hs.tag, dc_send);
        let mut ciphers = Ciphers {
            client_dec: hs.decrypt,
            client_enc: hs.encrypt,
            dc_enc: dch.encrypt,
            dc_dec: dch.decrypt,
        };
        // Our frame replaces the client's, then the client's early data follows re-encrypted.
        let len = self.len.min(buf.len());
        buf[..FRAME_LEN].copy_from_slice(&dch.frame);
        ciphers.up(&mut buf[FRAME_LEN..len]);
        let tls = match self.state {
            State::ExpectFrame { tls, .. } => tls.map(|(reader, _)| reader),
            _ => None,
        };
        self.state = State::Done(Final::Connected);
        Step::Connect(Accepted {
            user,
            dc: hs.dc,
            dc_send,
            tag: hs.tag,
            ciphers,
            tls,
            early: len - FRAME_LEN,
            records: self.raw,
        })
    }
}

#[cfg(test)]
mod tests;
