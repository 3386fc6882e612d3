//! Users in the background: reloading them (SIGHUP, a changed `users-file`) and keeping their
//! quota usage across restarts in the state file ([`crate::formats::state`]).
//!
//! I/O layer, one thread ([`UsersService`]), never a worker. Every [`SAVE_EVERY`] and at
//! shutdown it rolls finished quota periods, applies reset requests and, when some user has a
//! quota and anything changed, writes the state atomically (temporary file, fsync, rename,
//! fsync of the directory): a crash leaves the old state or the new one, never a mix.
//!
//! Reset requests (`mtpx users reset-quota`) are files `<stem>.reset-<id>` beside the state,
//! each created whole by a rename, so the thread sees a request complete or not at all, and
//! only this thread consumes them, in this order: reset the user's counter in memory, write
//! the state listing the request's id as applied, delete the file, and drop the id from the
//! next write. A crash before the write re-applies the request at the next start (its effect
//! was lost with the unsaved state); a crash after it finds the id in the state and only
//! deletes the file. So a reset is applied exactly once, whether or not the proxy runs when it
//! is requested (it waits for the next start), and no clock is involved.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::formats::state::{self, State, UserUsage};
use crate::io::users::{LiveUsers, UsersCell};
use crate::log::Level;
use crate::proto::users::{Diff, Users};

/// How often usage is saved (when it changed).
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often the users file is checked for changes.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Per-user lines logged for one reload; the rest are counted.
const MAX_LOGGED_CHANGES: usize = 32;

fn unix_now() -> u64 {
    crate::io::unix_now()
}

/// Reads the state file; `Ok(None)` when there is none.
pub fn load_state(path: &Path) -> Result<Option<State>, String> {
    match crate::config::read_small(path, state::MAX_STATE_BYTES as u64) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
        Ok(text) => state::parse(&text).map(Some).map_err(|e| e.to_string()),
    }
}

/// Writes `text` to `path` atomically: `<path>.tmp`, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes the state file atomically (its directory, `state-dir`, must exist).
pub fn store_state(path: &Path, state: &State) -> io::Result<()> {
    write_atomic(path, &state::write(state))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Leaves a request to reset user `name`'s quota usage beside state file `path` (request id
/// `id`, random in the CLI). Returns the request's path.
pub fn request_reset(path: &Path, name: &str, id: u64) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = dir.join(state::reset_file_name(&stem(path), id));
    write_atomic(&file, &state::write_reset(name))?;
    Ok(file)
}

/// A reset request found beside the state file.
#[derive(Debug)]
pub struct PendingReset {
    /// Its id (from the file name).
    pub id: u64,
    /// Its file.
    pub file: PathBuf,
    /// The user it names, or why it cannot be read.
    pub user: Result<String, String>,
}

/// The reset requests beside state file `path` (in directory order; at most 4,096).
pub fn pending_resets(path: &Path) -> Vec<PendingReset> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = stem(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| state::reset_file_id(&stem, n)) else {
            continue;
        };
        let file = e.path();
        let user = crate::config::read_small(&file, 4096)
            .map_err(|e| e.to_string())
            .and_then(|t| state::parse_reset(&t).map_err(|e| e.to_string()));
        out.push(PendingReset { id, file, user });
        if out.len() >= 4096 {
            break;
        }
    }
    out
}

/// Takes over the usage saved in `state` for the users of `live` (by name), then rolls
/// periods that ended meanwhile. Returns how many users had saved usage.
pub fn restore(live: &LiveUsers, state: &State, now_unix: u64) -> usize {
    let mut n = 0;
    for (i, spec) in live.users.specs().iter().enumerate() {
        if let Some(u) = state.user(&spec.name) {
            live.stats[i].restore(u.used, u.period_start);
            n += 1;
        }
        live.stats[i].roll(spec.limits.quota_period, now_unix);
    }
    n
}

/// The state to save for `live` now.
pub fn current_state(live: &LiveUsers, now_unix: u64, applied: &[u64]) -> State {
    State {
        written: now_unix,
        users: live
            .users
            .specs()
            .iter()
            .zip(&live.stats)
            .map(|(spec, s)| {
                let c = s.counts();
                UserUsage {
                    name: spec.name.clone(),
                    used: c.used,
                    period_start: c.period_start,
                }
            })
            .collect(),
        applied: applied.to_vec(),
    }
}

/// Logs what a reload changed: one line per user (up to [`MAX_LOGGED_CHANGES`]), then a
/// summary. Names, never secrets.
fn log_diff(old: &Users, new: &Users, d: &Diff) {
    let added = d.added.iter().map(|&i| ("added", i, new));
    let changed = d.changed.iter().map(|c| {
        let what = if c.secret { "secret" } else { "limits" };
        (what, c.new, new)
    });
    let removed = d.removed.iter().map(|&i| ("removed", i, old));
    for (what, i, users) in added.chain(changed).chain(removed).take(MAX_LOGGED_CHANGES) {
        crate::log_event!(
            Level::Info,
            "user-reloaded",
            user = users.specs()[i].name,
            change = what
        );
    }
    crate::log_event!(
        Level::Info,
        "users-reloaded",
        users = new.len(),
        added = d.added.len(),
        changed = d.changed.len(),
        removed = d.removed.len()
    );
}

/// Reads the users of the config file at `path` again (and its users file) and puts them in
/// force; returns what changed. On an error (with its file, line and key) the users in force
/// stay. (A changed `users-file` path applies here; the file watched for changes stays the
/// one named at start.) Also returns whether an ad tag now needs middle proxies that were not
/// loaded (`middle_loaded`: some secret had a tag at start): their list and secret are read
/// at start only, so such clients are closed until a restart, which is logged.
pub fn reload(cell: &UsersCell, path: &Path, middle_loaded: bool) -> Result<(Diff, bool), String> {
    let (config, _) = crate::config::load(path).map_err(|e| e.to_string())?;
    // `load` checked them already.
    let users = Users::new(config.user_specs()).map_err(|_| String::from("invalid users"))?;
    let old = cell.load();
    let (live, diff) = cell.replace(users, unix_now());
    if !diff.is_empty() {
        log_diff(&old.users, &live.users, &diff);
    }
    let unserved = !middle_loaded && config.has_ad_tag();
    if unserved {
        crate::log_event!(
            Level::Warn,
            "ad-tag-needs-restart",
            effect = "clients of a tagged secret are closed until mtpx restarts (the middle-proxy list and secret are loaded at start only)"
        );
    }
    Ok((diff, unserved))
}

fn stamp(p: Option<&Path>) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p?).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Inner {
    cell: Arc<UsersCell>,
    config: PathBuf,
    /// Some secret had an ad tag at start (middle proxies loaded).
    middle_loaded: bool,
    users_file: Option<PathBuf>,
    state_file: Option<PathBuf>,
    reload: AtomicBool,
    stop: AtomicBool,
}

/// The users thread: reloads and quota persistence. Dropping it saves once more and joins.
pub(crate) struct UsersService {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl UsersService {
    /// For a config loaded from a file: restores saved usage into `cell` now, then starts the
    /// thread. `None` without a config file (simple-run), or when the thread cannot start.
    pub(crate) fn start(cell: Arc<UsersCell>, config: &Config) -> Option<UsersService> {
        let state_file = config.state_file();
        let mut done = Vec::new();
        let live = cell.load();
        if let Some(sf) = state_file.as_ref().filter(|_| live.has_quota()) {
            match load_state(sf) {
                Ok(Some(s)) => {
                    restore(&live, &s, unix_now());
                    done = s.applied;
                }
                Ok(None) => {}
                Err(e) => {
                    let mut aside = sf.as_os_str().to_os_string();
                    aside.push(".corrupt");
                    crate::log_event!(
                        Level::Error,
                        "quota-state-corrupt",
                        file = sf.display(),
                        error = e,
                        effect = "usage counts from zero; the users are unaffected",
                        moved_to_corrupt = std::fs::rename(sf, &aside).is_ok()
                    );
                }
            }
        }
        let inner = Arc::new(Inner {
            cell,
            config: config.source.clone()?,
            middle_loaded: config.has_ad_tag(),
            users_file: config.users_file.clone(),
            state_file,
            reload: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("mtpx-users".into())
            .spawn(move || run(&i2, done));
        match thread {
            Ok(t) => Some(UsersService {
                inner,
                thread: Some(t),
            }),
            Err(e) => {
                crate::log_event!(Level::Error, "users-thread-not-started", error = e);
                None
            }
        }
    }

    /// Reloads the users now (SIGHUP). Returns at once.
    pub(crate) fn reload(&self) {
        self.inner.reload.store(true, Ordering::SeqCst);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for UsersService {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// What the thread remembers between saves.
struct Saver {
    /// Ids of requests applied in memory whose files may still exist.
    done: Vec<u64>,
    /// The last state written (its `written` zeroed), to skip unchanged writes.
    last: Option<State>,
    /// The last write failed (logged once until it works again).
    failing: bool,
}

fn run(inner: &Inner, done: Vec<u64>) {
    let mut saver = Saver {
        done,
        last: None,
        failing: false,
    };
    let mut seen = stamp(inner.users_file.as_deref());
    let mut next_save = Instant::now();
    let mut next_check = next_save + CHECK_EVERY;
    loop {
        let stopping = inner.stop.load(Ordering::SeqCst);
        let mut changed = inner.reload.swap(false, Ordering::SeqCst);
        let now = Instant::now();
        if now >= next_check {
            next_check = now + CHECK_EVERY;
            let st = stamp(inner.users_file.as_deref());
            changed |= st.is_some() && st != seen;
            seen = st;
        }
        if changed && !stopping {
            if let Err(e) = reload(&inner.cell, &inner.config, inner.middle_loaded) {
                crate::log_event!(
                    Level::Error,
                    "users-reload-failed",
                    error = e,
                    effect = "the users in force stay"
                );
            }
        }
        if stopping || now >= next_save {
            next_save = now + SAVE_EVERY;
            save(inner, &mut saver);
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(next_save.min(next_check).saturating_duration_since(now));
    }
}

/// One save tick: roll periods, apply reset requests, write the state if it changed.
fn save(inner: &Inner, saver: &mut Saver) {
    let now = unix_now();
    let live = inner.cell.load();
    for (spec, s) in live.users.specs().iter().zip(&live.stats) {
        s.roll(spec.limits.quota_period, now);
    }
    let Some(sf) = inner.state_file.as_deref() else {
        return;
    };
    let pending = pending_resets(sf);
    for p in &pending {
        if saver.done.contains(&p.id) {
            continue;
        }
        let id = p.user.as_deref().ok().and_then(|n| live.users.id(n));
        if let Some(id) = id {
            live.stats[id].reset();
        }
        crate::log_event!(
            Level::Info,
            "user-quota-reset",
            user = p.user.as_deref().unwrap_or("?"),
            applied = id.is_some(),
            error = match &p.user {
                Err(e) => e.as_str(),
                Ok(_) if id.is_none() => "no such user",
                Ok(_) => "",
            }
        );
        saver.done.push(p.id);
    }
    // An applied request whose file is gone needs no protection any more.
    saver.done.retain(|id| pending.iter().any(|p| p.id == *id));
    if live.has_quota() {
        let mut state = current_state(&live, now, &saver.done);
        let unchanged = saver
            .last
            .as_ref()
            .is_some_and(|l| l.users == state.users && l.applied == state.applied);
        if !unchanged {
            if let Err(e) = store_state(sf, &state) {
                if !saver.failing {
                    crate::log_event!(
                        Level::Warn,
                        "quota-state-not-saved",
                        file = sf.display(),
                        error = e,
                        effect = "usage is kept in memory; retrying every few seconds"
                    );
                }
                saver.failing = true;
                return;
            }
            saver.failing = false;
            state.written = 0;
            saver.last = Some(state);
        }
    }
    // Saved (or nothing to save): the applied requests' files can go.
    for p in &pending {
        match std::fs::remove_file(&p.file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {}
            _ => saver.done.retain(|&d| d != p.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::proto::XorShift64;
    use crate::proto::secret::{Secret, SecretKind};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("mtpx-bgusers-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn hex(seed: u64) -> String {
        Secret::generate(SecretKind::Secure, "", &mut XorShift64(seed)).to_hex()
    }

    /// A config file with users alice (quota) and bob, their tables in `users.toml`.
    fn setup(d: &Path, users: &str) -> (PathBuf, Config) {
        let cfg = d.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "secret = \"{}\"\nbind-to = \"127.0.0.1:1\"\nusers-file = \"users.toml\"\n",
                hex(1)
            ),
        )
        .unwrap();
        std::fs::write(d.join("users.toml"), users).unwrap();
        let (c, _) = crate::config::load(&cfg).unwrap();
        (cfg, c)
    }

    fn two_users() -> String {
        format!(
            "[users.alice]\nsecret = \"{}\"\nquota = \"1MiB\"\nquota-period = \"30d\"\n\
             [users.bob]\nsecret = \"{}\"\n",
            hex(2),
            hex(3)
        )
    }

    fn cell(c: &Config) -> Arc<UsersCell> {
        Arc::new(UsersCell::new(
            Users::new(c.user_specs()).unwrap(),
            unix_now(),
        ))
    }

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn usage_survives_a_restart_and_a_corrupt_state_is_set_aside() {
        let d = Dir::new("restart");
        let (_, c) = setup(&d.0, &two_users());
        let sf = c.state_file().unwrap();
        assert_eq!(sf, d.0.join("proxy.state"));
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        let live = cells.load();
        let alice = live.users.id("alice").unwrap();
        let limits = live.users.get(alice).unwrap().limits;
        let lease = live.stats[alice].admit(&limits, ip(), unix_now()).unwrap();
        assert!(lease.traffic(1000, 2345));
        drop(lease);
        drop(svc); // saves at shutdown
        let saved = load_state(&sf).unwrap().unwrap();
        assert_eq!(saved.user("alice").map(|u| u.used), Some(3345));
        assert_eq!(saved.user("bob").map(|u| u.used), Some(0));
        // A restart: the usage is back.
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        assert_eq!(cells.load().stats[alice].used(), 3345);
        drop(svc);
        // A corrupt file: reported, moved aside, usage from zero, users all there.
        let text = std::fs::read_to_string(&sf).unwrap();
        std::fs::write(&sf, text.replace("3345", "3346")).unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        let live = cells.load();
        assert_eq!((live.users.len(), live.stats[alice].used()), (3, 0));
        assert!(d.0.join("proxy.state.corrupt").exists());
        drop(svc);
        // The next save wrote a good file again.
        assert_eq!(
            load_state(&sf)
                .unwrap()
                .unwrap()
                .user("alice")
                .map(|u| u.used),
            Some(0)
        );
    }

    #[test]
    fn a_finished_period_starts_again_at_restart() {
        let d = Dir::new("period");
        let (_, c) = setup(&d.0, &two_users());
        let sf = c.state_file().unwrap();
        let now = unix_now();
        let old = now - 31 * 86_400;
        let st = State {
            written: old,
            users: vec![UserUsage {
                name: "alice".into(),
                used: 999,
                period_start: old,
            }],
            applied: vec![],
        };
        store_state(&sf, &st).unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        let live = cells.load();
        let a = live.users.id("alice").unwrap();
        let counts = live.stats[a].counts();
        assert_eq!((counts.used, counts.period_start), (0, old + 30 * 86_400));
        drop(svc);
        // Within the period, usage stays.
        let st = State {
            users: vec![UserUsage {
                name: "alice".into(),
                used: 999,
                period_start: now - 86_400,
            }],
            ..st
        };
        store_state(&sf, &st).unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        assert_eq!(cells.load().stats[a].used(), 999);
        drop(svc);
    }

    #[test]
    fn reset_requests_apply_exactly_once() {
        let d = Dir::new("reset");
        let (_, c) = setup(&d.0, &two_users());
        let sf = c.state_file().unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        let live = cells.load();
        let a = live.users.id("alice").unwrap();
        let lease = live.stats[a].admit(&Default::default(), ip(), 0).unwrap();
        assert!(lease.traffic(500, 500));
        // While running: the request is applied at the next save (here: the shutdown one),
        // its file deleted.
        let req = request_reset(&sf, "alice", 0x1234).unwrap();
        assert_eq!(req, d.0.join("proxy.reset-0000000000001234"));
        assert_eq!(pending_resets(&sf).len(), 1);
        drop(svc);
        assert_eq!(live.stats[a].used(), 0);
        assert!(!req.exists());
        assert!(lease.traffic(7, 0));
        let svc = UsersService::start(cells.clone(), &c);
        drop(svc);
        assert_eq!(
            load_state(&sf)
                .unwrap()
                .unwrap()
                .user("alice")
                .map(|u| u.used),
            Some(7)
        );
        // A crash after the save but before the delete: the state lists the id, the file is
        // still there. The next start deletes it without resetting again.
        let mut st = load_state(&sf).unwrap().unwrap();
        st.applied = vec![0x99];
        store_state(&sf, &st).unwrap();
        let req = request_reset(&sf, "alice", 0x99).unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        drop(svc);
        assert_eq!(cells.load().stats[a].used(), 7);
        assert!(!req.exists());
        // The id stays listed until a write after the delete (the service may have saved
        // once or twice).
        let applied = load_state(&sf).unwrap().unwrap().applied;
        assert!(applied == [0x99] || applied.is_empty(), "{applied:?}");
        drop(UsersService::start(cells.clone(), &c));
        assert_eq!(load_state(&sf).unwrap().unwrap().applied, Vec::<u64>::new());
        // A crash before the save: the file is there and the id is not: applied at start.
        let req = request_reset(&sf, "alice", 0x77).unwrap();
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        drop(svc);
        assert_eq!(cells.load().stats[a].used(), 0);
        assert!(!req.exists());
        // Requests for nobody and broken ones are dropped.
        let bad = request_reset(&sf, "nobody", 1).unwrap();
        let junk = d.0.join("proxy.reset-0000000000000002");
        std::fs::write(&junk, "garbage").unwrap();
        let other = d.0.join("other.reset-0000000000000003");
        std::fs::write(&other, state::write_reset("alice")).unwrap();
        drop(UsersService::start(cells.clone(), &c));
        assert!(!bad.exists() && !junk.exists());
        assert!(other.exists(), "another config's request is left alone");
        drop(lease);
    }

    #[test]
    fn reload_gives_a_diff_and_a_broken_file_keeps_the_users() {
        let d = Dir::new("reload");
        let (cfg, c) = setup(&d.0, &two_users());
        let cells = cell(&c);
        let before = cells.load();
        // bob removed, carol added, alice's quota changed.
        std::fs::write(
            d.0.join("users.toml"),
            format!(
                "[users.alice]\nsecret = \"{}\"\nquota = \"2MiB\"\n[users.carol]\nsecret = \"{}\"\n",
                hex(2),
                hex(4)
            ),
        )
        .unwrap();
        let (diff, unserved) = reload(&cells, &cfg, false).unwrap();
        assert!(!unserved, "no ad tag");
        let live = cells.load();
        let names: Vec<&str> = live.users.specs().iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["default", "alice", "carol"]);
        assert_eq!(diff.added, [2]);
        assert_eq!(diff.removed, [2]);
        assert_eq!(diff.changed.len(), 1);
        assert!(diff.changed[0].limits && !diff.changed[0].secret);
        assert_eq!(diff.kept, [(0, 0)]);
        assert!(Arc::ptr_eq(&live.stats[1], &before.stats[1]));
        // Broken: the error names the file and line; the users stay.
        std::fs::write(d.0.join("users.toml"), "[users.alice]\nsecret = \"nope\"\n").unwrap();
        let e = reload(&cells, &cfg, false).unwrap_err();
        let uf = d.0.join("users.toml");
        assert!(
            e.starts_with(&format!("{}:2: users.alice.secret: ", uf.display())),
            "{e}"
        );
        assert!(!e.contains("nope"), "{e}");
        assert_eq!(cells.generation(), 1);
        assert_eq!(cells.load().users.len(), 3);
        // A user gains an ad tag: served only if middle proxies were loaded at start.
        std::fs::write(
            d.0.join("users.toml"),
            format!(
                "[users.alice]\nsecret = \"{}\"\nad-tag = \"{}\"\n",
                hex(2),
                "ab".repeat(16)
            ),
        )
        .unwrap();
        assert!(
            reload(&cells, &cfg, false).unwrap().1,
            "a tag without middle proxies"
        );
        assert!(
            !reload(&cells, &cfg, true).unwrap().1,
            "middle proxies loaded"
        );
    }

    #[test]
    fn the_service_reloads_on_request_and_when_the_users_file_changes() {
        let d = Dir::new("watch");
        let (_, c) = setup(&d.0, &two_users());
        let cells = cell(&c);
        let svc = UsersService::start(cells.clone(), &c).unwrap();
        let wait_for = |g: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cells.generation() < g && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            cells.generation()
        };
        // SIGHUP (nothing changed: a new snapshot all the same).
        svc.reload();
        assert_eq!(wait_for(1), 1);
        // An edit of the users file is noticed within CHECK_EVERY.
        let mut text = two_users();
        text.push_str(&format!("[users.dave]\nsecret = \"{}\"\n", hex(5)));
        std::fs::write(d.0.join("users.toml"), text).unwrap();
        assert_eq!(wait_for(2), 2);
        assert!(cells.load().users.id("dave").is_some());
        drop(svc);
    }
}
