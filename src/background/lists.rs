//! IP blocklist and allowlist (PROTOCOL.md §8.7): loading, periodic and on-demand updates, and
//! the lock-free per-worker lookup.
//!
//! I/O layer. [`Lists`] holds the current tables as `Arc<IpTable>`s behind a mutex plus a
//! generation counter. A worker keeps its own `Arc` clones in a [`ListCache`] (explicitly, or
//! the thread-local one behind [`Lists::admits`]) and looks at the mutex only when the
//! generation moved: in steady state an accept costs one atomic load and a binary search.
//!
//! Sources are local files (FireHOL netsets) and plain `http://` URLs. Files are read
//! synchronously by [`Lists::start`], so a blocklist is in force before the first accept;
//! URLs are fetched by the updater thread. Then every `update-each`, on [`Lists::reload`]
//! (SIGHUP) and whenever a file's modification time or size changes (checked every
//! [`MTIME_CHECK`]). A source that fails keeps its previous entries. `https://` is not
//! fetched (mtpx's TLS client checks no certificates): a start-up warning says how to fetch such a list into a
//! file instead.

use std::cell::RefCell;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, IpList};
use crate::formats::iplist::{Cidr, IpTable, parse_netset};
use crate::log::Level;

/// How often local files are checked for changes.
pub(crate) const MTIME_CHECK: Duration = Duration::from_secs(2);
/// Largest list accepted from one source (file or download).
pub(crate) const MAX_LIST_BYTES: usize = 64 << 20;
/// Bad lines logged one by one per source and load; the rest are only counted.
const MAX_LOGGED_LINES: usize = 10;
/// Upper bound of one download, however slowly the server trickles.
const MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(600);

/// The decision for a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Neither list objects.
    Ok,
    /// The address is on the blocklist.
    Blocked,
    /// The allowlist is enabled and the address is not on it.
    NotAllowed,
}

/// Which of the two lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Block = 0,
    Allow = 1,
}

impl Which {
    /// The `ip_list` label value (and the log field).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Block => "blocklist",
            Which::Allow => "allowlist",
        }
    }
}

/// Where a list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Http(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Http(u) => u.clone(),
        }
    }
}

/// One configured list.
struct ListConf {
    enabled: bool,
    sources: Vec<Source>,
    update_each: Duration,
    concurrency: usize,
}

/// What the updater remembers about one source.
#[derive(Default)]
struct SourceState {
    /// Entries of the last successful load (`None`: never loaded).
    cidrs: Option<Vec<Cidr>>,
    /// Modification time and length of a file when it was last read.
    stamp: Option<FileStamp>,
}

#[derive(Clone)]
struct Tables {
    block: Arc<IpTable>,
    /// `None`: the allowlist is disabled (everything allowed).
    allow: Option<Arc<IpTable>>,
}

/// What needs (re)loading in one update of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reload {
    /// Every source.
    All,
    /// Files only (start-up).
    Files,
    /// URLs only (first run of the updater).
    Http,
    /// Files whose modification time or size changed.
    ChangedFiles,
}

/// The current block and allow tables, shared by all workers.
pub(crate) struct Lists {
    /// Tells instances apart in thread-local caches.
    id: u64,
    tables: Mutex<Tables>,
    generation: AtomicU64,
    blocked: AtomicU64,
    not_allowed: AtomicU64,
    conf: [ListConf; 2],
    state: Mutex<[Vec<SourceState>; 2]>,
    reload: AtomicBool,
    stop: AtomicBool,
    updater: Mutex<Option<std::thread::Thread>>,
    /// How http:// sources are reached (`[network] dns`, the SOCKS5 upstreams).
    net: super::fetch::Net,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `now + d`, or far in the future when that overflows.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86400)))
        .unwrap_or(now)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: RefCell<Option<(u64, ListCache)>> = const { RefCell::new(None) };
}

fn list_conf(l: &IpList, which: Which) -> ListConf {
    let mut sources = Vec::new();
    for url in &l.urls {
        let u = url.trim();
        let scheme = u.get(..8).map(str::to_ascii_lowercase);
        if scheme.as_deref() == Some("https://") {
            if l.enabled {
                crate::log_event!(
                    Level::Warn,
                    "iplist-https-unsupported",
                    list = which.name(),
                    url = u,
                    hint = "mtpx checks no TLS certificates, so it does not fetch lists over https: fetch the list with a systemd timer or cron job \
                            into a file (e.g. curl -o /var/lib/mtpx/list.netset URL) and put the \
                            file's path in urls; mtpx reloads it when it changes"
                );
            }
        } else if scheme.as_deref().is_some_and(|s| s.starts_with("http://")) {
            sources.push(Source::Http(u.to_string()));
        } else {
            sources.push(Source::File(PathBuf::from(u)));
        }
    }
    ListConf {
        enabled: l.enabled,
        sources,
        update_each: l.update_each.max(Duration::from_secs(1)),
        concurrency: (l.download_concurrency as usize).max(1),
    }
}

impl Lists {
    /// Reads the configured lists' files (synchronously, so that a blocklist is in force
    /// before the first accept) without starting the updater. Use [`Lists::start`] in the proxy.
    #[cfg(test)]
    pub(crate) fn new(config: &Config) -> Arc<Lists> {
        Lists::new_via(config, Vec::new())
    }

    /// [`Lists::new`] downloading through the SOCKS5 `upstreams` (as mtg does).
    fn new_via(config: &Config, upstreams: Vec<super::fetch::Upstream>) -> Arc<Lists> {
        let conf = [
            list_conf(&config.blocklist, Which::Block),
            list_conf(&config.allowlist, Which::Allow),
        ];
        let state = [
            conf[0]
                .sources
                .iter()
                .map(|_| SourceState::default())
                .collect(),
            conf[1]
                .sources
                .iter()
                .map(|_| SourceState::default())
                .collect(),
        ];
        let allow_enabled = conf[1].enabled;
        let lists = Arc::new(Lists {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tables: Mutex::new(Tables {
                block: Arc::new(IpTable::new()),
                allow: allow_enabled.then(|| Arc::new(IpTable::new())),
            }),
            generation: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            not_allowed: AtomicU64::new(0),
            conf,
            state: Mutex::new(state),
            reload: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            updater: Mutex::new(None),
            net: super::fetch::Net::new(config, upstreams),
        });
        for which in [Which::Block, Which::Allow] {
            let c = &lists.conf[which as usize];
            if c.enabled && c.sources.is_empty() {
                crate::log_event!(
                    Level::Warn,
                    "iplist-empty",
                    list = which.name(),
                    reason = "enabled without any usable source",
                    effect = if which == Which::Allow {
                        "every client is refused"
                    } else {
                        "nothing is blocked"
                    }
                );
            }
            lists.update(which, Reload::Files);
        }
        lists
    }

    /// [`Lists::new`], then starts the updater thread if an enabled list has a source. The
    /// thread ends after [`Lists::stop`] or once the last `Arc` is gone.
    pub(crate) fn start(config: &Config, upstreams: Vec<super::fetch::Upstream>) -> Arc<Lists> {
        let lists = Lists::new_via(config, upstreams);
        if lists
            .conf
            .iter()
            .any(|c| c.enabled && !c.sources.is_empty())
        {
            let weak = Arc::downgrade(&lists);
            match std::thread::Builder::new()
                .name("mtpx-iplists".into())
                .spawn(move || updater(weak))
            {
                Ok(h) => *lock(&lists.updater) = Some(h.thread().clone()),
                Err(e) => crate::log_event!(Level::Warn, "iplist-updater-not-started", error = e),
            }
        }
        lists
    }

    /// Asks the updater to reload every source now (SIGHUP). Returns at once.
    pub(crate) fn reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Stops the updater thread (it finishes a download in progress first, bounded by its
    /// timeouts). Returns at once.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = lock(&self.updater).as_ref() {
            t.unpark();
        }
    }

    /// Bumped every time a table is replaced.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation and the current tables (`None` allow table: allowlist disabled).
    pub(crate) fn snapshot(&self) -> (u64, Arc<IpTable>, Option<Arc<IpTable>>) {
        let t = lock(&self.tables);
        // Read under the lock: a table and its generation are published together.
        let generation = self.generation.load(Ordering::Acquire);
        (generation, t.block.clone(), t.allow.clone())
    }

    /// Whether either list is enabled (if not, every address is admitted).
    pub(crate) fn active(&self) -> bool {
        self.conf[0].enabled || self.conf[1].enabled
    }

    /// Whether list `which` is enabled.
    pub(crate) fn enabled(&self, which: Which) -> bool {
        self.conf[which as usize].enabled
    }

    /// Entries in list `which` (`iplist_size`), `None` when it is disabled.
    pub(crate) fn size(&self, which: Which) -> Option<usize> {
        if !self.enabled(which) {
            return None;
        }
        let t = lock(&self.tables);
        Some(match which {
            Which::Block => t.block.len(),
            Which::Allow => t.allow.as_ref().map_or(0, |a| a.len()),
        })
    }

    /// Connections refused by list `which` so far (`ip_blocklisted{ip_list}`).
    pub(crate) fn refused(&self, which: Which) -> u64 {
        match which {
            Which::Block => self.blocked.load(Ordering::Relaxed),
            Which::Allow => self.not_allowed.load(Ordering::Relaxed),
        }
    }

    /// Decides for `ip` and counts a refusal, using this thread's cached tables (no lock
    /// unless the tables changed since this thread last looked). For worker threads.
    pub(crate) fn admits(&self, ip: IpAddr) -> Admit {
        if !self.active() {
            return Admit::Ok;
        }
        let cached = CACHE.try_with(|c| {
            let Ok(mut slot) = c.try_borrow_mut() else {
                return None;
            };
            match slot.as_mut() {
                Some((id, cache)) if *id == self.id => Some(cache.admits(self, ip)),
                _ => {
                    let mut cache = ListCache::new(self);
                    let a = cache.admits(self, ip);
                    *slot = Some((self.id, cache));
                    Some(a)
                }
            }
        });
        match cached {
            Ok(Some(a)) => a,
            _ => ListCache::new(self).admits(self, ip),
        }
    }

    fn publish(&self, which: Which, table: IpTable) {
        let mut t = lock(&self.tables);
        match which {
            Which::Block => t.block = Arc::new(table),
            Which::Allow => t.allow = Some(Arc::new(table)),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reloads the sources of `which` that `what` selects and publishes the new table if any
    /// source changed. Returns whether a new table was published.
    fn update(&self, which: Which, what: Reload) -> bool {
        let conf = &self.conf[which as usize];
        if !conf.enabled {
            return false;
        }
        // Pick the sources to load (and remember file stamps to compare).
        let picked: Vec<usize> = {
            let state = lock(&self.state);
            let st = &state[which as usize];
            conf.sources
                .iter()
                .enumerate()
                .filter(|(i, s)| match (what, s) {
                    (Reload::All, _) => true,
                    (Reload::Files, Source::File(_)) => true,
                    (Reload::Http, Source::Http(_)) => true,
                    (Reload::ChangedFiles, Source::File(p)) => {
                        let now = file_stamp(p);
                        now.is_some() && now != st.get(*i).and_then(|s| s.stamp)
                    }
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect()
        };
        if picked.is_empty() && what != Reload::Files {
            return false;
        }
        // Load them, downloads `concurrency` at a time, off the state lock.
        let mut results: Vec<(usize, Result<Loaded, String>)> = Vec::with_capacity(picked.len());
        for chunk in picked.chunks(conf.concurrency) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let src = &conf.sources[i];
                        (i, s.spawn(move || self.load(which, src)))
                    })
                    .collect();
                for (i, h) in handles {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err("loader thread failed".into()));
                    results.push((i, r));
                }
            });
        }
        let mut state = lock(&self.state);
        let st = &mut state[which as usize];
        for (i, r) in results {
            let Some(slot) = st.get_mut(i) else { continue };
            let src = conf.sources[i].describe();
            match r {
                Ok(l) => {
                    slot.cidrs = Some(l.cidrs);
                    slot.stamp = l.stamp;
                }
                Err(e) => {
                    crate::log_event!(
                        Level::Warn,
                        "iplist-source-failed",
                        list = which.name(),
                        source = src,
                        error = e,
                        effect = if slot.cidrs.is_some() {
                            "keeping its previous entries"
                        } else {
                            "no entries from it yet"
                        }
                    );
                }
            }
        }
        let table = IpTable::from_cidrs(st.iter().filter_map(|s| s.cidrs.as_ref()).flatten());
        drop(state);
        crate::log_event!(
            Level::Info,
            "iplist-loaded",
            list = which.name(),
            entries = table.len(),
            ranges = table.ranges()
        );
        self.publish(which, table);
        true
    }

    /// Reads or downloads one source and parses it, logging skipped lines.
    fn load(&self, which: Which, src: &Source) -> Result<Loaded, String> {
        let (text, stamp) = match src {
            Source::File(p) => {
                let before = file_stamp(p);
                let text = read_file(p)?;
                (text, before)
            }
            Source::Http(url) => (
                String::from_utf8_lossy(&super::fetch::get(
                    url,
                    &self.net,
                    MAX_LIST_BYTES,
                    false,
                    MAX_DOWNLOAD_TIME,
                )?)
                .into_owned(),
                None,
            ),
        };
        let (cidrs, errors) = parse_netset(&text);
        let name = src.describe();
        for e in errors.iter().take(MAX_LOGGED_LINES) {
            crate::log_event!(
                Level::Warn,
                "iplist-bad-line",
                list = which.name(),
                at = format_args!("{name}:{}", e.line),
                error = e.error,
                text = format_args!("{:?}", e.text)
            );
        }
        if errors.len() > MAX_LOGGED_LINES {
            crate::log_event!(
                Level::Warn,
                "iplist-bad-lines",
                list = which.name(),
                source = name,
                skipped = errors.len(),
                logged = MAX_LOGGED_LINES
            );
        }
        Ok(Loaded { cidrs, stamp })
    }
}

struct Loaded {
    cidrs: Vec<Cidr>,
    stamp: Option<FileStamp>,
}

/// What tells a changed file: its mtime and length, and its inode and ctime (a file replaced
/// by `mv`, or rewritten with the old mtime put back, still counts as changed).
pub(crate) fn file_stamp(p: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        m.ino(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

pub(crate) type FileStamp = (SystemTime, u64, u64, i64, i64);

fn read_file(p: &std::path::Path) -> Result<String, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::new();
    f.take(MAX_LIST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() > MAX_LIST_BYTES {
        return Err(format!("larger than {MAX_LIST_BYTES} bytes"));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The updater thread: URLs at once, then every `update-each`, on reload and on file changes.
fn updater(weak: Weak<Lists>) {
    let now = Instant::now();
    let mut next = [now; 2];
    let mut first = true;
    let mut next_mtime = later(now, MTIME_CHECK);
    loop {
        let Some(lists) = weak.upgrade() else { return };
        if lists.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let reload = lists.reload.swap(false, Ordering::SeqCst);
        for which in [Which::Block, Which::Allow] {
            let c = &lists.conf[which as usize];
            if !c.enabled {
                continue;
            }
            if first {
                lists.update(which, Reload::Http);
                next[which as usize] = later(now, c.update_each);
            } else if reload || now >= next[which as usize] {
                lists.update(which, Reload::All);
                next[which as usize] = later(Instant::now(), c.update_each);
            } else if now >= next_mtime {
                lists.update(which, Reload::ChangedFiles);
            }
        }
        first = false;
        let now = Instant::now();
        if now >= next_mtime {
            next_mtime = later(now, MTIME_CHECK);
        }
        let wake = next.iter().copied().fold(next_mtime, Instant::min);
        drop(lists);
        std::thread::park_timeout(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        );
    }
}

/// A worker's own copy of the current tables: looks at [`Lists`]' mutex only when its
/// generation changed.
pub(crate) struct ListCache {
    generation: u64,
    block: Arc<IpTable>,
    allow: Option<Arc<IpTable>>,
}

impl ListCache {
    /// A cache holding the current tables.
    pub(crate) fn new(lists: &Lists) -> ListCache {
        let (generation, block, allow) = lists.snapshot();
        ListCache {
            generation,
            block,
            allow,
        }
    }

    /// Decides for `ip` (allowlist first, as mtg) and counts a refusal in `lists`.
    pub(crate) fn admits(&mut self, lists: &Lists, ip: IpAddr) -> Admit {
        if lists.generation() != self.generation {
            *self = ListCache::new(lists);
        }
        if self.allow.as_ref().is_some_and(|a| !a.contains(ip)) {
            lists.not_allowed.fetch_add(1, Ordering::Relaxed);
            return Admit::NotAllowed;
        }
        if self.block.contains(ip) {
            lists.blocked.fetch_add(1, Ordering::Relaxed);
            return Admit::Blocked;
        }
        Admit::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::secret::{Secret, SecretKind};
    use crate::testing::{TempDir, http_server};
    use std::net::{SocketAddr, TcpListener};

    fn config() -> Config {
        let secret = Secret::generate(SecretKind::Secure, "", &mut crate::proto::XorShift64(7));
        let mut c = Config::simple(SocketAddr::from(([127, 0, 0, 1], 0)), secret);
        c.timeouts.http = Duration::from_secs(3);
        c
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn disabled_lists_admit_everything() {
        let lists = Lists::new(&config());
        assert!(!lists.active());
        assert_eq!(lists.admits(ip("10.1.2.3")), Admit::Ok);
        assert_eq!(lists.size(Which::Block), None);
        assert_eq!(lists.size(Which::Allow), None);
    }

    #[test]
    fn file_lists_are_loaded_at_once_and_bad_lines_skipped() {
        let d = TempDir::new("files");
        let mut c = config();
        c.blocklist.enabled = true;
        c.blocklist.urls = vec![
            d.file(
                "a.netset",
                "# comment\n10.0.0.0/8\nnot-an-ip\n192.0.2.7 # host\n",
            ),
            d.file("b.netset", "2001:db8::/32\n"),
        ];
        let lists = Lists::new(&c);
        assert_eq!(lists.size(Which::Block), Some(3));
        assert_eq!(lists.admits(ip("10.200.0.1")), Admit::Blocked);
        assert_eq!(lists.admits(ip("192.0.2.7")), Admit::Blocked);
        assert_eq!(lists.admits(ip("192.0.2.8")), Admit::Ok);
        assert_eq!(lists.admits(ip("2001:db8::5")), Admit::Blocked);
        assert_eq!(lists.admits(ip("::ffff:10.0.0.1")), Admit::Blocked);
        assert_eq!(lists.refused(Which::Block), 4);
        assert_eq!(lists.refused(Which::Allow), 0);
    }

    #[test]
    fn allowlist_refuses_what_it_lacks_and_counts_it() {
        let d = TempDir::new("allow");
        let mut c = config();
        c.allowlist.enabled = true;
        c.allowlist.urls = vec![d.file("allow", "127.0.0.1\n")];
        c.blocklist.enabled = true;
        c.blocklist.urls = vec![d.file("block", "127.0.0.0/8\n")];
        let lists = Lists::new(&c);
        // Allowlist first (mtg's order): a miss is counted as an allowlist refusal.
        assert_eq!(lists.admits(ip("127.0.0.3")), Admit::NotAllowed);
        // Allowed by the allowlist but still on the blocklist.
        assert_eq!(lists.admits(ip("127.0.0.1")), Admit::Blocked);
        assert_eq!(lists.refused(Which::Allow), 1);
        assert_eq!(lists.refused(Which::Block), 1);
        assert_eq!(lists.size(Which::Allow), Some(1));
    }

    #[test]
    fn enabled_allowlist_without_sources_refuses_all() {
        let mut c = config();
        c.allowlist.enabled = true;
        c.allowlist.urls = vec!["https://example.com/list".into()];
        let lists = Lists::new(&c);
        assert_eq!(lists.admits(ip("127.0.0.1")), Admit::NotAllowed);
        assert_eq!(lists.size(Which::Allow), Some(0));
    }

    #[test]
    fn cache_refreshes_only_when_generation_moves() {
        let d = TempDir::new("gen");
        let mut c = config();
        c.blocklist.enabled = true;
        let path = d.file("l", "10.0.0.1\n");
        c.blocklist.urls = vec![path.clone()];
        let lists = Lists::new(&c);
        let mut cache = ListCache::new(&lists);
        let g0 = lists.generation();
        assert_eq!(cache.admits(&lists, ip("10.0.0.2")), Admit::Ok);
        std::fs::write(&path, "10.0.0.2\n").unwrap();
        // Nothing reloaded yet: the cached table still answers.
        assert_eq!(cache.admits(&lists, ip("10.0.0.2")), Admit::Ok);
        assert!(lists.update(Which::Block, Reload::All));
        assert!(lists.generation() > g0);
        assert_eq!(cache.admits(&lists, ip("10.0.0.2")), Admit::Blocked);
        assert_eq!(cache.admits(&lists, ip("10.0.0.1")), Admit::Ok);
        // The thread-local cache follows too.
        assert_eq!(lists.admits(ip("10.0.0.2")), Admit::Blocked);
    }

    #[test]
    fn missing_file_keeps_previous_entries() {
        let d = TempDir::new("keep");
        let mut c = config();
        c.blocklist.enabled = true;
        let path = d.file("l", "10.0.0.1\n");
        c.blocklist.urls = vec![path.clone()];
        let lists = Lists::new(&c);
        std::fs::remove_file(&path).unwrap();
        lists.update(Which::Block, Reload::All);
        assert_eq!(lists.admits(ip("10.0.0.1")), Admit::Blocked);
        assert_eq!(lists.size(Which::Block), Some(1));
    }

    #[test]
    fn changed_files_reload_detects_rewrites() {
        let d = TempDir::new("mtime");
        let mut c = config();
        c.blocklist.enabled = true;
        let path = d.file("l", "10.0.0.1\n");
        c.blocklist.urls = vec![path.clone()];
        let lists = Lists::new(&c);
        assert!(!lists.update(Which::Block, Reload::ChangedFiles));
        // A different length changes the stamp even within the same mtime tick.
        std::fs::write(&path, "10.0.0.0/24\n10.9.9.9\n").unwrap();
        assert!(lists.update(Which::Block, Reload::ChangedFiles));
        assert_eq!(lists.size(Which::Block), Some(2));
        assert!(!lists.update(Which::Block, Reload::ChangedFiles));
        // Same length, old mtime put back: the ctime still tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "10.0.0.0/24\n10.9.9.8\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(lists.update(Which::Block, Reload::ChangedFiles));
        assert_eq!(lists.admits(ip("10.9.9.8")), Admit::Blocked);
        // Replaced by a rename (a new inode), same content length.
        let tmp = d.file("l.new", "10.0.0.0/24\n10.9.9.7\n");
        std::fs::rename(&tmp, &path).unwrap();
        assert!(lists.update(Which::Block, Reload::ChangedFiles));
        assert_eq!(lists.admits(ip("10.9.9.7")), Admit::Blocked);
        assert!(!lists.update(Which::Block, Reload::ChangedFiles));
    }

    #[test]
    fn updater_thread_follows_file_changes() {
        let d = TempDir::new("thread");
        let mut c = config();
        c.blocklist.enabled = true;
        let path = d.file("l", "10.0.0.1\n");
        c.blocklist.urls = vec![path.clone()];
        let lists = Lists::start(&c, Vec::new());
        std::fs::write(&path, "10.0.0.1\n10.0.0.2\n").unwrap();
        let deadline = Instant::now() + MTIME_CHECK * 5;
        while lists.size(Which::Block) != Some(2) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(lists.size(Which::Block), Some(2));
        lists.stop();
    }

    #[test]
    fn reload_request_reloads_everything() {
        let (base, server) = http_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n10.0.0.1\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n10.0.0.2\n\r\n9\r\n10.0.0.3\n\r\n0\r\n\r\n".to_vec(),
        ]);
        let mut c = config();
        c.blocklist.enabled = true;
        c.blocklist.urls = vec![format!("{base}/list.netset")];
        let lists = Lists::start(&c, Vec::new());
        // Downloads happen in the background: nothing blocked at first.
        let wait = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lists.size(Which::Block) != Some(n) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            lists.size(Which::Block)
        };
        assert_eq!(wait(1), Some(1));
        assert_eq!(lists.admits(ip("10.0.0.1")), Admit::Blocked);
        lists.reload();
        assert_eq!(wait(2), Some(2));
        assert_eq!(lists.admits(ip("10.0.0.1")), Admit::Ok);
        assert_eq!(lists.admits(ip("10.0.0.3")), Admit::Blocked);
        lists.stop();
        let reqs = server.join().unwrap();
        assert!(
            reqs[0].starts_with("GET /list.netset HTTP/1.1\r\n"),
            "{reqs:?}"
        );
    }

    #[test]
    fn fetch_fails_on_error_status_and_keeps_old_table() {
        let (base, server) = http_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n10.0.0.1\n".to_vec(),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\n10.0.0.9\n".to_vec(),
        ]);
        let mut c = config();
        c.blocklist.enabled = true;
        c.blocklist.urls = vec![format!("{base}/l")];
        let lists = Lists::new(&c);
        assert!(lists.update(Which::Block, Reload::Http));
        assert_eq!(lists.size(Which::Block), Some(1));
        lists.update(Which::Block, Reload::Http);
        assert_eq!(lists.admits(ip("10.0.0.1")), Admit::Blocked);
        assert_eq!(lists.admits(ip("10.0.0.9")), Admit::Ok);
        server.join().unwrap();
    }

    /// A list download as the updater makes it (no upstreams, no https).
    fn fetch(url: &str, cap: usize) -> Result<Vec<u8>, String> {
        let net = crate::background::fetch::Net::new(&config(), Vec::new());
        crate::background::fetch::get(url, &net, cap, false, Duration::from_secs(5))
    }

    #[test]
    fn fetch_enforces_the_size_cap_and_follows_redirects() {
        let (base, server) = http_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\n\r\n0123456789012345678901234567890".to_vec(),
            b"HTTP/1.1 302 Found\r\nLocation: /next\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.0 200 OK\r\n\r\n10.0.0.5\n".to_vec(),
        ]);
        let e = fetch(&format!("{base}/a"), 50).unwrap_err();
        assert!(e.contains("larger"), "{e}");
        let e = fetch(&format!("{base}/b"), 10).unwrap_err();
        assert!(e.contains("larger"), "{e}");
        assert_eq!(fetch(&format!("{base}/c"), 50).unwrap(), b"10.0.0.5\n");
        let reqs = server.join().unwrap();
        assert!(reqs[3].starts_with("GET /next "), "{reqs:?}");
    }

    #[test]
    fn fetch_refuses_https_and_reports_refused_ports() {
        let e = fetch("https://127.0.0.1/x", 10).unwrap_err();
        assert!(e.contains("https"), "{e}");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = fetch(&format!("http://127.0.0.1:{port}/"), 10).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
