//! Sections **Fronting site** (a TCP connect, then Telegram-shaped ClientHellos to learn the
//! site's TLS 1.3 first flight, as the scout does) and **SNI-DNS match** (does the secret's
//! host resolve to this server's public address?).
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use super::{Check, RESOLVE_WAIT, Status, connect_wait, dial, fmt_elapsed, join, short_err};
use crate::background::{resolve, scout};
use crate::config::Config;
use crate::proto::secret::SecretKind;
use crate::proto::tlsprofile::Profile;

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
    let addrs = match config.domain_fronting.ip {
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
    let profile = Mutex::new(Profile::default());
    let (summary, answered) = scout::raid(&order, host, repeats.max(1), wait, &profile);
    let name = "TLS shape";
    out.push(if answered == 0 {
        Check::new(
            S,
            name,
            Status::Warn,
            format!(
                "no TLS answer to {} Telegram-shaped ClientHello(s); the proxy falls back to its \
                 built-in handshake shape",
                repeats.max(1)
            ),
            Some(format!(
                "is {host}:{port} a TLS 1.3 (HTTPS) site? check [domain-fronting] port"
            )),
        )
    } else if summary.samples == 0 {
        Check::new(
            S,
            name,
            Status::Warn,
            format!("{answered} answer(s): {summary}"),
            Some(
                "the fake handshake cannot copy this site's: front a site that answers with \
                 TLS 1.3 and x25519"
                    .into(),
            ),
        )
    } else if let Some(advice) = summary.advice() {
        Check::new(
            S,
            name,
            Status::Warn,
            summary.to_string(),
            Some(advice.to_string()),
        )
    } else {
        Check::new(S, name, Status::Ok, summary.to_string(), None)
    });
    out
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
