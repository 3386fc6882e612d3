//! The floors: the simplest blocking proxy that the bench client and the fake DCs accept, so
//! that mtpx's CPU can be divided by what any userspace relay of the same bytes must spend.
//!
//! ```text
//! mtpx-bench floor <key-hex> <host> <dc-port>...     (internal: one floor process)
//!   -> "listening <port>"
//! mode hs | mode relay   -> "ok"        (how the next connections are served, see below)
//! cpu                    -> "cpu <thread_ns> <user_ns> <connections> <errors>"
//! ```
//!
//! A fixed set of threads blocks in `accept` on one listener (no thread is created per
//! handshake). Each connection, on the thread that accepted it:
//!
//! 1. reads the ClientHello, checks its HMAC-SHA256 (mtpx's `verify_client_hello`), writes a
//!    server flight of the size mtpx writes (same template and noise length; the random is the
//!    HMAC the client checks; the key share is a constant: no X25519);
//! 2. reads the obfuscated2 frame (SHA-256 key derivation), connects to the fake DC (blocking),
//!    writes its own 64-byte frame and the client's first bytes, re-encrypted, in one write;
//! 3. relays: DC→client reads up to 16 KiB less the 5-byte record header room, applies
//!    AES-256-CTR twice (decrypt with one stream, encrypt with the other; the `aes`/`ctr` crates
//!    mtpx uses, expanded once per connection, built at opt-level 3) and writes header + payload
//!    in one `write`; client→DC reads up to 16 KiB, finds the record payloads (no copy),
//!    applies AES twice to each and writes them with one `writev`. EOF is passed on with
//!    `shutdown(Write)`; the connection is closed when both directions ended.
//!
//! `mode hs`: the thread relays DC→client until the DC's EOF, then client→DC until the client's
//! EOF (a handshake's one answer byte, then the close). `mode relay`: client→DC runs on a
//! second thread (spawned per connection) while the accepting thread relays DC→client.
//!
//! CPU is thread CPU (`CLOCK_THREAD_CPUTIME_ID`, user + kernel) of every thread that served
//! connections, published by each thread when it is back in `accept` and summed on `cpu` once
//! no connection is open. The user part is the process's `utime` of `/proc/self/stat` (a
//! thread's own user/system split rests on too few clock ticks to mean anything; the process
//! total matches the thread sum, checked against `/proc/<pid>/task/*/schedstat`).

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aes::cipher::StreamCipher;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls::{self, HelloRead};
use mtpx::proto::obfs2::{self, AesCtr};
use mtpx::proto::tlsprofile::FlightShape;

use crate::common::{seed, thread_cpu};

/// Threads blocking in `accept` (one per concurrent connection; the handshake load has 256).
const THREADS: usize = 288;
/// Relay buffer, as mtpx's default `buffer_size`.
const BUF: usize = 16 * 1024;
/// Record header length.
const HDR: usize = faketls::RECORD_HEADER_LEN;
/// The DC ids mtpx's bench instance overrides, in the order the fake DC ports are dealt.
const DC_IDS: [i16; 6] = [1, 2, 3, 4, 5, 203];
/// Stands in for the X25519 key share (the floor computes none).
const KEY_SHARE: [u8; 32] = [0x42; 32];

struct Shared {
    listener: TcpListener,
    key: [u8; 16],
    host: String,
    dcs: Vec<u16>,
    shape: FlightShape,
    /// Second thread per connection for client→DC.
    relay_mode: AtomicBool,
    active: AtomicUsize,
    served: AtomicU64,
    errors: AtomicU64,
    /// Per accepting thread: its CPU so far (ns), published when idle.
    published: Vec<AtomicU64>,
    /// CPU of the finished client→DC threads (ns).
    extra: AtomicU64,
}

pub fn run(args: &[String]) -> io::Result<()> {
    crate::die_with_parent();
    let bad = || io::Error::other("usage: floor <key-hex> <host> <dc-port>...");
    let hex = args.first().ok_or_else(bad)?;
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    let host = args.get(1).ok_or_else(bad)?.clone();
    let dcs: Vec<u16> = args[2..].iter().filter_map(|p| p.parse().ok()).collect();
    if dcs.is_empty() {
        return Err(bad());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // As mtpx: TCP_NODELAY once on the listener, inherited by accepted sockets.
    set_nodelay(&listener);
    let port = listener.local_addr()?.port();
    let sh = Arc::new(Shared {
        listener,
        key,
        host,
        dcs,
        shape: FlightShape::default(),
        relay_mode: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        published: (0..THREADS).map(|_| AtomicU64::new(0)).collect(),
        extra: AtomicU64::new(0),
    });
    for i in 0..THREADS {
        let sh = sh.clone();
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || accept_loop(&sh, i))?;
    }
    let mut out = io::stdout();
    writeln!(out, "listening {port}")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line?;
        let answer = match line.trim() {
            "mode hs" => {
                sh.relay_mode.store(false, Ordering::SeqCst);
                "ok".to_string()
            }
            "mode relay" => {
                sh.relay_mode.store(true, Ordering::SeqCst);
                "ok".to_string()
            }
            "cpu" => {
                // Connections still closing on our side (the client saw its EOF first).
                let deadline = Instant::now() + Duration::from_secs(10);
                while sh.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(20));
                let ns = sh.extra.load(Ordering::SeqCst)
                    + sh.published
                        .iter()
                        .map(|a| a.load(Ordering::SeqCst))
                        .sum::<u64>();
                let user = crate::common::proc_cpu_split(std::process::id())
                    .map_or(0, |(u, _)| (u * 1e9) as u64);
                format!(
                    "cpu {ns} {user} {} {}",
                    sh.served.load(Ordering::SeqCst),
                    sh.errors.load(Ordering::SeqCst)
                )
            }
            "" | "quit" => break,
            other => format!("error unknown command {other}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn set_nodelay(l: &TcpListener) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor we own, with a pointer to a local c_int.
    unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// CPU time of the calling thread, in ns.
fn thread_ns() -> u64 {
    (thread_cpu() * 1e9) as u64
}

fn accept_loop(sh: &Shared, i: usize) {
    let mut rng = XorShift64(seed());
    let mut buf = vec![0u8; BUF];
    let mut runs = Vec::with_capacity(64);
    loop {
        sh.published[i].store(thread_ns(), Ordering::SeqCst);
        let Ok((c, _)) = sh.listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        sh.active.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = serve(sh, c, &mut rng, &mut buf, &mut runs) {
            if sh.errors.fetch_add(1, Ordering::SeqCst) < 3 {
                eprintln!("floor: {e}");
            }
        }
        sh.served.fetch_add(1, Ordering::SeqCst);
        sh.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn serve(
    sh: &Shared,
    mut c: TcpStream,
    rng: &mut XorShift64,
    buf: &mut [u8],
    runs: &mut Vec<(usize, usize)>,
) -> io::Result<()> {
    let bad = |what: &str| io::Error::other(what.to_string());
    // 1. ClientHello → HMAC check → server flight.
    let mut scratch = [0u8; 2048];
    let mut have = 0;
    let (consumed, msg_len) = loop {
        let n = read_some(&mut c, &mut buf[have..2048])?;
        if n == 0 {
            return Err(bad("EOF in the hello"));
        }
        have += n;
        match faketls::read_client_hello(&buf[..have], &mut scratch) {
            HelloRead::NeedMore if have < 2048 => {}
            HelloRead::Complete { consumed, msg_len } => break (consumed, msg_len),
            _ => return Err(bad("bad hello")),
        }
    };
    if consumed != have {
        return Err(bad("bytes after the hello"));
    }
    let msg = &scratch[..msg_len];
    let hello = faketls::parse_client_hello(msg).map_err(|r| bad(r.as_str()))?;
    faketls::verify_client_hello(&hello, msg, &sh.key, sh.host.as_bytes(), unix_now(), 3600)
        .map_err(|r| bad(r.as_str()))?;
    let noise = sh.shape.noise_len(rng);
    let mut flight = [0u8; 8192];
    let n = faketls::write_server_hello_as(
        &mut flight,
        &hello,
        &sh.key,
        rng,
        &sh.shape.template,
        noise,
        &KEY_SHARE,
    );
    c.write_all(&flight[..n])?;

    // 2. The obfuscated2 frame (and whatever follows it) in application-data records.
    let mut records = Deframer::default();
    let mut plen = 0;
    while plen < obfs2::FRAME_LEN {
        let n = read_some(&mut c, &mut buf[plen..])?;
        if n == 0 {
            return Err(bad("EOF before the frame"));
        }
        records.walk(&buf[plen..plen + n], runs);
        let mut w = plen;
        for &(a, b) in runs.iter() {
            buf.copy_within(plen + a..plen + b, w);
            w += b - a;
        }
        plen = w;
    }
    let mut frame = [0u8; obfs2::FRAME_LEN];
    frame.copy_from_slice(&buf[..obfs2::FRAME_LEN]);
    let hs = obfs2::client_handshake(&frame, &sh.key).map_err(|r| bad(r.as_str()))?;
    let dch = obfs2::dc_handshake(rng, hs.tag, hs.dc);
    let mut client_dec = hs.decrypt.expand();
    let client_enc = hs.encrypt.expand();
    let mut dc_enc = dch.encrypt.expand();
    let dc_dec = dch.decrypt.expand();
    let early = &mut buf[obfs2::FRAME_LEN..plen];
    client_dec.apply_keystream(early);
    dc_enc.apply_keystream(early);
    buf[..obfs2::FRAME_LEN].copy_from_slice(&dch.frame);
    let at = DC_IDS.iter().position(|&d| d == hs.dc.abs()).unwrap_or(0);
    let port = sh.dcs[at % sh.dcs.len()];
    let mut dc = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    dc.set_nodelay(true)?;
    dc.write_all(&buf[..plen])?;

    // 3. Relay.
    let up = Up {
        src: c.try_clone()?,
        dst: dc.try_clone()?,
        dec: client_dec,
        enc: dc_enc,
        records,
    };
    let down = Down {
        src: dc,
        dst: c,
        dec: dc_dec,
        enc: client_enc,
    };
    if sh.relay_mode.load(Ordering::SeqCst) {
        std::thread::scope(|s| {
            let t = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    let mut b = vec![0u8; BUF];
                    let mut r = Vec::with_capacity(64);
                    let res = up.run(&mut b, &mut r);
                    sh.extra.fetch_add(thread_ns(), Ordering::SeqCst);
                    res
                })?;
            let d = down.run(buf);
            let u = t
                .join()
                .unwrap_or_else(|_| Err(bad("relay thread panicked")));
            d.and(u)
        })
    } else {
        down.run(buf)?;
        up.run(buf, runs)
    }
}

/// Payload positions of client records, across reads (no copy, every record is data).
#[derive(Default)]
struct Deframer {
    hdr: [u8; HDR],
    have: usize,
    left: usize,
}

impl Deframer {
    /// The payload ranges of `data` (a new read), in order, into `runs`.
    fn walk(&mut self, data: &[u8], runs: &mut Vec<(usize, usize)>) {
        runs.clear();
        let mut p = 0;
        while p < data.len() {
            if self.left > 0 {
                let n = self.left.min(data.len() - p);
                runs.push((p, p + n));
                p += n;
                self.left -= n;
            } else {
                self.hdr[self.have] = data[p];
                self.have += 1;
                p += 1;
                if self.have == HDR {
                    self.have = 0;
                    self.left = usize::from(u16::from_be_bytes([self.hdr[3], self.hdr[4]]));
                }
            }
        }
    }
}

/// client → DC: records in, payload out.
struct Up {
    src: TcpStream,
    dst: TcpStream,
    dec: AesCtr,
    enc: AesCtr,
    records: Deframer,
}

impl Up {
    fn run(mut self, buf: &mut [u8], runs: &mut Vec<(usize, usize)>) -> io::Result<()> {
        let buf = &mut buf[..BUF];
        loop {
            let n = read_some(&mut self.src, buf)?;
            if n == 0 {
                let _ = self.dst.shutdown(Shutdown::Write);
                return Ok(());
            }
            self.records.walk(&buf[..n], runs);
            for &(a, b) in runs.iter() {
                self.dec.apply_keystream(&mut buf[a..b]);
                self.enc.apply_keystream(&mut buf[a..b]);
            }
            for chunk in runs.chunks(64) {
                let mut ios = [IoSlice::new(&[]); 64];
                for (io, &(a, b)) in ios.iter_mut().zip(chunk) {
                    *io = IoSlice::new(&buf[a..b]);
                }
                let mut ios = &mut ios[..chunk.len()];
                while !ios.is_empty() {
                    match self.dst.write_vectored(ios) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(w) => IoSlice::advance_slices(&mut ios, w),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// DC → client: payload in, records out (header room kept in front of each read).
struct Down {
    src: TcpStream,
    dst: TcpStream,
    dec: AesCtr,
    enc: AesCtr,
}

impl Down {
    fn run(mut self, buf: &mut [u8]) -> io::Result<()> {
        let buf = &mut buf[..BUF];
        loop {
            let n = read_some(&mut self.src, &mut buf[HDR..])?;
            if n == 0 {
                let _ = self.dst.shutdown(Shutdown::Write);
                return Ok(());
            }
            buf[..HDR].copy_from_slice(&faketls::record_header(n as u16));
            let data = &mut buf[HDR..HDR + n];
            self.dec.apply_keystream(data);
            self.enc.apply_keystream(data);
            self.dst.write_all(&buf[..HDR + n])?;
        }
    }
}
