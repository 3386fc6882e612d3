//! The fronting sites' addresses: each host name (the default site's, and the users' other
//! FakeTLS hosts) resolved now and every few minutes, on a thread of its own (a DNS query never
//! blocks a worker), published in [`Shared::sites`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::resolve;
use crate::io::Shared;
use crate::log::Level;

/// How often the fronting site's host name is resolved again.
const FRONT_REFRESH: Duration = Duration::from_secs(300);

/// Resolves the fronting sites' host names now and every [`FRONT_REFRESH`] (sites added later
/// within 200 ms), on a thread of its own. Until a site's first answer, handshakes failed
/// toward it are closed instead of fronted. With `scout_from`, also starts the scouts of the
/// sites from that index on as they appear (a reload's new hosts; at most
/// [`crate::io::MAX_SCOUTS`] in all). Ends when the proxy stops.
pub(crate) fn spawn(shared: Arc<Shared>, scout_from: Option<usize>) {
    let spawned = std::thread::Builder::new()
        .name("mtpx-front-dns".into())
        .spawn(move || {
            // Scouts of the sites from index `scout_from` on (added by reloads), stopped when
            // the proxy stops.
            let mut scouts = Vec::new();
            let mut scouted = scout_from.unwrap_or(usize::MAX);
            let budget = crate::io::MAX_SCOUTS.saturating_sub(scout_from.unwrap_or(0));
            let port = shared.config.domain_fronting.port;
            let dns = shared.config.nameserver();
            // When each site (by index) is due: every site named by host, the default one and
            // those of the users' other hosts (added by reloads too).
            let mut next: Vec<std::time::Instant> = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) {
                let all = if scouted == usize::MAX {
                    Vec::new()
                } else {
                    shared.sites.all()
                };
                for (site, host, profiles) in all.iter().skip(scouted) {
                    if scouts.len() < budget {
                        scouts.extend(crate::io::spawn_scout(&shared, *site, host, profiles));
                    }
                }
                if scouted != usize::MAX {
                    scouted = scouted.max(all.len());
                }
                for (site, host) in shared.sites.to_resolve() {
                    if next.len() <= site {
                        next.resize(site + 1, std::time::Instant::now());
                    }
                    if std::time::Instant::now() < next[site] {
                        continue;
                    }
                    let mut retry = Duration::from_secs(30);
                    match resolve::resolve(dns.as_ref(), &host, port, Duration::from_secs(10)) {
                        Ok(addrs) if !addrs.is_empty() => {
                            retry = FRONT_REFRESH;
                            crate::log_event!(
                                Level::Debug,
                                "fronting-resolved",
                                host = host,
                                addresses = addrs.len()
                            );
                            shared.set_resolved_front_addrs(site, addrs);
                        }
                        Ok(_) => {}
                        Err(e) => crate::log_event!(
                            Level::Warn,
                            "fronting-resolve-failed",
                            host = host,
                            error = e,
                            hint = "set [domain-fronting] ip to skip DNS"
                        ),
                    }
                    next[site] = std::time::Instant::now() + retry;
                    if shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            for s in scouts {
                s.stop();
            }
        });
    if let Err(e) = spawned {
        crate::log_event!(Level::Warn, "fronting-resolver-not-started", error = e);
    }
}
