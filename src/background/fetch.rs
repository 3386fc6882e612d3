//! Blocking HTTP(S) GETs for background threads (never a worker): the IP lists' `http://`
//! sources and Telegram's proxy config.
//!
//! Through the SOCKS5 upstreams when there are any (PROTOCOL.md §8.5: the upstream resolves
//! host names, so no DNS query leaves from here), else direct with the configured resolver.
//! `https://` goes through mtpx's observing TLS client, which checks no certificate: callers
//! whose content is checked before use (Telegram's config) allow it; the IP lists do not.
//! A response is read whole (up to the cap); status 2xx is a body, a 3xx with a `Location`
//! is followed (at most [`MAX_REDIRECTS`] times), anything else an error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::formats::http::{self, ResponseParse};
use crate::formats::tls13;
use crate::proto::socks5::Target;

/// Redirects followed.
pub(crate) const MAX_REDIRECTS: usize = 3;

/// A SOCKS5 upstream: its address (`None`: its name did not resolve) and credentials.
pub(crate) type Upstream = (Option<SocketAddr>, Option<(String, String)>);

/// How to reach a URL.
pub(crate) struct Net {
    /// Each connect and each read (`[network.timeout] http`).
    pub(crate) timeout: Duration,
    /// The `[network] dns` server (`None`: /etc/resolv.conf).
    pub(crate) dns: Option<crate::formats::dns::Nameserver>,
    /// SOCKS5 upstreams, tried in order; empty: direct.
    pub(crate) socks: Vec<Upstream>,
}

impl Net {
    /// From the config: `[network.timeout] http`, `[network] dns`, and the upstreams.
    pub(crate) fn new(config: &Config, socks: Vec<Upstream>) -> Net {
        Net {
            timeout: config.timeouts.http.max(Duration::from_millis(100)),
            dns: config.nameserver(),
            socks,
        }
    }
}

enum Got {
    Body(Vec<u8>),
    Redirect(String),
}

/// GETs `url` (and its redirects) within `overall`; returns the body, at most `cap` bytes.
/// `https://` only with `https_ok`.
pub(crate) fn get(
    url: &str,
    net: &Net,
    cap: usize,
    https_ok: bool,
    overall: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + overall;
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(&url, net, cap, https_ok, deadline)? {
            Got::Body(b) => return Ok(b),
            Got::Redirect(to) => url = to,
        }
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

#[inline(never)]
fn get_once(
    url: &str,
    net: &Net,
    cap: usize,
    https_ok: bool,
    deadline: Instant,
) -> Result<Got, String> {
    let (https, host, port, path) = if https_ok {
        http::parse_web_url(url)?
    } else {
        http::parse_http_url(url).map(|(h, p, path)| (false, h, p, path))?
    };
    let mut stream = connect(&host, port, net, deadline)?;
    let default_port = if https { 443 } else { 80 };
    let bare = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        bare
    } else {
        format!("{bare}:{port}")
    };
    let request = http::build_get(&authority, &path);
    let base = format!("{}://{authority}", if https { "https" } else { "http" });
    let limit = cap + http::MAX_HEAD + 64;
    let mut got: Vec<u8> = Vec::new();
    if https {
        let opts = tls13::Options {
            host: &host,
            alpn: b"http/1.1",
            decrypt: true,
        };
        let mut done: Option<Result<Got, String>> = None;
        let mut each = |_: Instant, step: tls13::Step| {
            let eof = match step {
                tls13::Step::Plain(data) => {
                    got.extend_from_slice(&data);
                    false
                }
                tls13::Step::Closed => true,
                _ => false,
            };
            done = response(&got, cap, limit, eof, &base).transpose();
            done.is_none() && !eof
        };
        let run = super::tls::session_on(stream, opts, &request, deadline, &mut each);
        if let Some(d) = done {
            return d;
        }
        run.map_err(|e| format!("TLS: {e}"))?;
        return response(&got, cap, limit, true, &base)?.ok_or_else(|| "no response".into());
    }
    stream
        .write_all(&request)
        .map_err(|e| format!("cannot send request: {e}"))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("download took too long".into());
        }
        let _ = stream.set_read_timeout(Some(left.min(net.timeout)));
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read failed: {e}")),
        };
        got.extend_from_slice(&chunk[..n]);
        if let Some(r) = response(&got, cap, limit, n == 0, &base)? {
            return Ok(r);
        }
    }
}

/// What the response in `got` amounts to once complete (`None`: not yet; `eof`: no more will
/// come). Relative redirects are resolved against `base` (`scheme://authority`).
fn response(
    got: &[u8],
    cap: usize,
    limit: usize,
    eof: bool,
    base: &str,
) -> Result<Option<Got>, String> {
    let (consumed, status, content_length, chunked, location) = match http::parse_response_head(got)
    {
        ResponseParse::NeedMore if eof => return Err("closed before the response head".into()),
        ResponseParse::NeedMore => return Ok(None),
        ResponseParse::Invalid => return Err("malformed HTTP response".into()),
        ResponseParse::Head {
            consumed,
            status,
            content_length,
            chunked,
            location,
        } => (consumed, status, content_length, chunked, location),
    };
    if (300..400).contains(&status) {
        if let Some(loc) = location {
            let to = if loc.starts_with('/') {
                format!("{base}{loc}")
            } else {
                loc.to_string()
            };
            return Ok(Some(Got::Redirect(to)));
        }
    }
    if !(200..300).contains(&status) {
        return Err(format!("HTTP status {status}"));
    }
    let rest = &got[consumed..];
    if chunked {
        let mut dec = http::ChunkedDecoder::new(cap);
        let mut body = Vec::new();
        let p = dec.feed(rest, &mut body).map_err(|e| e.to_string())?;
        return match (p.done, eof || got.len() > limit) {
            (true, _) => Ok(Some(Got::Body(body))),
            (false, true) => Err("closed inside the chunked body".into()),
            (false, false) => Ok(None),
        };
    }
    match content_length {
        Some(n) if n > cap => Err(format!("body of {n} bytes, larger than {cap}")),
        Some(n) if rest.len() >= n => Ok(Some(Got::Body(rest[..n].to_vec()))),
        Some(_) if eof => Err("closed before the end of the body".into()),
        Some(_) => Ok(None),
        None if rest.len() > cap => Err(format!("body larger than {cap} bytes")),
        None if eof => Ok(Some(Got::Body(rest.to_vec()))),
        None => Ok(None),
    }
}

/// A TCP stream to `host:port`: through the first SOCKS5 upstream that gets us there, or
/// directly (resolving `host` with the configured resolver) when there are none.
fn connect(host: &str, port: u16, net: &Net, deadline: Instant) -> Result<TcpStream, String> {
    let wait = || {
        deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), net.timeout)
    };
    if net.socks.is_empty() {
        let addrs = super::resolve::resolve(net.dns.as_ref(), host, port, wait())
            .map_err(|e| e.to_string())?;
        let mut last = format!("{host} has no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, wait()) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(net.timeout));
                    return Ok(s);
                }
                Err(e) => last = format!("cannot connect to {a}: {e}"),
            }
        }
        return Err(last);
    }
    let target = match host.parse() {
        Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Err(_) => Target::Domain(host.to_string(), port),
    };
    let mut last = String::from("no usable SOCKS5 upstream");
    for (addr, auth) in &net.socks {
        let Some(addr) = addr else { continue };
        let tunnel = TcpStream::connect_timeout(addr, wait())
            .map_err(|e| format!("cannot connect to the proxy at {addr}: {e}"))
            .and_then(|mut s| {
                let d = Instant::now() + wait();
                socks5_negotiate(&mut s, *addr, auth.clone(), target.clone(), d)
                    .map(|()| s)
                    .map_err(|e| e.0)
            });
        match tunnel {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(net.timeout));
                return Ok(s);
            }
            Err(e) => last = format!("SOCKS5 upstream: {e}"),
        }
    }
    Err(last)
}

/// Why [`socks5_tunnel`] failed: what to say, and the SOCKS5 reply when the upstream refused
/// the CONNECT (its target side, rather than the upstream itself, may be at fault).
#[derive(Debug)]
pub(crate) struct TunnelError(
    pub(crate) String,
    pub(crate) Option<crate::proto::socks5::Socks5Error>,
);

/// A blocking SOCKS5 CONNECT to `target` over `s`, a connection to the upstream at `via` (the
/// sans-IO client over a plain socket), all within `deadline`. For background threads and the
/// CLI, never a worker.
#[inline(never)]
pub(crate) fn socks5_negotiate(
    s: &mut std::net::TcpStream,
    via: SocketAddr,
    auth: Option<(String, String)>,
    target: crate::proto::socks5::Target,
    deadline: std::time::Instant,
) -> Result<(), TunnelError> {
    use crate::proto::socks5::{OUT_MAX, Socks5Client, Step};
    use std::io::{Read, Write};
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let err = |what: &str, e: &dyn std::fmt::Display| {
        TunnelError(format!("{what} the proxy at {via}: {e}"), None)
    };
    let mut client = Socks5Client::new(target, auth);
    let mut out = [0u8; OUT_MAX];
    let n = client.initial(&mut out);
    let _ = s.set_write_timeout(Some(left().max(Duration::from_millis(1))));
    s.write_all(&out[..n])
        .map_err(|e| err("cannot write to", &e))?;
    let mut input = [0u8; 1024];
    let mut have = 0usize;
    loop {
        match client.handle(&input[..have], &mut out) {
            Step::NeedMore => {
                let wait = left();
                if wait.is_zero() {
                    return Err(TunnelError(
                        format!("the proxy at {via} did not answer in time"),
                        None,
                    ));
                }
                if have == input.len() {
                    return Err(TunnelError("oversized reply".into(), None));
                }
                let _ = s.set_read_timeout(Some(wait));
                match s.read(&mut input[have..]) {
                    Ok(0) => {
                        return Err(TunnelError(
                            format!("the proxy at {via} closed the connection"),
                            None,
                        ));
                    }
                    Ok(n) => have += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err("no answer from", &e)),
                }
            }
            Step::Send { consumed, len } => {
                s.write_all(&out[..len])
                    .map_err(|e| err("cannot write to", &e))?;
                let consumed = consumed.min(have);
                input.copy_within(consumed..have, 0);
                have -= consumed;
            }
            Step::Connected { .. } => return Ok(()),
            Step::Failed(e) => {
                return Err(TunnelError(
                    format!("the proxy at {via} answered: {e}"),
                    Some(e),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: Result<Option<Got>, String>) -> Result<Option<Vec<u8>>, String> {
        r.map(|g| {
            g.map(|g| match g {
                Got::Body(b) => b,
                Got::Redirect(to) => format!("redirect {to}").into_bytes(),
            })
        })
    }

    #[test]
    fn responses_are_framed_and_bad_statuses_refused() {
        let b = "http://h";
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        for cut in 0..whole.len() {
            assert_eq!(body(response(&whole[..cut], 100, 999, false, b)), Ok(None));
            assert!(
                response(&whole[..cut], 100, 999, true, b).is_err(),
                "cut {cut}"
            );
        }
        assert_eq!(
            body(response(&whole, 100, 999, false, b)),
            Ok(Some(b"hello".to_vec()))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            body(response(chunked, 100, 999, false, b)),
            Ok(Some(b"abc".to_vec()))
        );
        let close = b"HTTP/1.0 200 OK\r\n\r\nxyz";
        assert_eq!(body(response(close, 100, 999, false, b)), Ok(None));
        assert_eq!(
            body(response(close, 100, 999, true, b)),
            Ok(Some(b"xyz".to_vec()))
        );
        let e = response(
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            100,
            999,
            true,
            b,
        );
        assert_eq!(body(e), Err("HTTP status 500".into()));
        let r = response(
            b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n",
            100,
            999,
            true,
            b,
        );
        assert_eq!(body(r), Ok(Some(b"redirect http://h/x".to_vec())));
        let e = response(b"HTTP/1.1 302 Found\r\n\r\n", 100, 999, true, b);
        assert_eq!(body(e), Err("HTTP status 302".into()));
        let e = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
            100,
            999,
            false,
            b,
        );
        assert!(body(e).unwrap_err().contains("larger"));
    }
}
