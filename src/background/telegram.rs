//! Telegram's published proxy config, kept current (PROTOCOL.md §4): the DC 203 addresses that
//! `auto-update` follows, the middle proxies and their secret that an `ad-tag` needs.
//!
//! I/O layer. Sources are Telegram's URLs (`[network] proxy-config-urls`, `proxy-secret-url`;
//! `https://` through mtpx's TLS client, which checks no certificate, or `http://`), fetched
//! through the SOCKS5 upstreams when there are any; or local files (`proxy-config-files`,
//! `proxy-secret-file`) that an operator refreshes with curl, which then replace the URLs
//! entirely. Files are read synchronously at start (in force before the first client) and
//! again when they change (checked every [`MTIME_CHECK`]) or on SIGHUP; URLs at start, every
//! [`UPDATE_EACH`] and on SIGHUP, by the updater thread. Each source keeps its last good
//! content: a failed download, an HTTP error, or content [`crate::formats::proxy_config`] refuses
//! (anything but a well-formed config; a secret that is not 32..256 binary bytes) leaves
//! everything as it was, with a warning saying why. Changes are logged one line each.
//!
//! A file says nothing about its family: its addresses do (Telegram's IPv4 and IPv6 configs are
//! two files; one file may hold both).
//!
//! [`LiveDc`] is the DC table the workers read: an `Arc<DcTable>` swapped under a mutex when DC
//! 203 changes, with a generation counter. A worker keeps its own `Arc` clone in a thread-local
//! and looks at the mutex only when the generation moved, so a handshake's lookup costs one
//! atomic load (and, once after each hourly change, one uncontended lock); the relay never
//! reads the table.

use std::cell::RefCell;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::fetch::{Net, Upstream};
use super::lists::{FileStamp, MTIME_CHECK, file_stamp};
use crate::config::Config;
use crate::formats::proxy_config::{self, MAX_CONFIG_BYTES, ProxyConfig};
use crate::log::Level;
use crate::proto::dc::{DcAddrs, DcTable, PreferIp};

/// How often the URLs are fetched again (as mtg).
pub(crate) const UPDATE_EACH: Duration = Duration::from_secs(3600);
/// After a failed start-up fetch, how soon the URLs are tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest proxy-secret download.
const MAX_SECRET_BYTES: usize = 4096;
/// Upper bound of one download (redirects included), however slowly the server trickles.
const MAX_FETCH_TIME: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------------- LiveDc

thread_local! {
    static DC_CACHE: RefCell<Option<(u64, u64, Arc<DcTable>)>> = const { RefCell::new(None) };
}

/// The DC table in force, replaced when `auto-update` brings new DC 203 addresses.
pub(crate) struct LiveDc {
    id: u64,
    prefer: PreferIp,
    overrides: Vec<(i16, Vec<SocketAddr>)>,
    table: Mutex<(Arc<DcTable>, Vec<SocketAddr>)>,
    generation: AtomicU64,
}

impl LiveDc {
    /// The built-in table with the config's overrides.
    pub(crate) fn new(config: &Config) -> LiveDc {
        LiveDc {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            prefer: config.prefer_ip,
            overrides: config.dc_overrides.clone(),
            table: Mutex::new((
                Arc::new(DcTable::new(config.prefer_ip, &config.dc_overrides)),
                Vec::new(),
            )),
            generation: AtomicU64::new(0),
        }
    }

    /// The table in force now.
    pub(crate) fn snapshot(&self) -> Arc<DcTable> {
        lock(&self.table).0.clone()
    }

    /// The auto-updated DC 203 addresses in force.
    pub(crate) fn cdn(&self) -> Vec<SocketAddr> {
        lock(&self.table).1.clone()
    }

    /// Installs new auto-updated DC 203 addresses; false if they are the ones in force.
    pub(crate) fn set_cdn(&self, updated: &[SocketAddr]) -> bool {
        let mut t = lock(&self.table);
        if t.1 == updated {
            return false;
        }
        t.0 = Arc::new(DcTable::with_updates(self.prefer, &self.overrides, updated));
        t.1 = updated.to_vec();
        // Under the lock: a table and its generation are published together.
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// [`DcTable::lookup_or_fallback`] on the table in force, by value. Lock-free unless the
    /// table changed since this thread last looked.
    pub(crate) fn lookup_or_fallback(&self, dc: i16, fallback: bool) -> Option<(i16, DcAddrs)> {
        let look = |t: &DcTable| {
            t.lookup_or_fallback(dc, fallback)
                .map(|(n, a)| (n, DcAddrs::from_slice(a)))
        };
        let generation = self.generation.load(Ordering::Acquire);
        let cached = DC_CACHE.try_with(|c| {
            let mut slot = c.try_borrow_mut().ok()?;
            match slot.as_ref() {
                Some((id, g, t)) if *id == self.id && *g == generation => Some(look(t)),
                _ => {
                    let t = lock(&self.table).0.clone();
                    let g = self.generation.load(Ordering::Acquire);
                    let r = look(&t);
                    *slot = Some((self.id, g, t));
                    Some(r)
                }
            }
        });
        match cached {
            Ok(Some(r)) => r,
            _ => look(&self.snapshot()),
        }
    }
}

// ------------------------------------------------------------------------- published state

/// The middle proxies as published (all DCs, media ids negative).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MiddleProxies {
    /// `(dc, address)`, in source order, without duplicates.
    pub(crate) entries: Vec<(i16, SocketAddr)>,
    /// The `default` DC of the first source that names one.
    pub(crate) default_dc: Option<i16>,
}

impl MiddleProxies {
    /// The middle proxies for `dc` (exact id, else the default DC's), in order.
    pub(crate) fn for_dc(&self, dc: i16) -> Vec<SocketAddr> {
        let pick = |d: i16| -> Vec<SocketAddr> {
            self.entries
                .iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, a)| *a)
                .collect()
        };
        let exact = pick(dc);
        if !exact.is_empty() {
            return exact;
        }
        self.default_dc.map(pick).unwrap_or_default()
    }

    /// The `idx`-th middle proxy to try for `dc` (exact id, else the default DC's), without
    /// allocating: the preferred family first (per `prefer`; the other one left out with
    /// `only-*`), each family's list rotated by `rot` (a connection's random start, so that
    /// clients spread over the list). `None` past the end.
    pub(crate) fn pick(
        &self,
        dc: i16,
        prefer: PreferIp,
        rot: usize,
        idx: usize,
    ) -> Option<SocketAddr> {
        let exact = self.entries.iter().any(|(d, _)| *d == dc);
        let want = if exact { Some(dc) } else { self.default_dc };
        let want = want?;
        let families: &[bool] = match prefer {
            PreferIp::PreferIpv6 => &[true, false],
            PreferIp::PreferIpv4 => &[false, true],
            PreferIp::OnlyIpv6 => &[true],
            PreferIp::OnlyIpv4 => &[false],
        };
        let mut idx = idx;
        for &v6 in families {
            let of = |(d, a): &&(i16, SocketAddr)| *d == want && a.is_ipv6() == v6;
            let n = self.entries.iter().filter(of).count();
            if idx < n {
                return self
                    .entries
                    .iter()
                    .filter(of)
                    .nth((idx + rot) % n)
                    .map(|(_, a)| *a);
            }
            idx -= n;
        }
        None
    }
}

/// Where a piece of the config comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    fn new(s: &str, file: bool) -> Source {
        if file {
            Source::File(PathBuf::from(s))
        } else {
            Source::Url(s.to_string())
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, Source::File(_))
    }
}

/// What needs (re)loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reload {
    /// Every source.
    All,
    /// Files only (start-up).
    Files,
    /// URLs only.
    Urls,
    /// Files whose stamp changed.
    ChangedFiles,
}

#[derive(Default)]
struct SourceState<T> {
    last: Option<T>,
    stamp: Option<FileStamp>,
}

struct State {
    configs: Vec<SourceState<ProxyConfig>>,
    secret: SourceState<Vec<u8>>,
}

/// The proxy config's sources, their last good contents, and what was made of them.
pub(crate) struct Telegram {
    dc: Arc<LiveDc>,
    /// Follow DC 203 (`auto-update`).
    cdn: bool,
    /// Keep the middle-proxy list and secret (`ad-tag`).
    middle_on: bool,
    configs: Vec<Source>,
    secret_source: Option<Source>,
    net: Net,
    state: Mutex<State>,
    middle: Mutex<Arc<MiddleProxies>>,
    secret: Mutex<Option<Arc<Vec<u8>>>>,
    reload: AtomicBool,
    stop: AtomicBool,
    updater: Mutex<Option<std::thread::Thread>>,
}

impl Telegram {
    /// Reads the configured files at once (so that they are in force before the first
    /// client), without starting the updater ([`Telegram::start`] does both).
    pub(crate) fn new(config: &Config, dc: Arc<LiveDc>, socks: Vec<Upstream>) -> Arc<Telegram> {
        let cdn = config.auto_update;
        let middle_on = config.has_ad_tag();
        let files = !config.proxy_config_files.is_empty();
        let configs: Vec<Source> = if !(cdn || middle_on) {
            Vec::new()
        } else if files {
            config
                .proxy_config_files
                .iter()
                .map(|f| Source::new(f, true))
                .collect()
        } else {
            config
                .proxy_config_urls
                .iter()
                .map(|u| Source::new(u, false))
                .collect()
        };
        let secret_source = middle_on.then(|| match &config.proxy_secret_file {
            Some(f) => Source::new(f, true),
            None => Source::new(&config.proxy_secret_url, false),
        });
        let t = Arc::new(Telegram {
            dc,
            cdn,
            middle_on,
            state: Mutex::new(State {
                configs: configs.iter().map(|_| SourceState::default()).collect(),
                secret: SourceState::default(),
            }),
            configs,
            secret_source,
            net: Net::new(config, socks),
            middle: Mutex::new(Arc::new(MiddleProxies::default())),
            secret: Mutex::new(None),
            reload: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            updater: Mutex::new(None),
        });
        t.update(Reload::Files);
        t
    }

    /// [`Telegram::new`], then the updater thread when there is anything to follow. The thread
    /// ends after [`Telegram::stop`] or once the last `Arc` is gone.
    pub(crate) fn start(config: &Config, dc: Arc<LiveDc>, socks: Vec<Upstream>) -> Arc<Telegram> {
        let t = Telegram::new(config, dc, socks);
        if t.active() {
            let weak = Arc::downgrade(&t);
            match std::thread::Builder::new()
                .name("mtpx-tgconfig".into())
                .spawn(move || updater(weak))
            {
                Ok(h) => *lock(&t.updater) = Some(h.thread().clone()),
                Err(e) => {
                    crate::log_event!(Level::Warn, "tg-config-updater-not-started", error = e)
                }
            }
        }
        t
    }

    fn active(&self) -> bool {
        !self.configs.is_empty() || self.secret_source.is_some()
    }

    /// Reloads every source now (SIGHUP). Returns at once.
    pub(crate) fn reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Stops the updater (a download in progress finishes first, within its timeouts).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = lock(&self.updater).as_ref() {
            t.unpark();
        }
    }

    /// Loads every source now, on this thread, and says how each went: `(source, Ok(what was
    /// loaded) or Err(why not))`, the configs first, then the secret. For `doctor`.
    pub(crate) fn check_now(&self) -> Vec<(String, Result<String, String>)> {
        self.update(Reload::All)
    }

    /// The middle proxies in force (empty until a config was loaded).
    pub(crate) fn middle_proxies(&self) -> Arc<MiddleProxies> {
        lock(&self.middle).clone()
    }

    /// The middle proxies' secret in force, if one was loaded.
    pub(crate) fn proxy_secret(&self) -> Option<Arc<Vec<u8>>> {
        lock(&self.secret).clone()
    }

    /// Loads the sources `what` selects and publishes what changed.
    fn update(&self, what: Reload) -> Vec<(String, Result<String, String>)> {
        let pick = |src: &Source, stamp: Option<FileStamp>| match (what, src) {
            (Reload::All, _)
            | (Reload::Files, Source::File(_))
            | (Reload::Urls, Source::Url(_)) => true,
            (Reload::ChangedFiles, Source::File(p)) => {
                let now = file_stamp(p);
                now.is_some() && now != stamp
            }
            _ => false,
        };
        let mut changed = false;
        let mut report = Vec::new();
        for (i, src) in self.configs.iter().enumerate() {
            let stamp = lock(&self.state).configs[i].stamp;
            if !pick(src, stamp) {
                continue;
            }
            let before = if src.is_file() {
                file_stamp_of(src)
            } else {
                None
            };
            let got = self
                .load(src, MAX_CONFIG_BYTES)
                .and_then(|b| proxy_config::parse(&b).map_err(|e| e.to_string()));
            let mut st = lock(&self.state);
            let slot = &mut st.configs[i];
            let r = match got {
                Ok(cfg) => {
                    slot.stamp = before;
                    changed |= slot.last.as_ref() != Some(&cfg);
                    let n = cfg.entries.len();
                    slot.last = Some(cfg);
                    Ok(format!("{n} middle proxies"))
                }
                Err(e) => {
                    let had = slot.last.is_some();
                    drop(st);
                    failed(src, &e, had);
                    Err(e)
                }
            };
            report.push((src.describe(), r));
        }
        if changed {
            self.publish();
        }
        if let Some(src) = &self.secret_source {
            let stamp = lock(&self.state).secret.stamp;
            if pick(src, stamp) {
                report.push((src.describe(), self.load_secret(src)));
            }
        }
        report
    }

    #[inline(never)]
    fn load_secret(&self, src: &Source) -> Result<String, String> {
        let before = file_stamp_of(src);
        let got = self.load(src, MAX_SECRET_BYTES).and_then(|b| {
            proxy_config::check_secret(&b)
                .map(|()| b)
                .map_err(|e| e.to_string())
        });
        let mut st = lock(&self.state);
        let b = match got {
            Ok(b) => b,
            Err(e) => {
                let had = st.secret.last.is_some();
                drop(st);
                failed(src, &e, had);
                return Err(e);
            }
        };
        st.secret.stamp = before;
        let n = b.len();
        if st.secret.last.as_ref() != Some(&b) {
            let first = st.secret.last.is_none();
            st.secret.last = Some(b.clone());
            drop(st);
            *lock(&self.secret) = Some(Arc::new(b));
            crate::log_event!(
                Level::Info,
                if first {
                    "proxy-secret-loaded"
                } else {
                    "proxy-secret-changed"
                },
                source = src.describe(),
                bytes = n
            );
        }
        Ok(format!("{n} bytes"))
    }

    /// Recomputes the DC 203 list and the middle-proxy list from every source's last good
    /// config, installs them and logs each change.
    #[inline(never)]
    fn publish(&self) {
        let st = lock(&self.state);
        let good: Vec<&ProxyConfig> = st.configs.iter().filter_map(|s| s.last.as_ref()).collect();
        let mut cdn: Vec<SocketAddr> = Vec::new();
        let mut middle = MiddleProxies::default();
        for c in &good {
            for a in c.addrs_for(crate::proto::dc::CDN_DC as i16) {
                if !cdn.contains(&a) {
                    cdn.push(a);
                }
            }
            for e in &c.entries {
                if !middle.entries.contains(e) {
                    middle.entries.push(*e);
                }
            }
            middle.default_dc = middle.default_dc.or(c.default_dc);
        }
        drop(st);
        if self.cdn {
            let old: Vec<(i16, SocketAddr)> = self.dc.cdn().into_iter().map(|a| (203, a)).collect();
            if self.dc.set_cdn(&cdn) {
                let new: Vec<(i16, SocketAddr)> = cdn.iter().map(|&a| (203, a)).collect();
                log_changes(["dc-address-added", "dc-address-removed"], &old, &new);
            }
        }
        if self.middle_on {
            let old = self.middle_proxies();
            if *old != middle {
                // The first list is only summed up; later changes are logged one by one.
                if !old.entries.is_empty() {
                    log_changes(
                        ["middle-proxy-added", "middle-proxy-removed"],
                        &old.entries,
                        &middle.entries,
                    );
                }
                crate::log_event!(
                    Level::Info,
                    "middle-proxies-loaded",
                    entries = middle.entries.len(),
                    default_dc = middle.default_dc.unwrap_or(0)
                );
                *lock(&self.middle) = Arc::new(middle);
            }
        }
    }

    /// Reads or downloads one source, at most `cap` bytes.
    #[inline(never)]
    fn load(&self, src: &Source, cap: usize) -> Result<Vec<u8>, String> {
        match src {
            Source::File(p) => read_capped(p, cap),
            Source::Url(u) => super::fetch::get(u, &self.net, cap, true, MAX_FETCH_TIME),
        }
    }
}

/// A source failed: say why and what is kept.
fn failed(src: &Source, e: &str, had: bool) {
    crate::log_event!(
        Level::Warn,
        "tg-config-failed",
        source = src.describe(),
        error = e,
        effect = if had {
            "keeping its previous content"
        } else {
            "nothing from it yet"
        }
    );
}

/// One line per address added or removed: `events` names the two events.
fn log_changes(events: [&str; 2], old: &[(i16, SocketAddr)], new: &[(i16, SocketAddr)]) {
    for (list, other, event) in [(new, old, events[0]), (old, new, events[1])] {
        for (dc, a) in list.iter().filter(|e| !other.contains(e)) {
            crate::log_event!(Level::Info, event, dc = dc, addr = a);
        }
    }
}

fn file_stamp_of(src: &Source) -> Option<FileStamp> {
    match src {
        Source::File(p) => file_stamp(p),
        Source::Url(_) => None,
    }
}

fn read_capped(p: &std::path::Path, cap: usize) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::new();
    f.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    Ok(buf)
}

/// The updater thread: URLs at once, then every [`UPDATE_EACH`] (sooner after a start-up
/// failure), on reload and on file changes.
fn updater(weak: Weak<Telegram>) {
    let now = Instant::now();
    let mut next = now;
    let mut next_mtime = now + MTIME_CHECK;
    loop {
        let Some(t) = weak.upgrade() else { return };
        if t.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if t.reload.swap(false, Ordering::SeqCst) {
            t.update(Reload::All);
            next = Instant::now() + UPDATE_EACH;
        } else if now >= next {
            t.update(Reload::Urls);
            let st = lock(&t.state);
            let missing = st
                .configs
                .iter()
                .zip(&t.configs)
                .any(|(s, src)| !src.is_file() && s.last.is_none())
                || (t.secret_source.as_ref().is_some_and(|s| !s.is_file())
                    && st.secret.last.is_none());
            drop(st);
            next = Instant::now() + if missing { RETRY_AFTER } else { UPDATE_EACH };
        } else if now >= next_mtime {
            t.update(Reload::ChangedFiles);
            next_mtime = Instant::now() + MTIME_CHECK;
        }
        let wake = next.min(next_mtime);
        drop(t);
        std::thread::park_timeout(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::secret::{Secret, SecretKind};
    use crate::testing::{TempDir, http_server};

    fn config() -> Config {
        let secret = Secret::generate(SecretKind::Secure, "", &mut crate::proto::XorShift64(9));
        let mut c = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret);
        c.timeouts.http = Duration::from_secs(3);
        c.prefer_ip = PreferIp::PreferIpv4;
        c
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    const V4: &[u8] = b"default 2;\nproxy_for 2 127.0.0.2:8888;\nproxy_for 203 127.0.0.3:443;\n";
    const V4B: &[u8] = b"proxy_for 2 127.0.0.2:8888;\nproxy_for 203 127.0.0.4:443;\n";
    const V6: &[u8] = b"proxy_for 203 [::1]:443;\nproxy_for -2 [::1]:8888;\n";

    #[test]
    fn live_dc_follows_updates_across_threads_without_relocking() {
        let dc = Arc::new(LiveDc::new(&config()));
        let first = |d: &LiveDc| d.lookup_or_fallback(203, false).unwrap().1[0];
        assert_eq!(first(&dc), sa("91.105.192.100:443"));
        let g0 = dc.generation.load(Ordering::Relaxed);
        assert!(dc.set_cdn(&[sa("127.0.0.9:443")]));
        assert!(
            !dc.set_cdn(&[sa("127.0.0.9:443")]),
            "same list: no new table"
        );
        assert_eq!(dc.generation.load(Ordering::Relaxed), g0 + 1);
        assert_eq!(first(&dc), sa("127.0.0.9:443"));
        let d2 = dc.clone();
        let seen = std::thread::spawn(move || first(&d2)).join().unwrap();
        assert_eq!(seen, sa("127.0.0.9:443"));
        // A second table (another proxy in the same process) never sees this one's cache.
        let other = LiveDc::new(&config());
        assert_eq!(first(&other), sa("91.105.192.100:443"));
        assert_eq!(first(&dc), sa("127.0.0.9:443"));
        assert_eq!(
            dc.lookup_or_fallback(2, false).map(|x| x.0),
            Some(2),
            "other DCs unchanged"
        );
    }

    #[test]
    fn files_load_at_once_and_broken_ones_keep_the_previous_list() {
        let d = TempDir::new("files");
        let v4 = d.file("v4", V4);
        let v6 = d.file("v6", V6);
        let mut c = config();
        c.auto_update = true;
        c.proxy_config_files = vec![v4.clone(), v6];
        let dc = Arc::new(LiveDc::new(&c));
        let t = Telegram::new(&c, dc.clone(), Vec::new());
        assert_eq!(dc.cdn(), [sa("127.0.0.3:443"), sa("[::1]:443")]);
        // prefer-ipv4: the updated v4 address first, then the built-in v4, then v6.
        let order = dc.lookup_or_fallback(203, false).unwrap().1.to_vec();
        assert_eq!(
            order,
            [
                sa("127.0.0.3:443"),
                sa("91.105.192.100:443"),
                sa("[::1]:443"),
                sa("[2a0a:f280:203:a:5000::100]:443")
            ]
        );
        // Without an ad tag, the middle list is not kept.
        assert!(t.middle_proxies().entries.is_empty());
        // Broken, hostile, oversized and empty files leave the list as it was.
        for bad in [
            &b"<html>500</html>"[..],
            b"proxy_for 203 evil.example.com:443;\n",
            b"",
            &vec![b'#'; MAX_CONFIG_BYTES + 1][..],
            b"proxy_for 203 127.0.0.66:443;\n\xff\xfe",
        ] {
            std::fs::write(&v4, bad).unwrap();
            t.update(Reload::All);
            assert_eq!(dc.cdn(), [sa("127.0.0.3:443"), sa("[::1]:443")]);
        }
        // A good new file is taken (the change detected by its stamp).
        std::fs::write(&v4, V4B).unwrap();
        t.update(Reload::ChangedFiles);
        assert_eq!(dc.cdn(), [sa("127.0.0.4:443"), sa("[::1]:443")]);
        // Nothing changed: nothing reloaded.
        let g = dc.generation.load(Ordering::Relaxed);
        t.update(Reload::ChangedFiles);
        assert_eq!(dc.generation.load(Ordering::Relaxed), g);
        // A valid config without DC 203 is followed: the built-in address alone is left.
        std::fs::write(&v4, b"proxy_for 2 127.0.0.2:8888;\n").unwrap();
        t.update(Reload::All);
        assert_eq!(dc.cdn(), [sa("[::1]:443")]);
    }

    #[test]
    fn the_ad_tag_keeps_middle_proxies_and_the_secret() {
        let d = TempDir::new("middle");
        let secret: Vec<u8> = (0..128u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut c = config();
        c.ad_tag = Some([1; 16]);
        c.proxy_config_files = vec![d.file("v4", V4), d.file("v6", V6)];
        let sfile = d.file("secret", &secret);
        c.proxy_secret_file = Some(sfile.clone());
        let dc = Arc::new(LiveDc::new(&c));
        let t = Telegram::new(&c, dc.clone(), Vec::new());
        // No auto-update: DC 203 stays built-in.
        assert!(dc.cdn().is_empty());
        let m = t.middle_proxies();
        assert_eq!(m.default_dc, Some(2));
        assert_eq!(
            m.entries,
            [
                (2, sa("127.0.0.2:8888")),
                (203, sa("127.0.0.3:443")),
                (203, sa("[::1]:443")),
                (-2, sa("[::1]:8888"))
            ]
        );
        assert_eq!(m.for_dc(-2), [sa("[::1]:8888")]);
        assert_eq!(m.for_dc(4), [sa("127.0.0.2:8888")], "the default DC");
        // The relay's pick: no allocation, rotated, preferred family first.
        let p = PreferIp::PreferIpv6;
        assert_eq!(m.pick(-2, p, 7, 0), Some(sa("[::1]:8888")));
        assert_eq!(m.pick(-2, p, 7, 1), None);
        assert_eq!(m.pick(4, p, 0, 0), Some(sa("127.0.0.2:8888")));
        let v6_first: Vec<_> = (0..3).map_while(|i| m.pick(203, p, 1, i)).collect();
        assert_eq!(v6_first, [sa("[::1]:443"), sa("127.0.0.3:443")]);
        let v4_only: Vec<_> = (0..3)
            .map_while(|i| m.pick(203, PreferIp::OnlyIpv4, 1, i))
            .collect();
        assert_eq!(v4_only, [sa("127.0.0.3:443")]);
        let two = MiddleProxies {
            entries: vec![(1, sa("127.0.0.1:1")), (1, sa("127.0.0.1:2"))],
            default_dc: None,
        };
        assert_eq!(two.pick(1, p, 1, 0), Some(sa("127.0.0.1:2")));
        assert_eq!(two.pick(1, p, 1, 1), Some(sa("127.0.0.1:1")));
        assert_eq!(two.pick(3, p, 0, 0), None, "no default DC");
        assert_eq!(t.proxy_secret().as_deref(), Some(&secret));
        // An error page in place of the secret keeps the old one.
        std::fs::write(
            &sfile,
            b"<html>404 not found</html> <html>404 not found</html>",
        )
        .unwrap();
        t.update(Reload::All);
        assert_eq!(t.proxy_secret().as_deref(), Some(&secret));
        std::fs::write(&sfile, &secret[..20]).unwrap();
        t.update(Reload::All);
        assert_eq!(t.proxy_secret().as_deref(), Some(&secret));
    }

    #[test]
    fn urls_are_fetched_and_failures_keep_the_previous_list() {
        let big = {
            let mut b = V4.to_vec();
            b.extend(std::iter::repeat_n(b'#', MAX_CONFIG_BYTES));
            b
        };
        let (base, server) = http_server(vec![
            ok(V4),
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ok(b"<html>maintenance</html>"),
            ok(&big),
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nproxy_for 203 127.0.0.8:1;".to_vec(),
            ok(V4B),
        ]);
        let mut c = config();
        c.auto_update = true;
        c.proxy_config_urls = vec![format!("{base}/getProxyConfig")];
        let dc = Arc::new(LiveDc::new(&c));
        let t = Telegram::new(&c, dc.clone(), Vec::new());
        assert!(dc.cdn().is_empty(), "URLs wait for the updater");
        t.update(Reload::Urls);
        assert_eq!(dc.cdn(), [sa("127.0.0.3:443")]);
        for _ in 0..4 {
            t.update(Reload::Urls);
            assert_eq!(dc.cdn(), [sa("127.0.0.3:443")]);
        }
        t.update(Reload::Urls);
        assert_eq!(dc.cdn(), [sa("127.0.0.4:443")]);
        let reqs = server.join().unwrap();
        assert!(
            reqs[0].starts_with("GET /getProxyConfig HTTP/1.1\r\n"),
            "{reqs:?}"
        );
        assert!(reqs[0].contains("\r\nHost: 127.0.0.1:"), "{reqs:?}");
    }

    #[test]
    fn nothing_is_fetched_or_started_without_auto_update_or_ad_tag() {
        let mut c = config();
        // A port nobody listens on would make a fetch fail loudly; none must happen.
        c.proxy_config_urls = vec!["http://127.0.0.1:9/x".into()];
        let dc = Arc::new(LiveDc::new(&c));
        let t = Telegram::start(&c, dc, Vec::new());
        assert!(!t.active());
        assert!(lock(&t.updater).is_none());
    }
}
