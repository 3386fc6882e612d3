//! The Prometheus endpoint: a small mio loop on a thread of its own serving `GET <path>` with
//! the text exposition of a fresh [`Snapshot`](super::Snapshot).
//!
//! Background I/O (never on a worker). Bounded: at most [`MAX_SCRAPERS`] scrapers at once,
//! each within [`SCRAPE_TIMEOUT`].

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{MetricsSource, Service, render_prometheus};
use crate::formats::http::{self, RequestParse};
use crate::formats::metrics as fmt;
use crate::log::Level;

/// Scrapers served at once; more are closed at once.
pub(crate) const MAX_SCRAPERS: usize = 16;
/// Time a scraper has to send its request and read the answer.
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

struct Scrape {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The answer is ready (only writing is left).
    answered: bool,
    deadline: Instant,
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Scrape>>,
    path: String,
    prefix: String,
    source: MetricsSource,
    stop: Arc<AtomicBool>,
    body: String,
}

/// Serves `GET <path>` with the Prometheus text exposition on `bind` (404 for other paths,
/// 405 for other methods, 400 for malformed requests), at most [`MAX_SCRAPERS`] at once, each
/// within [`SCRAPE_TIMEOUT`]. Returns the bound address (for port 0) and the thread's handle.
pub(crate) fn spawn_prometheus(
    bind: SocketAddr,
    path: String,
    prefix: String,
    source: MetricsSource,
) -> io::Result<(SocketAddr, Service)> {
    let listener = TcpListener::bind(bind)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr()?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = Server {
        poll,
        listener,
        conns: (0..MAX_SCRAPERS).map(|_| None).collect(),
        path: normalise_path(&path),
        prefix,
        source,
        stop: stop.clone(),
        body: String::new(),
    };
    server
        .poll
        .registry()
        .register(&mut server.listener, LISTENER, Interest::READABLE)?;
    let thread = std::thread::Builder::new()
        .name("mtpx-prometheus".into())
        .spawn(move || server.run())?;
    Ok((
        addr,
        Service {
            addr: Some(addr),
            stop,
            waker: Some(waker),
            thread: Some(thread),
        },
    ))
}

/// `/metrics/` → `/metrics`; always a leading `/`.
fn normalise_path(p: &str) -> String {
    let t = p.trim().trim_matches('/');
    format!("/{t}")
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = self
                .conns
                .iter()
                .flatten()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    crate::log_event!(Level::Warn, "prometheus-poll-failed", error = e);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.drive(t.wrapping_sub(FIRST_CONN)),
                }
            }
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if self.conns[i].as_ref().is_some_and(|c| now >= c.deadline) {
                    self.close(i);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(i) = self.conns.iter().position(Option::is_none) else {
                        // Too many scrapers: close this one at once.
                        continue;
                    };
                    let token = Token(FIRST_CONN + i);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, interest)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns[i] = Some(Scrape {
                        stream,
                        input: Vec::with_capacity(1024),
                        output: Vec::new(),
                        written: 0,
                        answered: false,
                        deadline: Instant::now() + SCRAPE_TIMEOUT,
                    });
                    self.drive(i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log_event!(Level::Debug, "prometheus-accept-failed", error = e);
                    return;
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Reads, answers and writes as far as the socket allows; closes when done or broken.
    fn drive(&mut self, i: usize) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        if self.step(&mut c) {
            self.conns[i] = Some(c);
        } else {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// One round of [`Server::drive`]; `false` when the connection is finished.
    fn step(&mut self, c: &mut Scrape) -> bool {
        let mut chunk = [0u8; 2048];
        while !c.answered {
            match c.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    let room = http::MAX_HEAD.saturating_sub(c.input.len());
                    c.input.extend_from_slice(&chunk[..n.min(room)]);
                    self.answer(c);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(0) => return false,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Prepares the answer once the request head is complete (or cannot be).
    fn answer(&mut self, c: &mut Scrape) {
        let (status, head_only, metrics) = match http::parse_request(&c.input) {
            RequestParse::NeedMore => return,
            RequestParse::Invalid => (400, false, false),
            RequestParse::Request { method, path, .. } => {
                let head = method == "HEAD";
                if method != "GET" && !head {
                    (405, false, false)
                } else if normalise_path(path) != self.path {
                    (404, head, false)
                } else {
                    (200, head, true)
                }
            }
        };
        let (body, ctype) = if metrics {
            self.body.clear();
            render_prometheus(&mut self.body, &self.prefix, &self.source.snapshot());
            (self.body.as_bytes(), fmt::PROMETHEUS_CONTENT_TYPE)
        } else {
            (
                http::reason_phrase(status).as_bytes(),
                "text/plain; charset=utf-8",
            )
        };
        if head_only {
            http::write_response_head(&mut c.output, status, ctype, body.len());
        } else {
            http::write_response(&mut c.output, status, ctype, body);
        }
        c.answered = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::source;
    use super::*;

    fn scrape(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn prometheus_server_answers_get_404_405_400() {
        let (src, _) = source();
        src.stats.accepted.store(42, Ordering::Relaxed);
        let (addr, svc) = spawn_prometheus(
            "127.0.0.1:0".parse().unwrap(),
            "/metrics/".into(),
            "mtg".into(),
            src,
        )
        .unwrap();
        let r = scrape(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(
            r.contains("\r\nmtg_accepted_connections 42\n")
                || r.contains("\nmtg_accepted_connections 42\n"),
            "{r}"
        );
        let r = scrape(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let r = scrape(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = scrape(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = scrape(addr, b"\x16\x03\x01\x00\x10garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let r = scrape(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        // A request split over several writes.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /met").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"rics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        drop(svc);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn prometheus_server_bounds_scrapers_and_time() {
        let (src, _) = source();
        let (addr, svc) = spawn_prometheus(
            "127.0.0.1:0".parse().unwrap(),
            "/".into(),
            "mtg".into(),
            src,
        )
        .unwrap();
        // Fill every slot with silent connections.
        let idle: Vec<_> = (0..MAX_SCRAPERS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // One more is closed at once, without an answer.
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut b = [0u8; 16];
        // Closed (not merely silent: a read timeout would be an error too).
        let r = extra.read(&mut b);
        assert!(
            matches!(&r, Ok(0))
                || r.as_ref().is_err_and(|e| !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )),
            "{r:?}"
        );
        // An oversized head is refused.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(http::MAX_HEAD + 100, b'a');
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        let r = scrape(addr, &big);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // Silent scrapers are dropped after the timeout.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(SCRAPE_TIMEOUT * 2)).unwrap();
        let t = Instant::now();
        assert!(matches!(slow.read(&mut b), Ok(0) | Err(_)));
        let waited = t.elapsed();
        assert!(
            waited >= SCRAPE_TIMEOUT - Duration::from_millis(100) && waited < SCRAPE_TIMEOUT * 2,
            "{waited:?}"
        );
        drop(svc);
    }
}
