//! Host name resolution without the libc resolver (the static binaries have none that works).
//!
//! A small blocking stub resolver: the `[network] dns` server or else the nameservers from
//! `/etc/resolv.conf`, A and AAAA over UDP
//! from a fresh socket on a kernel-chosen random port with random ids, answers accepted only
//! from the server asked and only when they echo the question; TCP when the answer is
//! truncated. Called from the CLI or a background thread, never from a worker loop.
//! The wire format is in [`crate::formats::dns`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::formats::dns::{self, Answer, DnsError, Nameserver, QType, ResolvConf, Transport};
use crate::formats::tls13::{self, Step};

/// Where the nameservers are configured.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The longest a resolution may take, whatever timeout is asked for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads [`RESOLV_CONF`] (a missing or unreadable file counts as empty).
pub fn resolv_conf() -> ResolvConf {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    dns::parse_resolv_conf(&text)
}

/// The nameservers from `/etc/resolv.conf` (`127.0.0.1:53` if it names none, as glibc does).
pub fn resolv_conf_servers() -> Vec<SocketAddr> {
    resolv_conf().nameservers
}

/// Resolves `host` to socket addresses with `port`: IP literals (also `[v6]`) directly,
/// `localhost` and `*.localhost` to the loopback addresses, anything else through `server`
/// (the config's [`nameserver`](crate::config::Config::nameserver)) or, without one, the
/// nameservers in `/etc/resolv.conf`. IPv4 addresses come first. Blocks for at most about
/// `timeout`.
pub fn resolve(
    server: Option<&Nameserver>,
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<Vec<SocketAddr>> {
    if let Some(addrs) = literal(host, port) {
        return Ok(addrs);
    }
    if let Some(ns) = server.filter(|ns| ns.transport != Transport::Plain) {
        return resolve_tls(ns, host, port, timeout);
    }
    let server = server.map(|ns| ns.addr);
    // One call site of resolve_inner, whichever the source of the servers (binary size).
    let (one, conf);
    let (servers, per_try, attempts): (&[SocketAddr], _, _) = match server {
        Some(s) => {
            one = [s];
            (&one, timeout / 2, 2)
        }
        None => {
            conf = resolv_conf();
            let per_try = Duration::from_secs(u64::from(conf.timeout_secs));
            (&conf.nameservers, per_try, conf.attempts)
        }
    };
    resolve_inner(servers, host, port, timeout, per_try, attempts)
}

/// [`resolve`] against the given nameservers (tests): each try waits up to `timeout / 2` per
/// server, with two rounds over the list.
pub fn resolve_with(
    servers: &[SocketAddr],
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<Vec<SocketAddr>> {
    if let Some(addrs) = literal(host, port) {
        return Ok(addrs);
    }
    resolve_inner(servers, host, port, timeout, timeout / 2, 2)
}

fn literal(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let lower = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        // RFC 6761 §6.3: never sent to a nameserver.
        return Some(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    None
}

fn err(kind: io::ErrorKind, host: &str, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("cannot resolve {host}: {what}"))
}

fn resolve_inner(
    servers: &[SocketAddr],
    host: &str,
    port: u16,
    timeout: Duration,
    per_try: Duration,
    attempts: u32,
) -> io::Result<Vec<SocketAddr>> {
    // Validate the name once, before any packet leaves.
    dns::build_query(0, host, QType::A).map_err(|e| err(io::ErrorKind::InvalidInput, host, e))?;
    if servers.is_empty() {
        return Err(err(io::ErrorKind::NotFound, host, "no nameservers"));
    }
    // Bounded so that the deadline arithmetic cannot overflow whatever the caller passes.
    let timeout = timeout.min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let per_try = per_try.clamp(Duration::from_millis(100), MAX_TIMEOUT);
    let mut last = err(
        io::ErrorKind::TimedOut,
        host,
        "no answer from the nameservers",
    );
    for _ in 0..attempts.max(1) {
        for server in servers {
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            let try_deadline = deadline.min(now + per_try);
            match query_server(*server, host, try_deadline) {
                Ok((v4, v6)) => {
                    let addrs: Vec<SocketAddr> = v4
                        .addrs
                        .iter()
                        .chain(v6.addrs.iter())
                        .map(|(ip, _ttl)| SocketAddr::new(*ip, port))
                        .collect();
                    if addrs.is_empty() {
                        return Err(err(io::ErrorKind::NotFound, host, "no A or AAAA records"));
                    }
                    return Ok(addrs);
                }
                Err(Failure::NxDomain) => {
                    return Err(err(io::ErrorKind::NotFound, host, DnsError::NxDomain));
                }
                Err(Failure::Server(e)) => last = err(e.kind(), host, format!("{server}: {e}")),
            }
        }
    }
    Err(last)
}

enum Failure {
    /// Authoritative: the name does not exist.
    NxDomain,
    /// This server did not give a usable answer in time; try the next one.
    Server(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Server(e)
    }
}

fn random_id() -> io::Result<u16> {
    let mut b = [0u8; 2];
    crate::io::rng::os_fill(&mut b).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    Ok(u16::from_ne_bytes(b))
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(timed_out()),
    }
}

/// Asks one server for A and AAAA in parallel over one UDP socket; truncated answers are asked
/// again over TCP. Ok only when both types have a usable answer (possibly empty).
fn query_server(
    server: SocketAddr,
    host: &str,
    deadline: Instant,
) -> Result<(Answer, Answer), Failure> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind)?;
    // Connected: the kernel drops datagrams from anyone else and reports ICMP refusals.
    sock.connect(server)?;

    let types = [QType::A, QType::Aaaa];
    let mut ids = [0u16; 2];
    for (i, t) in types.iter().enumerate() {
        ids[i] = random_id()?;
        if i == 1 && ids[1] == ids[0] {
            ids[1] = ids[0].wrapping_add(1);
        }
        let q = dns::build_query(ids[i], host, *t)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        sock.send(&q)?;
    }

    let mut answers: [Option<Answer>; 2] = [None, None];
    let mut buf = [0u8; 4096];
    while answers.iter().any(Option::is_none) {
        sock.set_read_timeout(Some(remaining(deadline)?))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out().into());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if from != server {
            continue;
        }
        let msg = &buf[..n];
        for i in 0..2 {
            if answers[i].is_some() {
                continue;
            }
            match dns::parse_response(msg, ids[i], host, types[i]) {
                Ok(a) if a.truncated => {
                    answers[i] = Some(query_tcp(server, host, types[i], deadline)?);
                }
                Ok(a) => answers[i] = Some(a),
                Err(DnsError::NxDomain) => return Err(Failure::NxDomain),
                Err(e @ DnsError::Rcode(_)) => return Err(io::Error::other(e.to_string()).into()),
                // Not an answer to this question (or garbage): keep waiting for the real one,
                // so that a stray or forged datagram cannot make us give up on the server.
                Err(_) => continue,
            }
            break;
        }
    }
    match answers {
        [Some(a), Some(b)] => Ok((a, b)),
        _ => Err(timed_out().into()),
    }
}

/// A and AAAA from a DNS-over-TLS or DNS-over-HTTPS server, one TLS session per question.
fn resolve_tls(
    ns: &Nameserver,
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<Vec<SocketAddr>> {
    let deadline = Instant::now() + timeout.min(MAX_TIMEOUT);
    let mut addrs = Vec::new();
    for qtype in [QType::A, QType::Aaaa] {
        let id = random_id()?;
        let q = dns::build_query(id, host, qtype)
            .map_err(|e| err(io::ErrorKind::InvalidInput, host, e))?;
        let msg = exchange_tls(ns, &q, deadline).map_err(|e| err(e.kind(), host, e))?;
        match dns::parse_response(&msg, id, host, qtype) {
            Ok(a) => addrs.extend(a.addrs.iter().map(|(ip, _)| SocketAddr::new(*ip, port))),
            Err(e @ DnsError::NxDomain) => return Err(err(io::ErrorKind::NotFound, host, e)),
            Err(e) => {
                return Err(err(
                    io::ErrorKind::InvalidData,
                    host,
                    format!("{}: {e}", ns.addr),
                ));
            }
        }
    }
    if addrs.is_empty() {
        return Err(err(io::ErrorKind::NotFound, host, "no A or AAAA records"));
    }
    Ok(addrs)
}

/// Sends one DNS query `q` over TLS (DoT framing, or a DoH GET) and returns the answer
/// message.
fn exchange_tls(ns: &Nameserver, q: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
    let ip = ns.addr.ip().to_string();
    let (request, alpn): (Vec<u8>, &[u8]) = match &ns.transport {
        Transport::Https(path) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            let host = if ns.addr.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip
            };
            let host = match ns.addr.port() {
                443 => host,
                p => format!("{host}:{p}"),
            };
            let b64 = crate::formats::encoding::base64url_encode(q);
            let req = format!(
                "GET {path}{sep}dns={b64} HTTP/1.1\r\nHost: {host}\r\n\
                 Accept: application/dns-message\r\nConnection: close\r\n\r\n"
            );
            (req.into_bytes(), b"http/1.1")
        }
        _ => ([&(q.len() as u16).to_be_bytes()[..], q].concat(), b""),
    };
    let https = matches!(ns.transport, Transport::Https(_));
    let opts = tls13::Options {
        host: "",
        alpn,
        decrypt: true,
    };
    let mut got = Vec::new();
    let mut answer: Option<Vec<u8>> = None;
    super::tls::session(ns.addr, opts, &request, deadline, |_, step| {
        if let Step::Plain(data) = step {
            got.extend_from_slice(&data);
        }
        answer = if https {
            http_answer(&got, false)
        } else {
            dot_answer(&got)
        };
        answer.is_none() && got.len() < 64 * 1024
    })?;
    match answer.or_else(|| if https { http_answer(&got, true) } else { None }) {
        Some(a) => Ok(a),
        None if https && got.starts_with(b"HTTP/") && !got.starts_with(b"HTTP/1.1 200") => {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "DNS-over-HTTPS server did not answer 200",
            ))
        }
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no DNS answer over TLS",
        )),
    }
}

/// A complete DoT answer (two-byte length prefix) at the start of `got`.
fn dot_answer(got: &[u8]) -> Option<Vec<u8>> {
    let n = usize::from(u16::from_be_bytes([*got.first()?, *got.get(1)?]));
    got.get(2..2 + n).map(<[u8]>::to_vec)
}

/// The body of a complete `200` DoH response in `got`; with `eof`, a body that runs to the
/// end of the stream.
fn http_answer(got: &[u8], eof: bool) -> Option<Vec<u8>> {
    use crate::formats::http::{ChunkedDecoder, ResponseParse, parse_response_head};
    let ResponseParse::Head {
        consumed,
        status: 200,
        content_length,
        chunked,
        ..
    } = parse_response_head(got)
    else {
        return None;
    };
    let body = &got[consumed..];
    if chunked {
        let mut d = ChunkedDecoder::new(64 * 1024);
        let mut out = Vec::new();
        d.feed(body, &mut out).ok()?;
        return d.is_done().then_some(out);
    }
    match content_length {
        Some(n) => body.get(..n).map(<[u8]>::to_vec),
        None => eof.then(|| body.to_vec()),
    }
}

/// One query over TCP (RFC 7766 two-byte length framing), with a fresh id.
fn query_tcp(
    server: SocketAddr,
    host: &str,
    qtype: QType,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let id = random_id()?;
    let q = dns::build_query(id, host, qtype)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&server, remaining(deadline)?)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
    framed.extend_from_slice(&q);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    read_exact_by(&mut stream, &mut len, deadline)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read_exact_by(&mut stream, &mut msg, deadline)?;
    match dns::parse_response(&msg, id, host, qtype) {
        Ok(a) => Ok(a),
        Err(DnsError::NxDomain) => Err(Failure::NxDomain),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("over TCP: {e}")).into()),
    }
}

fn read_exact_by(stream: &mut TcpStream, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_skip_dns() {
        let t = Duration::from_millis(1);
        let none: &[SocketAddr] = &[];
        assert_eq!(
            resolve_with(none, "192.0.2.7", 443, t).unwrap(),
            vec!["192.0.2.7:443".parse().unwrap()]
        );
        assert_eq!(
            resolve_with(none, "[2001:db8::1]", 80, t).unwrap(),
            vec!["[2001:db8::1]:80".parse().unwrap()]
        );
        assert_eq!(
            resolve_with(none, "::1", 80, t).unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(resolve_with(none, "LocalHost.", 1, t).unwrap().len(), 2);
        // A huge timeout must not overflow the deadline arithmetic (the closed port refuses).
        let closed = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            resolve_with(&[closed], "example.com", 1, Duration::MAX)
                .unwrap_err()
                .kind(),
            io::ErrorKind::ConnectionRefused
        );
        assert_eq!(
            resolve_with(none, "example.com", 1, t).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            resolve_with(none, "bad name", 1, t).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
