//! The connection machine without the kernel: scripted fake sockets ([`FakeSock`]) that
//! return data, `WouldBlock`, EOF and resets when the test says so and take only as many bytes
//! per write as the test allows, and a fake [`Net`] handing them out for connects. The tests
//! drive a [`Conn`] turn by turn and check what each socket was given.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSliceMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use aes::cipher::StreamCipher;

use super::*;
use crate::config::Config;
use crate::io::pool::{Class, Pool};
use crate::io::sock::{Net, Sock};
use crate::io::unix_now;
use crate::proto::XorShift64;
use crate::proto::faketls::{self, RecordReader};
use crate::proto::obfs2::{self, AesCtr, Tag};
use crate::proto::secret::{Secret, SecretKind};

// ------------------------------------------------------------------------------------------
// Fakes

/// What the far end does next, as seen by our reads.
#[derive(Debug)]
enum In {
    Data(Vec<u8>),
    Eof,
    Reset,
}

/// One fake TCP stream: what the far end sends, what we wrote, and what we did to it.
#[derive(Debug, Default)]
struct Wire {
    incoming: VecDeque<In>,
    written: Vec<u8>,
    /// Bytes taken by `write_more` and held back, as the kernel holds a partial segment,
    /// until the next plain write, a push or the FIN.
    held: Vec<u8>,
    /// Writes that said more follows.
    more_writes: usize,
    /// Bytes writes may still take before `WouldBlock` (`None`: no limit).
    room: Option<usize>,
    shut: bool,
    reset: bool,
    /// `connect_state` answers: `None` connected, `Some(kind)` failed.
    connect_error: Option<ErrorKind>,
    peer: Option<SocketAddr>,
    keep_alive: bool,
}

#[derive(Clone, Debug, Default)]
struct FakeSock(Rc<RefCell<Wire>>);

impl FakeSock {
    fn send(&self, data: &[u8]) {
        self.0
            .borrow_mut()
            .incoming
            .push_back(In::Data(data.to_vec()));
    }

    fn eof(&self) {
        self.0.borrow_mut().incoming.push_back(In::Eof);
    }

    /// Data chunks sent to us and not read yet.
    fn pending(&self) -> usize {
        let w = self.0.borrow();
        w.incoming
            .iter()
            .filter(|i| matches!(i, In::Data(_)))
            .count()
    }

    fn reset_by_peer(&self) {
        self.0.borrow_mut().incoming.push_back(In::Reset);
    }

    fn room(&self, room: Option<usize>) {
        self.0.borrow_mut().room = room;
    }

    /// Takes what we wrote so far.
    fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().written)
    }

    fn shut(&self) -> bool {
        self.0.borrow().shut
    }

    fn was_reset(&self) -> bool {
        self.0.borrow().reset
    }

    /// Takes what room allows of `buf` into the held bytes (a write without the push).
    fn take(&self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let n = w.room.map_or(buf.len(), |r| r.min(buf.len()));
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        if let Some(r) = w.room.as_mut() {
            *r -= n;
        }
        w.held.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Reads as a socket would: consecutive data chunks, up to `room` bytes; EOF and reset
    /// stay (a socket keeps saying so).
    fn read_into(&self, mut room: usize, mut put: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let mut n = 0;
        while room > 0 {
            match w.incoming.front_mut() {
                Some(In::Data(d)) => {
                    let k = room.min(d.len());
                    put(&d[..k]);
                    d.drain(..k);
                    if d.is_empty() {
                        w.incoming.pop_front();
                    }
                    n += k;
                    room -= k;
                }
                Some(In::Eof) if n == 0 => return Ok(0),
                Some(In::Reset) if n == 0 => return Err(ErrorKind::ConnectionReset.into()),
                None if n == 0 => return Err(ErrorKind::WouldBlock.into()),
                _ => break,
            }
        }
        Ok(n)
    }
}

impl Sock for FakeSock {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut at = 0;
        self.read_into(buf.len(), |d| {
            buf[at..at + d.len()].copy_from_slice(d);
            at += d.len();
        })
    }

    fn read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut got = Vec::new();
        let n = self.read_into(total, |d| got.extend_from_slice(d))?;
        let mut at = 0;
        for b in bufs.iter_mut() {
            let k = b.len().min(n - at);
            b[..k].copy_from_slice(&got[at..at + k]);
            at += k;
        }
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.take(buf)?;
        self.push();
        Ok(n)
    }

    fn write_more(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.take(buf)?;
        self.0.borrow_mut().more_writes += 1;
        Ok(n)
    }

    fn push(&self) {
        let mut w = self.0.borrow_mut();
        let held = std::mem::take(&mut w.held);
        w.written.extend_from_slice(&held);
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.push();
        self.0.borrow_mut().shut = true;
        Ok(())
    }

    fn reset_on_close(&self) {
        self.0.borrow_mut().reset = true;
    }

    fn connect_state(&self) -> io::Result<bool> {
        match self.0.borrow().connect_error {
            Some(kind) => Err(kind.into()),
            None => Ok(true),
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.borrow().peer.ok_or(ErrorKind::NotConnected.into())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 3128)))
    }

    fn connected(&self, dc: Option<&Config>) {
        self.0.borrow_mut().keep_alive = dc.is_some_and(|c| !c.keep_alive.disabled);
    }
}

/// Hands out a fresh fake socket per connect (or the error planned for that address) and
/// remembers them.
#[derive(Default)]
struct FakeNet {
    dialed: Vec<(SocketAddr, FakeSock)>,
    refuse: Vec<SocketAddr>,
    fail_connect: Vec<SocketAddr>,
}

impl FakeNet {
    fn last(&self) -> FakeSock {
        self.dialed.last().expect("a connect").1.clone()
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.dialed.iter().map(|(a, _)| *a).collect()
    }
}

impl Net for FakeNet {
    type Sock = FakeSock;

    fn connect(&mut self, addr: SocketAddr, _slot: usize) -> io::Result<FakeSock> {
        if self.refuse.contains(&addr) {
            return Err(ErrorKind::ConnectionRefused.into());
        }
        let s = FakeSock::default();
        s.0.borrow_mut().peer = Some(addr);
        if self.fail_connect.contains(&addr) {
            s.0.borrow_mut().connect_error = Some(ErrorKind::ConnectionRefused);
        }
        self.dialed.push((addr, s.clone()));
        Ok(s)
    }
}

// ------------------------------------------------------------------------------------------
// A worker of one connection

const DC2: &str = "127.0.0.2:443";
const DC2_BACKUP: &str = "127.0.0.3:443";
const FRONT: &str = "127.0.0.9:443";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secret(kind: SecretKind) -> Secret {
    Secret::generate(kind, "example.com", &mut XorShift64(kind as u64 + 1))
}

fn config(secret: Secret) -> Config {
    let mut c = Config::simple(addr("127.0.0.1:0"), secret);
    c.dc_overrides = vec![(2, vec![addr(DC2)])];
    let front = addr(FRONT);
    c.domain_fronting.ip = Some(front.ip());
    c.domain_fronting.port = front.port();
    c
}

/// What a worker owns, for one connection.
struct Rig {
    pool: Pool,
    shared: Shared,
    net: FakeNet,
    rng: crate::io::FastRng,
    keyshares: crate::proto::x25519::KeyShares,
    scratch: Vec<u8>,
    now: Instant,
    client: FakeSock,
    conn: Conn<FakeSock>,
    /// [`Ctx::busy`] of the turns.
    busy: bool,
}

impl Rig {
    fn new(config: Config) -> Rig {
        Rig::with_pool(config, Pool::new(8, 64 * 1024, 8, 2048))
    }

    fn with_pool(config: Config, pool: Pool) -> Rig {
        let mut rng = crate::io::FastRng::default();
        let keyshares = crate::proto::x25519::KeyShares::new(&mut rng);
        let shared = Shared::new(config, Duration::from_secs(1), addr("127.0.0.1:3128"));
        let client = FakeSock::default();
        let now = Instant::now();
        let mut rig = Rig {
            pool,
            shared,
            net: FakeNet::default(),
            rng,
            keyshares,
            scratch: vec![0; 64 * 1024],
            now,
            busy: false,
            client: client.clone(),
            conn: Conn {
                id: 1,
                peer: addr("192.0.2.1:5555"),
                slot: 0,
                client,
                ready: [0, 0],
                phase: Phase::Closed(CloseReason::Done),
                role: Role::Client,
                started: now,
                bytes: [0, 0],
                counted: [0, 0],
                lease: None,
                user_counted: [0, 0],
                cut: false,
            },
        };
        let conn = Conn::new(1, 0, rig.client.clone(), addr("192.0.2.1:5555"), &rig.ctx());
        rig.conn = conn;
        rig
    }

    fn ctx(&mut self) -> Ctx<'_, FakeNet> {
        Ctx {
            pool: &mut self.pool,
            shared: &self.shared,
            net: &mut self.net,
            rng: &mut self.rng,
            keyshares: &mut self.keyshares,
            scratch: &mut self.scratch,
            now: self.now,
            busy: self.busy,
        }
    }

    /// One turn after readiness `bits` on `side`.
    fn turn(&mut self, side: usize, bits: u8) -> Turn {
        self.conn.readiness(side, bits);
        let Rig {
            pool,
            shared,
            net,
            rng,
            keyshares,
            scratch,
            now,
            busy,
            conn,
            ..
        } = self;
        let mut ctx = Ctx {
            pool,
            shared,
            net,
            rng,
            keyshares,
            scratch,
            now: *now,
            busy: *busy,
        };
        conn.ready(&mut ctx)
    }

    /// Turns until the connection stops asking to be requeued.
    fn run(&mut self, side: usize, bits: u8) -> Turn {
        let mut turn = self.turn(side, bits);
        for _ in 0..1000 {
            if turn.next != Next::Requeue {
                return turn;
            }
            turn = self.turn(side, 0);
        }
        panic!("still requeued after 1000 turns");
    }

    /// [`Rig::run`], for a turn that must leave the connection open.
    fn go(&mut self, side: usize, bits: u8) {
        let turn = self.run(side, bits);
        assert!(!matches!(turn.next, Next::Closed(_)), "closed: {turn:?}");
    }

    fn timeout(&mut self, after: Duration) -> Turn {
        self.now += after;
        let Rig {
            pool,
            shared,
            net,
            rng,
            keyshares,
            scratch,
            now,
            busy,
            conn,
            ..
        } = self;
        let mut ctx = Ctx {
            pool,
            shared,
            net,
            rng,
            keyshares,
            scratch,
            now: *now,
            busy: *busy,
        };
        conn.handle_timeout(&mut ctx)
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

const RW: u8 = R | W;

/// A client's view of its connection after the handshake.
struct Client {
    encrypt: AesCtr,
    decrypt: AesCtr,
    /// FakeTLS: what arrived from the proxy, deframed.
    records: Option<RecordReader>,
}

impl Client {
    /// The client's first bytes: a FakeTLS hello (for `ee`) and its obfuscated2 frame toward
    /// `dc` with `early` data, as a Telegram client sends them.
    fn start(secret: &Secret, tag: Tag, dc: i16, early: &[u8]) -> (Client, Vec<u8>) {
        let mut rng = XorShift64(42);
        let (frame, mut encrypt, decrypt) = obfs2::client_frame(&mut rng, &secret.key, tag, dc);
        let mut data = early.to_vec();
        encrypt.apply_keystream(&mut data);
        let stream = [&frame[..], &data].concat();
        let client = Client {
            encrypt,
            decrypt,
            records: (secret.kind == SecretKind::FakeTls).then(RecordReader::new),
        };
        if secret.kind != SecretKind::FakeTls {
            return (client, stream);
        }
        let hello =
            faketls::build_client_hello(&mut rng, &secret.key, &secret.host, unix_now() as u32);
        (client, [hello, records(&stream)].concat())
    }

    /// Bytes the client sends after its handshake.
    fn seal(&mut self, data: &[u8]) -> Vec<u8> {
        let mut data = data.to_vec();
        self.encrypt.apply_keystream(&mut data);
        match self.records {
            Some(_) => records(&data),
            None => data,
        }
    }

    /// What the client makes of bytes from the proxy (after the flight, for FakeTLS).
    fn open(&mut self, wire: &[u8]) -> Vec<u8> {
        let mut data = wire.to_vec();
        if let Some(r) = self.records.as_mut() {
            let n = r.deframe_in_place(&mut data).expect("records");
            data.truncate(n);
        }
        self.decrypt.apply_keystream(&mut data);
        data
    }
}

/// TLS application-data records carrying `data`.
fn records(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(1000) {
        out.extend_from_slice(&faketls::record_header(c.len() as u16));
        out.extend_from_slice(c);
    }
    out
}

/// The DC's view: reads our frame from what it got, returns (tag, dc, early data, its ciphers).
fn dc_accept(got: &[u8]) -> (Tag, i16, Vec<u8>, AesCtr, AesCtr) {
    let frame: [u8; 64] = got[..64].try_into().expect("a frame");
    let (tag, dc, mut decrypt, encrypt) = obfs2::dc_accept(&frame).expect("our frame");
    let mut rest = got[64..].to_vec();
    decrypt.apply_keystream(&mut rest);
    (tag, dc, rest, decrypt, encrypt)
}

/// Splits the server flight (three records) off what the client got first.
fn split_flight(got: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    for _ in 0..3 {
        let len = usize::from(u16::from_be_bytes([got[at + 3], got[at + 4]]));
        at += 5 + len;
    }
    got.split_at(at)
}

// ------------------------------------------------------------------------------------------
// Tests

#[test]
fn connection_state_stays_small() {
    // An idle connection costs its slab slot and nothing else (no buffers), so this size
    // is the per-connection memory floor of the proxy (issue: ≤ 2 KiB per idle connection).
    let size = std::mem::size_of::<Option<Conn<mio::net::TcpStream>>>();
    eprintln!(
        "Option<Conn> = {size} bytes, handshake {}, dial {}, relay {}",
        std::mem::size_of::<handshake::Hs>(),
        std::mem::size_of::<dial::Dial<mio::net::TcpStream>>(),
        std::mem::size_of::<relay::Relay<mio::net::TcpStream>>()
    );
    // (656 with the user's lease and counters, issue 15; 688 with the relay halves' stall
    // clocks and the handshake's grace, issue 12.)
    assert!(size <= 688, "Option<Conn> grew to {size} bytes");
}

#[test]
fn relays_each_kind_to_its_dc_and_back_then_closes_after_both_eofs() {
    for kind in [SecretKind::FakeTls, SecretKind::Secure, SecretKind::Classic] {
        let s = secret(kind);
        let mut rig = Rig::new(config(s.clone()));
        let tag = if kind == SecretKind::Classic {
            Tag::Abridged
        } else {
            Tag::Padded
        };
        let (mut client, first) = Client::start(&s, tag, 2, b"early");
        rig.client.send(&first);
        // Handshake, then a connect to DC 2 in progress.
        assert_eq!(rig.run(CLIENT, RW).next, Next::Idle, "{kind:?}");
        assert_eq!(rig.net.addrs(), vec![addr(DC2)]);
        let flight = rig.client.take_written();
        assert_eq!(flight.is_empty(), kind != SecretKind::FakeTls, "{kind:?}");
        assert_eq!(
            rig.stats()
                .handshakes
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Connected: our frame and the early data reach the DC.
        let dc = rig.net.last();
        assert_eq!(rig.run(UPSTREAM, RW).next, Next::Idle);
        assert!(dc.0.borrow().keep_alive, "DC connections get keep-alive");
        let (got_tag, got_dc, early, mut dc_dec, mut dc_enc) = dc_accept(&dc.take_written());
        assert_eq!((got_tag, got_dc, early.as_slice()), (tag, 2, &b"early"[..]));
        // Both ways.
        rig.client.send(&client.seal(b"ping"));
        assert_eq!(rig.run(CLIENT, R).next, Next::Idle);
        let mut up = dc.take_written();
        dc_dec.apply_keystream(&mut up);
        assert_eq!(up, b"ping");
        let mut answer = b"pong".repeat(3000);
        dc_enc.apply_keystream(&mut answer);
        dc.send(&answer);
        assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
        assert_eq!(
            client.open(&rig.client.take_written()),
            b"pong".repeat(3000)
        );
        // Half-close: the client's EOF reaches the DC; the DC may still send.
        rig.client.eof();
        assert_eq!(rig.run(CLIENT, R).next, Next::Idle);
        assert!(dc.shut() && !rig.client.shut(), "{kind:?}");
        let mut more = b"after".to_vec();
        dc_enc.apply_keystream(&mut more);
        dc.send(&more);
        dc.eof();
        assert_eq!(rig.run(UPSTREAM, R).next, Next::Closed(CloseReason::Done));
        assert_eq!(client.open(&rig.client.take_written()), b"after");
        assert!(rig.client.shut());
        assert_eq!(rig.conn.bytes(), [5 + 4, 12_000 + 5], "{kind:?}");
        assert_eq!(rig.pool.all_in_use(), 0, "{kind:?}: buffers given back");
    }
}

#[test]
fn a_partially_written_flight_is_finished_in_order_before_relayed_bytes() {
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s.clone()));
    let (mut client, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.room(Some(100));
    rig.client.send(&first);
    assert_eq!(rig.run(CLIENT, RW).next, Next::Idle);
    assert_eq!(rig.client.0.borrow().written.len(), 100);
    // The DC connects and answers before the client's socket drains.
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_enc) = dc_accept(&dc.take_written());
    let mut answer = b"from the dc".to_vec();
    dc_enc.apply_keystream(&mut answer);
    dc.send(&answer);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    assert_eq!(
        rig.client.0.borrow().written.len(),
        100,
        "WouldBlock: nothing more"
    );
    rig.client.room(None);
    assert_eq!(rig.run(CLIENT, W).next, Next::Idle);
    let got = rig.client.take_written();
    let (flight, rest) = split_flight(&got);
    let random: [u8; 32] = first[11..43].try_into().unwrap();
    assert_eq!(
        faketls::verify_server_flight(flight, &random, &s.key),
        Ok(Some(flight.len()))
    );
    assert_eq!(client.open(rest), b"from the dc");
}

#[test]
fn a_reset_is_passed_on_as_a_reset_after_the_flush() {
    let s = secret(SecretKind::Secure);
    let mut rig = Rig::new(config(s.clone()));
    let (mut client, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_enc) = dc_accept(&dc.take_written());
    let mut last = b"last words".to_vec();
    dc_enc.apply_keystream(&mut last);
    dc.send(&last);
    dc.reset_by_peer();
    let turn = rig.run(UPSTREAM, R);
    assert_eq!(
        turn.next,
        Next::Closed(CloseReason::Error(ErrorKind::ConnectionReset))
    );
    assert_eq!(client.open(&rig.client.take_written()), b"last words");
    assert!(rig.client.was_reset() && !rig.client.shut());
    assert_eq!(rig.pool.all_in_use(), 0);
}

#[test]
fn bad_bytes_are_fronted_byte_for_byte_both_ways() {
    let s = secret(SecretKind::Secure);
    let mut rig = Rig::new(config(s));
    let probe = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    rig.client.send(&probe[..10]);
    rig.go(CLIENT, RW);
    assert_eq!(rig.net.addrs(), vec![addr(FRONT)], "fronted after 4 bytes");
    assert!(rig.conn.is_fronted());
    rig.client.send(&probe[10..]);
    let front = rig.net.last();
    rig.go(UPSTREAM, RW);
    assert!(
        !front.0.borrow().keep_alive,
        "no keep-alive toward the site"
    );
    rig.go(CLIENT, R);
    assert_eq!(front.take_written(), probe);
    front.send(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    front.eof();
    rig.go(UPSTREAM, R);
    assert_eq!(
        rig.client.take_written(),
        b"HTTP/1.1 400 Bad Request\r\n\r\n"
    );
    rig.client.eof();
    assert_eq!(rig.run(CLIENT, R).next, Next::Closed(CloseReason::Done));
    let stats = rig.stats();
    assert_eq!(stats.fronted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.failures(Reject::ObfsTag), 1);
    assert_eq!(rig.pool.all_in_use(), 0);
}

/// Issue 12: past the spare half, the site's answer goes through a small buffer at once (a
/// probe must be answered as fast as the site does, whatever holds the relay buffers).
#[test]
fn a_fronted_connection_past_the_spare_half_takes_a_small_buffer() {
    let s = secret(SecretKind::Secure);
    let mut rig = Rig::with_pool(config(s), Pool::new(2, 4096, 2, 2048));
    rig.client.send(b"POST / HTTP/1.1\r\n\r\n");
    rig.go(CLIENT, RW);
    let front = rig.net.last();
    rig.go(UPSTREAM, RW);
    let held = rig.pool.checkout(Class::Client).expect("one relay buffer");
    front.send(b"answer");
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    assert_eq!(rig.client.take_written(), b"answer");
    rig.pool.release(held);
}

#[test]
fn a_fronted_connection_waits_for_the_spare_half_of_the_pool() {
    // Two relay buffers: the spare half is one; no small buffer to fall back on (the
    // handshake takes a relay buffer, given back once its bytes went up). The site's answer
    // needs a relay buffer.
    let s = secret(SecretKind::Secure);
    let mut rig = Rig::with_pool(config(s), Pool::new(2, 4096, 0, 2048));
    rig.client.send(b"POST / HTTP/1.1\r\n\r\n");
    rig.go(CLIENT, RW);
    let front = rig.net.last();
    rig.go(UPSTREAM, RW);
    let held = rig.pool.checkout(Class::Client).expect("one relay buffer");
    front.send(b"answer");
    assert_eq!(
        rig.run(UPSTREAM, R).next,
        Next::WaitBuffer(Class::Fronted),
        "one of two in use: no spare buffer for a fronted connection"
    );
    assert!(rig.client.take_written().is_empty());
    rig.pool.release(held);
    assert_eq!(rig.run(UPSTREAM, 0).next, Next::Idle);
    assert_eq!(rig.client.take_written(), b"answer");
}

#[test]
fn an_empty_pool_makes_a_relay_wait_not_fail() {
    let s = secret(SecretKind::Classic);
    let mut rig = Rig::with_pool(config(s.clone()), Pool::new(1, 4096, 0, 2048));
    let (mut client, first) = Client::start(&s, Tag::Intermediate, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_enc) = dc_accept(&dc.take_written());
    let held = rig.pool.checkout(Class::Client).expect("the relay buffer");
    let mut answer = b"data".to_vec();
    dc_enc.apply_keystream(&mut answer);
    dc.send(&answer);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::WaitBuffer(Class::Client));
    rig.pool.release(held);
    assert_eq!(rig.run(UPSTREAM, 0).next, Next::Idle);
    assert_eq!(client.open(&rig.client.take_written()), b"data");
}

/// Issue 12: a direction that holds a relay buffer and writes nothing for `STALL` is closed
/// once relay buffers run short (a client that never reads its download); while they are
/// plentiful it keeps its connection until the idle timeout.
#[test]
fn a_stalled_direction_is_closed_when_relay_buffers_run_short() {
    let s = secret(SecretKind::Classic);
    let mut rig = Rig::with_pool(config(s.clone()), Pool::new(4, 4096, 4, 2048));
    let (_, first) = Client::start(&s, Tag::Intermediate, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    dc.take_written();
    // The client reads nothing: the down direction keeps its relay buffer full.
    rig.client.room(Some(0));
    dc.send(&[7u8; 10_000]);
    rig.go(UPSTREAM, R);
    let stall = super::relay::STALL;
    assert_eq!(rig.conn.deadline(), Some(rig.now + stall));
    assert_eq!(rig.pool.in_use(), 1);
    // Plenty of buffers: kept.
    assert_eq!(rig.timeout(stall).next, Next::Idle);
    // Short of them: closed.
    let others: Vec<_> = (0..3)
        .map(|_| rig.pool.checkout_relay(Class::Client).unwrap())
        .collect();
    assert!(rig.pool.short());
    assert_eq!(
        rig.timeout(Duration::from_millis(250)).next,
        Next::Closed(CloseReason::Stalled)
    );
    assert_eq!(rig.pool.in_use(), 3, "its buffer came back");
    others.into_iter().for_each(|id| rig.pool.release(id));
    // A direction that writes now and then is not stalled.
    let mut rig = Rig::with_pool(config(s.clone()), Pool::new(1, 4096, 4, 2048));
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    rig.client.room(Some(0));
    dc.send(&[7u8; 10_000]);
    rig.go(UPSTREAM, R);
    assert!(rig.pool.short());
    rig.now += stall - Duration::from_millis(1);
    rig.client.room(Some(100));
    rig.go(CLIENT, W);
    assert_eq!(rig.timeout(Duration::from_millis(2)).next, Next::Idle);
}

#[test]
fn records_toward_a_faketls_client_are_bounded_and_start_small() {
    let s = secret(SecretKind::FakeTls);
    let mut cfg = config(s.clone());
    cfg.doppelganger.drs = true;
    let mut rig = Rig::new(cfg);
    let (mut client, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    rig.client.take_written();
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_enc) = dc_accept(&dc.take_written());
    let mut big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let want = big.clone();
    dc_enc.apply_keystream(&mut big);
    dc.send(&big);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    let got = rig.client.take_written();
    let mut at = 0;
    let mut sizes = Vec::new();
    while at < got.len() {
        assert_eq!(got[at..at + 3], [0x17, 0x03, 0x03]);
        let len = usize::from(u16::from_be_bytes([got[at + 3], got[at + 4]]));
        sizes.push(len);
        at += 5 + len;
    }
    assert!(sizes.iter().all(|&n| n <= faketls::MAX_RECORD_PAYLOAD));
    assert!(sizes[..40].iter().all(|&n| n <= 1450), "{:?}", &sizes[..40]);
    assert_eq!(client.open(&got), want);
}

#[test]
fn a_bulk_transfer_yields_after_its_turn_budget() {
    let s = secret(SecretKind::Classic);
    let mut rig = Rig::new(config(s.clone()));
    let (_, first) = Client::start(&s, Tag::Intermediate, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    dc.take_written();
    dc.send(&vec![7u8; TURN_BUDGET * 2 + 10]);
    assert_eq!(rig.turn(UPSTREAM, R).next, Next::Requeue);
    assert_eq!(rig.run(UPSTREAM, 0).next, Next::Idle);
    assert_eq!(rig.client.take_written().len(), TURN_BUDGET * 2 + 10);
}

#[test]
fn full_reads_go_to_the_client_as_one_segment_and_are_pushed_when_the_dc_runs_dry() {
    // Unframed (classic): each read fills the 64 KiB buffer while the DC has more, so a busy
    // worker's write says more follows; when the DC runs dry, what the kernel holds must be
    // pushed.
    let s = secret(SecretKind::Classic);
    let mut rig = Rig::new(config(s.clone()));
    rig.busy = true;
    let (mut client, first) = Client::start(&s, Tag::Intermediate, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_enc) = dc_accept(&dc.take_written());
    let want: Vec<u8> = (0..3 * 65536u32).map(|i| (i % 251) as u8).collect();
    let mut wire = want.clone();
    dc_enc.apply_keystream(&mut wire);
    dc.send(&wire);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    assert_eq!(rig.client.0.borrow().more_writes, 3);
    assert_eq!(client.open(&rig.client.take_written()), want);
    // A short read is written plainly (it pushes by itself).
    let mut tail = b"tail".to_vec();
    dc_enc.apply_keystream(&mut tail);
    dc.send(&tail);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    assert_eq!(rig.client.0.borrow().more_writes, 3);
    assert_eq!(client.open(&rig.client.take_written()), b"tail");
    // A worker with nothing else to do writes each read at once.
    rig.busy = false;
    let mut wire = want.clone();
    dc_enc.apply_keystream(&mut wire);
    dc.send(&wire);
    assert_eq!(rig.run(UPSTREAM, R).next, Next::Idle);
    assert_eq!(rig.client.0.borrow().more_writes, 3);
    assert_eq!(client.open(&rig.client.take_written()), want);
}

#[test]
fn full_reads_go_to_the_dc_as_one_segment_and_are_pushed_when_the_client_runs_dry() {
    // FakeTLS upload: 195 records of 1,000 bytes and one of 628 are exactly three 64 KiB
    // reads, each full while the client has more.
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s.clone()));
    rig.busy = true;
    let (mut client, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    rig.client.take_written();
    let dc = rig.net.last();
    rig.go(UPSTREAM, RW);
    let (.., mut dc_dec, _) = dc_accept(&dc.take_written());
    let want: Vec<u8> = (0..195_628u32).map(|i| (i % 253) as u8).collect();
    let wire = client.seal(&want);
    assert_eq!(wire.len(), 3 * 65536);
    rig.client.send(&wire);
    assert_eq!(rig.run(CLIENT, R).next, Next::Idle);
    assert_eq!(dc.0.borrow().more_writes, 3);
    let mut got = dc.take_written();
    dc_dec.apply_keystream(&mut got);
    assert_eq!(got, want);
}

#[test]
fn a_dc_that_fails_to_connect_or_stays_silent_gives_way_to_the_next() {
    let s = secret(SecretKind::Secure);
    let mut cfg = config(s.clone());
    cfg.dc_overrides = vec![(2, vec![addr(DC2), addr(DC2_BACKUP), addr("127.0.0.4:443")])];
    let mut rig = Rig::new(cfg);
    rig.net.fail_connect.push(addr(DC2));
    let (_, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.send(&first);
    rig.go(CLIENT, RW);
    // The first fails on its first event; the second stays silent past its (shortened)
    // timeout; the third connects.
    rig.go(UPSTREAM, W);
    assert_eq!(rig.net.addrs(), vec![addr(DC2), addr(DC2_BACKUP)]);
    assert!(rig.timeout(Duration::from_secs(2)).next == Next::Idle);
    assert_eq!(rig.net.addrs().len(), 2, "not yet");
    assert_eq!(rig.timeout(Duration::from_secs(2)).next, Next::Idle);
    assert_eq!(rig.net.addrs().len(), 3);
    rig.go(UPSTREAM, W);
    assert!(dc_accept(&rig.net.last().take_written()).1 == 2);
    // None left: closed as unreachable.
    let mut rig = Rig::new(config(s.clone()));
    rig.net.refuse.push(addr(DC2));
    rig.client.send(&first);
    assert_eq!(
        rig.run(CLIENT, RW).next,
        Next::Closed(CloseReason::DcUnreachable)
    );
    assert_eq!(rig.pool.all_in_use(), 0);
}

#[test]
fn a_silent_client_is_fronted_at_its_handshake_timeout() {
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s));
    // Not a byte: the handshake timeout (a site waits for a silent client too).
    assert_eq!(rig.conn.deadline(), Some(rig.now + Duration::from_secs(10)));
    assert_eq!(rig.timeout(Duration::from_secs(9)).next, Next::Idle);
    assert!(rig.net.dialed.is_empty());
    assert_eq!(rig.timeout(Duration::from_secs(1)).next, Next::Idle);
    assert_eq!(rig.net.addrs(), vec![addr(FRONT)]);
    assert_eq!(rig.stats().failures(Reject::Timeout), 1);
}

/// Issue 12: an incomplete handshake is fronted once the client stays quiet for the grace
/// after its last byte (a timer: the turn asks to be woken then), not at the handshake timeout.
#[test]
fn an_incomplete_handshake_is_fronted_after_the_grace() {
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s));
    rig.client.send(b"\x16\x03\x01\x02\x00");
    let turn = rig.run(CLIENT, RW);
    assert_eq!(turn.next, Next::Idle);
    let grace = super::handshake::HANDSHAKE_GRACE;
    assert_eq!(turn.wake_at, Some(rig.now + grace));
    assert!(rig.net.dialed.is_empty());
    assert_eq!(rig.conn.deadline(), Some(rig.now + grace));
    assert_eq!(
        rig.timeout(grace - Duration::from_millis(1)).next,
        Next::Idle
    );
    assert!(rig.net.dialed.is_empty());
    assert_eq!(rig.timeout(Duration::from_millis(1)).next, Next::Idle);
    assert_eq!(rig.net.addrs(), vec![addr(FRONT)]);
    let front = rig.net.last();
    rig.go(UPSTREAM, W);
    assert_eq!(front.take_written(), b"\x16\x03\x01\x02\x00");
    assert_eq!(rig.stats().failures(Reject::Timeout), 1);
}

/// A worker woken after the grace, with the rest of the hello already in the socket (it came
/// in time; the worker ran late), reads it before deciding: the client is answered, not
/// fronted. (Checking the timer first fronted it.)
#[test]
fn bytes_waiting_at_the_end_of_the_grace_are_read_before_the_grace_is_judged() {
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s.clone()));
    let (_, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client.send(&first[..100]);
    assert_eq!(rig.run(CLIENT, RW).next, Next::Idle);
    rig.now += super::handshake::HANDSHAKE_GRACE + Duration::from_millis(30);
    rig.client.send(&first[100..]);
    rig.go(CLIENT, R);
    assert_eq!(
        rig.net.addrs(),
        vec![addr(DC2)],
        "fronted: {:?}",
        rig.net.addrs()
    );
    assert_eq!(rig.stats().failures(Reject::Timeout), 0);
}

#[test]
fn a_proxy_header_names_the_client_and_is_not_fronted() {
    let s = secret(SecretKind::Secure);
    let mut cfg = config(s);
    cfg.proxy_protocol_listener = true;
    let mut rig = Rig::new(cfg);
    let probe = b"PROXY TCP4 198.51.100.7 127.0.0.1 4444 443\r\nGET / HTTP/1.1\r\n\r\n";
    rig.client.send(probe);
    rig.go(CLIENT, RW);
    assert_eq!(rig.conn.peer(), addr("198.51.100.7:4444"));
    let front = rig.net.last();
    rig.go(UPSTREAM, W);
    assert_eq!(front.take_written(), b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn a_bad_record_after_a_complete_frame_closes_at_the_relay_as_if_it_came_later() {
    let s = secret(SecretKind::FakeTls);
    let mut rig = Rig::new(config(s.clone()));
    let (_, first) = Client::start(&s, Tag::Padded, 2, b"");
    rig.client
        .send(&[&first[..], &[0x17, 0x03, 0x01, 0x00, 0x01, 0xaa]].concat());
    // The frame decides (the DC is dialed); the bad record is the relay's.
    rig.go(CLIENT, RW);
    assert_eq!(rig.net.addrs(), vec![addr(DC2)]);
    let dc = rig.net.last();
    assert_eq!(
        rig.run(UPSTREAM, RW).next,
        Next::Closed(CloseReason::Error(ErrorKind::InvalidData))
    );
    assert!(dc.take_written().is_empty(), "nothing relayed");
    assert_eq!(rig.pool.all_in_use(), 0);
}

#[test]
fn an_empty_direction_leaves_the_small_handshake_buffer_for_a_relay_buffer() {
    // 2 relay buffers of 16 KiB, 2 handshake buffers of 2 KiB.
    let mut pool = Pool::new(2, 16384, 2, 2048);
    let small = pool.checkout(Class::Handshake).unwrap();
    let mut half = relay::Half::holding(Some(small), 10, false);
    // Bytes still in it: it stays.
    half.upgrade_small(Class::Client, &mut pool);
    assert!(Pool::is_small(pool_id(&half)));
    // Empty: a relay buffer, and the small one goes back.
    half.consume_all();
    half.upgrade_small(Class::Client, &mut pool);
    let big = pool_id(&half);
    assert!(!Pool::is_small(big));
    assert_eq!(pool.get(big).len(), 16384);
    assert!(half.is_empty());
    assert_eq!(pool.all_in_use(), 1);
    // A relay buffer is never traded.
    half.upgrade_small(Class::Client, &mut pool);
    assert_eq!(pool_id(&half), big);
    // No relay buffer free (for a fronted connection: none of the spare half): it keeps the
    // small one rather than wait.
    let before = pool.checkout(Class::Handshake).unwrap();
    let mut other = relay::Half::holding(Some(before), 0, false);
    other.upgrade_small(Class::Fronted, &mut pool);
    assert_eq!(pool_id(&other), before);
    let _last = pool.checkout(Class::Client).unwrap();
    other.upgrade_small(Class::Client, &mut pool);
    assert_eq!(pool_id(&other), before);
}

fn pool_id(half: &relay::Half) -> crate::io::pool::BufId {
    half.buf().expect("a buffer")
}

#[test]
fn a_user_over_quota_is_cut_at_a_record_boundary_even_if_the_client_never_reads() {
    use crate::proto::users::{Limits, UserReject, UserSpec};
    for never_reads in [false, true] {
        let s = secret(SecretKind::FakeTls);
        let mut c = config(s.clone());
        c.users = vec![UserSpec {
            name: "default".into(),
            secret: s.clone(),
            limits: Limits {
                quota: Some(10_000),
                ..Limits::default()
            },
            ad_tag: None,
        }];
        let idle = c.timeouts.idle;
        let mut rig = Rig::new(c);
        let (mut client, first) = Client::start(&s, Tag::Padded, 2, b"");
        rig.client.send(&first);
        assert_eq!(rig.run(CLIENT, RW).next, Next::Idle);
        let got = rig.client.take_written();
        let (_flight, rest) = split_flight(&got);
        assert!(rest.is_empty());
        let dc = rig.net.last();
        assert_eq!(rig.run(UPSTREAM, RW).next, Next::Idle);
        let (_, _, _, _, mut dc_enc) = dc_accept(&dc.take_written());
        if never_reads {
            // Room for part of the answer only, then nothing.
            rig.client.room(Some(7_000));
        }
        // 30 KB from the DC: one turn reads them (framed in whole records) and crosses the
        // quota; the relay is cut.
        let mut answer = vec![7u8; 30_000];
        dc_enc.apply_keystream(&mut answer);
        dc.send(&answer);
        let _ = rig.run(UPSTREAM, R);
        let user = rig.shared.users.load().stats[0].clone();
        assert_eq!(user.counts().rejects[UserReject::QuotaCut as usize], 1);
        // More from either side is no longer relayed: the DC's is not read, the client's is
        // read and dropped (unread, closing would reset the connection and destroy the
        // records flushed before).
        dc.send(&[1; 100]);
        rig.client.send(&client.seal(b"more"));
        let turn = rig.timeout(Duration::ZERO);
        if never_reads {
            // Still flushing: it waits, then ends at the idle timeout.
            assert!(!matches!(turn.next, Next::Closed(_)), "{turn:?}");
            let turn = rig.timeout(idle);
            assert_eq!(turn.next, Next::Closed(CloseReason::Idle));
        } else {
            // Whole records, all of what was read, then the shutdown toward the client; the
            // relay waits for the client's EOF (its late bytes drained), then ends.
            assert!(!matches!(turn.next, Next::Closed(_)), "{turn:?}");
            assert_eq!(client.open(&rig.client.take_written()), vec![7u8; 30_000]);
            assert!(rig.client.shut());
            let turn = rig.run(CLIENT, R);
            assert!(!matches!(turn.next, Next::Closed(_)), "{turn:?}");
            assert_eq!(
                rig.client.pending(),
                0,
                "the client's late bytes were drained"
            );
            rig.client.eof();
            assert_eq!(rig.run(CLIENT, R).next, Next::Closed(CloseReason::Done));
            assert!(dc.shut());
        }
        assert_eq!(
            rig.conn.bytes()[0],
            0,
            "the client's late bytes were not relayed"
        );
        assert_eq!(user.counts().used, 30_000);
    }
}
