//! Section **SOCKS5 upstreams**: a SOCKS5 CONNECT to DC 2 through each `[network] proxies` URL.
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{
    Check, RESOLVE_WAIT, Status, connect_wait, crashed, dial, fmt_elapsed, parallel, short_err,
};
use crate::background::resolve;
use crate::config::Config;
use crate::proto::dc::{DEFAULT_DC, DcTable};
use crate::proto::socks5::{self, Socks5Error, Target};

/// The URL without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Why a SOCKS5 CONNECT failed: at the proxy itself, or at the target it was asked for.
enum SocksFailure {
    Proxy(String),
    Target(String),
}

pub(super) fn socks5_checks(config: &Config) -> Vec<Check> {
    const S: &str = "SOCKS5 upstreams";
    if config.proxies.is_empty() {
        return vec![Check::new(
            S,
            "proxies",
            Status::Ok,
            "none configured: DCs are dialled directly",
            None,
        )];
    }
    let table = DcTable::new(config.prefer_ip, &config.dc_overrides);
    let targets: Vec<SocketAddr> = table
        .lookup(DEFAULT_DC)
        .map(<[SocketAddr]>::to_vec)
        .unwrap_or_default();
    let wait = connect_wait(config);
    let dns = config.nameserver();
    parallel(&config.proxies, |url| {
        socks5_check(url, dns.as_ref(), &targets, wait)
    })
    .into_iter()
    .map(|c| c.unwrap_or_else(|| crashed(S)))
    .collect()
}

fn socks5_check(
    url: &str,
    dns: Option<&crate::formats::dns::Nameserver>,
    targets: &[SocketAddr],
    wait: Duration,
) -> Check {
    const S: &str = "SOCKS5 upstreams";
    let name = redact(url);
    let p = match socks5::parse_url(url) {
        Ok(p) => p,
        Err(e) => {
            return Check::new(
                S,
                name,
                Status::Fail,
                e,
                Some("expected socks5://[user:password@]host[:port]".into()),
            );
        }
    };
    let servers = match &p.server {
        Target::Ip(a) => vec![*a],
        Target::Domain(h, port) => match resolve::resolve(dns, h, *port, RESOLVE_WAIT) {
            Ok(a) => a,
            Err(e) => {
                return Check::new(
                    S,
                    name,
                    Status::Fail,
                    short_err(&e),
                    Some("the proxy's host name must resolve from this server".into()),
                );
            }
        },
    };
    let mut failed = Vec::new();
    for &target in targets {
        match socks5_connect(&servers, p.auth.clone(), target, wait) {
            Ok((via, t)) => {
                let mut msg = format!(
                    "CONNECT to DC {DEFAULT_DC} at {target} through {via} in {}",
                    fmt_elapsed(t)
                );
                if failed.is_empty() {
                    return Check::new(S, name, Status::Ok, msg, None);
                }
                let _ = write!(msg, ", after {} failed", failed.join("; "));
                return Check::new(
                    S,
                    name,
                    Status::Warn,
                    msg,
                    Some("the proxy cannot reach the preferred DC address: check prefer-ip".into()),
                );
            }
            Err(SocksFailure::Target(e)) => failed.push(format!("{target}: {e}")),
            Err(SocksFailure::Proxy(e)) => {
                return Check::new(
                    S,
                    name,
                    Status::Fail,
                    e,
                    Some("check the proxy's address, port and credentials".into()),
                );
            }
        }
    }
    if failed.is_empty() {
        failed.push(format!("no address for DC {DEFAULT_DC}"));
    }
    Check::new(
        S,
        name,
        Status::Fail,
        format!(
            "the proxy could not reach DC {DEFAULT_DC}: {}",
            failed.join("; ")
        ),
        Some("the proxy answers, but cannot reach Telegram: check its network".into()),
    )
}

/// A SOCKS5 CONNECT to `target` through the first reachable of `servers`, driven by the
/// sans-IO client over a blocking socket; the whole exchange within `wait`.
fn socks5_connect(
    servers: &[SocketAddr],
    auth: Option<(String, String)>,
    target: SocketAddr,
    wait: Duration,
) -> Result<(SocketAddr, Duration), SocksFailure> {
    let start = Instant::now();
    let (stream, errors) = dial(servers, wait);
    let Some((mut stream, via, _)) = stream else {
        return Err(SocksFailure::Proxy(format!(
            "cannot reach the proxy: {}",
            errors.join("; ")
        )));
    };
    match crate::background::fetch::socks5_negotiate(
        &mut stream,
        via,
        auth,
        Target::Ip(target),
        start + wait,
    ) {
        Ok(()) => Ok((via, start.elapsed())),
        Err(crate::background::fetch::TunnelError(_, Some(e)))
            if matches!(
                e,
                Socks5Error::GeneralFailure
                    | Socks5Error::NotAllowed
                    | Socks5Error::NetworkUnreachable
                    | Socks5Error::HostUnreachable
                    | Socks5Error::ConnectionRefused
                    | Socks5Error::TtlExpired
            ) =>
        {
            Err(SocksFailure::Target(e.to_string()))
        }
        Err(crate::background::fetch::TunnelError(msg, _)) => Err(SocksFailure::Proxy(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("socks5://u:pw@1.2.3.4:1080"),
            "socks5://u:***@1.2.3.4:1080"
        );
        assert_eq!(redact("socks5://u@h"), "socks5://u:***@h");
        assert_eq!(redact("socks5://h:1"), "socks5://h:1");
        assert_eq!(
            short_err(&std::io::Error::from_raw_os_error(111)),
            "Connection refused"
        );
    }
}
