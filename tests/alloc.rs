//! Steady-state relaying allocates nothing: a counting global allocator watches the proxy's
//! worker threads (OS thread name `mtpx-worker-*`) while FakeTLS connections that finished
//! their handshakes relay many packets both ways. The count must be exactly zero.
//!
//! Classification never allocates: the thread name is read with `prctl(PR_GET_NAME)` into a
//! stack buffer, and the answer is cached in a `const` thread-local `Cell` (no destructor, no
//! lazy allocation). Outside the measuring window the allocator only forwards to `System`.
//! On failure the test prints a backtrace of the first few counted allocations (captured with
//! a re-entrancy guard, so the capture's own allocations are not counted).
//!
//! Everything stays on 127.0.0.1; every socket has timeouts and every wait a deadline.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::StreamCipher;
use mtpx::config::Config;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls::{self, RecordReader};
use mtpx::proto::obfs2::{self, AesCtr, Tag};
use mtpx::proto::secret::{Secret, SecretKind};

// ------------------------------------------------------------------------------------------
// The counting allocator

struct Counting;

/// Counting is on (the measuring window).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Allocations (alloc, alloc_zeroed, realloc) by `mtpx-worker-*` threads while armed.
static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static WORKER_BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations by any other thread while armed (informational).
static OTHER_ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Backtraces of the first counted worker allocations.
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
const MAX_TRACES: usize = 3;

thread_local! {
    /// 0 = not known yet or not a worker (checked again: the OS name is set after the thread
    /// starts), 1 = a worker.
    static IS_WORKER: Cell<u8> = const { Cell::new(0) };
    /// Inside the allocator's own bookkeeping (backtrace capture): forward only.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the OS name of the current thread starts with `mtpx-worker-` (no allocation).
fn os_name_is_worker() -> bool {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL-terminated) into the buffer we pass.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            name.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    r == 0 && name.starts_with(b"mtpx-worker-")
}

fn is_worker() -> bool {
    IS_WORKER
        .try_with(|c| {
            if c.get() == 1 {
                return true;
            }
            let yes = os_name_is_worker();
            if yes {
                c.set(1);
            }
            yes
        })
        .unwrap_or(false)
}

fn count(size: usize) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let busy = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
    if busy {
        return;
    }
    if is_worker() {
        let n = WORKER_ALLOCS.fetch_add(1, Ordering::SeqCst);
        WORKER_BYTES.fetch_add(size as u64, Ordering::SeqCst);
        if (n as usize) < MAX_TRACES {
            // Allocates, but BUSY makes those allocations pass through uncounted.
            let bt = std::backtrace::Backtrace::force_capture();
            let text = format!("allocation of {size} bytes on a worker thread:\n{bt}");
            if let Ok(mut t) = TRACES.lock() {
                t.push(text);
            }
        }
    } else {
        OTHER_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    let _ = BUSY.try_with(|b| b.set(false));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only atomics,
// const thread-locals and (re-entrantly guarded) a mutex.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn arm() {
    WORKER_ALLOCS.store(0, Ordering::SeqCst);
    WORKER_BYTES.store(0, Ordering::SeqCst);
    OTHER_ALLOCS.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

fn disarm() -> u64 {
    ARMED.store(false, Ordering::SeqCst);
    WORKER_ALLOCS.load(Ordering::SeqCst)
}

// ------------------------------------------------------------------------------------------
// Loopback harness

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const HOST: &str = "www.example.com";

fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    let _ = s.set_nodelay(true);
}

/// A fake DC that echoes every plaintext byte back (decrypt with the proxy→DC stream,
/// encrypt with the DC→proxy stream). Its loop reuses one buffer.
fn fake_dc() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind fake DC");
    let addr = l.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("fake-dc".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    timeouts(&s);
                    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
                    let mut frame = [0u8; 64];
                    if s.read_exact(&mut frame).is_err() {
                        return;
                    }
                    let Ok((_, _, mut dec, mut enc)) = obfs2::dc_accept(&frame) else {
                        return;
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        dec.apply_keystream(&mut buf[..n]);
                        enc.apply_keystream(&mut buf[..n]);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        })
        .expect("spawn fake DC");
    addr
}

/// A FakeTLS client after its handshake, with preallocated buffers.
struct Client {
    s: TcpStream,
    enc: AesCtr,
    dec: AesCtr,
    rr: RecordReader,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Client {
    fn connect(proxy: SocketAddr, secret: &Secret, seed: u64) -> Client {
        Client::connect_tag(proxy, secret, seed, Tag::Padded)
    }

    fn connect_tag(proxy: SocketAddr, secret: &Secret, seed: u64, tag: Tag) -> Client {
        let mut rng = XorShift64(seed);
        let mut s = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).expect("connect proxy");
        timeouts(&s);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let hello = faketls::build_client_hello(&mut rng, &secret.key, HOST, now);
        s.write_all(&hello).expect("send hello");
        let mut random = [0u8; 32];
        random.copy_from_slice(&hello[11..43]);
        let mut flight = vec![0u8; 16 * 1024];
        let mut have = 0;
        loop {
            let n = s.read(&mut flight[have..]).expect("read server flight");
            assert!(n > 0, "proxy closed during the handshake");
            have += n;
            match faketls::verify_server_flight(&flight[..have], &random, &secret.key) {
                Ok(Some(total)) => {
                    assert_eq!(total, have, "bytes after the server flight");
                    break;
                }
                Ok(None) => {}
                Err(r) => panic!("bad server flight: {r}"),
            }
        }
        let (frame, enc, dec) = obfs2::client_frame(&mut rng, &secret.key, tag, 2);
        let mut first = faketls::record_header(64).to_vec();
        first.extend_from_slice(&frame);
        s.write_all(&first).expect("send frame");
        Client {
            s,
            enc,
            dec,
            rr: RecordReader::new(),
            out: Vec::with_capacity(1 << 20),
            inbuf: vec![0u8; 64 * 1024],
        }
    }

    /// Sends `data` (encrypted) in records of at most `record` payload bytes, then reads the
    /// echo and checks it. Allocation-free once `out` has grown.
    fn round_trip(&mut self, data: &[u8], record: usize, check: &mut [u8]) {
        self.out.clear();
        for chunk in data.chunks(record) {
            self.out
                .extend_from_slice(&faketls::record_header(chunk.len() as u16));
            let at = self.out.len();
            self.out.extend_from_slice(chunk);
            self.enc.apply_keystream(&mut self.out[at..]);
        }
        self.s.write_all(&self.out).expect("send");
        let mut got = 0;
        while got < data.len() {
            let n = self.s.read(&mut self.inbuf).expect("read echo");
            assert!(n > 0, "proxy closed the connection");
            let m = self
                .rr
                .deframe_in_place(&mut self.inbuf[..n])
                .expect("records from the proxy");
            assert!(got + m <= data.len(), "more bytes than sent came back");
            self.dec.apply_keystream(&mut self.inbuf[..m]);
            check[got..got + m].copy_from_slice(&self.inbuf[..m]);
            got += m;
        }
        assert!(check[..data.len()] == *data, "echo differs");
    }
}

fn worker_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("mtpx-worker-"))
        })
        .count()
}

/// The counter is global: the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn steady_state_relay_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The counter itself works: a thread with a worker's name is seen, others are not.
    arm();
    std::thread::Builder::new()
        .name("mtpx-worker-selftest".into())
        .spawn(|| std::hint::black_box(Box::new([0u8; 100])))
        .expect("spawn")
        .join()
        .expect("join");
    let seen = disarm();
    assert!(
        seen >= 1,
        "the allocator did not see a worker-named thread allocate"
    );
    TRACES.lock().expect("traces").clear();

    let dc = fake_dc();
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let secret = Secret::generate(SecretKind::FakeTls, HOST, &mut XorShift64(77));
    let mut cfg = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret.clone());
    cfg.workers = 2;
    // Traffic shaping on: its timers run on the workers too (mtg's gaps, 4 MiB/s floor).
    cfg.doppelganger.delays = true;
    cfg.domain_fronting.ip = Some(refused.ip());
    cfg.domain_fronting.port = refused.port();
    cfg.dc_overrides = [1i16, 2, 3, 4, 5, 203]
        .iter()
        .flat_map(|&id| [(id, vec![dc]), (-id, vec![dc])])
        .collect();
    let proxy = mtpx::io::start(cfg).expect("start proxy");
    let addr = proxy.local_addr();
    // The OS names are set by the threads themselves as they start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker_threads() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(worker_threads(), 2, "expected two mtpx-worker-* threads");

    // Several connections, so both workers likely serve some; all handshakes done up front.
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client::connect(addr, &secret, 1000 + i))
        .collect();

    // Deterministic payloads of many sizes (1 byte .. 40 KB), record sizes of a real stack.
    let mut rng = XorShift64(5);
    let mut data = vec![0u8; 64 * 1024];
    mtpx::proto::Rng::fill(&mut rng, &mut data);
    let mut check = vec![0u8; data.len()];
    let sizes: Vec<usize> = (0..64)
        .map(|i| match i % 8 {
            0 => 1,
            1 => 63,
            2 => 1400,
            3 => 4096,
            4 => 16379,
            5 => 16384 + 7,
            6 => 300,
            _ => 40_000,
        })
        .collect();
    let records = [16379usize, 1, 517, 1400, 4096, 16384];

    let mut run = |clients: &mut Vec<Client>, rounds: usize| {
        let mut moved = 0u64;
        for r in 0..rounds {
            for (k, c) in clients.iter_mut().enumerate() {
                let n = sizes[(r + k) % sizes.len()];
                let rec = records[(r + 3 * k) % records.len()];
                // 1-byte records only for small payloads (keep the test fast).
                let rec = if rec == 1 && n > 64 { 16379 } else { rec };
                c.round_trip(&data[..n], rec, &mut check);
                moved += 2 * n as u64;
            }
        }
        moved
    };

    // Warm up: every buffer of the pool path, every record shape, sweeps.
    run(&mut clients, 16);
    std::thread::sleep(Duration::from_millis(600));

    // Measure: steady-state relaying both ways, long enough for a few timer sweeps.
    let t0 = Instant::now();
    arm();
    let mut moved = 0;
    let mut rounds = 0;
    while rounds < 100_000 && (rounds < 32 || t0.elapsed() < Duration::from_millis(1500)) {
        moved += run(&mut clients, 8);
        rounds += 8;
        if t0.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let allocs = disarm();
    let bytes = WORKER_BYTES.load(Ordering::SeqCst);
    let others = OTHER_ALLOCS.load(Ordering::SeqCst);
    eprintln!(
        "relayed {} MiB in {} round trips x {} connections over {:?}: worker allocations {allocs} \
         ({bytes} bytes), other threads {others}",
        moved >> 20,
        rounds,
        clients.len(),
        t0.elapsed()
    );
    let traces = TRACES.lock().map(|t| t.join("\n\n")).unwrap_or_default();
    assert_eq!(
        allocs, 0,
        "the proxy's worker threads allocated {allocs} times ({bytes} bytes) while relaying:\n{traces}"
    );

    for c in clients.drain(..) {
        let _ = c.s.shutdown(std::net::Shutdown::Write);
    }
    proxy.shutdown();
}

// ------------------------------------------------------------------------------------------
// Through a middle proxy (ad tag)

/// The Python fake middle proxy (tests/interop/fake_me.py) relaying to `dc`; its events are
/// drained by a thread of its own (not a worker: not counted). Killed on drop.
struct FakeMe {
    child: std::process::Child,
    addr: SocketAddr,
}

impl FakeMe {
    fn start(secret_file: &std::path::Path, dc: SocketAddr, ad_tag: &str) -> FakeMe {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/fake_me.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg("--secret-file")
            .arg(secret_file)
            .args(["--dc", &dc.to_string(), "--ad-tag", ad_tag])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start fake_me.py (python3)");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        assert!(line.contains("\"listening\""), "fake_me.py: {line:?}");
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().trim_end_matches('}').trim().parse().ok())
            .expect("port");
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                assert!(!sink.contains("\"error\""), "fake_me.py: {sink}");
                sink.clear();
            }
        });
        FakeMe {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for FakeMe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Steady-state relaying through a middle proxy allocates nothing either: the RPC codec works
/// in pool buffers (the client's bytes in one, the encrypted requests in a second), its state
/// in the connection's box taken at the handshake.
#[test]
fn steady_state_middle_proxy_relay_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dc = fake_dc();
    let dir = std::env::temp_dir().join(format!("mtpx-alloc-me-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret_file = dir.join("proxy-secret");
    let mut proxy_secret = [0u8; 128];
    mtpx::proto::Rng::fill(&mut XorShift64(9), &mut proxy_secret);
    std::fs::write(&secret_file, proxy_secret).expect("write secret");
    let ad_tag = "0123456789abcdef0123456789abcdef";
    let me = FakeMe::start(&secret_file, dc, ad_tag);
    let tg = dir.join("proxy-config");
    std::fs::write(&tg, format!("default 2;\nproxy_for 2 {};\n", me.addr)).expect("write");
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let secret = Secret::generate(SecretKind::FakeTls, HOST, &mut XorShift64(78));
    let mut cfg = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret.clone());
    cfg.workers = 2;
    cfg.domain_fronting.ip = Some(refused.ip());
    cfg.domain_fronting.port = refused.port();
    // Direct relaying would find nothing: only the middle proxy leads to the DC.
    cfg.dc_overrides = [1i16, 2, 3, 4, 5, 203]
        .iter()
        .flat_map(|&id| [(id, vec![refused]), (-id, vec![refused])])
        .collect();
    let mut tag = [0u8; 16];
    for (i, b) in tag.iter_mut().enumerate() {
        *b = u8::from_str_radix(&ad_tag[2 * i..2 * i + 2], 16).expect("hex");
    }
    cfg.ad_tag = Some(tag);
    cfg.proxy_config_files = vec![tg.display().to_string()];
    cfg.proxy_secret_file = Some(secret_file.display().to_string());
    let proxy = mtpx::io::start(cfg).expect("start proxy");
    let addr = proxy.local_addr();
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client::connect_tag(addr, &secret, 2000 + i, Tag::Intermediate))
        .collect();

    // Intermediate transport packets (4-byte length, payload a multiple of 4) of many sizes,
    // laid out once; a round trip sends some and expects them back byte for byte.
    let mut rng = XorShift64(6);
    let sizes = [4usize, 64, 1400, 4096, 16376, 300, 40_000, 8];
    let mut packets: Vec<Vec<u8>> = Vec::new();
    for &n in &sizes {
        let mut p = vec![0u8; 4 + n];
        p[..4].copy_from_slice(&(n as u32).to_le_bytes());
        mtpx::proto::Rng::fill(&mut rng, &mut p[4..]);
        packets.push(p);
    }
    let mut check = vec![0u8; 64 * 1024];
    let records = [16379usize, 517, 1400, 4096, 16384];
    let mut run = |clients: &mut Vec<Client>, rounds: usize| {
        for r in 0..rounds {
            for (k, c) in clients.iter_mut().enumerate() {
                let p = &packets[(r + k) % packets.len()];
                c.round_trip(p, records[(r + 3 * k) % records.len()], &mut check);
            }
        }
    };
    run(&mut clients, 16);
    std::thread::sleep(Duration::from_millis(600));
    let t0 = Instant::now();
    arm();
    let mut rounds = 0;
    while rounds < 10_000 && (rounds < 32 || t0.elapsed() < Duration::from_millis(1500)) {
        run(&mut clients, 8);
        rounds += 8;
        if t0.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let allocs = disarm();
    let bytes = WORKER_BYTES.load(Ordering::SeqCst);
    eprintln!(
        "through the middle proxy: {rounds} round trips x {} connections over {:?}: worker \
         allocations {allocs} ({bytes} bytes)",
        clients.len(),
        t0.elapsed()
    );
    let traces = TRACES.lock().map(|t| t.join("\n\n")).unwrap_or_default();
    assert_eq!(
        allocs, 0,
        "the proxy's worker threads allocated {allocs} times ({bytes} bytes) while relaying \
         through the middle proxy:\n{traces}"
    );
    assert_eq!(proxy.stats().middle_proxy_counters()[0], 4, "four sessions");
    for c in clients.drain(..) {
        let _ = c.s.shutdown(std::net::Shutdown::Write);
    }
    proxy.shutdown();
    drop(me);
    let _ = std::fs::remove_dir_all(&dir);
}
