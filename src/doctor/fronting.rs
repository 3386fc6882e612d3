//! Sections **Fronting site** (a TCP connect, then Telegram-shaped ClientHellos to learn the
//! site's TLS 1.3 first flight, as the scout does) and **SNI-DNS match** (does the secret's
//! host resolve to this server's public address?).
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use super::{Check, RESOLVE_WAIT, Status, connect_wait, dial, fmt_elapsed, join, short_err};
use crate::background::{resolve, scout};
use crate::config::Config;
use crate::proto::secret::SecretKind;
use crate::proto::tlsprofile::{HelloKind, Profiles};

fn not_fronting(config: &Config) -> Option<&'static str> {
    match config.secret.kind {
        SecretKind::FakeTls => None,
        SecretKind::Secure => {
            Some("not used: the secret is a dd secret (only ee secrets front a site)")
        }
        SecretKind::Classic => {
            Some("not used: the secret is a classic secret (only ee secrets front a site)")
        }
    }
}

pub(super) fn fronting_checks(config: &Config, repeats: u32) -> Vec<Check> {
    const S: &str = "Fronting site";
    if let Some(why) = not_fronting(config) {
        return vec![Check::new(S, "fronting", Status::Ok, why, None)];
    }
    let host = config.secret.host.as_str();
    let port = config.domain_fronting.port;
    let wait = connect_wait(config);
    let mut addrs = match config.domain_fronting.ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match resolve::resolve(config.nameserver().as_ref(), host, port, RESOLVE_WAIT) {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                return vec![Check::new(S, host, Status::Fail, "no address", None)];
            }
            Err(e) => {
                return vec![Check::new(
                    S,
                    host,
                    Status::Fail,
                    short_err(&e),
                    Some(
                        "the secret's host must resolve from this server (or set \
                         [domain-fronting] ip)"
                            .into(),
                    ),
                )];
            }
        },
    };
    let mut out = Vec::new();
    // Never this proxy itself: the proxy refuses such an address (and closes failed
    // handshakes instead); probing it here would only reach ourselves.
    let own = crate::io::own_listeners(config, config.bind_to);
    let (loops, rest): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(crate::io::self_loop_test(&own));
    addrs = rest;
    if !loops.is_empty() {
        out.push(Check::new(
            S,
            format!("{host}:{port}"),
            Status::Fail,
            format!(
                "{} is this proxy's own listener ({}): failed handshakes would be passed back \
                 to mtpx itself, so the proxy closes them instead",
                join(&loops),
                config.bind_to
            ),
            Some(
                "set [domain-fronting] ip (and port) to the real site, or a web server on \
                 another port; a secret's host that resolves to this server needs them"
                    .into(),
            ),
        ));
        if addrs.is_empty() {
            return out;
        }
    }
    let (ok, errors) = dial(&addrs, wait);
    let Some((stream, addr, t)) = ok else {
        out.push(Check::new(
            S,
            format!("{host}:{port}"),
            Status::Fail,
            format!("unreachable: {}", errors.join("; ")),
            Some(
                "connections that fail the FakeTLS check are passed to this site, so it must \
                 be reachable from the server: check [domain-fronting] ip / port"
                    .into(),
            ),
        ));
        return out;
    };
    drop(stream);
    out.push(Check::new(
        S,
        format!("{host}:{port}"),
        Status::Ok,
        format!("connected to {addr} in {}", fmt_elapsed(t)),
        None,
    ));
    // Probe the address that answered first, then the others.
    let mut order = vec![addr];
    order.extend(addrs.iter().copied().filter(|a| *a != addr));
    let profiles = Mutex::new(Profiles::new(config.doppelganger.post_quantum));
    for r in scout::raid(&order, host, repeats.max(1), wait, &profiles) {
        out.push(shape_check(r, repeats.max(1), host, port));
    }
    let p = profiles.into_inner().unwrap_or_else(|p| p.into_inner());
    if !p.mirrors_pq() && p.get(HelloKind::PostQuantum).summary().group == Some(0x11ec) {
        out.push(Check::new(
            S,
            "post-quantum",
            Status::Warn,
            "off: clients offering X25519MLKEM768 get x25519, which this site never answers them"
                .to_string(),
            Some(
                "[defense.doppelganger] post-quantum = \"mirror\" unless a client library \
                 needs a short ServerHello"
                    .into(),
            ),
        ));
    }
    out
}

/// The "TLS shape" check of one kind of hello: can the fake flight answer it as the site does?
fn shape_check(r: scout::KindReport, repeats: u32, host: &str, port: u16) -> Check {
    const S: &str = "Fronting site";
    let summary = r.summary;
    let name = format!("TLS shape ({} hello)", r.kind.as_str());
    if r.answered == 0 {
        return Check::new(
            S,
            name,
            Status::Warn,
            format!(
                "no TLS answer to {repeats} browser-like ClientHello(s); the proxy falls back to \
                 its built-in handshake shape"
            ),
            Some(format!(
                "is {host}:{port} a TLS 1.3 (HTTPS) site? check [domain-fronting] port"
            )),
        );
    }
    if r.older_than_clients() {
        return Check::new(
            S,
            name,
            Status::Warn,
            format!("{} answer(s): {summary}", r.answered),
            Some(
                "today's Telegram clients offer X25519MLKEM768 and this site does not answer \
                 with it (nor, maybe, with TLS 1.3): a front older than its clients stands out; \
                 front a site on TLS 1.3 with X25519MLKEM768 (OpenSSL >= 3.5, BoringSSL, Go >= \
                 1.24)"
                    .into(),
            ),
        );
    }
    if summary.samples == 0 {
        return Check::new(
            S,
            name,
            Status::Warn,
            format!("{} answer(s): {summary}", r.answered),
            Some(
                "the fake handshake cannot copy this site's: front a site that answers with \
                 TLS 1.3 and x25519 or X25519MLKEM768"
                    .into(),
            ),
        );
    }
    match summary.advice() {
        Some(advice) => Check::new(
            S,
            name,
            Status::Warn,
            summary.to_string(),
            Some(advice.to_string()),
        ),
        None => Check::new(S, name, Status::Ok, format!("matched: {summary}"), None),
    }
}

pub(super) fn sni_checks(config: &Config) -> Vec<Check> {
    const S: &str = "SNI-DNS match";
    if let Some(why) = not_fronting(config) {
        return vec![Check::new(
            S,
            "SNI",
            Status::Ok,
            why.replace("front a site", "carry a host name"),
            None,
        )];
    }
    let host = config.secret.host.as_str();
    let mut ips: Vec<IpAddr> =
        match resolve::resolve(config.nameserver().as_ref(), host, 443, RESOLVE_WAIT) {
            Ok(a) => a.iter().map(SocketAddr::ip).collect(),
            Err(e) => {
                return vec![Check::new(
                    S,
                    host,
                    Status::Fail,
                    short_err(&e),
                    Some(
                        "clients send this name in their TLS hello: a name that does not resolve \
                     stands out; pick a real site"
                            .into(),
                    ),
                )];
            }
        };
    ips.dedup();
    let publics: Vec<IpAddr> = config
        .public_ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(config.public_ipv6.map(IpAddr::V6))
        .collect();
    if publics.is_empty() {
        return vec![Check::new(
            S,
            host,
            Status::Warn,
            format!(
                "resolves to {}; this server's address is unknown",
                join(&ips)
            ),
            Some("set public-ipv4 / public-ipv6 to check".into()),
        )];
    }
    match ips.iter().find(|ip| publics.contains(ip)) {
        Some(ip) => vec![Check::new(
            S,
            host,
            Status::Ok,
            format!("resolves to {ip}, this server's public address"),
            None,
        )],
        None => vec![Check::new(
            S,
            host,
            Status::Warn,
            format!(
                "resolves to {}, not to this server ({})",
                join(&ips),
                join(&publics)
            ),
            Some(
                "a censor comparing the TLS name with the server's address sees a mismatch: \
                 front a domain whose DNS points here, or accept the risk"
                    .into(),
            ),
        )],
    }
}
