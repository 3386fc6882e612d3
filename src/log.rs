//! One-line structured events on stderr, as logfmt (default) or JSON lines.
//!
//! ```text
//! ts=2026-12-02T20:31:07.123Z level=info event=proxy-started bind=0.0.0.0:443 workers=2
//! {"ts":"2026-12-02T20:31:07.123Z","level":"info","event":"proxy-started","bind":"0.0.0.0:443"}
//! ```
//!
//! The level threshold and the format are global, set once at start by [`init`] (two atomics).
//! [`log_event!`](crate::log_event) checks [`enabled`] first, so a filtered-out event costs one
//! atomic load and formats nothing. An emitted line is built in a thread-local reusable `String`.
//! Secrets are never logged: nothing in mtpx implements `Display` for a secret's key.
//!
//! Logging never blocks a worker (issue 12): once the proxy runs ([`start_writer`]), a line is
//! copied into a fixed 64 KiB ring under a lock held only for that copy, and a thread of its
//! own writes the ring to stderr. A stderr that blocks (a full pipe nobody reads) fills the
//! ring; further lines are dropped and counted ([`dropped`]), and the count is written in a
//! warning once stderr moves again. Before that (command-line tools, start-up errors) lines
//! are written directly, one `write_all` each. [`flush`] waits for the ring to be written.
//!
//! Events an unauthenticated client can trigger at will (a failed handshake, fronting) are
//! rate-limited at the default level by [`probe`]: at most [`PROBE_LINES`] lines per kind every
//! [`PROBE_INTERVAL_SECS`] seconds, then one `log-suppressed` line per kind and interval with
//! the count left out. With `debug = true` every one is written.

use std::cell::RefCell;
use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::formats::json;

/// Severity of an event, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed and mtpx cannot do what it was asked.
    Error = 0,
    /// Something is wrong or suspicious, but mtpx carries on.
    Warn = 1,
    /// Normal, infrequent events (start, stop).
    Info = 2,
    /// Per-connection detail, only with `debug = true`.
    Debug = 3,
}

impl Level {
    /// The lowercase name printed in the `level` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

impl Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output format of log lines (config key `log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` pairs separated by spaces; values quoted when needed.
    #[default]
    Logfmt,
    /// One JSON object per line; every value is a JSON string.
    Json,
}

impl LogFormat {
    /// Parses `logfmt` or `json` (case-insensitive).
    pub fn parse(s: &str) -> Option<LogFormat> {
        if s.eq_ignore_ascii_case("logfmt") {
            Some(LogFormat::Logfmt)
        } else if s.eq_ignore_ascii_case("json") {
            Some(LogFormat::Json)
        } else {
            None
        }
    }

    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Logfmt => "logfmt",
            LogFormat::Json => "json",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Sets the global format and threshold: `info`, or `debug` when `debug` is true.
/// Meant to be called once at start; calling it again simply replaces both settings.
pub fn init(format: LogFormat, debug: bool) {
    let level = if debug { Level::Debug } else { Level::Info };
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
    FORMAT.store(
        match format {
            LogFormat::Logfmt => 0,
            LogFormat::Json => 1,
        },
        Ordering::Relaxed,
    );
}

/// Whether events of `level` are currently written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

fn current_format() -> LogFormat {
    if FORMAT.load(Ordering::Relaxed) == 1 {
        LogFormat::Json
    } else {
        LogFormat::Logfmt
    }
}

/// One `key = value` field of an event.
pub type Field<'a> = (&'a str, &'a dyn Display);

thread_local! {
    // (line, scratch for one formatted value)
    static BUFS: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

/// Writes one event to stderr if `level` is enabled. Prefer the [`log_event!`](crate::log_event)
/// macro, which skips evaluating the fields when the level is filtered out.
pub fn emit(level: Level, event: &str, fields: &[Field<'_>]) {
    if !enabled(level) {
        return;
    }
    let format = current_format();
    let ts = unix_millis();
    let write = |line: &mut String, scratch: &mut String| {
        line.clear();
        format_event(line, scratch, format, ts, level, event, fields);
        line.push('\n');
        write_line(line.as_bytes());
    };
    let done = BUFS
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => {
                let (line, scratch) = &mut *bufs;
                write(line, scratch);
                // Do not keep a huge buffer around after one oversized line.
                if line.capacity() > 64 * 1024 {
                    *line = String::new();
                }
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !done {
        // Re-entrant call (a Display impl that logs) or thread teardown: use fresh buffers.
        write(&mut String::new(), &mut String::new());
    }
}

/// Writes one event whose fields were pre-formatted as logfmt text (`event=x key=value ...`),
/// if `level` is enabled. In JSON mode the pairs are parsed back and written as JSON fields.
/// Nothing is formatted when the level is filtered out.
pub fn emit_raw(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let format = current_format();
    let ts = unix_millis();
    let write = |line: &mut String, scratch: &mut String| {
        line.clear();
        format_raw(line, scratch, format, ts, level, args);
        line.push('\n');
        write_line(line.as_bytes());
    };
    let done = BUFS
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => {
                let (line, scratch) = &mut *bufs;
                write(line, scratch);
                if line.capacity() > 64 * 1024 {
                    *line = String::new();
                }
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !done {
        write(&mut String::new(), &mut String::new());
    }
}

// ---------------------------------------------------------------- the writer

/// Bytes of log lines the ring holds (about 300 lines) while stderr is slow.
const RING: usize = 64 * 1024;

/// How often the writer reports suppressed probe lines and dropped lines.
const TICK: Duration = Duration::from_secs(1);

/// A byte ring of whole lines: a line goes in whole or not at all.
struct Ring {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            buf: vec![0; cap],
            start: 0,
            len: 0,
        }
    }

    /// Appends `line`, or returns false when it does not fit.
    fn push(&mut self, line: &[u8]) -> bool {
        let cap = self.buf.len();
        if line.len() > cap - self.len {
            return false;
        }
        let at = (self.start + self.len) % cap;
        let first = line.len().min(cap - at);
        self.buf[at..at + first].copy_from_slice(&line[..first]);
        self.buf[..line.len() - first].copy_from_slice(&line[first..]);
        self.len += line.len();
        true
    }

    /// Moves everything into `out`, oldest first.
    fn drain_into(&mut self, out: &mut Vec<u8>) {
        let cap = self.buf.len();
        let first = self.len.min(cap - self.start);
        out.extend_from_slice(&self.buf[self.start..self.start + first]);
        out.extend_from_slice(&self.buf[..self.len - first]);
        self.start = 0;
        self.len = 0;
    }
}

struct Queue {
    ring: Ring,
    /// Lines pushed, and lines the writer has written (or dropped): for [`flush`].
    pushed: u64,
    written: u64,
    /// The writer sleeps on `more` (so a push must wake it).
    idle: bool,
    /// Summaries asked for by [`flush`], and the last request the writer answered.
    report_asked: u64,
    report_done: u64,
}

struct Sink {
    queue: Mutex<Queue>,
    more: Condvar,
    done: Condvar,
}

static SINK: OnceLock<Sink> = OnceLock::new();
/// Set once the writer thread runs: lines go to the ring from then on.
static WRITER: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sink() -> &'static Sink {
    SINK.get_or_init(|| Sink {
        queue: Mutex::new(Queue {
            ring: Ring::new(RING),
            pushed: 0,
            written: 0,
            idle: false,
            report_asked: 0,
            report_done: 0,
        }),
        more: Condvar::new(),
        done: Condvar::new(),
    })
}

/// Hands one line to the writer thread, or writes it directly when there is none.
fn write_line(line: &[u8]) {
    if !WRITER.load(Ordering::Acquire) {
        // Nowhere to report a failure to write a log line.
        let _ = std::io::stderr().lock().write_all(line);
        return;
    }
    let sink = sink();
    let mut q = lock(&sink.queue);
    if !q.ring.push(line) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    q.pushed += 1;
    if q.idle {
        sink.more.notify_one();
    }
}

/// Lines dropped so far because stderr did not keep up (the ring was full).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// From now on, log lines go through the ring to a writer thread (see the module
/// documentation). Idempotent; if the thread cannot be started, lines stay direct.
pub fn start_writer() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let sink = sink();
    let spawned = std::thread::Builder::new()
        .name("mtpx-log".into())
        .spawn(move || writer(sink));
    if spawned.is_ok() {
        WRITER.store(true, Ordering::Release);
    }
}

fn writer(sink: &Sink) {
    let mut out = Vec::with_capacity(RING);
    let mut reported_drops = 0;
    let mut last_summary = Instant::now();
    loop {
        let (upto, asked, report) = {
            let mut q = lock(&sink.queue);
            if q.ring.len == 0 && q.report_asked == q.report_done {
                q.idle = true;
                q = match sink.more.wait_timeout(q, TICK) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
                q.idle = false;
            }
            q.ring.drain_into(&mut out);
            (q.pushed, q.report_asked, q.report_asked != q.report_done)
        };
        if report || last_summary.elapsed() >= Duration::from_secs(PROBE_INTERVAL_SECS) {
            last_summary = Instant::now();
            report_suppressed(&mut out);
        }
        if !out.is_empty() {
            let _ = std::io::stderr().lock().write_all(&out);
            out.clear();
        }
        // Lines lost while stderr was stuck: said once it moves again.
        let drops = dropped();
        if drops > reported_drops {
            let mut line = String::new();
            let n = drops - reported_drops;
            format_event(
                &mut line,
                &mut String::new(),
                current_format(),
                unix_millis(),
                Level::Warn,
                "log-lines-dropped",
                &[("dropped", &n), ("total", &drops)],
            );
            line.push('\n');
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            reported_drops = drops;
        }
        {
            let mut q = lock(&sink.queue);
            q.written = upto;
            q.report_done = asked;
        }
        sink.done.notify_all();
    }
}

/// Waits (up to a second: stderr may be stuck) until every line logged so far is written,
/// with the suppressed-probe summaries. Call before the process exits.
pub fn flush() {
    if !WRITER.load(Ordering::Acquire) {
        return;
    }
    let sink = sink();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut q = lock(&sink.queue);
    let target = q.pushed;
    q.report_asked += 1;
    let asked = q.report_asked;
    sink.more.notify_one();
    while q.written < target || q.report_done < asked {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        q = match sink.done.wait_timeout(q, left) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

// ---------------------------------------------------------------- probe events

/// Lines per kind of probe event and interval at the default level.
pub const PROBE_LINES: u32 = 10;
/// The interval of [`PROBE_LINES`], in seconds.
pub const PROBE_INTERVAL_SECS: u64 = 10;

/// Events that unauthenticated clients trigger at will.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A handshake failed and the connection was closed (`handshake-rejected`).
    Rejected = 0,
    /// A failed handshake was passed to the fronting site (`fronting`).
    Fronting = 1,
    /// The fronting site could not be reached for one (`fronting-failed`).
    FrontingFailed = 2,
    /// A user's client refused by the user's limits (`user-refused`): an app over its quota
    /// retries at will.
    UserRefused = 3,
}

const PROBE_EVENTS: [&str; 4] = [
    "handshake-rejected",
    "fronting",
    "fronting-failed",
    "user-refused",
];

/// A per-kind budget of lines per interval (see [`probe`]).
struct Limit {
    window: AtomicU64,
    used: AtomicU32,
    suppressed: AtomicU64,
}

impl Limit {
    const fn new() -> Limit {
        Limit {
            window: AtomicU64::new(0),
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line fits in the interval of `now_secs` (approximate under races,
    /// which only matters for a line or two).
    fn allow(&self, now_secs: u64) -> bool {
        let w = now_secs / PROBE_INTERVAL_SECS;
        if self.window.swap(w, Ordering::Relaxed) != w {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < PROBE_LINES {
            return true;
        }
        self.used.store(PROBE_LINES, Ordering::Relaxed);
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }
}

static LIMITS: [Limit; 4] = [Limit::new(), Limit::new(), Limit::new(), Limit::new()];

/// Whether to log this probe event now: always with `debug = true`; otherwise at most
/// [`PROBE_LINES`] per kind and [`PROBE_INTERVAL_SECS`]. The rest are counted and summed up by
/// the writer in one `log-suppressed` line per kind and interval.
pub fn probe(kind: Probe) -> bool {
    enabled(Level::Debug) || LIMITS[kind as usize].allow(unix_millis() / 1000)
}

/// Appends a `log-suppressed` line for each kind with lines left out since the last call.
fn report_suppressed(out: &mut Vec<u8>) {
    let mut line = String::new();
    for (limit, event) in LIMITS.iter().zip(PROBE_EVENTS) {
        let n = limit.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            line.clear();
            format_event(
                &mut line,
                &mut String::new(),
                current_format(),
                unix_millis(),
                Level::Info,
                "log-suppressed",
                &[("of", &event), ("suppressed", &n)],
            );
            line.push('\n');
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// Formats a pre-formatted logfmt event (see [`emit_raw`]) into `out`, without the newline.
pub fn format_raw(
    out: &mut String,
    scratch: &mut String,
    format: LogFormat,
    ts_unix_ms: u64,
    level: Level,
    args: fmt::Arguments<'_>,
) {
    scratch.clear();
    let _ = scratch.write_fmt(args);
    match format {
        LogFormat::Logfmt => {
            out.push_str("ts=");
            write_timestamp(out, ts_unix_ms);
            out.push_str(" level=");
            out.push_str(level.as_str());
            let body = scratch.trim();
            if !body.is_empty() {
                out.push(' ');
                // Never let a stray newline split the line.
                for c in body.chars() {
                    match c {
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
        }
        LogFormat::Json => {
            out.push_str("{\"ts\":\"");
            write_timestamp(out, ts_unix_ms);
            out.push_str("\",\"level\":\"");
            out.push_str(level.as_str());
            out.push('"');
            let mut value = String::new();
            let mut rest = scratch.as_str();
            loop {
                rest = rest.trim_start();
                if rest.is_empty() {
                    break;
                }
                let key_end = rest.find(['=', ' ']).unwrap_or(rest.len());
                let key = &rest[..key_end];
                rest = &rest[key_end..];
                value.clear();
                if let Some(after) = rest.strip_prefix('=') {
                    rest = after;
                    if let Some(quoted) = rest.strip_prefix('"') {
                        // A quoted value ends at a `"` followed by a space or the end.
                        let mut chars = quoted.char_indices().peekable();
                        let mut end = quoted.len();
                        while let Some((i, c)) = chars.next() {
                            match c {
                                '\\' => match chars.next() {
                                    Some((_, 'n')) => value.push('\n'),
                                    Some((_, 't')) => value.push('\t'),
                                    Some((_, 'r')) => value.push('\r'),
                                    Some((_, e)) => value.push(e),
                                    None => value.push('\\'),
                                },
                                '"' if closes_quote(&quoted[i + 1..]) => {
                                    end = i + 1;
                                    break;
                                }
                                c => value.push(c),
                            }
                        }
                        rest = &quoted[end..];
                    } else {
                        let end = rest.find(' ').unwrap_or(rest.len());
                        value.push_str(&rest[..end]);
                        rest = &rest[end..];
                    }
                } else {
                    value.push_str("true");
                }
                out.push(',');
                json::string_into(out, if key.is_empty() { "_" } else { key });
                out.push(':');
                json::string_into(out, &value);
            }
            out.push('}');
        }
    }
}

/// Whether a `"` followed by `after` ends a quoted logfmt value: it does at the end of the
/// text, or when a space and then another `key=` follow (so unescaped quotes inside a value
/// stay in it).
fn closes_quote(after: &str) -> bool {
    let Some(next) = after.strip_prefix(' ') else {
        return after.trim().is_empty();
    };
    let next = next.trim_start();
    let word = next.split(' ').next().unwrap_or("");
    next.is_empty()
        || word
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains('"'))
        || (!word.contains('=') && !word.contains('"') && !next.contains('"'))
}

/// Formats one event (without the trailing newline) into `out`.
///
/// `ts_unix_ms` is the event time in milliseconds since the Unix epoch; `scratch` is a reusable
/// buffer for formatting one value before escaping it.
pub fn format_event(
    out: &mut String,
    scratch: &mut String,
    format: LogFormat,
    ts_unix_ms: u64,
    level: Level,
    event: &str,
    fields: &[Field<'_>],
) {
    scratch.clear();
    write_timestamp(scratch, ts_unix_ms);
    match format {
        LogFormat::Logfmt => {
            out.push_str("ts=");
            out.push_str(scratch);
            out.push_str(" level=");
            out.push_str(level.as_str());
            out.push_str(" event=");
            logfmt_value(out, event);
            for (key, value) in fields {
                out.push(' ');
                logfmt_key(out, key);
                out.push('=');
                scratch.clear();
                let _ = write!(scratch, "{value}");
                logfmt_value(out, scratch);
            }
        }
        LogFormat::Json => {
            out.push_str("{\"ts\":");
            json::string_into(out, scratch);
            out.push_str(",\"level\":\"");
            out.push_str(level.as_str());
            out.push_str("\",\"event\":");
            json::string_into(out, event);
            for (key, value) in fields {
                out.push(',');
                json::string_into(out, key);
                out.push(':');
                scratch.clear();
                let _ = write!(scratch, "{value}");
                json::string_into(out, scratch);
            }
            out.push('}');
        }
    }
}

fn logfmt_key(out: &mut String, key: &str) {
    // Keys come from source code; still, never let one break the line apart.
    if key.is_empty() {
        out.push('_');
    }
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
}

/// Appends `value` as a logfmt value: bare when it is non-empty and has no space, `=`, quote,
/// backslash or control character; otherwise double-quoted with escapes.
fn logfmt_value(out: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '=' | '"' | '\\'));
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    json::escape_into(out, value);
    out.push('"');
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Appends `ms` (milliseconds since the Unix epoch) as RFC 3339 UTC, e.g.
/// `2026-12-02T20:31:07.123Z`.
pub fn write_timestamp(out: &mut String, ms: u64) {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::formats::rfc3339::civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
}

/// Logs one event: `log_event!(Level::Info, "proxy-started", bind = addr, workers = n)`.
///
/// Keys are identifiers or string literals (`"client-ip" = ip`); values are anything that
/// implements `Display`. Nothing is evaluated or formatted when the level is filtered out.
#[macro_export]
macro_rules! log_event {
    ($level:expr, $event:expr $(, $key:tt = $value:expr)* $(,)?) => {{
        let level: $crate::log::Level = $level;
        if $crate::log::enabled(level) {
            $crate::log::emit(
                level,
                $event,
                &[$(($crate::__log_key!($key), &$value as &dyn ::core::fmt::Display)),*],
            );
        }
    }};
}

/// [`log_event!`](crate::log_event) for an event unauthenticated clients trigger at will:
/// `log_probe!(Probe::Fronting, Level::Info, "fronting", conn = id)`, written only if
/// [`probe`] allows it (rate-limited unless `debug = true`).
#[macro_export]
macro_rules! log_probe {
    ($kind:expr, $level:expr, $event:expr $(, $key:tt = $value:expr)* $(,)?) => {{
        let level: $crate::log::Level = $level;
        if $crate::log::enabled(level) && $crate::log::probe($kind) {
            $crate::log_event!(level, $event $(, $key = $value)*);
        }
    }};
}

/// Turns a `log_event!` key (identifier or string literal) into a `&str`.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_key {
    ($key:ident) => {
        stringify!($key)
    };
    ($key:literal) => {
        $key
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, event: &str, fields: &[Field<'_>]) -> String {
        let mut out = String::new();
        let mut scratch = String::new();
        format_event(
            &mut out,
            &mut scratch,
            format,
            1_796_243_467_123,
            Level::Info,
            event,
            fields,
        );
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        write_timestamp(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        write_timestamp(&mut s, 1_796_243_467_123);
        assert_eq!(s, "2026-12-02T20:31:07.123Z");
        s.clear();
        // 2024-02-29 (leap day) 12:00:00.5
        write_timestamp(&mut s, 1_709_208_000_500);
        assert_eq!(s, "2024-02-29T12:00:00.500Z");
    }

    #[test]
    fn logfmt_line_matches_the_documented_shape() {
        let bind = "0.0.0.0:443";
        let workers = 2;
        assert_eq!(
            line(
                LogFormat::Logfmt,
                "proxy-started",
                &[("bind", &bind), ("workers", &workers)]
            ),
            "ts=2026-12-02T20:31:07.123Z level=info event=proxy-started bind=0.0.0.0:443 workers=2"
        );
    }

    #[test]
    fn logfmt_quotes_and_escapes_when_needed() {
        let cases: [(&str, &str); 7] = [
            ("plain", "plain"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("line\nbreak\x01", "\"line\\nbreak\\u0001\""),
        ];
        for (value, expected) in cases {
            let got = line(LogFormat::Logfmt, "e", &[("k", &value)]);
            assert_eq!(
                got,
                format!("ts=2026-12-02T20:31:07.123Z level=info event=e k={expected}")
            );
        }
    }

    #[test]
    fn logfmt_keys_cannot_break_the_line() {
        let v = 1;
        let got = line(LogFormat::Logfmt, "e", &[("a b=c", &v), ("", &v)]);
        assert!(got.ends_with(" a_b_c=1 _=1"), "{got}");
    }

    #[test]
    fn json_line_is_one_object_with_string_values() {
        let reason = "peer said \"bye\"\n";
        let n = 42u64;
        assert_eq!(
            line(
                LogFormat::Json,
                "conn-closed",
                &[("bytes_up", &n), ("reason", &reason)]
            ),
            "{\"ts\":\"2026-12-02T20:31:07.123Z\",\"level\":\"info\",\"event\":\"conn-closed\",\
             \"bytes_up\":\"42\",\"reason\":\"peer said \\\"bye\\\"\\n\"}"
        );
    }

    #[test]
    fn json_escapes_control_and_separator_characters() {
        let v = "\u{7f}\u{2028}é";
        let got = line(LogFormat::Json, "e\t", &[("k", &v)]);
        assert!(got.contains("\"event\":\"e\\t\""), "{got}");
        assert!(got.contains("\"k\":\"\\u007f\\u2028é\""), "{got}");
    }

    fn raw(format: LogFormat, args: fmt::Arguments<'_>) -> String {
        let mut out = String::new();
        let mut scratch = String::new();
        format_raw(&mut out, &mut scratch, format, 0, Level::Warn, args);
        out
    }

    #[test]
    fn raw_logfmt_is_prefixed_and_kept_on_one_line() {
        assert_eq!(
            raw(
                LogFormat::Logfmt,
                format_args!("event=x n={} why=\"a\nb\"", 3)
            ),
            "ts=1970-01-01T00:00:00.000Z level=warn event=x n=3 why=\"a\\nb\""
        );
    }

    #[test]
    fn raw_pairs_become_json_fields() {
        assert_eq!(
            raw(
                LogFormat::Json,
                format_args!(
                    "event=fd-limit-low limit={} hint=\"say \\\"hi\\\" now\" flag",
                    1024
                )
            ),
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"event\":\"fd-limit-low\",\
             \"limit\":\"1024\",\"hint\":\"say \\\"hi\\\" now\",\"flag\":\"true\"}"
        );
        // An unescaped quote inside a quoted value stays in the value.
        assert_eq!(
            raw(LogFormat::Json, format_args!("error=\"bad \"x\" y\"")),
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"error\":\"bad \\\"x\\\" y\"}"
        );
    }

    #[test]
    fn log_format_parses_both_names() {
        assert_eq!(LogFormat::parse("logfmt"), Some(LogFormat::Logfmt));
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), None);
        assert_eq!(LogFormat::Json.as_str(), "json");
    }

    #[test]
    fn ring_keeps_whole_lines_in_order_and_refuses_overflow() {
        let mut r = Ring::new(16);
        let mut out = Vec::new();
        assert!(r.push(b"0123456789"));
        r.drain_into(&mut out);
        // Wraps around the end.
        r.start = 12;
        assert!(r.push(b"abcdef"));
        assert!(r.push(b"ghij"));
        assert!(!r.push(b"klmnopq"), "7 bytes do not fit in the 6 left");
        assert!(r.push(b"klmnop"));
        assert!(!r.push(b"q"));
        r.drain_into(&mut out);
        assert_eq!(out, b"0123456789abcdefghijklmnop");
        assert_eq!(r.len, 0);
        assert!(r.push(&[b'x'; 16]));
    }

    #[test]
    fn probe_lines_are_limited_per_interval() {
        let l = Limit::new();
        let t = 1_700_000_000 / PROBE_INTERVAL_SECS * PROBE_INTERVAL_SECS;
        let allowed = (0..200).filter(|_| l.allow(t + 3)).count();
        assert_eq!(allowed, PROBE_LINES as usize);
        assert_eq!(
            l.suppressed.load(Ordering::Relaxed),
            200 - u64::from(PROBE_LINES)
        );
        // The next interval has a fresh budget.
        assert!(l.allow(t + PROBE_INTERVAL_SECS));
        let mut out = Vec::new();
        LIMITS[Probe::Fronting as usize]
            .suppressed
            .store(7, Ordering::Relaxed);
        report_suppressed(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("event=log-suppressed of=fronting suppressed=7\n"),
            "{text}"
        );
    }

    #[test]
    fn levels_filter_and_macro_skips_evaluation() {
        init(LogFormat::Logfmt, false);
        assert!(enabled(Level::Error) && enabled(Level::Warn) && enabled(Level::Info));
        assert!(!enabled(Level::Debug));
        let mut evaluated = false;
        crate::log_event!(
            Level::Debug,
            "never",
            x = {
                evaluated = true;
                1
            }
        );
        assert!(!evaluated, "a filtered event must not evaluate its fields");
        init(LogFormat::Logfmt, true);
        assert!(enabled(Level::Debug));
        init(LogFormat::Logfmt, false);
    }
}
