//! Shared harness for the end-to-end tests: a fake Telegram DC speaking obfuscated2, a test
//! client for the three secret kinds, deterministic data streams, and loopback-only "refused"
//! and "blackhole" addresses.
//!
//! Every socket gets read and write timeouts, and every wait has a deadline, so that a bug in
//! the proxy shows up as a failing test, never as a hang. Nothing here leaves 127.0.0.1.

#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::StreamCipher;
use mtpx::config::Config;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls;
use mtpx::proto::obfs2::{self, AesCtr, Tag};
use mtpx::proto::secret::{Secret, SecretKind};

/// `release` in optimised builds, `debug` otherwise: AES at opt-level 0 runs at about
/// 1 MB/s per pass, and each relayed byte takes four passes (client, proxy twice, fake DC).
pub const fn scaled(release: u64, debug: u64) -> u64 {
    if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}

/// Default timeout of every blocking socket operation in the harness.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// The FakeTLS host used by the tests' `ee` secrets.
pub const HOST: &str = "www.example.com";
/// Largest application-data payload the proxy may send (16384 - 5).
pub const MAX_RECORD_PAYLOAD: usize = 16379;

// ------------------------------------------------------------------------------------------
// Small utilities

/// Seconds since the Unix epoch.
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A secret of `kind` derived from `seed` (FakeTLS secrets use [`HOST`]).
pub fn secret(kind: SecretKind, seed: u64) -> Secret {
    Secret::generate(kind, HOST, &mut XorShift64(seed))
}

/// Sets both timeouts of a stream.
pub fn set_timeouts(s: &TcpStream, t: Duration) {
    s.set_read_timeout(Some(t)).expect("set_read_timeout");
    s.set_write_timeout(Some(t)).expect("set_write_timeout");
}

/// A TCP connection to `addr` with the harness timeouts.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    set_timeouts(&s, IO_TIMEOUT);
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// How a connection ended when read until it closed.
#[derive(Debug)]
pub struct Closed {
    /// Bytes received before the end.
    pub bytes: Vec<u8>,
    /// Time from the call until the end.
    pub after: Duration,
    /// Whether it ended by a reset rather than EOF.
    pub reset: bool,
}

/// Reads `s` until EOF or reset, with `limit` as the overall deadline. `Err` if the
/// connection is still open at the deadline (the proxy did not close it).
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Closed, String> {
    let start = Instant::now();
    let deadline = start + limit;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "connection still open after {limit:?} ({} bytes received)",
                bytes.len()
            ));
        }
        s.set_read_timeout(Some(left)).expect("set_read_timeout");
        match s.read(&mut buf) {
            Ok(0) => {
                return Ok(Closed {
                    bytes,
                    after: start.elapsed(),
                    reset: false,
                });
            }
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > 1 << 20 {
                    return Err("more than 1 MiB received while waiting for close".into());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(Closed {
                    bytes,
                    after: start.elapsed(),
                    reset: true,
                });
            }
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// Current resident set size of this process, in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("VmRSS value");
            return kb * 1024;
        }
    }
    panic!("no VmRSS in /proc/self/status");
}

// ------------------------------------------------------------------------------------------
// Deterministic data

/// An endless deterministic byte stream: byte `i` depends only on (seed, i), so producers and
/// checkers may use any chunk sizes.
#[derive(Clone, Debug)]
pub struct Pattern {
    seed: u64,
    pos: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed, pos: 0 }
    }

    /// Bytes produced or checked so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let block = splitmix(self.seed ^ (self.pos / 8).wrapping_mul(0xA24B_AED4_963E_E407));
            let bytes = block.to_le_bytes();
            let off = (self.pos % 8) as usize;
            let n = (8 - off).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&bytes[off..off + n]);
            i += n;
            self.pos += n as u64;
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// Checks that `got` continues the stream; on mismatch, the absolute offset of the first
    /// differing byte.
    pub fn check(&mut self, got: &[u8]) -> Result<(), u64> {
        let mut want = [0u8; 4096];
        for chunk in got.chunks(want.len()) {
            let at = self.pos;
            self.fill(&mut want[..chunk.len()]);
            if let Some(i) = chunk.iter().zip(&want).position(|(a, b)| a != b) {
                return Err(at + i as u64);
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Addresses that fail without leaving loopback

/// A loopback port that is bound but not listening: connecting to it is refused (RST) for as
/// long as this value lives, and no one else can take the port meanwhile.
pub struct RefusedPort {
    fd: i32,
    pub addr: SocketAddr,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        // SAFETY: plain libc socket calls on a descriptor we own; the sockaddr is a local,
        // fully initialised value whose size we pass.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                len,
            );
            assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
            let mut out: libc::sockaddr_in = std::mem::zeroed();
            let mut olen = len;
            let r = libc::getsockname(
                fd,
                &mut out as *mut libc::sockaddr_in as *mut libc::sockaddr,
                &mut olen,
            );
            assert_eq!(r, 0, "getsockname: {}", io::Error::last_os_error());
            let port = u16::from_be(out.sin_port);
            RefusedPort {
                fd,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }
        }
    }
}

impl Drop for RefusedPort {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns, once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// A loopback address where a TCP connect neither succeeds nor fails quickly: a listener with
/// backlog 0 whose accept queue is filled with connections nobody accepts, so that further
/// SYNs are dropped. Verified with a plain `connect_timeout` at construction.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind blackhole");
        mtpx::sys::set_listen_backlog(&listener, 0).expect("listen(0)");
        let addr = listener.local_addr().expect("local_addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    // The queue is full: check once more that connects really hang.
                    let t = Instant::now();
                    let again = TcpStream::connect_timeout(&addr, Duration::from_millis(700));
                    assert!(
                        matches!(&again, Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock),
                        "blackhole connect did not hang: {again:?}"
                    );
                    assert!(t.elapsed() >= Duration::from_millis(600));
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    };
                }
                Err(e) => panic!("unexpected connect error while filling the blackhole: {e}"),
            }
        }
        panic!("could not fill the accept queue of a backlog-0 listener with 16 connections");
    }
}

/// A TCP connection to `dst` from the loopback address `src` (e.g. 127.0.0.2), with the
/// harness timeouts: std cannot bind a socket before connecting it, so this uses libc.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        sa.sin_port = port.to_be();
        sa
    };
    let (local, remote) = (sockaddr(src, 0), sockaddr(*dst.ip(), dst.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh descriptor that the TcpStream owns (and closes) from then on; the
    // sockaddrs are fully initialised locals whose size we pass.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let as_ptr =
            |sa: &libc::sockaddr_in| sa as *const libc::sockaddr_in as *const libc::sockaddr;
        if libc::bind(fd, as_ptr(&local), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(fd, as_ptr(&remote), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        stream
    };
    set_timeouts(&stream, IO_TIMEOUT);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

// ------------------------------------------------------------------------------------------
// DNS

/// A DNS server on 127.0.0.1 (UDP only): A queries for the names it knows get their one IPv4
/// address, AAAA queries for them get no data, anything else NXDOMAIN. Written independently
/// of `mtpx::formats::dns`. Stops when dropped.
pub struct DnsStub {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl DnsStub {
    pub fn start(names: &[(&str, Ipv4Addr)]) -> DnsStub {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind DNS stub");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let addr = sock.local_addr().expect("local_addr");
        let names: Vec<(String, Ipv4Addr)> = names
            .iter()
            .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
            .collect();
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (q2, s2) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                // Header (12 bytes), then the name as labels, then type and class.
                let mut pos = 12;
                let mut labels = Vec::new();
                while let Some(&len) = q.get(pos) {
                    pos += 1;
                    if len == 0 || pos + usize::from(len) > q.len() {
                        break;
                    }
                    labels.push(
                        String::from_utf8_lossy(&q[pos..pos + usize::from(len)])
                            .to_ascii_lowercase(),
                    );
                    pos += usize::from(len);
                }
                if pos + 4 > q.len() {
                    continue;
                }
                let name = labels.join(".");
                let qtype = u16::from_be_bytes([q[pos], q[pos + 1]]);
                q2.lock()
                    .unwrap()
                    .push(format!("{name} {}", if qtype == 28 { "AAAA" } else { "A" }));
                let known = names.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
                let answer = known.filter(|_| qtype == 1);
                let mut r = q[..2].to_vec();
                r.extend_from_slice(if known.is_some() {
                    &[0x81, 0x80]
                } else {
                    &[0x81, 0x83]
                });
                r.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..pos + 4]);
                if let Some(ip) = answer {
                    // Owner: a pointer to the question's name; A, IN, TTL 60, 4 bytes.
                    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    r.extend_from_slice(&ip.octets());
                }
                let _ = sock.send_to(&r, from);
            }
        });
        DnsStub {
            addr,
            queries,
            stop,
        }
    }

    /// The questions asked so far, as "name A" / "name AAAA" (lowercase), in order.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------------------------------
// Proxy configuration

/// A config for tests: loopback, port 0, `workers`, short timeouts, the fronting site and every
/// built-in DC pointed at `refused` so that nothing can ever leave the machine (fronting is
/// configured by IP, so the secret's host is never resolved).
/// Tests add their own overrides after these (a later override for the same id wins).
pub fn test_config(secret: Secret, workers: usize, refused: &RefusedPort) -> Config {
    let mut c = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret);
    c.workers = workers;
    c.timeouts.tcp = Duration::from_secs(3);
    c.timeouts.handshake = Duration::from_secs(10);
    c.timeouts.idle = Duration::from_secs(30);
    c.domain_fronting.ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    c.domain_fronting.port = refused.addr.port();
    c.dc_overrides = [1i16, 2, 3, 4, 5, 203]
        .iter()
        .map(|&id| (id, vec![refused.addr]))
        .collect();
    c
}

// ------------------------------------------------------------------------------------------
// A site with a big page

/// A stand-in site that answers every connection, after its first read, with up to 64 MiB as
/// fast as it is taken (each write gives up after `write_timeout`); `written` counts the
/// bytes it got rid of.
pub struct BigPageSite {
    pub addr: SocketAddr,
    pub written: Arc<AtomicU64>,
}

impl BigPageSite {
    pub fn start(write_timeout: Duration) -> BigPageSite {
        let site = TcpListener::bind("127.0.0.1:0").expect("bind site");
        let addr = site.local_addr().expect("site addr");
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        std::thread::spawn(move || {
            for stream in site.incoming() {
                let Ok(mut stream) = stream else { break };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_write_timeout(Some(write_timeout));
                    let mut req = [0u8; 256];
                    let _ = stream.read(&mut req);
                    let chunk = vec![b'x'; 1 << 20];
                    for _ in 0..64 {
                        if stream.write_all(&chunk).is_err() {
                            break;
                        }
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        BigPageSite { addr, written }
    }
}

// ------------------------------------------------------------------------------------------
// Fake fronting site

/// What the fake fronting site answers, after the client's bytes stop for a moment or end.
pub const FRONT_REPLY: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A fake fronting web site: records every byte each connection sends; once the peer has
/// been quiet for 300 ms (or sent EOF) it answers [`FRONT_REPLY`] and closes.
/// Bytes received on each accepted connection.
type Received = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

pub struct FakeFront {
    pub addr: SocketAddr,
    conns: Received,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FakeFront {
    pub fn start() -> FakeFront {
        FakeFront::start_on(IpAddr::from([127, 0, 0, 1]))
    }

    /// [`FakeFront::start`] on another loopback address (e.g. 127.0.0.3).
    pub fn start_on(ip: IpAddr) -> FakeFront {
        let listener = TcpListener::bind((ip, 0)).expect("bind fake front");
        let addr = listener.local_addr().expect("local_addr");
        let conns: Received = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c2, s2, t2) = (conns.clone(), stop.clone(), threads.clone());
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let rec: Arc<Mutex<Vec<u8>>> = Arc::default();
                c2.lock().unwrap().push(rec.clone());
                let h = std::thread::spawn(move || {
                    set_timeouts(&stream, Duration::from_millis(300));
                    let mut buf = [0u8; 4096];
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => rec.lock().unwrap().extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    let _ = stream.write_all(FRONT_REPLY);
                    let _ = stream.shutdown(Shutdown::Both);
                });
                t2.lock().unwrap().push(h);
            }
        });
        FakeFront {
            addr,
            conns,
            stop,
            acceptor: Some(acceptor),
            threads,
        }
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// The bytes received so far on the `i`-th connection.
    pub fn received(&self, i: usize) -> Vec<u8> {
        self.conns.lock().unwrap()[i].lock().unwrap().clone()
    }
}

impl Drop for FakeFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Fake DC

/// What the fake DC does after accepting a proxy's frame.
#[derive(Clone, Copy, Debug)]
pub enum DcMode {
    /// Decrypts what arrives and sends the same plaintext back; after EOF, shuts its write side.
    Echo,
    /// Checks the received plaintext against `Pattern::new(expect_seed)` while sending `reply`
    /// bytes of `Pattern::new(reply_seed)`. With `after_eof` the reply starts only after the
    /// proxy's EOF; otherwise at once and concurrently. Shuts its write side after the reply.
    Sink {
        expect_seed: u64,
        reply_seed: u64,
        reply: u64,
        after_eof: bool,
    },
    /// Accepts the frame, then reads and discards, never sending anything.
    Silent,
}

/// What the fake DC saw on one connection.
#[derive(Debug, Default)]
pub struct DcConn {
    /// Tag and dc from the proxy's frame (None if the frame was invalid).
    pub frame: Mutex<Option<(Tag, i16)>>,
    /// Set if the frame could not be read or parsed.
    pub bad_frame: AtomicBool,
    /// Plaintext bytes received after the frame.
    pub received: AtomicU64,
    /// Offset of the first byte that differed from the expected pattern (Sink), or u64::MAX.
    pub mismatch_at: AtomicU64,
    /// The proxy's write side ended (EOF) — set only after all bytes were counted.
    pub eof: AtomicBool,
    /// Bytes of the reply written so far.
    pub sent: AtomicU64,
    /// The reply was fully written and the write side shut.
    pub reply_done: AtomicBool,
    /// Any socket error seen (text).
    pub error: Mutex<Option<String>>,
}

struct DcShared {
    mode: DcMode,
    conns: Mutex<Vec<Arc<DcConn>>>,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A fake Telegram DC on 127.0.0.1:0.
pub struct FakeDc {
    pub addr: SocketAddr,
    shared: Arc<DcShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeDc {
    pub fn start(mode: DcMode) -> FakeDc {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake DC");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(DcShared {
            mode,
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fake-dc-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    set_timeouts(&stream, Duration::from_secs(20));
                    let _ = stream.set_nodelay(true);
                    if let Ok(c) = stream.try_clone() {
                        sh.streams.lock().unwrap().push(c);
                    }
                    let conn = Arc::new(DcConn {
                        mismatch_at: AtomicU64::new(u64::MAX),
                        ..DcConn::default()
                    });
                    sh.conns.lock().unwrap().push(conn.clone());
                    let mode = sh.mode;
                    let h = std::thread::Builder::new()
                        .name("fake-dc-conn".into())
                        .spawn(move || serve(stream, mode, &conn))
                        .expect("spawn fake DC connection");
                    sh.threads.lock().unwrap().push(h);
                }
            })
            .expect("spawn fake DC");
        FakeDc {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// The `i`-th accepted connection.
    pub fn conn(&self, i: usize) -> Arc<DcConn> {
        self.shared.conns.lock().unwrap()[i].clone()
    }

    /// Waits until `n` connections were accepted.
    pub fn wait_count(&self, n: usize, limit: Duration) -> bool {
        wait_until(limit, || self.count() >= n)
    }

    /// Frames (tag, dc) of all connections whose frame was read.
    pub fn frames(&self) -> Vec<(Tag, i16)> {
        self.shared
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| *c.frame.lock().unwrap())
            .collect()
    }
}

impl Drop for FakeDc {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.shared.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn record_error(conn: &DcConn, e: impl std::fmt::Display) {
    let mut g = conn.error.lock().unwrap();
    if g.is_none() {
        *g = Some(e.to_string());
    }
}

fn serve(mut s: TcpStream, mode: DcMode, conn: &DcConn) {
    let mut frame = [0u8; obfs2::FRAME_LEN];
    if let Err(e) = s.read_exact(&mut frame) {
        conn.bad_frame.store(true, Ordering::SeqCst);
        record_error(conn, format_args!("reading frame: {e}"));
        return;
    }
    let (tag, dc, mut dec, mut enc) = match obfs2::dc_accept(&frame) {
        Ok(v) => v,
        Err(r) => {
            conn.bad_frame.store(true, Ordering::SeqCst);
            record_error(conn, format_args!("dc_accept: {r:?}"));
            return;
        }
    };
    *conn.frame.lock().unwrap() = Some((tag, dc));
    let mut buf = vec![0u8; 64 * 1024];
    match mode {
        DcMode::Echo => loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    conn.eof.store(true, Ordering::SeqCst);
                    let _ = s.shutdown(Shutdown::Write);
                    conn.reply_done.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => {
                    dec.apply_keystream(&mut buf[..n]);
                    conn.received.fetch_add(n as u64, Ordering::SeqCst);
                    enc.apply_keystream(&mut buf[..n]);
                    if let Err(e) = s.write_all(&buf[..n]) {
                        record_error(conn, format_args!("echo write: {e}"));
                        return;
                    }
                    conn.sent.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    record_error(conn, format_args!("echo read: {e}"));
                    return;
                }
            }
        },
        DcMode::Silent => loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    conn.eof.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => {
                    conn.received.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    record_error(conn, format_args!("silent read: {e}"));
                    return;
                }
            }
        },
        DcMode::Sink {
            expect_seed,
            reply_seed,
            reply,
            after_eof,
        } => {
            let writer = |mut w: TcpStream, mut enc: AesCtr, conn: &DcConn| {
                let mut p = Pattern::new(reply_seed);
                let mut chunk = vec![0u8; 32 * 1024];
                let mut left = reply;
                while left > 0 {
                    let n = (left as usize).min(chunk.len());
                    p.fill(&mut chunk[..n]);
                    enc.apply_keystream(&mut chunk[..n]);
                    if let Err(e) = w.write_all(&chunk[..n]) {
                        record_error(conn, format_args!("sink reply write: {e}"));
                        return;
                    }
                    left -= n as u64;
                    conn.sent.fetch_add(n as u64, Ordering::SeqCst);
                }
                let _ = w.shutdown(Shutdown::Write);
                conn.reply_done.store(true, Ordering::SeqCst);
            };
            let mut expect = Pattern::new(expect_seed);
            let mut read_all = |s: &mut TcpStream, dec: &mut AesCtr| loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        conn.eof.store(true, Ordering::SeqCst);
                        return true;
                    }
                    Ok(n) => {
                        dec.apply_keystream(&mut buf[..n]);
                        if let Err(at) = expect.check(&buf[..n]) {
                            let _ = conn.mismatch_at.compare_exchange(
                                u64::MAX,
                                at,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            );
                        }
                        conn.received.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        record_error(conn, format_args!("sink read: {e}"));
                        return false;
                    }
                }
            };
            if after_eof {
                if read_all(&mut s, &mut dec) {
                    writer(s, enc, conn);
                }
            } else {
                let w = s.try_clone().expect("clone DC stream");
                std::thread::scope(|scope| {
                    scope.spawn(|| writer(w, enc, conn));
                    read_all(&mut s, &mut dec);
                });
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Test client

/// How the test client performs its handshake.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    pub tag: Tag,
    pub dc: i16,
    /// Seed of the client's randomness (frame, hello).
    pub seed: u64,
    /// FakeTLS: send the frame in the same write as the hello (before reading the flight).
    pub frame_with_hello: bool,
    /// FakeTLS: send a ChangeCipherSpec record before the first application-data record.
    pub ccs_first: bool,
    /// FakeTLS: payload sizes of outgoing records, used in turn (empty = one record per send,
    /// split at 16379).
    pub record_sizes: Vec<usize>,
    /// FakeTLS: split the hello into two writes at this offset with this pause between.
    pub hello_tcp_split: Option<(usize, Duration)>,
    /// FakeTLS: split the hello message into this many handshake records (1 = unsplit).
    pub hello_records: usize,
    /// FakeTLS: override the hello's timestamp (default: now).
    pub hello_time: Option<u32>,
    /// Use this key instead of the secret's (wrong-secret tests).
    pub key: Option<[u8; 16]>,
    /// Client bytes sent in the same write as the frame (FakeTLS: in records of their own
    /// right after the frame's).
    pub early: Vec<u8>,
}

impl ClientOpts {
    pub fn new(tag: Tag, dc: i16, seed: u64) -> ClientOpts {
        ClientOpts {
            tag,
            dc,
            seed,
            frame_with_hello: false,
            ccs_first: false,
            record_sizes: Vec::new(),
            hello_tcp_split: None,
            hello_records: 1,
            hello_time: None,
            key: None,
            early: Vec::new(),
        }
    }
}

/// Splits a one-record ClientHello into `k` handshake records (16 03 01 len payload).
pub fn split_hello_records(hello: &[u8], k: usize) -> Vec<u8> {
    let payload = &hello[5..];
    let k = k.max(1);
    let step = payload.len().div_ceil(k);
    let mut out = Vec::new();
    for part in payload.chunks(step) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Wraps `data` into application-data records of the given payload sizes (cycled).
pub fn app_records(data: &[u8], sizes: &[usize], idx: &mut usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / 1000 + 2));
    let mut rest = data;
    while !rest.is_empty() {
        let want = if sizes.is_empty() {
            MAX_RECORD_PAYLOAD
        } else {
            let s = sizes[*idx % sizes.len()];
            *idx += 1;
            s.max(1)
        };
        let n = want.min(rest.len()).min(u16::MAX as usize);
        out.extend_from_slice(&faketls::record_header(n as u16));
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The sending half of a test client.
pub struct ClientTx {
    stream: TcpStream,
    enc: AesCtr,
    tls: bool,
    sizes: Vec<usize>,
    size_idx: usize,
}

impl ClientTx {
    /// Encrypts and sends `data` (inside application-data records for FakeTLS).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut plain = data.to_vec();
        self.enc.apply_keystream(&mut plain);
        if self.tls {
            let framed = app_records(&plain, &self.sizes, &mut self.size_idx);
            self.stream.write_all(&framed)
        } else {
            self.stream.write_all(&plain)
        }
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }
}

/// The receiving half of a test client: de-frames (FakeTLS) and decrypts.
pub struct ClientRx {
    stream: TcpStream,
    dec: AesCtr,
    tls: bool,
    /// Raw bytes received and not yet consumed by the deframer.
    raw: Vec<u8>,
    /// Payload bytes left in the current record.
    remaining: usize,
    /// Decrypted bytes not yet returned.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Number of records received and the largest payload seen.
    pub records: u64,
    pub max_record: usize,
    /// Payload size of each record received (the first 4096).
    pub sizes: Vec<usize>,
    /// When each record's header arrived (the first 4096).
    pub arrivals: Vec<Instant>,
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

impl ClientRx {
    /// Reads some plaintext into `out`; 0 at EOF.
    pub fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_pos < self.plain.len() {
                let n = out.len().min(self.plain.len() - self.plain_pos);
                out[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                if self.plain_pos == self.plain.len() {
                    self.plain.clear();
                    self.plain_pos = 0;
                }
                return Ok(n);
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = loop {
                match self.stream.read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                if self.tls && (self.remaining > 0 || !self.raw.is_empty()) {
                    return Err(bad_data(format!(
                        "EOF inside a TLS record ({} payload bytes missing, {} header bytes)",
                        self.remaining,
                        self.raw.len()
                    )));
                }
                return Ok(0);
            }
            self.absorb(&buf[..n])?;
        }
    }

    fn absorb(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.tls {
            let mut d = data.to_vec();
            self.dec.apply_keystream(&mut d);
            self.plain.extend_from_slice(&d);
            return Ok(());
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(rest.len());
                let mut d = rest[..n].to_vec();
                self.dec.apply_keystream(&mut d);
                self.plain.extend_from_slice(&d);
                self.remaining -= n;
                rest = &rest[n..];
                continue;
            }
            let need = 5 - self.raw.len();
            let n = need.min(rest.len());
            self.raw.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.raw.len() == 5 {
                let h = [
                    self.raw[0],
                    self.raw[1],
                    self.raw[2],
                    self.raw[3],
                    self.raw[4],
                ];
                self.raw.clear();
                if h[0..3] != [0x17, 0x03, 0x03] {
                    return Err(bad_data(format!(
                        "proxy sent a record header {h:02x?}, want 17 03 03"
                    )));
                }
                let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
                if len > MAX_RECORD_PAYLOAD {
                    return Err(bad_data(format!(
                        "proxy sent a {len}-byte record payload (max {MAX_RECORD_PAYLOAD})"
                    )));
                }
                self.records += 1;
                self.max_record = self.max_record.max(len);
                if self.sizes.len() < 4096 {
                    self.sizes.push(len);
                    self.arrivals.push(Instant::now());
                }
                self.remaining = len;
            }
        }
        Ok(())
    }

    /// Reads exactly `n` plaintext bytes.
    pub fn recv_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let m = self.recv(&mut out[got..])?;
            if m == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {n} bytes"),
                ));
            }
            got += m;
        }
        Ok(out)
    }

    /// Reads until EOF, checking everything against `p`; returns the byte count. On mismatch,
    /// an error naming the first differing offset.
    pub fn recv_check_to_eof(&mut self, p: &mut Pattern, limit: u64) -> io::Result<u64> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            p.check(&buf[..n])
                .map_err(|at| bad_data(format!("received data differs at offset {at}")))?;
            total += n as u64;
            if total > limit {
                return Err(bad_data(format!("more than {limit} bytes received")));
            }
        }
    }

    /// Expects EOF now (no more plaintext).
    pub fn expect_eof(&mut self) -> io::Result<()> {
        let mut b = [0u8; 1];
        match self.recv(&mut b)? {
            0 => Ok(()),
            _ => Err(bad_data("expected EOF, got data".into())),
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }
}

/// A client of the proxy, after a successful handshake.
pub struct TestClient {
    pub tx: ClientTx,
    pub rx: ClientRx,
    /// Length of the FakeTLS server flight (0 otherwise).
    pub flight_len: usize,
}

impl TestClient {
    /// Connects to `proxy` and performs the handshake for `secret` with `opts`.
    pub fn connect(
        proxy: SocketAddr,
        secret: &Secret,
        opts: &ClientOpts,
    ) -> io::Result<TestClient> {
        let stream = connect(proxy)?;
        TestClient::handshake(stream, secret, opts)
    }

    /// Performs the handshake on an already connected stream.
    pub fn handshake(
        mut stream: TcpStream,
        secret: &Secret,
        opts: &ClientOpts,
    ) -> io::Result<TestClient> {
        let key = opts.key.unwrap_or(secret.key);
        let mut rng = XorShift64(opts.seed);
        let tls = secret.kind == SecretKind::FakeTls;
        let (frame, mut enc, dec) = obfs2::client_frame(&mut rng, &key, opts.tag, opts.dc);
        let mut early = opts.early.clone();
        enc.apply_keystream(&mut early);
        let mut size_idx = 0;
        let mut flight_len = 0;
        let mut leftover = Vec::new();
        if tls {
            let hello = faketls::build_client_hello(
                &mut rng,
                &key,
                &secret.host,
                opts.hello_time.unwrap_or_else(unix_now),
            );
            let client_random: [u8; 32] = hello[11..43].try_into().expect("32 bytes");
            let mut first = if opts.hello_records > 1 {
                split_hello_records(&hello, opts.hello_records)
            } else {
                hello.clone()
            };
            let mut after = Vec::new();
            if opts.ccs_first {
                after.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
            }
            after.extend_from_slice(&app_records(&frame, &opts.record_sizes, &mut size_idx));
            after.extend_from_slice(&app_records(&early, &opts.record_sizes, &mut size_idx));
            if opts.frame_with_hello {
                first.extend_from_slice(&after);
                after.clear();
            }
            match opts.hello_tcp_split {
                Some((at, pause)) => {
                    stream.write_all(&first[..at])?;
                    stream.flush()?;
                    std::thread::sleep(pause);
                    stream.write_all(&first[at..])?;
                }
                None => stream.write_all(&first)?,
            }
            // Read and verify the server flight.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match faketls::verify_server_flight(&got, &client_random, &key) {
                    Ok(Some(len)) => {
                        flight_len = len;
                        leftover = got[len..].to_vec();
                        break;
                    }
                    Ok(None) => {}
                    Err(r) => {
                        return Err(bad_data(format!(
                            "bad server flight ({r:?}) after {} bytes",
                            got.len()
                        )));
                    }
                }
                if got.len() > 32 * 1024 {
                    return Err(bad_data("server flight longer than 32 KiB".into()));
                }
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("EOF after {} bytes of the server flight", got.len()),
                    ));
                }
                got.extend_from_slice(&buf[..n]);
            }
            if !after.is_empty() {
                stream.write_all(&after)?;
            }
        } else {
            stream.write_all(&[&frame[..], &early].concat())?;
        }
        let tx_stream = stream.try_clone()?;
        let mut rx = ClientRx {
            stream,
            dec,
            tls,
            raw: Vec::new(),
            remaining: 0,
            plain: Vec::new(),
            plain_pos: 0,
            records: 0,
            max_record: 0,
            sizes: Vec::new(),
            arrivals: Vec::new(),
        };
        if !leftover.is_empty() {
            rx.absorb(&leftover)?;
        }
        Ok(TestClient {
            tx: ClientTx {
                stream: tx_stream,
                enc,
                tls,
                sizes: opts.record_sizes.clone(),
                size_idx,
            },
            rx,
            flight_len,
        })
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.tx.send(data)
    }

    pub fn recv_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.rx.recv_exact(n)
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        self.tx.shutdown_write()
    }

    /// Splits into halves usable from two threads.
    pub fn split(self) -> (ClientTx, ClientRx) {
        (self.tx, self.rx)
    }

    /// Sends `data` from a helper thread while receiving the same number of bytes; returns
    /// what was received (for echo round trips larger than socket buffers).
    pub fn echo_round_trip(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let tx = &mut self.tx;
        let rx = &mut self.rx;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                for chunk in data.chunks(40_000) {
                    tx.send(chunk)?;
                }
                Ok::<(), io::Error>(())
            });
            let got = rx.recv_exact(data.len());
            let sent = h.join().expect("sender thread panicked");
            sent?;
            got
        })
    }
}

// ------------------------------------------------------------------------------------------
// DNS over TLS / HTTPS test server (tests/data/dns/tls_server.py: Python's ssl = OpenSSL).

/// A program on `PATH` (or in the usual sbin directories).
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A DoT + DoH server on 127.0.0.1, killed on drop.
pub struct TlsDns {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// DNS over TLS (length-prefixed messages).
    pub dot: SocketAddr,
    /// DNS over HTTPS (`GET /dns-query?dns=`).
    pub doh: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl TlsDns {
    /// Questions answered so far, as `"<dot|doh> <name> <A|AAAA>"`.
    pub fn queries(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for TlsDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A program a test needs. Missing: the test fails (it never skips) with the install command.
pub fn require_tool(tool: &str) -> std::path::PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` not found (PATH, /usr/sbin, /usr/local/sbin, /sbin): install what the tests \
             need with `scripts/test-deps.sh --system` as root (`make test` runs it)"
        )
    })
}

/// Starts the DoT/DoH server answering `names` (`(name, ip)`; NXDOMAIN otherwise). Needs
/// `python3` and `openssl`: without them the test fails, naming the install command.
pub fn tls_dns_server(names: &[(&str, &str)]) -> TlsDns {
    use std::process::{Command, Stdio};
    let (python, dir) = test_certificate("tlsdns");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dns/tls_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .args(names.iter().map(|(n, ip)| format!("{n}={ip}")))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tls_server.py");
    let mut out = io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    io::BufRead::read_line(&mut out, &mut line).expect("ports");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in io::BufRead::lines(out).map_while(Result::ok) {
            sink.lock().expect("log").push(l);
        }
    });
    let ports: Vec<u16> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(ports.len(), 2, "tls_server.py printed {line:?}");
    TlsDns {
        child,
        dir,
        dot: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        doh: SocketAddr::from(([127, 0, 0, 1], ports[1])),
        log,
    }
}

// ------------------------------------------------------------------------------------------
// Static HTTPS server (tests/data/tgconfig/https_server.py: Python's ssl = OpenSSL).

/// A static HTTPS server on 127.0.0.1, killed on drop.
pub struct HttpsFiles {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl HttpsFiles {
    /// Requests served so far, as `"GET /path"`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Replaces the content served at `/name`.
    pub fn set(&self, name: &str, body: &[u8]) {
        std::fs::write(self.dir.join(name), body).expect("write served file");
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a self-signed certificate (`cert.pem`, `key.pem`) in a fresh temporary directory;
/// returns python3 and the directory. Without python3 or openssl the test fails, naming the
/// install command.
fn test_certificate(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::process::{Command, Stdio};
    let (python, openssl) = (require_tool("python3"), require_tool("openssl"));
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mtpx-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ok = Command::new(&openssl)
        .args(["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=test"])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl could not make a certificate");
    (python, dir)
}

/// Serves `files` (`(name, content)`) at `/name` over HTTPS (needs python3 and openssl, as
/// [`tls_dns_server`]).
pub fn https_file_server(files: &[(&str, &[u8])]) -> HttpsFiles {
    use std::process::{Command, Stdio};
    let (python, dir) = test_certificate("https");
    for (name, body) in files {
        std::fs::write(dir.join(name), body).expect("write served file");
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tgconfig/https_server.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .args(
            files
                .iter()
                .map(|(n, _)| format!("{n}={}", dir.join(n).display())),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start https_server.py");
    let mut out = io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    io::BufRead::read_line(&mut out, &mut line).expect("port");
    let port: u16 = line
        .trim()
        .parse()
        .expect("https_server.py printed its port");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in io::BufRead::lines(out).map_while(Result::ok) {
            sink.lock().expect("log").push(l);
        }
    });
    HttpsFiles {
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    }
}

// ------------------------------------------------------------------------------------------
// Prometheus scrapes.

/// GETs `path` from a metrics endpoint; returns (status line, body).
pub fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = connect(addr).expect("connect to metrics");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample line `series` (name with labels exactly as exposed).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(n, _)| *n == series))
        .and_then(|(_, v)| v.parse().ok())
}
