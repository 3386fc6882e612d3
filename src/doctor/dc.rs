//! Section **Telegram DCs**: a TCP connect to every DC, in the proxy's own address order.
use super::{Check, Status, connect_wait, crashed, dial, fmt_elapsed, parallel};
use crate::config::Config;
use crate::proto::dc::DcTable;

pub(super) fn dc_checks(config: &Config) -> Vec<Check> {
    const S: &str = "Telegram DCs";
    let table = DcTable::new(config.prefer_ip, &config.dc_overrides);
    let wait = connect_wait(config);
    let ids: Vec<i16> = table.known_ids().collect();
    if ids.is_empty() {
        return vec![Check::new(
            S,
            "DCs",
            Status::Fail,
            format!(
                "no DC address for prefer-ip = {}",
                config.prefer_ip.as_str()
            ),
            Some("set prefer-ip to a family this host has".into()),
        )];
    }
    parallel(&ids, |&id| {
        let name = format!("DC {id}");
        let overridden = config.dc_overrides.iter().any(|(d, _)| *d == id);
        let Some(addrs) = table.lookup(id) else {
            return Check::new(S, name, Status::Fail, "no address", None);
        };
        let (ok, errors) = dial(addrs, wait);
        match ok {
            Some((_, addr, t)) if errors.is_empty() => Check::new(
                S,
                name,
                Status::Ok,
                format!("{addr} in {}", fmt_elapsed(t)),
                None,
            ),
            Some((_, addr, t)) => Check::new(
                S,
                name,
                Status::Warn,
                format!(
                    "{addr} in {}, after {} failed",
                    fmt_elapsed(t),
                    errors.join("; ")
                ),
                Some(format!(
                    "every connection to this DC tries the failing address first: set \
                     prefer-ip (now {}) to the family that works here{}",
                    config.prefer_ip.as_str(),
                    if overridden {
                        ", or fix [network.dc-overrides]"
                    } else {
                        ""
                    }
                )),
            ),
            // With SOCKS5 upstreams the proxy never dials a DC directly.
            None if !config.proxies.is_empty() => Check::new(
                S,
                name,
                Status::Warn,
                errors.join("; "),
                Some(
                    "not reachable directly; the proxy goes through [network] proxies, so \
                     this matters only for the SOCKS5 checks below"
                        .into(),
                ),
            ),
            None => Check::new(
                S,
                name,
                Status::Fail,
                errors.join("; "),
                Some(if overridden {
                    "this DC's address comes from [network.dc-overrides]: check it".to_string()
                } else {
                    "Telegram is not reachable from this host: check the firewall and routing \
                     (prefer-ip = only-ipv4 if IPv6 is broken)"
                        .to_string()
                }),
            ),
        }
    })
    .into_iter()
    .map(|c| c.unwrap_or_else(|| crashed(S)))
    .collect()
}
