//! The stand-in fronting site: one mio loop in its own process (`mtpx-bench soak site`). No
//! TLS stack: it only has to answer what reaches it the way a site does, at once.
//!
//! * A complete TLS record starting with a handshake byte (a ClientHello): [`FLIGHT`], then
//!   it reads and discards until the peer closes.
//! * `GET <path> ...\r\n\r\n`: an HTTP answer of [`BIG_PAGE`] bytes for `/big`, of 4 KiB for
//!   anything else, then it closes.
//! * Anything else (garbage): a TLS alert ([`ALERT`]) and a close.
//! * An incomplete record or request: it waits, up to [`IDLE`] (as a server's header timeout),
//!   then closes.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// The site's first flight to a ClientHello (the first byte tells probes it was answered).
pub const FLIGHT: &[u8] = &{
    let mut f = [0x5au8; 1400];
    // A ServerHello-sized handshake record, a ChangeCipherSpec, then application data.
    let head = [0x16, 0x03, 0x03, 0x00, 0x7a];
    let mut i = 0;
    while i < head.len() {
        f[i] = head[i];
        i += 1;
    }
    f[127] = 0x14;
    f[128] = 0x03;
    f[129] = 0x03;
    f[130] = 0x00;
    f[131] = 0x01;
    f[132] = 0x01;
    f[133] = 0x17;
    f[134] = 0x03;
    f[135] = 0x03;
    f[136] = ((1400 - 138) >> 8) as u8;
    f[137] = ((1400 - 138) & 0xff) as u8;
    f
};
/// A fatal `decode_error` alert: the answer to bytes that are no TLS record.
pub const ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
/// Size of `/big`: more than every buffer on the way holds, so an unread download stays stuck.
pub const BIG_PAGE: u64 = 256 << 20;
/// An incomplete request is closed after this.
pub const IDLE: Duration = Duration::from_secs(30);
/// Send buffer of the site's sockets: keeps the kernel memory of stuck downloads small.
const SNDBUF: libc::c_int = 64 * 1024;

const LISTENER: Token = Token(usize::MAX - 1);

enum St {
    Reading,
    /// Answered a hello: discard until EOF.
    Draining,
    /// Sending `left` bytes of page (after `out`), then close.
    Page {
        left: u64,
    },
    /// Write side shut: wait for EOF (or the idle limit).
    Closing,
}

struct Conn {
    s: TcpStream,
    st: St,
    input: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    since: Instant,
}

pub fn run() -> io::Result<()> {
    crate::die_with_parent();
    super::raise_nofile();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = listener.local_addr()?.port();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening {port}");
    io::stdout().flush()?;
    std::thread::spawn(|| {
        // Exit when the parent closes our stdin.
        let mut b = [0u8; 64];
        while let Ok(n) = io::stdin().read(&mut b) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    let page = vec![b'x'; 64 * 1024];
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut last_sweep = Instant::now();
    loop {
        poll.poll(&mut events, Some(Duration::from_secs(1)))?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            set_sndbuf(&s);
                            next += 1;
                            poll.registry().register(
                                &mut s,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            let c = Conn {
                                s,
                                st: St::Reading,
                                input: Vec::new(),
                                out: Vec::new(),
                                out_at: 0,
                                since: Instant::now(),
                            };
                            conns.insert(next, c);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("soak site: accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                            break;
                        }
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            if drive(c, &mut scratch, &page).unwrap_or(true) {
                if let Some(mut c) = conns.remove(&id) {
                    let _ = poll.registry().deregister(&mut c.s);
                }
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            conns.retain(|_, c| {
                let waiting = matches!(c.st, St::Reading | St::Closing | St::Draining);
                !(waiting && c.since.elapsed() >= IDLE)
            });
        }
    }
}

fn set_sndbuf(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a pointer to a local int on a descriptor we own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &SNDBUF as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What the bytes so far ask for: `None` while they may still become a request or a record.
fn classify(input: &[u8]) -> Option<Answer> {
    const GET: &[u8] = b"GET ";
    if input.first() == Some(&0x16) {
        if input.len() < 5 {
            return None;
        }
        let len = u16::from_be_bytes([input[3], input[4]]) as usize;
        return (input.len() >= 5 + len).then_some(Answer::Flight);
    }
    let n = input.len().min(GET.len());
    if input[..n] == GET[..n] {
        let end = input.windows(4).position(|w| w == b"\r\n\r\n")?;
        let line = &input[..end];
        let big = line.starts_with(b"GET /big ");
        return Some(Answer::Page(if big { BIG_PAGE } else { 4096 }));
    }
    Some(Answer::Alert)
}

enum Answer {
    Flight,
    Page(u64),
    Alert,
}

/// Drives one connection (edge-triggered: until WouldBlock). `Ok(true)` when finished.
fn drive(c: &mut Conn, scratch: &mut [u8], page: &[u8]) -> io::Result<bool> {
    loop {
        let mut progress = false;
        // Output first.
        while c.out_at < c.out.len() {
            match c.s.write(&c.out[c.out_at..]) {
                Ok(n) => {
                    c.out_at += n;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(true),
            }
        }
        if c.out_at == c.out.len() {
            c.out.clear();
            c.out_at = 0;
            if let St::Page { left } = &mut c.st {
                if *left == 0 {
                    let _ = c.s.shutdown(Shutdown::Write);
                    c.st = St::Closing;
                    c.since = Instant::now();
                } else {
                    let n = (*left).min(page.len() as u64) as usize;
                    c.out.extend_from_slice(&page[..n]);
                    *left -= n as u64;
                    progress = true;
                }
            }
        }
        match c.s.read(scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                progress = true;
                if let St::Reading = c.st {
                    let room = (64 * 1024usize).saturating_sub(c.input.len());
                    c.input.extend_from_slice(&scratch[..n.min(room)]);
                    match classify(&c.input) {
                        None => {}
                        Some(Answer::Flight) => {
                            c.out.extend_from_slice(FLIGHT);
                            c.st = St::Draining;
                        }
                        Some(Answer::Page(len)) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                                 Content-Length: {len}\r\nConnection: close\r\n\r\n"
                            );
                            c.out.extend_from_slice(head.as_bytes());
                            c.st = St::Page { left: len };
                        }
                        Some(Answer::Alert) => {
                            c.out.extend_from_slice(ALERT);
                            c.st = St::Page { left: 0 };
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(_) => return Ok(true),
        }
        if !progress {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_a_site() {
        assert!(classify(b"\x16\x03\x01").is_none());
        assert!(classify(b"\x16\x03\x01\x00\x02\x01").is_none());
        assert!(matches!(
            classify(b"\x16\x03\x01\x00\x02\x01\x00"),
            Some(Answer::Flight)
        ));
        assert!(classify(b"GE").is_none());
        assert!(classify(b"GET /big HTTP/1.1\r\n").is_none());
        assert!(matches!(
            classify(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Answer::Page(BIG_PAGE))
        ));
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Answer::Page(4096))
        ));
        assert!(matches!(classify(b"\x00garbage"), Some(Answer::Alert)));
        assert!(matches!(classify(b"GEX"), Some(Answer::Alert)));
        assert_eq!(FLIGHT[0], 0x16);
        assert_eq!(FLIGHT[133], 0x17);
    }
}
