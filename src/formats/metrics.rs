//! Metrics exposition, pure: the Prometheus text format 0.0.4 and StatsD lines in mtg's three
//! tag styles (PROTOCOL 8.8). No registry: the caller takes a snapshot of its counters and
//! gauges, describes it as [`Metric`]s borrowing the label values, and these functions write
//! text into a caller-owned `String` (reuse it between scrapes/flushes; nothing else is
//! allocated).

use std::fmt::Write as _;

/// Prometheus name prefix when none is configured (`mtg_client_connections`, as mtg).
pub const DEFAULT_PROMETHEUS_PREFIX: &str = "mtg";
/// StatsD prefix when none is configured: prepended verbatim (`mtg.client_connections`). A
/// configured prefix is also prepended verbatim, so `mtg` gives `mtgclient_connections`.
pub const DEFAULT_STATSD_PREFIX: &str = "mtg.";
/// The `Content-Type` of [`write_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counter (only goes up; StatsD `|c` carries increments) or gauge (a level; StatsD `|g`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One labelled value of a metric. Label pairs are `(name, value)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    pub labels: &'a [(&'a str, &'a str)],
    pub value: f64,
}

/// A metric family in a snapshot: name without prefix, help text, kind, samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub kind: Kind,
    pub samples: &'a [Sample<'a>],
}

/// A metric's fixed description, for building snapshots from [`CATALOG`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Label names, in the order the exposition writes them (sorted, as Prometheus clients do).
    pub labels: &'static [&'static str],
}

// Metric names (without prefix). The first ten are mtg's, with its label sets.
pub const CLIENT_CONNECTIONS: &str = "client_connections";
pub const TELEGRAM_CONNECTIONS: &str = "telegram_connections";
pub const DOMAIN_FRONTING_CONNECTIONS: &str = "domain_fronting_connections";
pub const IPLIST_SIZE: &str = "iplist_size";
pub const TELEGRAM_TRAFFIC: &str = "telegram_traffic";
pub const DOMAIN_FRONTING_TRAFFIC: &str = "domain_fronting_traffic";
pub const DOMAIN_FRONTING: &str = "domain_fronting";
pub const CONCURRENCY_LIMITED: &str = "concurrency_limited";
pub const IP_BLOCKLISTED: &str = "ip_blocklisted";
pub const REPLAY_ATTACKS: &str = "replay_attacks";
// mtpx's own.
pub const HANDSHAKE_FAILURES: &str = "handshake_failures";
pub const CONNECTIONS: &str = "connections";
pub const BUFFER_POOL_IN_USE: &str = "buffer_pool_in_use";
pub const BUFFER_POOL_CAPACITY: &str = "buffer_pool_capacity";
pub const FRONTED_CONNECTIONS: &str = "fronted_connections";
// Per user (label `user`, one series per configured user).
pub const USER_TRAFFIC: &str = "user_traffic";
pub const USER_CONNECTIONS: &str = "user_connections";
pub const USER_HANDSHAKES: &str = "user_handshakes";
pub const USER_REJECTIONS: &str = "user_rejections";
pub const USER_QUOTA_USED: &str = "user_quota_used";

// Label names and their fixed values.
pub const LABEL_IP_FAMILY: &str = "ip_family";
pub const LABEL_TELEGRAM_IP: &str = "telegram_ip";
pub const LABEL_DC: &str = "dc";
pub const LABEL_DIRECTION: &str = "direction";
pub const LABEL_IP_LIST: &str = "ip_list";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_SECRET_KIND: &str = "secret_kind";
pub const LABEL_USER: &str = "user";
pub const IP_FAMILY_V4: &str = "ipv4";
pub const IP_FAMILY_V6: &str = "ipv6";
/// Bytes read from Telegram or the fronting site.
pub const DIRECTION_TO_CLIENT: &str = "to_client";
/// Bytes written to Telegram or the fronting site.
pub const DIRECTION_FROM_CLIENT: &str = "from_client";
pub const IP_LIST_ALLOW: &str = "allowlist";
pub const IP_LIST_BLOCK: &str = "blocklist";

/// Every metric mtpx exports, in exposition order.
pub const CATALOG: &[MetricDef] = &[
    MetricDef {
        name: CLIENT_CONNECTIONS,
        help: "Number of client connections currently open.",
        kind: Kind::Gauge,
        labels: &[LABEL_IP_FAMILY],
    },
    MetricDef {
        name: TELEGRAM_CONNECTIONS,
        help: "Number of connections to Telegram currently open.",
        kind: Kind::Gauge,
        labels: &[LABEL_DC, LABEL_TELEGRAM_IP],
    },
    MetricDef {
        name: DOMAIN_FRONTING_CONNECTIONS,
        help: "Number of connections to the fronting domain currently open.",
        kind: Kind::Gauge,
        labels: &[LABEL_IP_FAMILY],
    },
    MetricDef {
        name: IPLIST_SIZE,
        help: "Number of entries in an IP list.",
        kind: Kind::Gauge,
        labels: &[LABEL_IP_LIST],
    },
    MetricDef {
        name: TELEGRAM_TRAFFIC,
        help: "Bytes relayed to and from Telegram.",
        kind: Kind::Counter,
        labels: &[LABEL_DC, LABEL_DIRECTION, LABEL_TELEGRAM_IP],
    },
    MetricDef {
        name: DOMAIN_FRONTING_TRAFFIC,
        help: "Bytes relayed to and from the fronting domain.",
        kind: Kind::Counter,
        labels: &[LABEL_DIRECTION],
    },
    MetricDef {
        name: DOMAIN_FRONTING,
        help: "Connections sent to the fronting domain.",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: CONCURRENCY_LIMITED,
        help: "Connections refused because of the concurrency limit.",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: IP_BLOCKLISTED,
        help: "Connections refused by an IP list.",
        kind: Kind::Counter,
        labels: &[LABEL_IP_LIST],
    },
    MetricDef {
        name: REPLAY_ATTACKS,
        help: "Handshakes refused as replays.",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: HANDSHAKE_FAILURES,
        help: "Client handshakes that failed, by reason.",
        kind: Kind::Counter,
        labels: &[LABEL_REASON],
    },
    MetricDef {
        name: CONNECTIONS,
        help: "Client connections accepted with a valid handshake, by secret kind.",
        kind: Kind::Counter,
        labels: &[LABEL_SECRET_KIND],
    },
    MetricDef {
        name: BUFFER_POOL_IN_USE,
        help: "Relay buffers currently checked out of the pools.",
        kind: Kind::Gauge,
        labels: &[],
    },
    MetricDef {
        name: BUFFER_POOL_CAPACITY,
        help: "Relay buffers in the pools in total.",
        kind: Kind::Gauge,
        labels: &[],
    },
    MetricDef {
        name: FRONTED_CONNECTIONS,
        help: "Fronted connections currently open.",
        kind: Kind::Gauge,
        labels: &[],
    },
    MetricDef {
        name: USER_TRAFFIC,
        help: "Bytes relayed to and from a user's clients.",
        kind: Kind::Counter,
        labels: &[LABEL_DIRECTION, LABEL_USER],
    },
    MetricDef {
        name: USER_CONNECTIONS,
        help: "A user's connections currently open.",
        kind: Kind::Gauge,
        labels: &[LABEL_USER],
    },
    MetricDef {
        name: USER_HANDSHAKES,
        help: "A user's connections admitted.",
        kind: Kind::Counter,
        labels: &[LABEL_USER],
    },
    MetricDef {
        name: USER_REJECTIONS,
        help: "A user's connections refused or cut by a limit, by reason (series appear once non-zero).",
        kind: Kind::Counter,
        labels: &[LABEL_REASON, LABEL_USER],
    },
    MetricDef {
        name: USER_QUOTA_USED,
        help: "Bytes a user used in the current quota period.",
        kind: Kind::Gauge,
        labels: &[LABEL_USER],
    },
];

/// The catalogue entry for `name`, if it is one of ours.
pub fn def(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|d| d.name == name)
}

impl MetricDef {
    /// A [`Metric`] of this definition over `samples`.
    pub fn with<'a>(&self, samples: &'a [Sample<'a>]) -> Metric<'a> {
        Metric {
            name: self.name,
            help: self.help,
            kind: self.kind,
            samples,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// Writes `v` as Prometheus and StatsD both accept: integers (below 2^53) without a fraction,
/// other finite values in the shortest round-trip form (exponent form, e.g. `1e300`, when very
/// large or small), `NaN`, `+Inf`, `-Inf`.
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        let _ = write!(out, "{}", v as i64);
    } else if v.abs() >= 1e15 || v.abs() < 1e-5 {
        let _ = write!(out, "{v:e}");
    } else {
        let _ = write!(out, "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// Appends `name` with every byte outside `[a-zA-Z0-9_:]` (and a leading digit) made `_`.
fn push_metric_name(out: &mut String, prefix: &str, name: &str) {
    let start = out.len();
    for (i, c) in prefix
        .chars()
        .chain((!prefix.is_empty()).then_some('_'))
        .chain(name.chars())
        .enumerate()
    {
        let ok = c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if out.len() == start {
        out.push('_');
    }
}

/// Appends a label name: `[a-zA-Z_][a-zA-Z0-9_]*`, other bytes made `_`.
fn push_label_name(out: &mut String, name: &str) {
    let start = out.len();
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if out.len() == start {
        out.push('_');
    }
}

/// Appends a label value with `\`, `"` and newline escaped.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends HELP text with `\` and newline escaped.
fn push_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Label indices in name order (first 8 labels sorted; more are rare and kept in order).
fn sorted_label_order(labels: &[(&str, &str)]) -> ([usize; 8], usize) {
    let n = labels.len().min(8);
    let mut idx = [0usize; 8];
    for (i, slot) in idx.iter_mut().enumerate().take(n) {
        *slot = i;
    }
    for i in 1..n {
        let mut j = i;
        while j > 0 && labels[idx[j - 1]].0 > labels[idx[j]].0 {
            idx.swap(j - 1, j);
            j -= 1;
        }
    }
    (idx, n)
}

/// Appends the Prometheus text exposition (format 0.0.4) of `metrics` to `out`: for each
/// metric with samples, `# HELP`, `# TYPE`, then one `<prefix>_<name>{labels} value` line per
/// sample. Label pairs are written sorted by name; names are sanitised to the format's
/// character set; label values and help text are escaped. Metrics without samples are
/// skipped.
pub fn write_prometheus(out: &mut String, prefix: &str, metrics: &[Metric<'_>]) {
    for m in metrics {
        if m.samples.is_empty() {
            continue;
        }
        out.push_str("# HELP ");
        push_metric_name(out, prefix, m.name);
        out.push(' ');
        push_help(out, m.help);
        out.push_str("\n# TYPE ");
        push_metric_name(out, prefix, m.name);
        out.push(' ');
        out.push_str(m.kind.prometheus());
        out.push('\n');
        for s in m.samples {
            push_metric_name(out, prefix, m.name);
            if !s.labels.is_empty() {
                out.push('{');
                let (idx, n) = sorted_label_order(s.labels);
                let order = idx[..n].iter().copied().chain(n..s.labels.len());
                for (k, i) in order.enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    let (name, value) = s.labels[i];
                    push_label_name(out, name);
                    out.push_str("=\"");
                    push_label_value(out, value);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_value(out, s.value);
            out.push('\n');
        }
    }
}

// ---------------------------------------------------------------------------------------------
// StatsD
// ---------------------------------------------------------------------------------------------

/// How tags are attached to a StatsD line (mtg's `tag-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TagFormat {
    /// `name:value|type|#k:v,k2:v2` (default).
    #[default]
    Datadog,
    /// `name,k=v,k2=v2:value|type`.
    Influxdb,
    /// `name;k=v;k2=v2:value|type`.
    Graphite,
}

impl TagFormat {
    /// `datadog`, `influxdb` or `graphite` (case-insensitive).
    pub fn parse(s: &str) -> Option<TagFormat> {
        match s.to_ascii_lowercase().as_str() {
            "datadog" => Some(TagFormat::Datadog),
            "influxdb" => Some(TagFormat::Influxdb),
            "graphite" => Some(TagFormat::Graphite),
            _ => None,
        }
    }
}

/// What one StatsD line carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StatsdValue {
    /// An increment, `v|c`.
    Count(f64),
    /// A gauge change, `+v|g` or `-v|g` (mtg sends gauges this way: +1 on open, -1 on close).
    GaugeDelta(f64),
    /// An absolute gauge level, `v|g`. A negative level is sent as `0|g` then `-v|g`, since a
    /// signed gauge value means a change in StatsD.
    GaugeSet(f64),
}

/// Appends a StatsD name or tag part, with bytes that would break the line made `_`:
/// line breaks, `|`, `:`, `,`, `#`, `=`, `;`, spaces and controls (in a Datadog tag value
/// `:` is allowed, as in `telegram_ip:2001:db8::1`).
fn push_statsd(out: &mut String, s: &str, allow_colon: bool) {
    for c in s.chars() {
        let bad = c.is_control()
            || matches!(c, '|' | ',' | '#' | '=' | ';' | ' ' | '@')
            || (c == ':' && !allow_colon);
        out.push(if bad { '_' } else { c });
    }
}

fn push_statsd_value(out: &mut String, v: f64, signed: bool) {
    if signed && (v >= 0.0 || v.is_nan()) {
        out.push('+');
    }
    write_value(out, v);
}

/// Appends one StatsD line (with its trailing `\n`) for `prefix` + `name`: the prefix is
/// prepended verbatim (no separator added; see [`DEFAULT_STATSD_PREFIX`]).
pub fn write_statsd_line(
    out: &mut String,
    format: TagFormat,
    prefix: &str,
    name: &str,
    labels: &[(&str, &str)],
    value: StatsdValue,
) {
    if let StatsdValue::GaugeSet(v) = value {
        if v < 0.0 {
            write_statsd_line(
                out,
                format,
                prefix,
                name,
                labels,
                StatsdValue::GaugeSet(0.0),
            );
        }
    }
    push_statsd(out, prefix, false);
    push_statsd(out, name, false);
    let tag = |out: &mut String, sep: char, (k, v): (&str, &str)| {
        out.push(sep);
        push_statsd(out, k, false);
        out.push('=');
        push_statsd(out, v, false);
    };
    match format {
        TagFormat::Influxdb => labels.iter().for_each(|&l| tag(out, ',', l)),
        TagFormat::Graphite => labels.iter().for_each(|&l| tag(out, ';', l)),
        TagFormat::Datadog => {}
    }
    out.push(':');
    let kind = match value {
        StatsdValue::Count(v) => {
            push_statsd_value(out, v, false);
            "|c"
        }
        StatsdValue::GaugeDelta(v) => {
            push_statsd_value(out, v, true);
            "|g"
        }
        StatsdValue::GaugeSet(v) => {
            push_statsd_value(out, v, false);
            "|g"
        }
    };
    out.push_str(kind);
    if format == TagFormat::Datadog && !labels.is_empty() {
        out.push_str("|#");
        for (i, &(k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_statsd(out, k, false);
            out.push(':');
            push_statsd(out, v, true);
        }
    }
    out.push('\n');
}

/// Appends a whole snapshot as StatsD lines: counters as `|c` (pass the increase since the
/// last flush; zero increases are skipped), gauges as absolute `|g` levels.
pub fn write_statsd(out: &mut String, format: TagFormat, prefix: &str, metrics: &[Metric<'_>]) {
    for m in metrics {
        for s in m.samples {
            let value = match m.kind {
                Kind::Counter if s.value == 0.0 => continue,
                Kind::Counter => StatsdValue::Count(s.value),
                Kind::Gauge => StatsdValue::GaugeSet(s.value),
            };
            write_statsd_line(out, format, prefix, m.name, s.labels, value);
        }
    }
}

/// Splits newline-terminated lines into datagram payloads of at most `max` bytes each, never
/// splitting a line (a single line longer than `max` goes alone). Each payload keeps its
/// lines' newlines, except the last newline of each payload is dropped.
pub fn split_packets(lines: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        for (i, _) in rest.match_indices('\n') {
            if end > 0 && i > max {
                break;
            }
            end = i + 1;
            if i >= max {
                break;
            }
        }
        if end == 0 {
            end = rest.len();
        }
        let (packet, tail) = rest.split_at(end);
        rest = tail;
        Some(packet.strip_suffix('\n').unwrap_or(packet))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    fn prom(prefix: &str, metrics: &[Metric<'_>]) -> String {
        let mut s = String::new();
        write_prometheus(&mut s, prefix, metrics);
        s
    }

    #[test]
    fn prometheus_exact() {
        let cc = [
            Sample {
                labels: &[(LABEL_IP_FAMILY, IP_FAMILY_V4)],
                value: 3.0,
            },
            Sample {
                labels: &[(LABEL_IP_FAMILY, IP_FAMILY_V6)],
                value: 0.0,
            },
        ];
        let tt = [Sample {
            labels: &[
                (LABEL_TELEGRAM_IP, "149.154.167.51"),
                (LABEL_DIRECTION, DIRECTION_TO_CLIENT),
                (LABEL_DC, "4"),
            ],
            value: 123456789.0,
        }];
        let df = [Sample {
            labels: &[],
            value: 7.0,
        }];
        let empty: [Sample<'_>; 0] = [];
        let metrics = [
            def(CLIENT_CONNECTIONS).unwrap().with(&cc),
            def(TELEGRAM_TRAFFIC).unwrap().with(&tt),
            def(DOMAIN_FRONTING).unwrap().with(&df),
            def(REPLAY_ATTACKS).unwrap().with(&empty),
        ];
        assert_eq!(
            prom("mtg", &metrics),
            "# HELP mtg_client_connections Number of client connections currently open.\n\
             # TYPE mtg_client_connections gauge\n\
             mtg_client_connections{ip_family=\"ipv4\"} 3\n\
             mtg_client_connections{ip_family=\"ipv6\"} 0\n\
             # HELP mtg_telegram_traffic Bytes relayed to and from Telegram.\n\
             # TYPE mtg_telegram_traffic counter\n\
             mtg_telegram_traffic{dc=\"4\",direction=\"to_client\",telegram_ip=\"149.154.167.51\"} 123456789\n\
             # HELP mtg_domain_fronting Connections sent to the fronting domain.\n\
             # TYPE mtg_domain_fronting counter\n\
             mtg_domain_fronting 7\n"
        );
        // No prefix, escaping, odd values, sanitised names.
        let odd = [
            Sample {
                labels: &[("reason", "a\"b\\c\nd")],
                value: 0.5,
            },
            Sample {
                labels: &[("9bad-name", "x")],
                value: f64::NAN,
            },
            Sample {
                labels: &[("k", "")],
                value: f64::INFINITY,
            },
            Sample {
                labels: &[("k", "é")],
                value: -2.25e-7,
            },
            Sample {
                labels: &[("k", "big")],
                value: 1e300,
            },
        ];
        let m = [Metric {
            name: "weird.name",
            help: "line1\nline2 \\ \"q\"",
            kind: Kind::Gauge,
            samples: &odd,
        }];
        let out = prom("", &m);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# HELP weird_name line1\\nline2 \\\\ \"q\"");
        assert_eq!(lines[1], "# TYPE weird_name gauge");
        assert_eq!(lines[2], "weird_name{reason=\"a\\\"b\\\\c\\nd\"} 0.5");
        assert_eq!(lines[3], "weird_name{_bad_name=\"x\"} NaN");
        assert_eq!(lines[4], "weird_name{k=\"\"} +Inf");
        assert_eq!(lines[5], "weird_name{k=\"é\"} -2.25e-7");
        assert_eq!(lines[6], "weird_name{k=\"big\"} 1e300");
        assert!(!lines[6].starts_with("weird_name{k=\"big\"} 1000000000000000052504760255204420248704468581108159154915854115111802457988908195786371375080447864043704443832883878176942523235360430575644792184786706982848387200926575803737830233794788090059368953234970799945081119038967640880074652742780142494579258788820056842838115467196834763571264"));
        assert_eq!(out.matches('\n').count(), 7);
    }

    /// Validates every line of `text` against the text format 0.0.4 grammar; returns the
    /// number of sample lines.
    fn validate_prometheus(text: &str) -> usize {
        fn metric_name(s: &str) -> bool {
            let mut c = s.chars();
            matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
        }
        fn label_name(s: &str) -> bool {
            let mut c = s.chars();
            matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        }
        fn value(s: &str) -> bool {
            matches!(s, "NaN" | "+Inf" | "-Inf")
                || (s.parse::<f64>().is_ok() && !s.contains(['i', 'I', 'n', 'N']))
        }
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "output must end in a newline"
        );
        let mut typed: Vec<String> = Vec::new();
        let mut helped: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').expect("HELP needs text");
                assert!(metric_name(name), "{line}");
                assert!(!helped.contains(&name.to_string()), "duplicate HELP {line}");
                // Help escapes: only \\ and \n.
                let mut it = _help.chars();
                while let Some(c) = it.next() {
                    if c == '\\' {
                        assert!(matches!(it.next(), Some('\\' | 'n')), "{line}");
                    }
                }
                helped.push(name.into());
                current = Some(name.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE needs a type");
                assert!(metric_name(name), "{line}");
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "{line}"
                );
                assert!(!typed.contains(&name.to_string()), "duplicate TYPE {line}");
                assert_eq!(current.as_deref(), Some(name), "TYPE follows its HELP");
                typed.push(name.into());
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let name_end = line.find(['{', ' ']).expect("sample needs a value");
                let name = &line[..name_end];
                assert!(metric_name(name), "{line}");
                assert_eq!(
                    typed.last().map(String::as_str),
                    Some(name),
                    "samples grouped after TYPE: {line}"
                );
                let mut rest = &line[name_end..];
                if let Some(r) = rest.strip_prefix('{') {
                    // label="value" pairs separated by commas, then '}'
                    let mut r = r;
                    let mut names = Vec::new();
                    loop {
                        let eq = r.find('=').expect("label needs =");
                        let lname = &r[..eq];
                        assert!(label_name(lname), "{line}");
                        assert!(!names.contains(&lname), "duplicate label {line}");
                        names.push(lname);
                        r = r[eq + 1..].strip_prefix('"').expect("quoted value");
                        let mut chars = r.char_indices();
                        let end = loop {
                            let (i, c) = chars.next().expect("unterminated value");
                            match c {
                                '\\' => assert!(
                                    matches!(chars.next(), Some((_, '\\' | '"' | 'n'))),
                                    "{line}"
                                ),
                                '"' => break i,
                                '\n' => panic!("raw newline"),
                                _ => {}
                            }
                        };
                        r = &r[end + 1..];
                        if let Some(x) = r.strip_prefix(',') {
                            r = x;
                        } else {
                            r = r.strip_prefix('}').expect("} after labels");
                            break;
                        }
                    }
                    rest = r;
                }
                let v = rest.strip_prefix(' ').expect("space before value");
                let mut parts = v.split(' ');
                assert!(value(parts.next().unwrap()), "{line}");
                if let Some(ts) = parts.next() {
                    assert!(ts.parse::<i64>().is_ok(), "{line}");
                }
                assert!(parts.next().is_none(), "{line}");
                samples += 1;
            }
        }
        samples
    }

    #[test]
    fn prometheus_output_follows_the_grammar() {
        let mut rng = XorShift64(0x9E3);
        let alphabet: Vec<char> = "ab\"\\\n\t é:=,{}# |;\u{0}\u{7f}9-_".chars().collect();
        let rnd = |n: usize, rng: &mut XorShift64| -> String {
            (0..n)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect()
        };
        for _ in 0..500 {
            let vals: Vec<String> = (0..6)
                .map(|_| rnd((rng.next_u64() % 8) as usize, &mut rng))
                .collect();
            let names: Vec<String> = (0..6)
                .map(|_| rnd((rng.next_u64() % 6) as usize, &mut rng))
                .collect();
            let l1 = [(names[0].as_str(), vals[0].as_str())];
            let l2 = [
                (LABEL_DC, vals[1].as_str()),
                (LABEL_DIRECTION, vals[2].as_str()),
                (LABEL_TELEGRAM_IP, vals[3].as_str()),
            ];
            let value = |rng: &mut XorShift64| match rng.next_u64() % 5 {
                0 => f64::NAN,
                1 => f64::NEG_INFINITY,
                2 => (rng.next_u64() % 1000) as f64,
                3 => f64::from_bits(rng.next_u64()),
                _ => -((rng.next_u64() % 1000) as f64) / 7.0,
            };
            let s1 = [Sample {
                labels: &l1,
                value: value(&mut rng),
            }];
            let s2 = [
                Sample {
                    labels: &l2,
                    value: value(&mut rng),
                },
                Sample {
                    labels: &[],
                    value: value(&mut rng),
                },
            ];
            let help = rnd(10, &mut rng);
            let metrics = [
                Metric {
                    name: &names[4],
                    help: &help,
                    kind: Kind::Gauge,
                    samples: &s1,
                },
                Metric {
                    name: TELEGRAM_TRAFFIC,
                    help: &help,
                    kind: Kind::Counter,
                    samples: &s2,
                },
            ];
            let prefix = if rng.next_u64() % 2 == 0 { "mtg" } else { "" };
            let mut name4 = String::new();
            push_metric_name(&mut name4, prefix, &names[4]);
            let mut name_tt = String::new();
            push_metric_name(&mut name_tt, prefix, TELEGRAM_TRAFFIC);
            if name4 == name_tt {
                continue;
            }
            let out = prom(prefix, &metrics);
            assert_eq!(validate_prometheus(&out), 3, "{out}");
        }
        // The full catalogue with one sample each.
        let labels: Vec<Vec<(&str, &str)>> = CATALOG
            .iter()
            .map(|d| d.labels.iter().map(|&l| (l, "v")).collect())
            .collect();
        let samples: Vec<[Sample<'_>; 1]> = labels
            .iter()
            .map(|l| {
                [Sample {
                    labels: l,
                    value: 1.0,
                }]
            })
            .collect();
        let metrics: Vec<Metric<'_>> = CATALOG
            .iter()
            .zip(&samples)
            .map(|(d, s)| d.with(s))
            .collect();
        let out = prom(DEFAULT_PROMETHEUS_PREFIX, &metrics);
        assert_eq!(validate_prometheus(&out), CATALOG.len());
        assert!(
            out.contains("\nmtg_telegram_traffic{dc=\"v\",direction=\"v\",telegram_ip=\"v\"} 1\n")
        );
        assert!(out.contains("\nmtg_buffer_pool_capacity 1\n"));
    }

    #[test]
    fn catalogue_is_consistent() {
        assert_eq!(CATALOG.len(), 20);
        for (i, d) in CATALOG.iter().enumerate() {
            assert!(CATALOG[..i].iter().all(|e| e.name != d.name));
            assert!(d.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let mut sorted = d.labels.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, d.labels, "{}", d.name);
        }
        assert_eq!(def(TELEGRAM_CONNECTIONS).unwrap().kind, Kind::Gauge);
        assert_eq!(def(HANDSHAKE_FAILURES).unwrap().labels, &[LABEL_REASON]);
        assert!(def("nope").is_none());
    }

    fn line(
        format: TagFormat,
        prefix: &str,
        name: &str,
        labels: &[(&str, &str)],
        v: StatsdValue,
    ) -> String {
        let mut s = String::new();
        write_statsd_line(&mut s, format, prefix, name, labels, v);
        s
    }

    #[test]
    fn statsd_exact_in_three_formats() {
        let l = [(LABEL_DC, "2"), (LABEL_DIRECTION, DIRECTION_FROM_CLIENT)];
        let p = DEFAULT_STATSD_PREFIX;
        assert_eq!(
            line(
                TagFormat::Datadog,
                p,
                TELEGRAM_TRAFFIC,
                &l,
                StatsdValue::Count(1500.0)
            ),
            "mtg.telegram_traffic:1500|c|#dc:2,direction:from_client\n"
        );
        assert_eq!(
            line(
                TagFormat::Influxdb,
                p,
                TELEGRAM_TRAFFIC,
                &l,
                StatsdValue::Count(1500.0)
            ),
            "mtg.telegram_traffic,dc=2,direction=from_client:1500|c\n"
        );
        assert_eq!(
            line(
                TagFormat::Graphite,
                p,
                TELEGRAM_TRAFFIC,
                &l,
                StatsdValue::Count(1500.0)
            ),
            "mtg.telegram_traffic;dc=2;direction=from_client:1500|c\n"
        );
        // Gauges: deltas as mtg sends them, and absolute levels.
        let fam = [(LABEL_IP_FAMILY, IP_FAMILY_V4)];
        assert_eq!(
            line(
                TagFormat::Datadog,
                p,
                CLIENT_CONNECTIONS,
                &fam,
                StatsdValue::GaugeDelta(1.0)
            ),
            "mtg.client_connections:+1|g|#ip_family:ipv4\n"
        );
        assert_eq!(
            line(
                TagFormat::Influxdb,
                p,
                CLIENT_CONNECTIONS,
                &fam,
                StatsdValue::GaugeDelta(-1.0)
            ),
            "mtg.client_connections,ip_family=ipv4:-1|g\n"
        );
        assert_eq!(
            line(
                TagFormat::Graphite,
                "mtg",
                IPLIST_SIZE,
                &[(LABEL_IP_LIST, IP_LIST_BLOCK)],
                StatsdValue::GaugeSet(4512.0)
            ),
            "mtgiplist_size;ip_list=blocklist:4512|g\n"
        );
        assert_eq!(
            line(
                TagFormat::Datadog,
                p,
                BUFFER_POOL_IN_USE,
                &[],
                StatsdValue::GaugeSet(-3.0)
            ),
            "mtg.buffer_pool_in_use:0|g\nmtg.buffer_pool_in_use:-3|g\n"
        );
        assert_eq!(
            line(
                TagFormat::Datadog,
                p,
                REPLAY_ATTACKS,
                &[],
                StatsdValue::Count(1.0)
            ),
            "mtg.replay_attacks:1|c\n"
        );
        assert_eq!(
            line(
                TagFormat::Influxdb,
                "",
                DOMAIN_FRONTING,
                &[],
                StatsdValue::Count(0.25)
            ),
            "domain_fronting:0.25|c\n"
        );
        // IPv6 tag values: ':' kept in Datadog tag values, replaced where it would split the line.
        let ip = [(LABEL_TELEGRAM_IP, "2001:b28:f23d:f001::a")];
        assert_eq!(
            line(
                TagFormat::Datadog,
                p,
                TELEGRAM_CONNECTIONS,
                &ip,
                StatsdValue::GaugeDelta(1.0)
            ),
            "mtg.telegram_connections:+1|g|#telegram_ip:2001:b28:f23d:f001::a\n"
        );
        assert_eq!(
            line(
                TagFormat::Influxdb,
                p,
                TELEGRAM_CONNECTIONS,
                &ip,
                StatsdValue::GaugeDelta(1.0)
            ),
            "mtg.telegram_connections,telegram_ip=2001_b28_f23d_f001__a:+1|g\n"
        );
        // Separators and line breaks in values never break the line.
        let evil = [("k|x", "a,b\nc#d=e;f g")];
        assert_eq!(
            line(
                TagFormat::Datadog,
                "p.",
                "n:m",
                &evil,
                StatsdValue::Count(2.0)
            ),
            "p.n_m:2|c|#k_x:a_b_c_d_e_f_g\n"
        );
        assert_eq!(TagFormat::parse("InfluxDB"), Some(TagFormat::Influxdb));
        assert_eq!(TagFormat::parse("graphite"), Some(TagFormat::Graphite));
        assert_eq!(TagFormat::parse("datadog"), Some(TagFormat::Datadog));
        assert_eq!(TagFormat::parse("json"), None);
        assert_eq!(TagFormat::default(), TagFormat::Datadog);
    }

    #[test]
    fn statsd_snapshot_and_packets() {
        let reasons = [
            Sample {
                labels: &[(LABEL_REASON, "bad-digest")],
                value: 2.0,
            },
            Sample {
                labels: &[(LABEL_REASON, "replay")],
                value: 0.0,
            },
        ];
        let pool = [Sample {
            labels: &[],
            value: 17.0,
        }];
        let metrics = [
            def(HANDSHAKE_FAILURES).unwrap().with(&reasons),
            def(BUFFER_POOL_IN_USE).unwrap().with(&pool),
        ];
        let mut s = String::new();
        write_statsd(&mut s, TagFormat::Datadog, DEFAULT_STATSD_PREFIX, &metrics);
        assert_eq!(
            s,
            "mtg.handshake_failures:2|c|#reason:bad-digest\nmtg.buffer_pool_in_use:17|g\n"
        );

        let lines = "aaaa\nbbbb\ncccccccccc\ndd\n";
        let p: Vec<&str> = split_packets(lines, 9).collect();
        assert_eq!(p, ["aaaa\nbbbb", "cccccccccc", "dd"]);
        let p: Vec<&str> = split_packets(lines, 100).collect();
        assert_eq!(p, ["aaaa\nbbbb\ncccccccccc\ndd"]);
        let p: Vec<&str> = split_packets("x", 0).collect();
        assert_eq!(p, ["x"]);
        assert_eq!(split_packets("", 10).count(), 0);
        // Every payload fits (or is one long line), and joining restores the input.
        let mut rng = XorShift64(77);
        for _ in 0..500 {
            let mut text = String::new();
            for _ in 0..rng.next_u64() % 20 {
                let n = 1 + rng.next_u64() % 30;
                text.extend((0..n).map(|_| 'x'));
                text.push('\n');
            }
            let max = (rng.next_u64() % 64) as usize;
            let packets: Vec<&str> = split_packets(&text, max).collect();
            for pk in &packets {
                assert!(pk.len() <= max || !pk.contains('\n'), "{pk:?} {max}");
            }
            let joined: String = packets.iter().map(|p| format!("{p}\n")).collect();
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn values() {
        let v = |x: f64| {
            let mut s = String::new();
            write_value(&mut s, x);
            s
        };
        assert_eq!(v(0.0), "0");
        assert_eq!(v(-0.0), "0");
        assert_eq!(v(42.0), "42");
        assert_eq!(v(-42.0), "-42");
        assert_eq!(v(0.1), "0.1");
        assert_eq!(v(9007199254740991.0), "9007199254740991");
        assert_eq!(v(0.00001), "0.00001");
        assert_eq!(v(123.456), "123.456");
        assert_eq!(v(1e16), "1e16");
        assert_eq!(v(1e15), "1000000000000000");
        assert_eq!(v(1.5e20), "1.5e20");
        assert_eq!(v(5e-324), "5e-324");
        assert_eq!(v(f64::NAN), "NaN");
        assert_eq!(v(f64::NEG_INFINITY), "-Inf");
    }
}
