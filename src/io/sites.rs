//! The fronting sites: one per distinct FakeTLS host the users name (issue 15), each with its
//! addresses (resolved in the background, never one of our own listeners) and the TLS shape
//! the scout learned of it. Site 0 is the default one: the config's `secret` host, with
//! `[domain-fronting] ip` when set; a handshake that names no user (a dd/classic probe, a hello
//! whose SNI names none of our hosts) is fronted there.
//!
//! I/O layer. A handshake looks a site up once (one short lock) when it fronts or shapes a
//! flight for a host other than the default one; the table only grows (a reload's new hosts
//! are added when first used), bounded by [`MAX_SITES`] (past it, site 0 stands in).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::tlsprofile::Profiles;
use crate::proto::users::MAX_USERS;

/// Most sites kept: every user's host plus the default, twice over (reloads may bring new
/// hosts).
pub(crate) const MAX_SITES: usize = 2 * MAX_USERS + 1;

/// One fronting site.
pub(crate) struct Site {
    /// Its host name (the SNI of its users' links).
    pub(crate) host: String,
    /// Where it is reached.
    addrs: Vec<SocketAddr>,
    /// Its addresses come from DNS.
    pub(crate) dns: bool,
    /// What its first TLS flight looks like (learned by a scout).
    pub(crate) profiles: Arc<Mutex<Profiles>>,
}

/// Every fronting site, by index.
pub(crate) struct Sites {
    inner: Mutex<Table>,
    port: u16,
    post_quantum: bool,
}

struct Table {
    sites: Vec<Site>,
    index: BTreeMap<String, usize>,
}

/// The addresses of `host` known without DNS: an IP literal, or `localhost`.
pub(crate) fn literal_addrs(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(vec![
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    None
}

impl Sites {
    /// The table with the default site: `host`, its `addrs` (empty: to be resolved when
    /// `dns`), its `profiles`; other sites on `port`.
    pub(crate) fn new(
        host: &str,
        addrs: Vec<SocketAddr>,
        dns: bool,
        profiles: Arc<Mutex<Profiles>>,
        port: u16,
        post_quantum: bool,
    ) -> Sites {
        let mut index = BTreeMap::new();
        index.insert(host.to_owned(), 0);
        Sites {
            inner: Mutex::new(Table {
                sites: vec![Site {
                    host: host.to_owned(),
                    addrs,
                    dns,
                    profiles,
                }],
                index,
            }),
            port,
            post_quantum,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The site of `host`, added if new (its addresses then come from DNS unless `host` is an
    /// IP literal or `localhost`). An empty host, or a full table: the default site.
    pub(crate) fn index(
        &self,
        host: &str,
        drop_loops: impl Fn(Vec<SocketAddr>) -> Vec<SocketAddr>,
    ) -> usize {
        if host.is_empty() {
            return 0;
        }
        let mut t = self.lock();
        if let Some(&i) = t.index.get(host) {
            return i;
        }
        if t.sites.len() >= MAX_SITES {
            return 0;
        }
        let literal = literal_addrs(host, self.port);
        let i = t.sites.len();
        t.sites.push(Site {
            host: host.to_owned(),
            dns: literal.is_none(),
            addrs: drop_loops(literal.unwrap_or_default()),
            profiles: Arc::new(Mutex::new(Profiles::new(self.post_quantum))),
        });
        t.index.insert(host.to_owned(), i);
        i
    }

    /// The site's `idx`-th address, if any.
    pub(crate) fn addr(&self, site: usize, idx: usize) -> Option<SocketAddr> {
        self.lock().sites.get(site)?.addrs.get(idx).copied()
    }

    /// The site's learned TLS shapes.
    pub(crate) fn profiles(&self, site: usize) -> Option<Arc<Mutex<Profiles>>> {
        self.lock().sites.get(site).map(|s| s.profiles.clone())
    }

    /// Replaces the site's addresses (after a resolution).
    pub(crate) fn set_addrs(&self, site: usize, addrs: Vec<SocketAddr>) {
        if let Some(s) = self.lock().sites.get_mut(site) {
            s.addrs = addrs;
        }
    }

    /// The sites whose addresses come from DNS: `(index, host)`.
    pub(crate) fn to_resolve(&self) -> Vec<(usize, String)> {
        let t = self.lock();
        let named = t.sites.iter().enumerate().filter(|(_, s)| s.dns);
        named.map(|(i, s)| (i, s.host.clone())).collect()
    }

    /// Every site: `(index, host, profiles)`.
    pub(crate) fn all(&self) -> Vec<(usize, String, Arc<Mutex<Profiles>>)> {
        let t = self.lock();
        let all = t.sites.iter().enumerate();
        all.map(|(i, s)| (i, s.host.clone(), s.profiles.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_added_once_per_host_and_literals_need_no_dns() {
        let p = Arc::new(Mutex::new(Profiles::new(false)));
        let s = Sites::new("a.example", vec![], true, p, 443, false);
        let keep = |v: Vec<SocketAddr>| v;
        assert_eq!(s.index("", keep), 0);
        assert_eq!(s.index("a.example", keep), 0);
        assert_eq!(s.index("b.example", keep), 1);
        assert_eq!(s.index("127.0.0.2", keep), 2);
        assert_eq!(s.index("b.example", keep), 1);
        assert_eq!(s.addr(2, 0), Some("127.0.0.2:443".parse().unwrap()));
        assert_eq!(s.addr(1, 0), None);
        let hosts: Vec<String> = s.to_resolve().into_iter().map(|(_, h)| h).collect();
        assert_eq!(hosts, ["a.example", "b.example"]);
        s.set_addrs(1, vec!["127.0.0.3:443".parse().unwrap()]);
        assert_eq!(s.addr(1, 0), Some("127.0.0.3:443".parse().unwrap()));
        // Self-loops are dropped for literal hosts too.
        assert_eq!(s.index("127.0.0.9", |_| Vec::new()), 3);
        assert_eq!(s.addr(3, 0), None);
    }
}
