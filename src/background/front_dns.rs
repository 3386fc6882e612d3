//! The fronting site's addresses: its host name resolved now and every few minutes, on a
//! thread of its own (a DNS query never blocks a worker), published in [`Shared`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::resolve;
use crate::io::Shared;
use crate::log::Level;

/// How often the fronting site's host name is resolved again.
const FRONT_REFRESH: Duration = Duration::from_secs(300);

/// Resolves the fronting site's host name now and every [`FRONT_REFRESH`], on a thread of its
/// own (a DNS query never blocks a worker). Until the first answer, failed handshakes are
/// closed instead of fronted. Ends when the proxy stops.
pub(crate) fn spawn(shared: Arc<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("mtpx-front-dns".into())
        .spawn(move || {
            let host = shared.config.secret.host.clone();
            let port = shared.config.domain_fronting.port;
            let dns = shared.config.nameserver();
            let mut next = std::time::Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                if std::time::Instant::now() >= next {
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
                            shared.set_resolved_front_addrs(addrs);
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
                    next = std::time::Instant::now() + retry;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    if let Err(e) = spawned {
        crate::log_event!(Level::Warn, "fronting-resolver-not-started", error = e);
    }
}
