//! Shared by every role: the test pattern, the tiny DC command protocol, loopback sockets with
//! a chosen source address, CPU clocks and `/proc` readers.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use aes::cipher::StreamCipher;
use mtpx::proto::faketls::{self, RecordReader};
use mtpx::proto::obfs2::{self, AesCtr, Tag};
use mtpx::proto::{Rng, XorShift64};

/// Blocking socket timeout used by every client socket: a stuck proxy fails the run, never
/// hangs it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Period of the data pattern (prime, so that a slipped or repeated block is always caught).
pub const PERIOD: usize = 4093;
/// Largest slice of pattern handed out at once.
pub const CHUNK: usize = 64 * 1024;
/// Payload of the application-data records the client sends: TDLib's (and so the Telegram
/// apps') `MAX_TLS_PACKET_LENGTH` (td/mtproto/TcpTransport.h). The proxy itself sends records
/// of up to `faketls::MAX_RECORD_PAYLOAD`.
pub const RECORD: usize = 2878;

/// `PERIOD + CHUNK` bytes where byte `i` depends only on `i % PERIOD`.
fn pattern_table() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let mut base = vec![0u8; PERIOD];
        XorShift64(0x6d74_7078_6265_6e63).fill(&mut base);
        (0..PERIOD + CHUNK).map(|i| base[i % PERIOD]).collect()
    })
}

/// The `n <= CHUNK` pattern bytes starting at stream position `pos`.
pub fn pattern(pos: u64, n: usize) -> &'static [u8] {
    let at = (pos % PERIOD as u64) as usize;
    &pattern_table()[at..at + n]
}

/// Checks `got` against the pattern at `pos` (any length).
pub fn pattern_ok(mut pos: u64, got: &[u8]) -> bool {
    for c in got.chunks(CHUNK) {
        if c != pattern(pos, c.len()) {
            return false;
        }
        pos += c.len() as u64;
    }
    true
}

// ------------------------------------------------------------------------------------------
// The fake DC's command: the first 16 plaintext bytes after the proxy's frame.

/// Hold: answer one byte [`HELLO_BYTE`], then stay idle. Any later byte or EOF makes the DC
/// close first (so TIME_WAIT never lands on an ephemeral port of the proxy or of a client).
pub const OP_HOLD: u8 = b'H';
/// Upload: the DC reads `len` pattern bytes, checks them, answers [`Reply`] and closes.
pub const OP_UP: u8 = b'U';
/// Download: the DC sends `len` pattern bytes and closes.
pub const OP_DOWN: u8 = b'D';
/// Echo: the DC sends back every byte it receives (the soak's clients).
pub const OP_ECHO: u8 = b'E';
/// With [`OP_HOLD`]: close right after the answer byte (handshake benchmark).
pub const FLAG_CLOSE: u8 = 1;
/// The byte the DC answers to [`OP_HOLD`].
pub const HELLO_BYTE: u8 = 0x2a;
/// Length of the command.
pub const CMD_LEN: usize = 16;
/// Length of the upload answer: ok (1), padding (7), bytes received (u64 le).
pub const REPLY_LEN: usize = 16;

pub fn command(op: u8, flags: u8, len: u64) -> [u8; CMD_LEN] {
    let mut c = [0u8; CMD_LEN];
    c[0] = op;
    c[1] = flags;
    c[8..].copy_from_slice(&len.to_le_bytes());
    c
}

// ------------------------------------------------------------------------------------------
// Sockets

/// A `sockaddr_in` for `a`.
pub fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
    s
}

/// An unconnected TCP socket bound to `src` (port chosen at connect time, so one source
/// address serves every destination with its own port range).
pub fn socket_from(src: Ipv4Addr) -> io::Result<TcpStream> {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain libc calls on a descriptor we own; sockaddrs are local initialised values.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let s = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(fd, &s as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// A blocking TCP connection to `dst` from `src` (see [`socket_from`]).
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let stream = socket_from(src)?;
    let fd = stream.as_raw_fd();
    // SAFETY: connect on a descriptor we own; the sockaddr is a local initialised value.
    unsafe {
        let d = sockaddr(dst);
        loop {
            if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

// ------------------------------------------------------------------------------------------
// Clocks and /proc

/// CPU time of the calling thread, in seconds.
pub fn thread_cpu() -> f64 {
    // SAFETY: clock_gettime writes into the timespec we pass.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// (utime, stime) of a process in seconds (`/proc/<pid>/stat`, clock ticks).
pub fn proc_cpu_split(pid: u32) -> io::Result<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14) as f64 / hz, ticks(15) as f64 / hz))
}

/// CPU time of all threads of a process in seconds, to the nanosecond: the sum of the first
/// field of `/proc/<pid>/task/*/schedstat` (time on CPU, the clock `CLOCK_THREAD_CPUTIME_ID`
/// reads; `/proc/<pid>/stat` has it only in 10 ms ticks). Threads that ended are missing.
pub fn proc_cpu_ns(pid: u32) -> io::Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 * 1e-9)
}

/// Seconds all threads of a process spent on a CPU and waiting for one (runnable, not
/// running): the first two fields of `/proc/<pid>/task/*/schedstat`. Threads that ended are
/// missing.
pub fn proc_sched(pid: u32) -> (f64, f64) {
    let (mut run, mut wait) = (0u64, 0u64);
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
                run += f.next().unwrap_or(0);
                wait += f.next().unwrap_or(0);
            }
        }
    }
    (run as f64 * 1e-9, wait as f64 * 1e-9)
}

/// The machine's CPU seconds (all CPUs): busy (not idle or iowait) and in all, from the
/// first line of `/proc/stat`.
pub fn machine_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ((total - idle.min(total)) as f64 / hz, total as f64 / hz)
}

/// VmRSS of a process in bytes.
pub fn proc_rss(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            return Ok(kb * 1024);
        }
    }
    Err(io::Error::other("no VmRSS"))
}

/// Open descriptors of a process.
pub fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A seed that differs per call: splitmix64 over a per-process random base (from the OS) and a
/// counter, so seeds never repeat within a process and collide across processes only by
/// 64-bit chance (the proxy's anti-replay filter would reject a repeated session id).
pub fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let r = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
        assert_eq!(r, 8, "getrandom failed");
        u64::from_le_bytes(b)
    });
    let mut z = base.wrapping_add(
        N.fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------------------------------
// FakeTLS client

/// An established client: FakeTLS handshake done, obfuscated2 frame and command sent.
pub struct Client {
    pub s: TcpStream,
    enc: AesCtr,
    dec: AesCtr,
    rr: RecordReader,
    /// Decrypted payload received but not yet consumed: `inbuf[in_start..in_end]`.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
}

/// Where and how clients connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub proxy: SocketAddrV4,
    pub src: Ipv4Addr,
    pub key: [u8; 16],
    pub host: String,
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

impl Client {
    /// Full FakeTLS handshake: hello → server flight verified → obfuscated2 frame + `cmd` in
    /// one application-data record.
    pub fn connect(t: &Target, dc: i16, cmd: [u8; CMD_LEN], inbuf: usize) -> io::Result<Client> {
        Client::connect_recorded(t, dc, cmd, inbuf, &mut Vec::new())
    }

    /// [`Client::connect`], keeping every byte sent in `sent` (hello, then the first record):
    /// what a recorder on the path would replay.
    pub fn connect_recorded(
        t: &Target,
        dc: i16,
        cmd: [u8; CMD_LEN],
        inbuf: usize,
        sent: &mut Vec<u8>,
    ) -> io::Result<Client> {
        let mut rng = XorShift64(seed());
        let mut s = connect_from(t.src, t.proxy)?;
        let hello = faketls::build_client_hello(&mut rng, &t.key, &t.host, unix_now());
        s.write_all(&hello)?;
        sent.clear();
        sent.extend_from_slice(&hello);
        let mut random = [0u8; 32];
        random.copy_from_slice(&hello[11..43]);
        let mut flight = vec![0u8; 8192];
        let mut have = 0;
        let total = loop {
            if have == flight.len() {
                return Err(io::Error::other("server flight too long"));
            }
            let n = s.read(&mut flight[have..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "proxy closed during the handshake",
                ));
            }
            have += n;
            match faketls::verify_server_flight(&flight[..have], &random, &t.key) {
                Ok(Some(total)) => break total,
                Ok(None) => {}
                Err(r) => return Err(io::Error::other(format!("bad server flight: {r}"))),
            }
        };
        if total != have {
            return Err(io::Error::other("bytes after the server flight"));
        }
        let (frame, mut enc, dec) = obfs2::client_frame(&mut rng, &t.key, Tag::Intermediate, dc);
        let mut first = [0u8; 5 + 64 + CMD_LEN];
        first[..5].copy_from_slice(&faketls::record_header((64 + CMD_LEN) as u16));
        first[5..69].copy_from_slice(&frame);
        let mut c = cmd;
        enc.apply_keystream(&mut c);
        first[69..].copy_from_slice(&c);
        s.write_all(&first)?;
        sent.extend_from_slice(&first);
        Ok(Client {
            s,
            enc,
            dec,
            rr: RecordReader::new(),
            inbuf: vec![0u8; inbuf.max(64)],
            in_start: 0,
            in_end: 0,
        })
    }

    /// Encrypts `data` in place and sends it in application-data records. `data` is used as
    /// scratch: `out` must hold `data.len() + 5 * records`.
    pub fn send(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        for chunk in plain.chunks(RECORD) {
            out.extend_from_slice(&faketls::record_header(chunk.len() as u16));
            let at = out.len();
            out.extend_from_slice(chunk);
            self.enc.apply_keystream(&mut out[at..]);
        }
        self.s.write_all(out)
    }

    /// Reads more decrypted payload into the internal buffer. `Ok(false)` on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        loop {
            let n = self.s.read(&mut self.inbuf[self.in_end..])?;
            if n == 0 {
                return Ok(false);
            }
            let region = &mut self.inbuf[self.in_end..self.in_end + n];
            let m = self
                .rr
                .deframe_in_place(region)
                .map_err(|r| io::Error::other(format!("bad record from proxy: {r}")))?;
            self.dec
                .apply_keystream(&mut self.inbuf[self.in_end..self.in_end + m]);
            self.in_end += m;
            if m > 0 {
                return Ok(true);
            }
        }
    }

    /// Decrypted payload bytes: up to the internal buffer's size; empty at EOF.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        if self.in_start == self.in_end && !self.fill()? {
            return Ok(&[]);
        }
        let (a, b) = (self.in_start, self.in_end);
        self.in_start = b;
        Ok(&self.inbuf[a..b])
    }

    /// Exactly `n` payload bytes.
    pub fn recv_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let want = n - v.len();
            let have = self.in_end - self.in_start;
            if have == 0 {
                if !self.fill()? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                continue;
            }
            let k = want.min(have);
            v.extend_from_slice(&self.inbuf[self.in_start..self.in_start + k]);
            self.in_start += k;
        }
        Ok(v)
    }

    /// Reads until EOF; returns the payload bytes that came before it (discarded).
    pub fn drain_to_eof(&mut self) -> io::Result<u64> {
        let mut n = (self.in_end - self.in_start) as u64;
        self.in_start = self.in_end;
        while self.fill()? {
            n += (self.in_end - self.in_start) as u64;
            self.in_start = self.in_end;
        }
        Ok(n)
    }
}

// ------------------------------------------------------------------------------------------
// mtpx itself

/// Starts mtpx (`cmd`: binary and arguments) with stdout and stderr to `log`, dying with this
/// process (`PR_SET_PDEATHSIG`), and waits up to 10 s for its `proxy-started` line.
pub fn start_mtpx(mut cmd: std::process::Command, log: &std::path::Path) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let logf = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    // SAFETY: only an async-signal-safe prctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let bin = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::other(format!("cannot start {bin}: {e}")))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(io::Error::other(format!(
                "mtpx exited at start ({st}); see {}",
                log.display()
            )));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("proxy-started") {
            return Ok(child);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "mtpx did not start; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
