//! Section **Middle proxies** (only with an `ad-tag`): Telegram's proxy config and proxy
//! secret load (from the URLs or files the proxy uses), and one middle proxy for DC 2 accepts a
//! TCP connection and the RPC handshake with that secret.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{Check, Status, connect_wait, fmt_elapsed, short_err};
use crate::config::Config;
use crate::proto::dc::{DEFAULT_DC, PreferIp};

pub(super) fn middle_checks(config: &Config) -> Vec<Check> {
    use crate::background::telegram::{LiveDc, Telegram};
    const S: &str = "Middle proxies";
    if !config.has_ad_tag() {
        return Vec::new();
    }
    let upstreams = crate::io::socks_upstreams(config)
        .into_iter()
        .map(|u| (u.addr, u.auth))
        .collect();
    let t = Telegram::new(config, std::sync::Arc::new(LiveDc::new(config)), upstreams);
    let mut checks: Vec<Check> = t
        .check_now()
        .into_iter()
        .map(|(src, r)| match r {
            Ok(msg) => Check::new(S, src, Status::Ok, msg, None),
            Err(e) => Check::new(
                S,
                src,
                Status::Fail,
                e,
                Some(
                    "fetch it with curl into a file and name it in [network] proxy-config-files \
                     / proxy-secret-file"
                        .into(),
                ),
            ),
        })
        .collect();
    let list = t.middle_proxies().for_dc(DEFAULT_DC);
    let family_rank = |a: &SocketAddr| match (config.prefer_ip, a.is_ipv6()) {
        (PreferIp::OnlyIpv4, true) | (PreferIp::OnlyIpv6, false) => None,
        (PreferIp::PreferIpv6, v6) => Some(u8::from(!v6)),
        (_, v6) => Some(u8::from(v6)),
    };
    let mut candidates: Vec<SocketAddr> = list
        .iter()
        .copied()
        .filter(|a| family_rank(a).is_some())
        .collect();
    crate::proto::sort_small_by_key(&mut candidates, family_rank);
    let (Some(&target), Some(secret)) = (candidates.first(), t.proxy_secret()) else {
        return checks;
    };
    let name = format!("DC {DEFAULT_DC} middle proxy");
    let start = Instant::now();
    let public = (
        config.public_ipv4.map(IpAddr::V4),
        config.public_ipv6.map(IpAddr::V6),
    );
    let result = TcpStream::connect_timeout(&target, connect_wait(config))
        .map_err(|e| format!("cannot connect: {}", short_err(&e)))
        .and_then(|mut s| {
            crate::background::middle::handshake(&mut s, &secret, public, Duration::from_secs(5))
        });
    checks.push(match result {
        Ok(_) => Check::new(
            S,
            name,
            Status::Ok,
            format!(
                "RPC handshake with {target} in {}",
                fmt_elapsed(start.elapsed())
            ),
            None,
        ),
        Err(e) => Check::new(
            S,
            name,
            Status::Fail,
            format!("{target}: {e}"),
            Some(
                "a middle proxy refuses the handshake when the proxy secret is not Telegram's \
                 current one, this server's clock is off by more than 30 s, or (behind NAT) \
                 public-ipv4 / public-ipv6 is not this server's public address"
                    .into(),
            ),
        ),
    });
    checks
}
