//! SOCKS5 client (RFC 1928 CONNECT, RFC 1929 username/password) as a sans-IO state machine,
//! and the `socks5://` / `socks5h://` proxy URLs of `[network].proxies` (PROTOCOL.md §8.5).
//!
//! Pure / no I/O. The caller connects to the proxy, sends [`Socks5Client::initial`], then feeds
//! every received byte to [`Socks5Client::handle`] and sends what it writes, until
//! [`Step::Connected`] (the socket now carries the target's stream) or [`Step::Failed`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::codec::Reader;

/// Default port of a proxy URL without one.
pub const DEFAULT_PORT: u16 = 1080;

/// An `out` buffer of this many bytes fits every message the client writes (an RFC 1929 request
/// with 255-byte user name and password).
pub const OUT_MAX: usize = 3 + 255 + 255;

/// Where the proxy should connect to, or where a proxy is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address literal.
    Ip(SocketAddr),
    /// A host name (1..=255 bytes on the wire) and a port.
    Domain(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "{a}"),
            Target::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Why a SOCKS5 negotiation failed. `Copy`; `as_str` is a stable label for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socks5Error {
    /// The server answered with a version other than 5 (or, in the RFC 1929 reply, other than 1).
    BadVersion,
    /// The server accepted none of the offered methods (0xFF).
    NoAcceptableMethod,
    /// The server chose a method that was not offered.
    UnexpectedMethod,
    /// The server refused the user name and password.
    AuthFailed,
    /// Reply 0x01: general SOCKS server failure.
    GeneralFailure,
    /// Reply 0x02: connection not allowed by ruleset.
    NotAllowed,
    /// Reply 0x03: network unreachable.
    NetworkUnreachable,
    /// Reply 0x04: host unreachable.
    HostUnreachable,
    /// Reply 0x05: connection refused.
    ConnectionRefused,
    /// Reply 0x06: TTL expired.
    TtlExpired,
    /// Reply 0x07: command not supported.
    CommandNotSupported,
    /// Reply 0x08: address type not supported.
    AddressTypeNotSupported,
    /// A reply code above 0x08.
    UnknownReply,
    /// The reply's bound address has an unknown type.
    BadAddressType,
    /// The target host name is empty or longer than 255 bytes.
    BadTarget,
    /// The user name or password is longer than 255 bytes.
    CredentialsTooLong,
    /// `out` is too small for the next message (give it [`OUT_MAX`] bytes).
    BufferTooSmall,
    /// `handle` was called before `initial`.
    NotStarted,
}

impl Socks5Error {
    /// A short, stable, lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Socks5Error::BadVersion => "bad-version",
            Socks5Error::NoAcceptableMethod => "no-acceptable-method",
            Socks5Error::UnexpectedMethod => "unexpected-method",
            Socks5Error::AuthFailed => "auth-failed",
            Socks5Error::GeneralFailure => "general-failure",
            Socks5Error::NotAllowed => "not-allowed",
            Socks5Error::NetworkUnreachable => "network-unreachable",
            Socks5Error::HostUnreachable => "host-unreachable",
            Socks5Error::ConnectionRefused => "connection-refused",
            Socks5Error::TtlExpired => "ttl-expired",
            Socks5Error::CommandNotSupported => "command-not-supported",
            Socks5Error::AddressTypeNotSupported => "address-type-not-supported",
            Socks5Error::UnknownReply => "unknown-reply",
            Socks5Error::BadAddressType => "bad-address-type",
            Socks5Error::BadTarget => "bad-target",
            Socks5Error::CredentialsTooLong => "credentials-too-long",
            Socks5Error::BufferTooSmall => "buffer-too-small",
            Socks5Error::NotStarted => "not-started",
        }
    }

    /// The error for a non-zero reply code.
    fn from_reply(code: u8) -> Socks5Error {
        match code {
            1 => Socks5Error::GeneralFailure,
            2 => Socks5Error::NotAllowed,
            3 => Socks5Error::NetworkUnreachable,
            4 => Socks5Error::HostUnreachable,
            5 => Socks5Error::ConnectionRefused,
            6 => Socks5Error::TtlExpired,
            7 => Socks5Error::CommandNotSupported,
            8 => Socks5Error::AddressTypeNotSupported,
            _ => Socks5Error::UnknownReply,
        }
    }
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller does next after [`Socks5Client::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing consumed: receive more bytes and call again with all unconsumed input.
    NeedMore,
    /// `consumed` input bytes were used; send `out[..len]`, then keep reading.
    Send {
        /// Input bytes used.
        consumed: usize,
        /// Bytes written to `out`.
        len: usize,
    },
    /// The tunnel is up after `consumed` input bytes; anything after them is target data.
    Connected {
        /// Input bytes used.
        consumed: usize,
    },
    /// The negotiation failed; close the socket.
    Failed(Socks5Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    Method,
    Auth,
    Reply,
    Done,
    Failed(Socks5Error),
}

/// The client side of one SOCKS5 CONNECT negotiation.
#[derive(Clone)]
pub struct Socks5Client {
    target: Target,
    auth: Option<(String, String)>,
    state: State,
    bound: Option<Target>,
}

impl fmt::Debug for Socks5Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socks5Client")
            .field("target", &self.target)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("state", &self.state)
            .finish()
    }
}

impl Socks5Client {
    /// A negotiation asking the proxy to connect to `target`, offering username/password
    /// authentication when `auth` is given (and "no authentication" in any case).
    pub fn new(target: Target, auth: Option<(String, String)>) -> Socks5Client {
        Socks5Client {
            target,
            auth,
            state: State::Start,
            bound: None,
        }
    }

    /// Writes the greeting (method offer) into `out` and returns its length (3 or 4 bytes), or 0
    /// if `out` is shorter than 4 bytes or the greeting was already written.
    pub fn initial(&mut self, out: &mut [u8]) -> usize {
        if self.state != State::Start || out.len() < 4 {
            return 0;
        }
        self.state = State::Method;
        let greeting: &[u8] = if self.auth.is_some() {
            &[5, 2, 0x00, 0x02]
        } else {
            &[5, 1, 0x00]
        };
        out[..greeting.len()].copy_from_slice(greeting);
        greeting.len()
    }

    /// The address the proxy reported as bound for the connection (after `Connected`).
    pub fn bound(&self) -> Option<&Target> {
        self.bound.as_ref()
    }

    /// Feeds the bytes received from the proxy and not yet consumed. See [`Step`]. After
    /// `Connected`, further calls return `Connected { consumed: 0 }`; after `Failed`, the same
    /// error again.
    pub fn handle(&mut self, input: &[u8], out: &mut [u8]) -> Step {
        let step = self.advance(input, out);
        if let Step::Failed(e) = step {
            self.state = State::Failed(e);
        }
        step
    }

    fn advance(&mut self, input: &[u8], out: &mut [u8]) -> Step {
        match self.state {
            State::Start => Step::Failed(Socks5Error::NotStarted),
            State::Failed(e) => Step::Failed(e),
            State::Done => Step::Connected { consumed: 0 },
            State::Method => {
                let Some(&ver) = input.first() else {
                    return Step::NeedMore;
                };
                if ver != 5 {
                    return Step::Failed(Socks5Error::BadVersion);
                }
                let Some(&method) = input.get(1) else {
                    return Step::NeedMore;
                };
                match method {
                    0x00 => self.send_connect(2, out),
                    0x02 if self.auth.is_some() => self.send_auth(out),
                    0xff => Step::Failed(Socks5Error::NoAcceptableMethod),
                    _ => Step::Failed(Socks5Error::UnexpectedMethod),
                }
            }
            State::Auth => {
                let Some(&ver) = input.first() else {
                    return Step::NeedMore;
                };
                if ver != 1 {
                    return Step::Failed(Socks5Error::BadVersion);
                }
                match input.get(1) {
                    None => Step::NeedMore,
                    Some(0) => self.send_connect(2, out),
                    Some(_) => Step::Failed(Socks5Error::AuthFailed),
                }
            }
            State::Reply => self.read_reply(input),
        }
    }

    fn send_auth(&mut self, out: &mut [u8]) -> Step {
        let Some((user, pass)) = &self.auth else {
            return Step::Failed(Socks5Error::UnexpectedMethod);
        };
        let (u, p) = (user.as_bytes(), pass.as_bytes());
        let (Ok(ulen), Ok(plen)) = (u8::try_from(u.len()), u8::try_from(p.len())) else {
            return Step::Failed(Socks5Error::CredentialsTooLong);
        };
        let len = 3 + u.len() + p.len();
        let Some(buf) = out.get_mut(..len) else {
            return Step::Failed(Socks5Error::BufferTooSmall);
        };
        buf[0] = 1;
        buf[1] = ulen;
        buf[2..2 + u.len()].copy_from_slice(u);
        buf[2 + u.len()] = plen;
        buf[3 + u.len()..].copy_from_slice(p);
        self.state = State::Auth;
        Step::Send { consumed: 2, len }
    }

    fn send_connect(&mut self, consumed: usize, out: &mut [u8]) -> Step {
        let mut req = [0u8; 4 + 1 + 255 + 2];
        req[..3].copy_from_slice(&[5, 1, 0]);
        let len = match &self.target {
            Target::Ip(SocketAddr::V4(a)) => {
                req[3] = 1;
                req[4..8].copy_from_slice(&a.ip().octets());
                req[8..10].copy_from_slice(&a.port().to_be_bytes());
                10
            }
            Target::Ip(SocketAddr::V6(a)) => {
                req[3] = 4;
                req[4..20].copy_from_slice(&a.ip().octets());
                req[20..22].copy_from_slice(&a.port().to_be_bytes());
                22
            }
            Target::Domain(host, port) => {
                let h = host.as_bytes();
                let Ok(hlen) = u8::try_from(h.len()) else {
                    return Step::Failed(Socks5Error::BadTarget);
                };
                if hlen == 0 {
                    return Step::Failed(Socks5Error::BadTarget);
                }
                req[3] = 3;
                req[4] = hlen;
                req[5..5 + h.len()].copy_from_slice(h);
                req[5 + h.len()..7 + h.len()].copy_from_slice(&port.to_be_bytes());
                7 + h.len()
            }
        };
        let Some(buf) = out.get_mut(..len) else {
            return Step::Failed(Socks5Error::BufferTooSmall);
        };
        buf.copy_from_slice(&req[..len]);
        self.state = State::Reply;
        Step::Send { consumed, len }
    }

    fn read_reply(&mut self, input: &[u8]) -> Step {
        let Some(&ver) = input.first() else {
            return Step::NeedMore;
        };
        if ver != 5 {
            return Step::Failed(Socks5Error::BadVersion);
        }
        let Some(&rep) = input.get(1) else {
            return Step::NeedMore;
        };
        if rep != 0 {
            return Step::Failed(Socks5Error::from_reply(rep));
        }
        // input[2] is RSV; servers are not held to it.
        let Some(&atyp) = input.get(3) else {
            return Step::NeedMore;
        };
        let total = match atyp {
            1 => 4 + 4 + 2,
            4 => 4 + 16 + 2,
            3 => match input.get(4) {
                Some(&n) => 4 + 1 + usize::from(n) + 2,
                None => return Step::NeedMore,
            },
            _ => return Step::Failed(Socks5Error::BadAddressType),
        };
        let Some(msg) = input.get(..total) else {
            return Step::NeedMore;
        };
        // The whole reply is there: VER REP RSV ATYP, the address, the port.
        let mut r = Reader::new(&msg[4..]);
        let addr = r.take(total - 4 - 2).unwrap_or_default();
        let port = r.u16().unwrap_or_default();
        self.bound = match atyp {
            1 => {
                let ip = <[u8; 4]>::try_from(addr).map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from);
                Some(Target::Ip(SocketAddr::new(ip.into(), port)))
            }
            4 => {
                let ip = <[u8; 16]>::try_from(addr).map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from);
                Some(Target::Ip(SocketAddr::new(ip.into(), port)))
            }
            _ => Some(Target::Domain(
                String::from_utf8_lossy(addr.get(1..).unwrap_or_default()).into_owned(),
                port,
            )),
        };
        self.state = State::Done;
        Step::Connected { consumed: total }
    }
}

/// A parsed `[network].proxies` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Where the proxy listens: an address literal, or a host name for the caller to resolve.
    pub server: Target,
    /// RFC 1929 user name and password (percent-decoded), when the URL has user info.
    pub auth: Option<(String, String)>,
    /// `socks5h`: host names of targets are sent to the proxy to resolve ([`Target::Domain`]);
    /// with `socks5` the caller resolves them and sends [`Target::Ip`].
    pub remote_dns: bool,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("server", &self.server)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("remote_dns", &self.remote_dns)
            .finish()
    }
}

/// Parses `socks5://[user[:pass]@]host[:port][/]` or `socks5h://…`. The scheme is
/// case-insensitive; the port defaults to 1080; user and password are percent-decoded (each at
/// most 255 bytes); an IPv6 host is bracketed (`[::1]:1080`). Paths, queries and fragments are
/// refused.
pub fn parse_url(s: &str) -> Result<ProxyUrl, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "proxy URL {:?}: expected socks5://host[:port]",
            without_userinfo(s)
        ));
    };
    let remote_dns = if scheme.eq_ignore_ascii_case("socks5") {
        false
    } else if scheme.eq_ignore_ascii_case("socks5h") {
        true
    } else {
        return Err(format!(
            "proxy URL scheme {:?} is not supported (use socks5 or socks5h)",
            without_userinfo(scheme)
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("proxy URL must not have a path, query or fragment".to_string());
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let auth = match userinfo {
        None => None,
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let user = percent_decode(user)?;
            let pass = percent_decode(pass)?;
            if user.len() > 255 || pass.len() > 255 {
                return Err("proxy user name and password are limited to 255 bytes".to_string());
            }
            Some((user, pass))
        }
    };
    let (host, port) = split_host_port(hostport)?;
    let server = match host {
        Host::Ip(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Host::Name(name) => Target::Domain(name.to_string(), port),
    };
    Ok(ProxyUrl {
        server,
        auth,
        remote_dns,
    })
}

/// `s` with everything up to its last `@` (a user name and password, wherever they are)
/// replaced by `***`: what an error message may quote of a proxy URL.
fn without_userinfo(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => s.to_string(),
    }
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

fn split_host_port(s: &str) -> Result<(Host<'_>, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("proxy host {s:?}: missing ']'"));
        };
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("proxy host {s:?}: bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("proxy host {s:?}: junk after ']'")),
            },
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, p) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if let Ok(ip) = h.parse::<Ipv4Addr>() {
            (Host::Ip(IpAddr::V4(ip)), p)
        } else if valid_hostname(h) {
            (Host::Name(h), p)
        } else {
            return Err(format!(
                "proxy host {h:?} is not an IP address or host name (IPv6 needs [brackets])"
            ));
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => {
            let n = if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u16>().ok()
            } else {
                None
            };
            match n {
                Some(n) if n != 0 => n,
                // Digits only are quoted: "user:password" without the "@host" lands here.
                _ if p.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(format!("proxy port {p:?} is not in 1..=65535"));
                }
                _ => return Err("proxy port is not a number in 1..=65535".to_string()),
            }
        }
    };
    Ok((host, port))
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = |j: usize| b.get(j).and_then(|&d| (d as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("proxy user info has a bad %-escape".to_string()),
            }
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy user info is not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Rng, XorShift64};

    fn ip(s: &str) -> Target {
        Target::Ip(s.parse().unwrap())
    }

    fn creds(u: &str, p: &str) -> Option<(String, String)> {
        Some((u.to_string(), p.to_string()))
    }

    /// Drives the client through `server` (the proxy's bytes, in order) and returns what the
    /// client sent, concatenated, and the final step.
    fn run(client: &mut Socks5Client, server: &[u8]) -> (Vec<u8>, Step) {
        let mut out = [0u8; OUT_MAX];
        let mut sent = Vec::new();
        let n = client.initial(&mut out);
        sent.extend_from_slice(&out[..n]);
        let mut input = server;
        loop {
            match client.handle(input, &mut out) {
                Step::Send { consumed, len } => {
                    sent.extend_from_slice(&out[..len]);
                    input = &input[consumed..];
                }
                other => return (sent, other),
            }
        }
    }

    #[test]
    fn accepts_no_auth_ipv4_connect() {
        let mut c = Socks5Client::new(ip("149.154.167.51:443"), None);
        let server = [5, 0, 5, 0, 0, 1, 10, 0, 0, 1, 0x04, 0x38];
        let (sent, step) = run(&mut c, &server);
        assert_eq!(
            sent,
            [5, 1, 0, 5, 1, 0, 1, 149, 154, 167, 51, 0x01, 0xbb].to_vec()
        );
        assert_eq!(step, Step::Connected { consumed: 10 });
        assert_eq!(c.bound(), Some(&ip("10.0.0.1:1080")));
        // Idempotent once connected.
        assert_eq!(
            c.handle(b"xyz", &mut [0; 8]),
            Step::Connected { consumed: 0 }
        );
    }

    #[test]
    fn accepts_user_pass_ipv6_connect() {
        let mut c = Socks5Client::new(ip("[2001:67c:4e8:f004::9]:443"), creds("bob", "s3"));
        let mut server = vec![5, 2, 1, 0, 5, 0, 0, 4];
        server.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        server.extend_from_slice(&[0xc0, 0x00]);
        let (sent, step) = run(&mut c, &server);
        let mut want = vec![5, 2, 0, 2]; // greeting: no-auth, user/pass
        want.extend_from_slice(&[1, 3, b'b', b'o', b'b', 2, b's', b'3']); // RFC 1929
        want.extend_from_slice(&[5, 1, 0, 4]);
        want.extend_from_slice(&[0x20, 0x01, 0x06, 0x7c, 0x04, 0xe8, 0xf0, 0x04]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0x01, 0xbb]);
        assert_eq!(sent, want);
        assert_eq!(step, Step::Connected { consumed: 22 });
        assert_eq!(c.bound(), Some(&ip("[2001:db8::7]:49152")));
    }

    #[test]
    fn accepts_domain_target_and_domain_bound_address() {
        let target = Target::Domain("example.org".to_string(), 80);
        let mut c = Socks5Client::new(target, creds("u", "p"));
        // Server picks no-auth although auth was offered: allowed.
        let mut server = vec![5, 0, 5, 0, 0, 3, 9];
        server.extend_from_slice(b"proxy.lan");
        server.extend_from_slice(&[0x30, 0x39]);
        server.extend_from_slice(b"DATA");
        let (sent, step) = run(&mut c, &server);
        let mut want = vec![5, 2, 0, 2, 5, 1, 0, 3, 11];
        want.extend_from_slice(b"example.org");
        want.extend_from_slice(&[0, 80]);
        assert_eq!(sent, want);
        assert_eq!(
            step,
            Step::Connected {
                consumed: 5 + 9 + 2
            }
        );
        assert_eq!(
            c.bound(),
            Some(&Target::Domain("proxy.lan".to_string(), 12345))
        );
    }

    #[test]
    fn rejects_each_failure_reply_by_name() {
        let names = [
            (1, Socks5Error::GeneralFailure, "general-failure"),
            (2, Socks5Error::NotAllowed, "not-allowed"),
            (3, Socks5Error::NetworkUnreachable, "network-unreachable"),
            (4, Socks5Error::HostUnreachable, "host-unreachable"),
            (5, Socks5Error::ConnectionRefused, "connection-refused"),
            (6, Socks5Error::TtlExpired, "ttl-expired"),
            (7, Socks5Error::CommandNotSupported, "command-not-supported"),
            (
                8,
                Socks5Error::AddressTypeNotSupported,
                "address-type-not-supported",
            ),
            (9, Socks5Error::UnknownReply, "unknown-reply"),
            (0xff, Socks5Error::UnknownReply, "unknown-reply"),
        ];
        for (code, err, name) in names {
            let mut c = Socks5Client::new(ip("1.2.3.4:443"), None);
            // Decided on the second reply byte, before the address arrives.
            let (_, step) = run(&mut c, &[5, 0, 5, code]);
            assert_eq!(step, Step::Failed(err));
            assert_eq!(err.to_string(), name);
            // Sticky.
            assert_eq!(c.handle(&[5, 0, 0, 1], &mut [0; 64]), Step::Failed(err));
        }
    }

    #[test]
    fn rejects_bad_method_auth_version_and_address_type() {
        type Case = (Option<(String, String)>, &'static [u8], Socks5Error);
        let cases: &[Case] = &[
            (None, &[4, 0], Socks5Error::BadVersion),
            (None, &[4], Socks5Error::BadVersion), // after one byte
            (None, &[5, 0xff], Socks5Error::NoAcceptableMethod),
            (creds("a", "b"), &[5, 0xff], Socks5Error::NoAcceptableMethod),
            (None, &[5, 2], Socks5Error::UnexpectedMethod), // not offered
            (None, &[5, 1], Socks5Error::UnexpectedMethod), // GSSAPI
            (creds("a", "b"), &[5, 2, 1, 1], Socks5Error::AuthFailed),
            (creds("a", "b"), &[5, 2, 1, 0xff], Socks5Error::AuthFailed),
            (creds("a", "b"), &[5, 2, 5, 0], Socks5Error::BadVersion),
            (None, &[5, 0, 4, 0, 0, 1], Socks5Error::BadVersion),
            (None, &[5, 0, 5, 0, 0, 2], Socks5Error::BadAddressType),
            (None, &[5, 0, 5, 0, 0, 0], Socks5Error::BadAddressType),
        ];
        for (auth, server, err) in cases {
            let mut c = Socks5Client::new(ip("1.2.3.4:443"), auth.clone());
            assert_eq!(run(&mut c, server).1, Step::Failed(*err), "{server:?}");
        }
    }

    #[test]
    fn rejects_bad_targets_credentials_and_small_buffers() {
        let long = "a".repeat(256);
        let mut c = Socks5Client::new(Target::Domain(long.clone(), 1), None);
        assert_eq!(run(&mut c, &[5, 0]).1, Step::Failed(Socks5Error::BadTarget));
        let mut c = Socks5Client::new(Target::Domain(String::new(), 1), None);
        assert_eq!(run(&mut c, &[5, 0]).1, Step::Failed(Socks5Error::BadTarget));
        let mut c = Socks5Client::new(Target::Domain("a".repeat(255), 1), None);
        assert_eq!(run(&mut c, &[5, 0]).1, Step::NeedMore);
        let mut c = Socks5Client::new(ip("1.2.3.4:5"), creds(&long, "p"));
        assert_eq!(
            run(&mut c, &[5, 2]).1,
            Step::Failed(Socks5Error::CredentialsTooLong)
        );
        let mut c = Socks5Client::new(ip("1.2.3.4:5"), creds(&long[..255], &long[..255]));
        let (sent, step) = run(&mut c, &[5, 2]);
        assert_eq!(step, Step::NeedMore);
        assert_eq!(sent.len(), 4 + OUT_MAX);

        let mut c = Socks5Client::new(ip("[::1]:5"), None);
        assert_eq!(
            c.handle(&[5, 0], &mut [0; 64]),
            Step::Failed(Socks5Error::NotStarted)
        );
        let mut c = Socks5Client::new(ip("[::1]:5"), None);
        assert_eq!(c.initial(&mut [0; 3]), 0);
        assert_eq!(c.initial(&mut [0; 4]), 3);
        assert_eq!(c.initial(&mut [0; 4]), 0); // only once
        assert_eq!(
            c.handle(&[5, 0], &mut [0; 21]),
            Step::Failed(Socks5Error::BufferTooSmall)
        );
    }

    /// A fake SOCKS5 server, sans-IO: it checks each client message exactly and answers.
    struct FakeServer {
        user: &'static [u8],
        pass: &'static [u8],
        stage: u8,
        reply: Vec<u8>,
    }

    impl FakeServer {
        /// Consumes one complete client message from `input` if present; returns
        /// (consumed, answer).
        fn step(&mut self, input: &[u8]) -> Option<(usize, Vec<u8>)> {
            match self.stage {
                0 => {
                    let n = usize::from(*input.get(1)?);
                    let m = input.get(2..2 + n)?;
                    assert_eq!(input[0], 5);
                    assert!(m.contains(&2));
                    self.stage = 1;
                    Some((2 + n, vec![5, 2]))
                }
                1 => {
                    let ul = usize::from(*input.get(1)?);
                    let pl = usize::from(*input.get(2 + ul)?);
                    let total = 3 + ul + pl;
                    input.get(..total)?;
                    assert_eq!(input[0], 1);
                    let ok = &input[2..2 + ul] == self.user && &input[3 + ul..total] == self.pass;
                    self.stage = 2;
                    Some((total, vec![1, if ok { 0 } else { 1 }]))
                }
                _ => {
                    let total = match *input.get(3)? {
                        1 => 10,
                        4 => 22,
                        3 => 7 + usize::from(*input.get(4)?),
                        _ => panic!("bad atyp"),
                    };
                    input.get(..total)?;
                    assert_eq!(&input[..3], &[5, 1, 0]);
                    self.stage = 3;
                    Some((total, self.reply.clone()))
                }
            }
        }
    }

    /// Runs client and fake server with the server's bytes delivered `chunk` at a time.
    fn transcript(chunk: usize, pass: &str) -> Step {
        let mut server = FakeServer {
            user: b"alice",
            pass: b"p@ss",
            stage: 0,
            reply: vec![5, 0, 0, 3, 4, b'h', b'o', b's', b't', 0, 1],
        };
        let mut c = Socks5Client::new(
            Target::Domain("t.me".to_string(), 443),
            creds("alice", pass),
        );
        let mut out = [0u8; OUT_MAX];
        let mut to_server = Vec::new();
        let mut to_client: Vec<u8> = Vec::new();
        let mut delivered = 0; // bytes of to_client made visible to the client
        let n = c.initial(&mut out);
        to_server.extend_from_slice(&out[..n]);
        for _ in 0..1000 {
            while let Some((used, answer)) = server.step(&to_server) {
                to_server.drain(..used);
                to_client.extend_from_slice(&answer);
            }
            delivered = (delivered + chunk).min(to_client.len());
            match c.handle(&to_client[..delivered], &mut out) {
                Step::NeedMore => {}
                Step::Send { consumed, len } => {
                    to_client.drain(..consumed);
                    delivered -= consumed;
                    to_server.extend_from_slice(&out[..len]);
                }
                done => {
                    assert!(to_server.is_empty());
                    return done;
                }
            }
        }
        panic!("no progress");
    }

    #[test]
    fn accepts_fake_server_transcript_in_any_chunking() {
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(transcript(chunk, "p@ss"), Step::Connected { consumed: 11 });
            assert_eq!(
                transcript(chunk, "wrong"),
                Step::Failed(Socks5Error::AuthFailed)
            );
        }
    }

    #[test]
    fn rejects_truncation_sweep() {
        // Every prefix of each server message is NeedMore (never a premature decision).
        let mut server = vec![5, 2, 1, 0, 5, 0, 0, 3, 4];
        server.extend_from_slice(b"host");
        server.extend_from_slice(&[0, 1]);
        for n in 0..server.len() {
            let mut c = Socks5Client::new(ip("1.2.3.4:5"), creds("u", "p"));
            let step = run(&mut c, &server[..n]).1;
            assert_eq!(step, Step::NeedMore, "prefix {n}");
        }
        let mut c = Socks5Client::new(ip("1.2.3.4:5"), creds("u", "p"));
        assert_eq!(run(&mut c, &server).1, Step::Connected { consumed: 11 });
        // Prefixes of a failing exchange: NeedMore or that failure.
        let bad = [5, 0, 5, 0, 0, 9, 1, 2, 3];
        for n in 0..bad.len() {
            let mut c = Socks5Client::new(ip("1.2.3.4:5"), None);
            let step = run(&mut c, &bad[..n]).1;
            assert!(
                matches!(
                    step,
                    Step::NeedMore | Step::Failed(Socks5Error::BadAddressType)
                ),
                "{n}: {step:?}"
            );
        }
    }

    #[test]
    fn rejects_garbage_sweep() {
        let mut rng = XorShift64(0x50c5_0005);
        let mut input = [0u8; 300];
        let mut out = [0u8; OUT_MAX];
        for i in 0..20_000 {
            let n = rng.below(300) as usize;
            rng.fill(&mut input[..n]);
            // Make the interesting bytes plausible often enough to reach later states.
            if i % 2 == 0 && n >= 4 {
                input[0] = 5;
                input[1] = (input[1] & 1) * 2;
                input[2] = if input[1] == 2 { 1 } else { 5 };
            }
            let auth = if i % 3 == 0 { creds("u", "p") } else { None };
            let mut c = Socks5Client::new(ip("1.2.3.4:5"), auth);
            let g = c.initial(&mut out);
            assert!(g == 3 || g == 4);
            let mut rest = &input[..n];
            for _ in 0..5 {
                match c.handle(rest, &mut out) {
                    Step::Send { consumed, len } => {
                        assert!(consumed <= rest.len() && len <= out.len());
                        rest = &rest[consumed..];
                    }
                    Step::Connected { consumed } => {
                        assert!(consumed <= rest.len());
                        break;
                    }
                    Step::NeedMore | Step::Failed(_) => break,
                }
            }
        }
    }

    #[test]
    fn accepts_proxy_urls() {
        let u = parse_url("socks5://127.0.0.1").unwrap();
        assert_eq!(u.server, ip("127.0.0.1:1080"));
        assert_eq!(u.auth, None);
        assert!(!u.remote_dns);

        let u = parse_url("socks5h://user:p%40ss%3Aw0rd@proxy.example.com:9050/").unwrap();
        assert_eq!(
            u.server,
            Target::Domain("proxy.example.com".to_string(), 9050)
        );
        assert_eq!(u.auth, creds("user", "p@ss:w0rd"));
        assert!(u.remote_dns);

        let u = parse_url("SOCKS5://[::1]:1081").unwrap();
        assert_eq!(u.server, ip("[::1]:1081"));
        let u = parse_url("socks5://[2001:db8::5]").unwrap();
        assert_eq!(u.server, ip("[2001:db8::5]:1080"));

        // User only, empty password; '@' in the password unescaped (last '@' splits).
        let u = parse_url("socks5://bob@h:1").unwrap();
        assert_eq!(u.auth, creds("bob", ""));
        let u = parse_url("socks5://bob:a@b@h:65535").unwrap();
        assert_eq!(u.auth, creds("bob", "a@b"));
        assert_eq!(u.server, Target::Domain("h".to_string(), 65535));
        let u = parse_url("socks5://%E2%9C%93:hunter2@h").unwrap();
        assert_eq!(u.auth, creds("\u{2713}", "hunter2"));
        // The password never reaches Debug output.
        assert!(!format!("{u:?}").contains("hunter2"), "{u:?}");
        let c = Socks5Client::new(ip("1.2.3.4:5"), u.auth.clone());
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn rejects_bad_proxy_urls() {
        let bad = [
            "",
            "127.0.0.1:1080",
            "http://127.0.0.1:1080",
            "socks4://127.0.0.1",
            "socks5://",
            "socks5://:1080",
            "socks5://h:",
            "socks5://h:0",
            "socks5://h:65536",
            "socks5://h:123456",
            "socks5://h:-1",
            "socks5://h:80x",
            "socks5://::1",
            "socks5://::1:1080",
            "socks5://[::1",
            "socks5://[::1]x",
            "socks5://[1.2.3.4]:80",
            "socks5://h/path",
            "socks5://h?q",
            "socks5://h#f",
            "socks5://bad host",
            "socks5://h..x",
            "socks5://u:%zz@h",
            "socks5://u:%4@h",
            "socks5://u:%ff@h",
        ];
        for s in bad {
            assert!(parse_url(s).is_err(), "{s:?} accepted");
        }
        let long = format!("socks5://{}:p@h", "u".repeat(256));
        assert!(parse_url(&long).is_err());
        let ok = format!("socks5://{}:p@h", "u".repeat(255));
        assert!(parse_url(&ok).is_ok());
    }

    #[test]
    fn rejects_bad_urls_without_quoting_credentials() {
        // Whatever is wrong with the URL, the error never carries the user name or password.
        let bad = [
            "alice:hunter2@127.0.0.1:1080",
            "alice:hunter2@socks5://127.0.0.1",
            "socks5:/alice:hunter2@127.0.0.1",
            "http://alice:hunter2@127.0.0.1",
            "socks5://alice:hunter2",
            "socks5://alice:hunter2@h:0",
            "socks5://alice:hunter2@bad host",
            "socks5://alice:hunter2@h/path",
            "socks5://alice:hunter2%zz@h",
        ];
        for s in bad {
            let e = parse_url(s).expect_err(s);
            assert!(!e.contains("hunter2") && !e.contains("alice"), "{s}: {e}");
        }
        let e = parse_url("alice:hunter2@127.0.0.1:1080").unwrap_err();
        assert!(e.contains("\"***@127.0.0.1:1080\""), "{e}");
        // What is not a credential is still quoted.
        let e = parse_url("socks5://h:70000").unwrap_err();
        assert!(e.contains("\"70000\""), "{e}");
    }

    #[test]
    fn rejects_url_garbage_sweep() {
        let alphabet = b"socks5h:/@[]%:.1aF09-_ ?#";
        let mut rng = XorShift64(77);
        for _ in 0..20_000 {
            let n = rng.below(40) as usize;
            let mut s = String::from("socks5://");
            for _ in 0..n {
                s.push(alphabet[rng.below(alphabet.len() as u32) as usize] as char);
            }
            let _ = parse_url(&s);
            let mut raw = vec![0u8; n];
            rng.fill(&mut raw);
            let _ = parse_url(&String::from_utf8_lossy(&raw));
        }
    }
}
