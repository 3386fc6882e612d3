//! `[users.NAME]` tables, in the config and in a `users-file`: the map of keys -> the users'
//! [`UserSpec`]s, each with the line it starts on. Rules (also in `config.example`):
//! * a user is a table `[users.NAME]` (a name with dots is quoted: `[users."bob.smith"]`);
//!   `NAME` is 1-64 of `A-Z a-z 0-9 _ . -`;
//! * keys: `secret` (required), `max-connections`, `max-ips`, `quota`, `quota-period`,
//!   `expires`, `ad-tag`; any other key in a user table is an error (a misspelt limit would
//!   silently lift it);
//! * the top-level `secret` is the user `default`, so it cannot coexist with `[users.default]`;
//! * names are unique across the config and the users file, and so are keys (see
//!   [`check_users`]); at most [`MAX_USERS`] users.

use nanoserde::Toml;

use super::keys::Doc;
use super::{ConfigError, parse_period};
use crate::formats::encoding::hex_decode;
use crate::proto::secret::Secret;
use crate::proto::users::{Limits, MAX_USERS, UserSpec, Users, UsersError, check_name};

/// The keys a user table may hold.
pub(super) const USER_KEYS: [&str; 7] = [
    "secret",
    "max-connections",
    "max-ips",
    "quota",
    "quota-period",
    "expires",
    "ad-tag",
];

/// Where a user was defined: the file (`None`: the text given to [`super::parse`] or the
/// main config) and the line of its first header or key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) file: Option<String>,
    pub(super) line: usize,
    /// The line of its `secret`.
    pub(super) secret_line: usize,
    /// The user `default` of the top-level `secret`.
    pub(super) top: bool,
}

impl Origin {
    fn at(&self, line: usize) -> String {
        match &self.file {
            Some(f) => format!("{f}:{line}"),
            None => format!("line {line}"),
        }
    }
}

/// A user of a file: its entry, the line of its table and the line of its `secret`.
pub type ListedUser = (UserSpec, usize, usize);

/// Longest quota period (10 years) and the shortest (1 second).
const MAX_PERIOD: u64 = 3650 * 86_400;

impl Doc {
    /// Reads every user table from `items` (the pre-pass's `users` list). Keys of user tables
    /// are marked used; anything in `users` that is not a user table is an error.
    pub(super) fn users(
        &mut self,
        items: &[super::toml::UserItem],
    ) -> Result<Vec<ListedUser>, ConfigError> {
        // Names in the order they first appear.
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        for (parts, line, header) in items {
            let bad = |msg: &str| ConfigError {
                file: None,
                line: Some(*line),
                key: Some(parts.join(".")),
                msg: msg.into(),
            };
            match (parts.len(), header) {
                (1, true) => continue,
                (2, true) | (3, false) => {}
                _ => {
                    return Err(bad(
                        "a user is a table [users.NAME] of keys such as secret = \"...\" \
                         (a name with a dot is quoted: [users.\"bob.smith\"])",
                    ));
                }
            }
            let name = &parts[1];
            if seen.insert(name.clone(), 0usize).is_none() {
                check_name(name).map_err(bad)?;
                if names.len() == MAX_USERS {
                    return Err(bad("more than 4096 users"));
                }
                names.push((name.clone(), *line));
            }
            if !*header && !USER_KEYS.contains(&parts[2].as_str()) {
                return Err(bad(
                    "unknown key in a user table (keys: secret, max-connections, max-ips, \
                     quota, quota-period, expires, ad-tag)",
                ));
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for (name, line) in names {
            let spec = self.user(&name, line)?;
            let secret_line = self.line(&format!("users.{name}.secret")).unwrap_or(line);
            out.push((spec, line, secret_line));
        }
        Ok(out)
    }

    #[inline(never)]
    fn user(&mut self, name: &str, line: usize) -> Result<UserSpec, ConfigError> {
        let k = |f: &str| format!("users.{name}.{f}");
        let key = k("secret");
        let secret = match self.take(&key) {
            None => {
                return Err(ConfigError {
                    file: None,
                    line: Some(line),
                    key: Some(key),
                    msg: "is required (generate one with `mtpx generate-secret <domain>`)".into(),
                });
            }
            Some(Toml::Str(s)) => {
                let s = s.clone();
                Secret::parse(s.trim()).map_err(|e| self.err(&key, e.to_string()))?
            }
            Some(_) => return Err(self.err(&key, "must be a quoted string".into())),
        };
        let mut count = |f: &str| -> Result<Option<u32>, ConfigError> {
            match self.uint(&k(f), 1_000_000)? {
                Some(0) => {
                    Err(self.err(&k(f), "must be at least 1 (leave it out: no limit)".into()))
                }
                v => Ok(v.map(|n| n as u32)),
            }
        };
        let max_connections = count("max-connections")?;
        let max_ips = count("max-ips")?;
        let quota = self.bytes(&k("quota"))?;
        // Strings parsed here rather than through `Doc::parsed` (one copy of it per type).
        let text = |d: &mut Doc, f: &str, ok: &dyn Fn(&str) -> bool, what: &str| {
            let v = d.string(&k(f))?.map(|s| s.trim().to_string());
            match v {
                Some(v) if !ok(&v) => Err(d.err(&k(f), format!("{v:?} {what}"))),
                v => Ok(v),
            }
        };
        let period_ok =
            |s: &str| parse_period(s).is_some_and(|d| (1..=MAX_PERIOD).contains(&d.as_secs()));
        let quota_period = text(
            self,
            "quota-period",
            &period_ok,
            "is not a period from 1s to 3650d (e.g. 30d, 1w, 12h; leave it out for a lifetime \
             quota)",
        )?
        .and_then(|s| parse_period(&s))
        .map(|d| d.as_secs());
        if quota_period.is_some() && quota.is_none() {
            return Err(self.err(&k("quota-period"), "needs a quota in the same table".into()));
        }
        let expires = match self.string(&k("expires"))? {
            None => None,
            Some(s) => Some(
                crate::formats::rfc3339::parse(s.trim())
                    .map_err(|e| self.err(&k("expires"), format!("{s:?} {e}")))?,
            ),
        };
        let tag = |s: &str| -> Option<[u8; 16]> {
            let b = (s.len() == 32).then(|| hex_decode(s)).flatten()?;
            <[u8; 16]>::try_from(b).ok()
        };
        let ad_tag = text(
            self,
            "ad-tag",
            &|s| tag(s).is_some(),
            "is not an ad tag (32 hex digits, from @MTProxybot)",
        )?
        .and_then(|s| tag(&s));
        Ok(UserSpec {
            name: name.to_string(),
            secret,
            limits: Limits {
                max_connections,
                max_ips,
                quota,
                quota_period,
                expires,
            },
            ad_tag,
        })
    }
}

/// Checks the users of the config and the users file together (names and keys unique, at
/// least one, at most [`MAX_USERS`]); the error names the later of two clashing users, where
/// it is, and where the other one is, never a secret.
pub(super) fn check_users(specs: &[UserSpec], origins: &[Origin]) -> Result<(), ConfigError> {
    let (i, key, msg) = match Users::new(specs.to_vec()) {
        Ok(_) => return Ok(()),
        Err(UsersError::Empty) => {
            return Err(ConfigError {
                file: None,
                line: None,
                key: Some("secret".into()),
                msg: "is required (generate one with `mtpx generate-secret <domain>`), or \
                      define users: [users.NAME] tables or users-file"
                    .into(),
            });
        }
        Err(UsersError::TooMany(i)) => (i, "", "more than 4096 users".to_string()),
        Err(UsersError::BadName(i, e)) => (i, "", e.to_string()),
        Err(UsersError::DuplicateName(a, b)) => {
            let msg = if origins[a].top {
                "the top-level secret is the user \"default\": rename this table or move the \
                 top-level secret into it"
                    .to_string()
            } else {
                format!(
                    "user {:?} is defined twice (also at {})",
                    specs[b].name,
                    origins[a].at(origins[a].line)
                )
            };
            (b, "", msg)
        }
        Err(UsersError::DuplicateKey(a, b)) => (
            b,
            ".secret",
            format!(
                "has the same key as user {:?} ({}): a handshake could not tell them apart; \
                 give each user a secret of its own (mtpx generate-secret)",
                specs[a].name,
                origins[a].at(origins[a].secret_line)
            ),
        ),
    };
    let o = &origins[i];
    Err(ConfigError {
        file: o.file.clone(),
        line: Some(if key.is_empty() {
            o.line
        } else {
            o.secret_line
        }),
        key: Some(if o.top && !key.is_empty() {
            "secret".into()
        } else {
            format!("users.{}{key}", specs[i].name)
        }),
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, Warning, load, parse};
    use crate::proto::XorShift64;
    use crate::proto::secret::{Secret, SecretKind};

    fn secret(kind: SecretKind, host: &str, seed: u64) -> String {
        Secret::generate(kind, host, &mut XorShift64(seed)).to_hex()
    }

    fn ok(text: &str) -> (Config, Vec<Warning>) {
        parse(text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    fn err(text: &str) -> ConfigError {
        parse(text)
            .err()
            .unwrap_or_else(|| panic!("no error for\n{text}"))
    }

    const BIND: &str = "bind-to = \"127.0.0.1:3128\"\n";

    #[test]
    fn user_tables_with_quoted_dotted_names_and_every_key() {
        let (top, a, b) = (
            secret(SecretKind::FakeTls, "a.example", 1),
            secret(SecretKind::FakeTls, "b.example", 2),
            secret(SecretKind::Secure, "", 3),
        );
        let text = format!(
            "secret = \"{top}\"\n{BIND}\
             [users.alice]\nsecret = \"{a}\"\nmax-connections = 8\nmax-ips = 2\n\
             quota = \"10GiB\"\nquota-period = \"30d\"\nexpires = \"2026-12-31T23:59:59Z\"\n\
             ad-tag = \"0123456789abcdef0123456789ABCDEF\"\n\
             [users.\"bob.smith\"]\nsecret = \"{b}\"\nquota = 1000\n\
             [network]\ndns = \"9.9.9.9\"\n"
        );
        let (c, w) = ok(&text);
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["default", "alice", "bob.smith"]);
        assert_eq!(c.secret.to_hex(), top);
        let alice = &c.users[1];
        assert_eq!(alice.secret.host, "b.example");
        let l = alice.limits;
        assert_eq!(
            (
                l.max_connections,
                l.max_ips,
                l.quota,
                l.quota_period,
                l.expires
            ),
            (
                Some(8),
                Some(2),
                Some(10 << 30),
                Some(30 * 86_400),
                Some(1_798_761_599)
            )
        );
        assert_eq!(alice.ad_tag.map(|t| t[15]), Some(0xef));
        assert_eq!(c.users[2].limits.quota, Some(1000));
        assert_eq!(c.users[2].limits.quota_period, None);
        // The other sections are untouched by the user tables.
        assert_eq!(c.dns.as_deref(), Some("9.9.9.9"));
        // Served as configured: no warning.
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn users_without_a_top_level_secret_and_dotted_key_forms() {
        let (a, b) = (
            secret(SecretKind::Classic, "", 4),
            secret(SecretKind::Secure, "", 5),
        );
        // `[users] x.secret` and a top-level `users.y.secret` are the same tables in TOML.
        let (c, _) = ok(&format!(
            "{BIND}users.yan.secret = \"{b}\"\n[users]\nxi.secret = \"{a}\"\n"
        ));
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["yan", "xi"]);
        assert_eq!(c.secret.to_hex(), b);
        // One user, no limits: no warning; `users` is filled all the same.
        let (c, w) = ok(&format!("{BIND}[users.solo]\nsecret = \"{a}\"\n"));
        assert_eq!((c.users.len(), w.len()), (1, 0));
        assert_eq!(c.user_specs()[0].name, "solo");
        // A single-secret (mtg) config has no users list: the user `default`.
        let (c, _) = ok(&format!("secret = \"{a}\"\n{BIND}"));
        assert!(c.users.is_empty());
        assert_eq!(c.user_specs()[0].name, "default");
    }

    #[test]
    fn bad_user_tables_name_line_and_key_never_the_secret() {
        let a = secret(SecretKind::FakeTls, "a.example", 6);
        let b = secret(SecretKind::Secure, "", 7);
        let t = |extra: &str| format!("secret = \"{a}\"\n{BIND}{extra}");
        let cases: [(String, usize, &str, &str); 17] = [
            (
                t("[users.bob.smith]\nsecret = \"x\"\n"),
                3,
                "users.bob.smith",
                "[users.\"bob.smith\"]",
            ),
            (t("[users]\nbob = \"x\"\n"), 4, "users.bob", "a table"),
            (
                t("[users.\"b b\"]\nsecret = \"x\"\n"),
                3,
                "users.b b",
                "letters",
            ),
            (
                t(&format!("[users.{}]\n", "x".repeat(65))),
                3,
                &format!("users.{}", "x".repeat(65)),
                "1 to 64",
            ),
            (
                t("[users.bob]\nmax-ips = 2\n"),
                3,
                "users.bob.secret",
                "required",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nmax-conections = 2\n"
                )),
                5,
                "users.bob.max-conections",
                "unknown key",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nmax-connections = 0\n"
                )),
                5,
                "users.bob.max-connections",
                "at least 1",
            ),
            (
                t(&format!("[users.bob]\nsecret = \"{b}\"\nmax-ips = 1.5\n")),
                5,
                "users.bob.max-ips",
                "whole number",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nquota = \"lots\"\n"
                )),
                5,
                "users.bob.quota",
                "not a size",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nquota = 1\nquota-period = \"30\"\n"
                )),
                6,
                "users.bob.quota-period",
                "not a period",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nquota-period = \"30d\"\n"
                )),
                5,
                "users.bob.quota-period",
                "needs a quota",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nquota = 1\nquota-period = \"3651d\"\n"
                )),
                6,
                "users.bob.quota-period",
                "from 1s to 3650d",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nexpires = \"2026-12-31T10:00:00\"\n"
                )),
                5,
                "users.bob.expires",
                "no time zone",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nexpires = 2026-12-31\n"
                )),
                5,
                "users.bob.expires",
                "quoted",
            ),
            (
                t(&format!(
                    "[users.bob]\nsecret = \"{b}\"\nad-tag = \"abc\"\n"
                )),
                5,
                "users.bob.ad-tag",
                "32 hex",
            ),
            (
                t("[users.bob]\nsecret = \"dd00112233\"\n"),
                4,
                "users.bob.secret",
                "truncated",
            ),
            (
                t("[users.bob]\nsecret = 5\n"),
                4,
                "users.bob.secret",
                "quoted string",
            ),
        ];
        for (text, line, key, needle) in cases {
            let e = err(&text);
            let shown = e.to_string();
            assert_eq!(e.line, Some(line), "{shown}\n{text}");
            if needle != "quoted" {
                assert_eq!(e.key.as_deref(), Some(key), "{shown}");
            }
            assert!(shown.contains(needle), "{shown}");
            assert!(!shown.contains(&b) && !shown.contains(&a), "{shown}");
        }
    }

    #[test]
    fn duplicate_names_and_keys_name_both_users() {
        let a = secret(SecretKind::FakeTls, "a.example", 8);
        let b = secret(SecretKind::Secure, "", 9);
        // The top-level secret is `default`.
        let e = err(&format!(
            "secret = \"{a}\"\n{BIND}[users.default]\nsecret = \"{b}\"\n"
        ));
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("users.default")));
        assert!(e.msg.contains("top-level secret"), "{e}");
        // `[users.a]` and `[users."a"]` are one table defined twice.
        let e = err(&format!(
            "{BIND}[users.a]\nsecret = \"{a}\"\n[users.\"a\"]\nsecret = \"{b}\"\n"
        ));
        assert_eq!(e.line, Some(4), "{e}");
        // The same key under another kind (dd vs ee) is refused too.
        let same = format!("dd{}", &a[2..34]);
        let e = err(&format!(
            "{BIND}[users.ann]\nsecret = \"{a}\"\n\n[users.ben]\nsecret = \"{same}\"\n"
        ));
        assert_eq!(
            e.to_string(),
            "line 6: users.ben.secret: has the same key as user \"ann\" (line 3): a handshake \
             could not tell them apart; give each user a secret of its own (mtpx generate-secret)"
        );
        let e = err(&format!(
            "secret = \"{a}\"\n{BIND}[users.ben]\nsecret = \"{same}\"\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("users.ben.secret"))
        );
        assert!(e.msg.contains("user \"default\" (line 1)"), "{e}");
    }

    #[test]
    fn more_than_max_users_is_refused_at_the_first_one_too_many() {
        let mut text = String::from(BIND);
        let n = crate::proto::users::MAX_USERS;
        for i in 0..=n {
            let s = secret(SecretKind::Secure, "", i as u64 + 100);
            text.push_str(&format!("[users.u{i}]\nsecret = \"{s}\"\n"));
        }
        let e = err(&text);
        assert_eq!(
            e.key.as_deref(),
            Some(format!("users.u{n}").as_str()),
            "{e}"
        );
        assert_eq!(e.line, Some(2 + 2 * n), "{e}");
        assert!(e.msg.contains("more than 4096"), "{e}");
    }

    #[test]
    fn users_file_is_read_relative_to_the_config_and_checked_with_it() {
        let dir = std::env::temp_dir().join(format!("mtpx-users-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let a = secret(SecretKind::FakeTls, "a.example", 10);
        let b = secret(SecretKind::FakeTls, "b.example", 11);
        let cfg = dir.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!("secret = \"{a}\"\n{BIND}users-file = \"sub/users.toml\"\n"),
        )
        .unwrap();
        let users = dir.join("sub/users.toml");
        std::fs::write(
            &users,
            format!("# panel\nstray = 1\n[users.bob]\nsecret = \"{b}\"\nquota = \"1GiB\"\n"),
        )
        .unwrap();
        let (c, w) = load(&cfg).unwrap();
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["default", "bob"]);
        assert_eq!(c.secret.to_hex(), a);
        assert_eq!(c.users_file.as_deref(), Some(users.as_path()));
        assert_eq!(c.state_file(), Some(dir.join("proxy.state")));
        let ws: Vec<String> = w.iter().map(|w| w.to_string()).collect();
        let uf = users.display();
        assert!(
            ws.contains(&format!("{uf}:2: stray: unknown key (a typo?); ignored")),
            "{ws:?}"
        );
        // A clash with the config names both files; a broken users file names its line.
        std::fs::write(&users, format!("[users.x]\nsecret = \"{a}\"\n")).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{uf}:2: users.x.secret: has the same key as user \"default\" ({}:1): a \
                 handshake could not tell them apart; give each user a secret of its own \
                 (mtpx generate-secret)",
                cfg.display()
            )
        );
        let c3 = secret(SecretKind::Classic, "", 12);
        std::fs::write(
            &users,
            format!("[users.x]\nsecret = \"{b}\"\n[users.default]\nsecret = \"{c3}\"\n"),
        )
        .unwrap();
        let e = load(&cfg).unwrap_err();
        assert_eq!(
            (e.file.clone(), e.line),
            (Some(users.display().to_string()), Some(3))
        );
        assert!(e.msg.contains("top-level secret"), "{e}");
        std::fs::write(
            &users,
            format!("[users.x]\nsecret = \"{b}\"\nquota = \"1zb\"\n"),
        )
        .unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{uf}:3: users.x.quota: \"1zb\" is not a size")),
            "{e}"
        );
        // Only a users file: its first user is the primary secret; an empty one is refused.
        std::fs::write(
            &cfg,
            format!("{BIND}users-file = \"sub/users.toml\"\nstate-dir = \"/var/lib/x\"\n"),
        )
        .unwrap();
        std::fs::write(&users, format!("[users.x]\nsecret = \"{b}\"\n")).unwrap();
        let (c, _) = load(&cfg).unwrap();
        assert_eq!((c.secret.to_hex(), c.users.len()), (b, 1));
        assert_eq!(c.state_file(), Some("/var/lib/x/proxy.state".into()));
        std::fs::write(&users, "# nobody yet\n").unwrap();
        let e = load(&cfg).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("secret"), "{e}");
        std::fs::remove_file(&users).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{uf}: cannot read the file")), "{e}");
        // Text alone cannot read a users file.
        let e = parse(&format!("{BIND}users-file = \"u.toml\"\n")).unwrap_err();
        assert!(e.msg.contains("no user"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_example_user_table_parses_uncommented() {
        let example = include_str!("../../config.example");
        let start = example
            .find("# [users.alice]")
            .expect("config.example shows a user");
        let mut table = String::new();
        for l in example[start..].lines() {
            let l = l.strip_prefix("# ").expect("a commented line");
            table.push_str(l);
            table.push('\n');
        }
        let s = secret(SecretKind::FakeTls, "www.example.com", 13);
        let text = format!("{BIND}{}", table.replace("\"ee...\"", &format!("\"{s}\"")));
        let (c, _) = ok(&text);
        let l = c.users[0].limits;
        assert_eq!(c.users[0].name, "alice");
        assert_eq!(
            (l.max_connections, l.max_ips, l.quota, l.quota_period),
            (Some(16), Some(3), Some(20 << 30), Some(30 * 86_400))
        );
        assert!(l.expires.is_some() && c.users[0].ad_tag.is_some());
        for key in super::USER_KEYS.iter().chain(&["users-file", "state-dir"]) {
            assert!(example.contains(&format!("# {key} =")), "{key}");
        }
    }
}
