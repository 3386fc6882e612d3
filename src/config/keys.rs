//! Keys: the normalised TOML map -> the typed [`Config`], one key at a time, with the key's
//! line in every error and a warning for every unknown, deprecated or ignored key.

use std::collections::{BTreeMap, BTreeSet};

use nanoserde::Toml;

use super::users::{Origin, check_users};
use super::*;
use crate::proto::users::{DEFAULT_USER, Limits, UserSpec};

pub(super) struct Doc {
    pub(super) map: BTreeMap<String, Toml>,
    pub(super) lines: BTreeMap<String, usize>,
    pub(super) used: BTreeSet<String>,
    pub(super) warnings: Vec<Warning>,
}

/// A short description of a value for error messages.
fn describe(v: &Toml) -> String {
    match v {
        Toml::Str(s) => format!("{s:?}"),
        Toml::Num(n) => format!("{n}"),
        Toml::Bool(b) => format!("{b}"),
        Toml::Date(d) => d.clone(),
        Toml::SimpleArray(_) => "an array".into(),
        Toml::Array(_) => "a table array".into(),
    }
}

const DURATION_HINT: &str = "is not a duration (use 500ms, 5s, 1m30s)";
const SIZE_HINT: &str = "is not a size (use 512KiB, 1MiB, 16kb)";

impl Doc {
    pub(super) fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied().or_else(|| {
            // A section-level key (network.dc-overrides): the first key inside it.
            let prefix = format!("{key}.");
            self.lines
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, &l)| l)
                .min()
        })
    }

    pub(super) fn err(&self, key: &str, msg: String) -> ConfigError {
        ConfigError {
            file: None,
            line: self.line(key),
            key: Some(key.to_string()),
            msg,
        }
    }

    pub(super) fn warn(&mut self, kind: WarningKind, key: &str, msg: String) {
        let line = self.line(key);
        self.warnings.push(Warning {
            kind,
            file: None,
            line,
            key: key.to_string(),
            msg,
        });
    }

    fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(super) fn take(&mut self, key: &str) -> Option<&Toml> {
        if self.map.contains_key(key) {
            self.used.insert(key.to_string());
        }
        self.map.get(key)
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Toml::Str(s)) => Ok(Some(s.clone())),
            Some(v) => {
                let d = describe(v);
                Err(self.err(key, format!("{d} is not a string (put it in quotes)")))
            }
        }
    }

    /// A string parsed by `f`; `what` completes "<value> is not ...".
    pub(super) fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        // The generic part stays this small (one instance per value type): the rest is
        // `parsed_dyn`.
        let mut out = None;
        self.parsed_dyn(key, what, &mut |s| {
            out = f(s);
            out.is_some()
        })?;
        Ok(out)
    }

    /// `parsed` without its type: `f` parses the trimmed value and says whether it could.
    fn parsed_dyn(
        &mut self,
        key: &str,
        what: &str,
        f: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), ConfigError> {
        match self.string(key)? {
            // As an unset key (old mtg examples write `ipv4 = ""`).
            None => Ok(()),
            Some(s) if s.trim().is_empty() => Ok(()),
            Some(s) if f(s.trim()) => Ok(()),
            Some(s) => Err(self.err(key, format!("{s:?} {what}"))),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Toml::Bool(b)) => Ok(Some(*b)),
            Some(Toml::Str(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(v) => {
                let d = describe(v);
                Err(self.err(key, format!("{d} is not a boolean (use true or false)")))
            }
        }
    }

    pub(super) fn uint(&mut self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        let n = match self.take(key) {
            None => return Ok(None),
            Some(Toml::Num(n)) => *n,
            Some(Toml::Str(s)) if s.trim().parse::<u64>().is_ok() => {
                s.trim().parse::<u64>().unwrap_or(0) as f64
            }
            Some(v) => {
                let d = describe(v);
                return Err(self.err(key, format!("{d} is not a whole number")));
            }
        };
        if n.fract() != 0.0 || n < 0.0 {
            return Err(self.err(key, format!("{n} is not a whole number (0 or more)")));
        }
        if n > max as f64 {
            return Err(self.err(key, format!("{n} is too large (at most {max})")));
        }
        Ok(Some(n as u64))
    }

    fn float(&mut self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Toml::Num(n)) => Ok(Some(*n)),
            Some(Toml::Str(s)) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
                Ok(s.trim().parse().ok())
            }
            Some(v) => {
                let d = describe(v);
                Err(self.err(key, format!("{d} is not a number")))
            }
        }
    }

    fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        if let Some(Toml::Num(n)) = self.map.get(key) {
            let n = *n;
            self.used.insert(key.to_string());
            return Err(self.err(
                key,
                format!("{n} {DURATION_HINT}: add a unit and quotes, e.g. \"{n}s\""),
            ));
        }
        self.parsed(key, DURATION_HINT, parse_duration)
    }

    pub(super) fn bytes(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        if let Some(Toml::Num(n)) = self.map.get(key) {
            let n = *n;
            self.used.insert(key.to_string());
            if n.fract() == 0.0 && n >= 0.0 && n < 2f64.powi(53) {
                return Ok(Some(n as u64));
            }
            return Err(self.err(key, format!("{n} {SIZE_HINT}")));
        }
        self.parsed(key, SIZE_HINT, parse_bytes)
    }

    fn port(&mut self, key: &str) -> Result<Option<u16>, ConfigError> {
        match self.uint(key, 65535)? {
            None => Ok(None),
            Some(0) => Err(self.err(key, "port 0 is not allowed".into())),
            Some(p) => Ok(Some(p as u16)),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Toml::SimpleArray(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Toml::Str(s) => out.push(s.clone()),
                        other => {
                            let d = describe(other);
                            return Err(self.err(
                                key,
                                format!("{d} in the list is not a string (put it in quotes)"),
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(v) => {
                let d = describe(v);
                Err(self.err(
                    key,
                    format!("{d} is not a list of strings ([\"...\", \"...\"])"),
                ))
            }
        }
    }

    fn socket(&mut self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.parsed(
            key,
            "is not an IP:port address (e.g. 0.0.0.0:443 or [::]:443; host names are not allowed)",
            |s| s.parse().ok(),
        )
    }

    /// The typed config and where each of its users was defined (`items`: the pre-pass's
    /// `users` list). Without any user, a `users-file` leaves `secret` a placeholder that
    /// [`super::load`] replaces; without either, `secret` is required.
    pub(super) fn build(
        &mut self,
        items: &[super::toml::UserItem],
    ) -> Result<(Config, Vec<Origin>), ConfigError> {
        let top = match self.take("secret") {
            None => None,
            Some(Toml::Str(s)) => {
                let s = s.clone();
                Some(Secret::parse(s.trim()).map_err(|e| self.err("secret", format!("{e}")))?)
            }
            Some(_) => return Err(self.err("secret", "must be a quoted string".into())),
        };
        let listed = self.users(items)?;
        let path = |d: &mut Doc, key: &str| -> Result<Option<PathBuf>, ConfigError> {
            Ok(d.string(key)?
                .filter(|s| !s.trim().is_empty())
                .map(|s| PathBuf::from(s.trim())))
        };
        let users_file = path(self, "users-file")?;
        let state_dir = path(self, "state-dir")?;
        let mut specs = Vec::with_capacity(listed.len() + 1);
        let mut origins = Vec::with_capacity(listed.len() + 1);
        if let Some(secret) = &top {
            specs.push(UserSpec {
                name: DEFAULT_USER.into(),
                secret: secret.clone(),
                limits: Limits::default(),
                ad_tag: None,
            });
            let line = self.line("secret").unwrap_or(1);
            origins.push(Origin {
                file: None,
                line,
                secret_line: line,
                top: true,
            });
        }
        let multi = !listed.is_empty();
        for (spec, line, secret_line) in listed {
            specs.push(spec);
            origins.push(Origin {
                file: None,
                line,
                secret_line,
                top: false,
            });
        }
        let secret = match specs.first() {
            Some(s) => s.secret.clone(),
            // Replaced by `load` with the users file's first user.
            None if users_file.is_some() => {
                Secret::from_bytes(&[1; 16]).map_err(|e| self.err("secret", format!("{e}")))?
            }
            None => {
                return Err(self.err(
                    "secret",
                    "is required (generate one with `mtpx generate-secret <domain>`), or \
                     define users: [users.NAME] tables or users-file"
                        .into(),
                ));
            }
        };
        if !specs.is_empty() {
            check_users(&specs, &origins)?;
        }
        let bind_to = self.socket("bind-to")?.ok_or_else(|| {
            self.err(
                "bind-to",
                "is required (e.g. bind-to = \"0.0.0.0:443\")".into(),
            )
        })?;
        let mut c = Config::simple(bind_to, secret);
        if multi {
            c.users = specs;
        }
        c.users_file = users_file;
        c.state_dir = state_dir;

        if let Some(v) = self.bool("debug")? {
            c.debug = v;
        }
        if let Some(v) = self.uint("workers", u32::MAX.into())? {
            c.workers = v as usize;
        }
        if let Some(v) = self.uint("concurrency", u32::MAX.into())? {
            c.concurrency = v as usize;
        }
        if let Some(v) = self.uint("concurrency-per-ip", u32::MAX.into())? {
            c.concurrency_per_ip = Some(v as usize);
        }
        if let Some(v) = self.bytes("buffers.size")? {
            c.buffer_size = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.uint("buffers.count", u32::MAX.into())? {
            c.buffer_count = v as usize;
        }
        if let Some(v) = self.parsed(
            "prefer-ip",
            "is not one of prefer-ipv6, prefer-ipv4, only-ipv6, only-ipv4",
            PreferIp::parse,
        )? {
            c.prefer_ip = v;
        }
        c.public_ipv4 = self.parsed("public-ipv4", "is not an IPv4 address", |s| s.parse().ok())?;
        c.public_ipv6 = self.parsed("public-ipv6", "is not an IPv6 address", |s| s.parse().ok())?;
        if let Some(v) = self.duration("tolerate-time-skewness")? {
            c.tolerate_time_skewness = v;
        }
        if let Some(v) = self.bool("allow-fallback-on-unknown-dc")? {
            c.allow_fallback_on_unknown_dc = v;
        }
        if let Some(v) = self.bool("proxy-protocol-listener")? {
            c.proxy_protocol_listener = v;
        }
        if let Some(v) = self.parsed(
            "log-format",
            "is not a log format (logfmt or json)",
            LogFormat::parse,
        )? {
            c.log_format = v;
        }
        if let Some(v) = self.bool("auto-update")? {
            c.auto_update = v;
        }
        if let Some(v) = self.string("ad-tag")? {
            let t = v.trim();
            let tag = crate::formats::encoding::hex_decode(t).and_then(|b| b.try_into().ok());
            if tag.is_none() && !t.is_empty() {
                return Err(self.err(
                    "ad-tag",
                    format!("{v:?} is not an ad tag (the 32 hex digits @MTProxybot gives)"),
                ));
            }
            c.ad_tag = tag;
        }
        if self.has("tcp-buffer") {
            self.take("tcp-buffer");
            self.warn(
                WarningKind::Ignored,
                "tcp-buffer",
                "is an old mtg key that mtg ignores too; use [buffers] size".into(),
            );
        }

        self.domain_fronting(&mut c)?;
        self.network(&mut c)?;
        self.defense(&mut c)?;
        self.stats(&mut c)?;
        self.not_implemented(&c);
        Ok((c, origins))
    }

    fn domain_fronting(&mut self, c: &mut Config) -> Result<(), ConfigError> {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        const NOT_IP: &str = "is not an IP address";
        let old_ip = self.parsed("domain-fronting-ip", NOT_IP, ip)?;
        let old_port = self.port("domain-fronting-port")?;
        let old_pp = self.bool("domain-fronting-proxy-protocol")?;
        for (key, new) in [
            ("domain-fronting-ip", "[domain-fronting] ip"),
            ("domain-fronting-port", "[domain-fronting] port"),
            (
                "domain-fronting-proxy-protocol",
                "[domain-fronting] proxy-protocol",
            ),
        ] {
            if self.has(key) {
                self.warn(
                    WarningKind::Deprecated,
                    key,
                    format!("is deprecated (as in mtg); still applied, but use {new}"),
                );
            }
        }
        let new_ip = self.parsed("domain-fronting.ip", NOT_IP, ip)?;
        let new_port = self.port("domain-fronting.port")?;
        let new_pp = self.bool("domain-fronting.proxy-protocol")?;
        // As mtg: the new keys win; proxy-protocol is OR-ed.
        c.domain_fronting.ip = new_ip.or(old_ip);
        c.domain_fronting.port = new_port.or(old_port).unwrap_or(443);
        c.domain_fronting.proxy_protocol = new_pp.unwrap_or(false) || old_pp.unwrap_or(false);
        Ok(())
    }

    fn network(&mut self, c: &mut Config) -> Result<(), ConfigError> {
        let doh_ip: Option<IpAddr> =
            self.parsed("network.doh-ip", "is not an IP address", |s| s.parse().ok())?;
        if doh_ip.is_some() {
            self.warn(
                WarningKind::Deprecated,
                "network.doh-ip",
                "is deprecated (as in mtg); still applied as dns = \"https://<ip>\", but use [network] dns".into(),
            );
        }
        c.dns = self.parsed(
            "network.dns",
            "is not a resolver (https://host[/path], tls://host, udp://IP[:port] or an IP)",
            check_dns,
        )?;
        if c.dns.is_none() {
            c.dns = doh_ip.map(|ip| match ip {
                IpAddr::V4(v4) => format!("https://{v4}"),
                IpAddr::V6(v6) => format!("https://[{v6}]"),
            });
        }
        if let Some(list) = self.strings("network.ntp")? {
            c.ntp = list;
        }
        if let Some(list) = self.strings("network.proxies")? {
            for p in &list {
                // The URL may carry a password: say what is wrong, never echo it.
                if let Err(e) = crate::proto::socks5::parse_url(p) {
                    return Err(self.err(
                        "network.proxies",
                        format!("not a SOCKS5 URL (socks5://[user:pass@]host[:port]): {e}"),
                    ));
                }
            }
            c.proxies = list;
        }
        let url_ok = |s: &str| {
            crate::formats::http::parse_web_url(s)
                .is_ok()
                .then(|| s.to_string())
        };
        const URL_HINT: &str = "is not an http:// or https:// URL";
        if let Some(list) = self.strings("network.proxy-config-urls")? {
            if let Some(bad) = list.iter().find(|u| url_ok(u).is_none()) {
                return Err(self.err("network.proxy-config-urls", format!("{bad:?} {URL_HINT}")));
            }
            c.proxy_config_urls = list;
        }
        if let Some(list) = self.strings("network.proxy-config-files")? {
            if list.iter().any(|f| f.trim().is_empty()) {
                return Err(self.err(
                    "network.proxy-config-files",
                    "an empty file name in the list".into(),
                ));
            }
            c.proxy_config_files = list;
        }
        if let Some(v) = self.parsed("network.proxy-secret-url", URL_HINT, url_ok)? {
            c.proxy_secret_url = v;
        }
        c.proxy_secret_file =
            self.parsed("network.proxy-secret-file", "", |s| Some(s.to_string()))?;
        for (key, slot) in [
            ("network.timeout.tcp", &mut c.timeouts.tcp),
            ("network.timeout.http", &mut c.timeouts.http),
            ("network.timeout.idle", &mut c.timeouts.idle),
            ("network.timeout.handshake", &mut c.timeouts.handshake),
        ] {
            if let Some(v) = self.duration(key)? {
                *slot = v;
            }
        }
        if let Some(v) = self.bool("network.keep-alive.disabled")? {
            c.keep_alive.disabled = v;
        }
        // As mtg: zero means the default.
        if let Some(v) = self
            .duration("network.keep-alive.idle")?
            .filter(|d| !d.is_zero())
        {
            c.keep_alive.idle = v;
        }
        if let Some(v) = self
            .duration("network.keep-alive.interval")?
            .filter(|d| !d.is_zero())
        {
            c.keep_alive.interval = v;
        }
        if let Some(v) = self
            .uint("network.keep-alive.count", u32::MAX.into())?
            .filter(|&n| n != 0)
        {
            c.keep_alive.count = v as u32;
        }
        self.dc_overrides(c)
    }

    fn dc_overrides(&mut self, c: &mut Config) -> Result<(), ConfigError> {
        const SECTION: &str = "network.dc-overrides.";
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(SECTION))
            .cloned()
            .collect();
        // A few DCs: a vector (a B-tree keyed by i16 is 2 KiB of code of its own).
        let mut out: Vec<(i16, Vec<SocketAddr>)> = Vec::new();
        for key in keys {
            let id = &key[SECTION.len()..];
            let dc = match id.parse::<i16>() {
                Ok(dc) if dc != 0 => dc,
                _ => {
                    return Err(self.err(
                        &key,
                        format!("{id:?} is not a DC id (a non-zero number such as 2 or -2)"),
                    ));
                }
            };
            let values: Vec<String> = match self.take(&key) {
                Some(Toml::Str(s)) => vec![s.clone()],
                Some(Toml::SimpleArray(_)) => self.strings(&key)?.unwrap_or_default(),
                Some(v) => {
                    let d = describe(v);
                    return Err(self.err(
                        &key,
                        format!("{d} is not an address (\"IP:port\") or a list of them"),
                    ));
                }
                None => continue,
            };
            if values.is_empty() {
                return Err(self.err(&key, "needs at least one IP:port address".into()));
            }
            let mut addrs = Vec::with_capacity(values.len());
            for v in &values {
                match v.trim().parse::<SocketAddr>() {
                    Ok(a) if a.port() != 0 => addrs.push(a),
                    _ => {
                        return Err(self.err(
                            &key,
                            format!("{v:?} is not an IP:port address (e.g. 149.154.167.51:443 or [2001:db8::1]:443)"),
                        ));
                    }
                }
            }
            if out.iter().any(|(d, _)| *d == dc) {
                return Err(self.err(&key, format!("DC {dc} is overridden twice")));
            }
            out.push((dc, addrs));
        }
        crate::proto::sort_small_by_key(&mut out, |e| e.0);
        c.dc_overrides = out;
        Ok(())
    }

    fn defense(&mut self, c: &mut Config) -> Result<(), ConfigError> {
        const A: &str = "defense.anti-replay.";
        if let Some(v) = self.bool(&format!("{A}enabled"))? {
            c.anti_replay.enabled = v;
        }
        if let Some(v) = self.bytes(&format!("{A}max-size"))? {
            c.anti_replay.max_size = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.float(&format!("{A}error-rate"))? {
            c.anti_replay.error_rate = v;
        }
        const D: &str = "defense.doppelganger.";
        if let Some(v) = self.strings(&format!("{D}urls"))? {
            for u in &v {
                if !u.starts_with("https://") {
                    return Err(
                        self.err(&format!("{D}urls"), format!("{u:?} is not an https:// URL"))
                    );
                }
            }
            c.doppelganger.urls = v;
        }
        if let Some(v) = self.uint(&format!("{D}repeats-per-raid"), 65535)? {
            if v == 0 {
                return Err(self.err(&format!("{D}repeats-per-raid"), "must be at least 1".into()));
            }
            c.doppelganger.repeats_per_raid = v as u32;
        }
        if let Some(v) = self.duration(&format!("{D}raid-each"))? {
            c.doppelganger.raid_each = v;
        }
        if let Some(v) = self.bool(&format!("{D}drs"))? {
            c.doppelganger.drs = v;
        }
        if let Some(v) = self.bool(&format!("{D}learn"))? {
            c.doppelganger.learn = v;
        }
        if let Some(v) = self.bool(&format!("{D}delays"))? {
            c.doppelganger.delays = v;
        }
        if let Some(v) = self.float(&format!("{D}delay-shape"))? {
            if !(v.is_finite() && v > 0.0) {
                return Err(self.err(&format!("{D}delay-shape"), format!("{v} must be above 0")));
            }
            c.doppelganger.delay_shape = v;
        }
        if let Some(v) = self.duration(&format!("{D}delay-scale"))? {
            if v.is_zero() {
                return Err(self.err(&format!("{D}delay-scale"), "must be above 0".into()));
            }
            c.doppelganger.delay_scale = v;
        }
        if let Some(v) = self.bytes(&format!("{D}min-rate"))? {
            c.doppelganger.min_rate = v;
        }
        let pq = |v: &str| match v {
            "mirror" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        if let Some(v) = self.parsed(
            &format!("{D}post-quantum"),
            "is not \"mirror\" or \"off\"",
            pq,
        )? {
            c.doppelganger.post_quantum = v;
        }
        if let Some(v) = self.uint("stats.ja4-top", MAX_JA4_TOP as u64)? {
            c.ja4_top = v as usize;
        }
        for (name, which) in [("blocklist", true), ("allowlist", false)] {
            let p = format!("defense.{name}.");
            let mut list = if which {
                c.blocklist.clone()
            } else {
                c.allowlist.clone()
            };
            if let Some(v) = self.bool(&format!("{p}enabled"))? {
                list.enabled = v;
            }
            if let Some(v) = self.uint(&format!("{p}download-concurrency"), 1024)? {
                if v == 0 {
                    return Err(self.err(
                        &format!("{p}download-concurrency"),
                        "must be at least 1".into(),
                    ));
                }
                list.download_concurrency = v as u32;
            }
            if let Some(v) = self.strings(&format!("{p}urls"))? {
                list.urls = v;
            }
            if let Some(v) = self.duration(&format!("{p}update-each"))? {
                list.update_each = v;
            }
            if which {
                c.blocklist = list;
            } else {
                c.allowlist = list;
            }
        }
        Ok(())
    }

    fn stats(&mut self, c: &mut Config) -> Result<(), ConfigError> {
        let prefix_ok = |s: &str| {
            (!s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
            .then(|| s.to_string())
        };
        const PREFIX_HINT: &str = "is not a metric prefix (lowercase letters and digits only)";
        if let Some(v) = self.bool("stats.statsd.enabled")? {
            c.statsd.enabled = v;
        }
        c.statsd.address = self.socket("stats.statsd.address")?;
        if let Some(v) = self.parsed("stats.statsd.metric-prefix", PREFIX_HINT, prefix_ok)? {
            c.statsd.metric_prefix = v;
        }
        if let Some(v) = self.parsed(
            "stats.statsd.tag-format",
            "is not a tag format (datadog, influxdb or graphite)",
            TagFormat::parse,
        )? {
            c.statsd.tag_format = v;
        }
        if let Some(v) = self.bool("stats.prometheus.enabled")? {
            c.prometheus.enabled = v;
        }
        c.prometheus.bind_to = self.socket("stats.prometheus.bind-to")?;
        if let Some(v) = self.string("stats.prometheus.http-path")? {
            // As mtg: a leading `/`, no trailing one.
            let trimmed = v.trim().trim_end_matches('/');
            c.prometheus.http_path = format!("/{}", trimmed.trim_start_matches('/'));
        }
        if let Some(v) = self.parsed("stats.prometheus.metric-prefix", PREFIX_HINT, prefix_ok)? {
            c.prometheus.metric_prefix = v;
        }
        Ok(())
    }

    /// One warning per feature that is turned on but not implemented yet, and one for a `dns`
    /// setting that mtpx applies differently.
    fn not_implemented(&mut self, c: &Config) {
        if let Some(msg) = c.dns.as_deref().and_then(dns_warning) {
            let key = if self.has("network.dns") {
                "network.dns"
            } else {
                "network.doh-ip"
            };
            self.warn(WarningKind::Fallback, key, msg);
        }
        let d = &c.doppelganger;
        let learns = d.delays && d.learn;
        if !d.urls.is_empty() && !learns {
            self.warn(
                WarningKind::NotImplemented,
                "defense.doppelganger.urls",
                "are fetched to learn inter-record timing, which is off (needs delays = true and \
                 learn = true); ignored"
                    .into(),
            );
        }
        let uses_config = c.auto_update || c.has_ad_tag();
        if !uses_config && self.has("network.proxy-config-files") {
            self.warn(
                WarningKind::Ignored,
                "network.proxy-config-files",
                "is read only with auto-update = true or an ad-tag; ignored".into(),
            );
        }
        if !c.has_ad_tag() && self.has("network.proxy-secret-file") {
            self.warn(
                WarningKind::Ignored,
                "network.proxy-secret-file",
                "is read only with an ad-tag; ignored".into(),
            );
        }
    }

    /// Unknown keys become warnings.
    pub(super) fn finish(&mut self) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        for key in unknown {
            self.warn(
                WarningKind::UnknownKey,
                &key,
                "unknown key (a typo?); ignored".into(),
            );
        }
    }
}

pub(super) fn check_dns(s: &str) -> Option<String> {
    let ok = if let Some(rest) = s.strip_prefix("https://") {
        let host = rest.split('/').next().unwrap_or("");
        !host.is_empty() && !host.contains('@')
    } else if let Some(rest) = s.strip_prefix("tls://") {
        !rest.is_empty() && !rest.contains(['/', '@'])
    } else if s.starts_with("udp://") {
        dns_server(s).is_some_and(|a| a.addr.port() != 0)
    } else {
        s.parse::<IpAddr>().is_ok()
    };
    ok.then(|| s.to_string())
}
