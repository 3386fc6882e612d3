//! Users: one secret per person on one listener, with limits (issue 15).
//!
//! [`Users`] is an immutable snapshot of the configured users: names, secrets, limits and the
//! per-key precomputation the handshake search needs ([`keys`]). A reload builds a new snapshot
//! and [`diff`] says which users were added, changed or removed. [`recent`] remembers which
//! user a client address used last, so that a returning client costs one key, and [`quota`]
//! holds the pure quota-period arithmetic.
//!
//! Pure / no I/O: `now` is passed in. Invariants of a [`Users`] (checked by [`Users::new`]):
//! * 1..=[`MAX_USERS`] users, names valid ([`check_name`]) and distinct;
//! * no two users share a 16-byte key, whatever their secret kinds (a handshake could not tell
//!   them apart);
//! * a user's index ([`UserId`]) is its position in config order and stays valid for the
//!   snapshot's life (a new snapshot may number users differently: match by name).

use std::collections::BTreeMap;
use std::fmt;

use super::secret::{Secret, SecretKind};

pub mod keys;
pub mod quota;
pub mod recent;

pub use keys::{FakeTlsMatch, HmacKey, Obfs2Match};
pub use recent::{Candidates, RecentUsers};

/// Most users one process serves. Bounds what a failed handshake may cost (a hello that
/// matches no user is checked against every key: 4,096 HMACs) and the metrics cardinality.
pub const MAX_USERS: usize = 4096;
/// Longest user name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The name of the user that the top-level `secret` defines.
pub const DEFAULT_USER: &str = "default";

/// Index of a user in a [`Users`] snapshot.
pub type UserId = usize;

/// Checks a user name: 1..=64 bytes of `A-Z a-z 0-9 _ . -` (names go into logs, metric labels,
/// JSON keys and the state file unescaped).
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("a user name must be 1 to 64 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("a user name may only use letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

/// A user's limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most connections at a time (`max-connections`).
    pub max_connections: Option<u32>,
    /// Most distinct client addresses at a time (`max-ips`).
    pub max_ips: Option<u32>,
    /// Bytes in both directions per period (`quota`).
    pub quota: Option<u64>,
    /// Length of a quota period in seconds (`quota-period`); `None`: the quota is for life.
    pub quota_period: Option<u64>,
    /// Unix time from which the user is refused (`expires`).
    pub expires: Option<i64>,
}

/// Why a user's connection is refused (or cut) by a limit. `as_str` is the `reason` label of
/// the per-user rejection counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserReject {
    /// `expires` has passed.
    Expired,
    /// The quota of the current period is used up (at connect).
    Quota,
    /// `max-ips` other addresses hold connections.
    MaxIps,
    /// `max-connections` connections are open and none ended in time.
    MaxConnections,
    /// A relayed connection was cut because the quota ran out.
    QuotaCut,
}

impl UserReject {
    /// Every reason, indexed by discriminant.
    pub const ALL: [UserReject; 5] = [
        UserReject::Expired,
        UserReject::Quota,
        UserReject::MaxIps,
        UserReject::MaxConnections,
        UserReject::QuotaCut,
    ];

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UserReject::Expired => "expired",
            UserReject::Quota => "quota",
            UserReject::MaxIps => "max-ips",
            UserReject::MaxConnections => "max-connections",
            UserReject::QuotaCut => "quota-cut",
        }
    }
}

impl Limits {
    /// The limit that refuses a new connection now, among those that depend only on time and
    /// usage (`expires`, `quota`); `used` is the quota usage of the current period.
    pub fn refuse(&self, now_unix: u64, used: u64) -> Option<UserReject> {
        if self
            .expires
            .is_some_and(|e| i64::try_from(now_unix).unwrap_or(i64::MAX) >= e)
        {
            return Some(UserReject::Expired);
        }
        if self.quota.is_some_and(|q| used >= q) {
            return Some(UserReject::Quota);
        }
        None
    }
}

/// One configured user.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The name ([`check_name`]).
    pub name: String,
    /// The secret; FakeTLS secrets name the user's own fronting host.
    pub secret: Secret,
    /// Limits.
    pub limits: Limits,
    /// Advertising tag for middle proxies (`ad-tag`), parsed and kept.
    pub ad_tag: Option<[u8; 16]>,
}

impl fmt::Debug for UserSpec {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("kind", &self.secret.kind)
            .field("host", &self.secret.host)
            .field("limits", &self.limits)
            .field("ad_tag", &self.ad_tag.is_some())
            .finish()
    }
}

/// Why [`Users::new`] refused a user list; indices are positions in the list given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsersError {
    /// No users at all.
    Empty,
    /// More than [`MAX_USERS`]; the index is the first user too many.
    TooMany(usize),
    /// A name [`check_name`] refuses.
    BadName(usize, &'static str),
    /// Users `.0` and `.1` have the same name.
    DuplicateName(usize, usize),
    /// Users `.0` and `.1` have the same key.
    DuplicateKey(usize, usize),
}

/// An immutable set of users with their precomputed keys.
pub struct Users {
    specs: Vec<UserSpec>,
    keys: Vec<HmacKey>,
    names: BTreeMap<String, usize>,
    kinds: [bool; 3],
    /// The first FakeTLS user of each distinct host, in first-use order.
    host_users: Vec<UserId>,
}

fn kind_slot(k: SecretKind) -> usize {
    match k {
        SecretKind::Classic => 0,
        SecretKind::Secure => 1,
        SecretKind::FakeTls => 2,
    }
}

impl Users {
    /// Checks `specs` (see the module invariants) and precomputes each key.
    pub fn new(specs: Vec<UserSpec>) -> Result<Users, UsersError> {
        if specs.is_empty() {
            return Err(UsersError::Empty);
        }
        if specs.len() > MAX_USERS {
            return Err(UsersError::TooMany(MAX_USERS));
        }
        let mut names = BTreeMap::new();
        let mut by_key = BTreeMap::new();
        let mut kinds = [false; 3];
        for (i, s) in specs.iter().enumerate() {
            check_name(&s.name).map_err(|e| UsersError::BadName(i, e))?;
            if let Some(j) = names.insert(s.name.clone(), i) {
                return Err(UsersError::DuplicateName(j, i));
            }
            let hex = crate::formats::encoding::hex_encode(&s.secret.key);
            if let Some(j) = by_key.insert(hex, i) {
                return Err(UsersError::DuplicateKey(j, i));
            }
            kinds[kind_slot(s.secret.kind)] = true;
        }
        let keys = specs.iter().map(|s| HmacKey::new(&s.secret.key)).collect();
        let mut host_users: Vec<UserId> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let host = &s.secret.host;
            if s.secret.kind == SecretKind::FakeTls
                && !host_users.iter().any(|&j| specs[j].secret.host == *host)
            {
                host_users.push(i);
            }
        }
        Ok(Users {
            specs,
            keys,
            names,
            kinds,
            host_users,
        })
    }

    /// Number of users (at least 1).
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Always false: a snapshot has at least one user.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The user at `id`.
    pub fn get(&self, id: UserId) -> Option<&UserSpec> {
        self.specs.get(id)
    }

    /// Every user, in config order.
    pub fn specs(&self) -> &[UserSpec] {
        &self.specs
    }

    /// The id of the user called `name`.
    pub fn id(&self, name: &str) -> Option<UserId> {
        self.names.get(name).copied()
    }

    /// Whether some user has a secret of `kind` (decides which handshakes a listener expects).
    pub fn has_kind(&self, kind: SecretKind) -> bool {
        self.kinds[kind_slot(kind)]
    }

    /// The distinct FakeTLS hosts, in first-use order (each is fronted and scouted).
    pub fn hosts(&self) -> Vec<&str> {
        self.host_users
            .iter()
            .map(|&i| self.specs[i].secret.host.as_str())
            .collect()
    }

    /// The first FakeTLS user whose host `hello`'s SNI names (whose site a failed hello is
    /// fronted to): one look per distinct host.
    pub fn sni_user(
        &self,
        hello: &crate::proto::faketls::ClientHello,
        msg: &[u8],
    ) -> Option<UserId> {
        self.host_users
            .iter()
            .copied()
            .find(|&i| hello.has_sni(msg, self.specs[i].secret.host.as_bytes()))
    }
}

/// A user whose entry changed between two snapshots (same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Id in the old snapshot.
    pub old: UserId,
    /// Id in the new snapshot.
    pub new: UserId,
    /// The secret changed: connections made with the old one should be closed like a removed
    /// user's (its link was revoked).
    pub secret: bool,
    /// Limits or ad tag changed (apply to new connections).
    pub limits: bool,
}

/// What a reload changed, by user name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Ids (in the new snapshot) of users that did not exist.
    pub added: Vec<UserId>,
    /// Ids (in the old snapshot) of users that no longer exist.
    pub removed: Vec<UserId>,
    /// Users present in both whose entry differs.
    pub changed: Vec<Change>,
    /// Users present in both, unchanged: `(old id, new id)`.
    pub kept: Vec<(UserId, UserId)>,
}

impl Diff {
    /// Whether nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two snapshots by user name.
pub fn diff(old: &Users, new: &Users) -> Diff {
    let mut d = Diff::default();
    for (i, s) in new.specs.iter().enumerate() {
        match old.id(&s.name) {
            None => d.added.push(i),
            Some(o) => {
                let was = &old.specs[o];
                let secret = was.secret != s.secret;
                let limits = was.limits != s.limits || was.ad_tag != s.ad_tag;
                if secret || limits {
                    d.changed.push(Change {
                        old: o,
                        new: i,
                        secret,
                        limits,
                    });
                } else {
                    d.kept.push((o, i));
                }
            }
        }
    }
    for (o, s) in old.specs.iter().enumerate() {
        if new.id(&s.name).is_none() {
            d.removed.push(o);
        }
    }
    d
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::XorShift64;

    pub(crate) fn user(name: &str, kind: SecretKind, host: &str, seed: u64) -> UserSpec {
        UserSpec {
            name: name.into(),
            secret: Secret::generate(kind, host, &mut XorShift64(seed)),
            limits: Limits::default(),
            ad_tag: None,
        }
    }

    #[test]
    fn names_are_restricted() {
        for ok in ["a", "alice", "bob.smith", "A-9_x", &"x".repeat(64)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "ä",
            "a/b",
            "a\"b",
            "a=b",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_refuses_duplicates_naming_both_and_caps_the_count() {
        let a = user("alice", SecretKind::FakeTls, "a.example", 1);
        let b = user("bob", SecretKind::Secure, "", 2);
        assert_eq!(Users::new(vec![]).err(), Some(UsersError::Empty));
        let same_name = user("alice", SecretKind::Classic, "", 3);
        assert_eq!(
            Users::new(vec![a.clone(), b.clone(), same_name]).err(),
            Some(UsersError::DuplicateName(0, 2))
        );
        // Same key under another kind and host: still refused.
        let mut same_key = user("carol", SecretKind::Classic, "", 4);
        same_key.secret.key = a.secret.key;
        assert_eq!(
            Users::new(vec![a.clone(), b.clone(), same_key]).err(),
            Some(UsersError::DuplicateKey(0, 2))
        );
        let bad = user("no pe", SecretKind::Classic, "", 5);
        assert!(matches!(
            Users::new(vec![bad]).err(),
            Some(UsersError::BadName(0, _))
        ));
        let many: Vec<UserSpec> = (0..=MAX_USERS as u64)
            .map(|i| user(&format!("u{i}"), SecretKind::Secure, "", i + 10))
            .collect();
        assert_eq!(
            Users::new(many[..MAX_USERS].to_vec()).map(|u| u.len()).ok(),
            Some(MAX_USERS)
        );
        assert_eq!(Users::new(many).err(), Some(UsersError::TooMany(MAX_USERS)));
        let u = Users::new(vec![a, b]).unwrap();
        assert_eq!((u.id("bob"), u.id("nobody")), (Some(1), None));
        assert!(u.has_kind(SecretKind::FakeTls) && u.has_kind(SecretKind::Secure));
        assert!(!u.has_kind(SecretKind::Classic));
        assert_eq!(u.hosts(), ["a.example"]);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let a = user("alice", SecretKind::Secure, "", 1);
        let hex = crate::formats::encoding::hex_encode(&a.secret.key);
        let text = format!("{a:?}");
        assert!(text.contains("alice") && !text.contains(&hex), "{text}");
    }

    #[test]
    fn limits_refuse_expired_then_over_quota() {
        let l = Limits {
            quota: Some(100),
            expires: Some(1000),
            ..Limits::default()
        };
        assert_eq!(l.refuse(999, 99), None);
        assert_eq!(l.refuse(999, 100), Some(UserReject::Quota));
        assert_eq!(l.refuse(1000, 0), Some(UserReject::Expired));
        assert_eq!(Limits::default().refuse(u64::MAX, u64::MAX), None);
        let past = Limits {
            expires: Some(-5),
            ..Limits::default()
        };
        assert_eq!(past.refuse(0, 0), Some(UserReject::Expired));
        for (i, r) in UserReject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn diff_names_added_changed_removed_and_kept() {
        let a = user("alice", SecretKind::FakeTls, "a.example", 1);
        let b = user("bob", SecretKind::Secure, "", 2);
        let c = user("carol", SecretKind::Classic, "", 3);
        let old = Users::new(vec![a.clone(), b.clone(), c.clone()]).unwrap();
        let mut b2 = b.clone();
        b2.limits.max_connections = Some(3);
        let mut c2 = user("carol", SecretKind::Classic, "", 33);
        c2.limits = c.limits;
        let d = user("dave", SecretKind::Secure, "", 4);
        // New order: dave, carol (new secret), bob (new limits); alice removed.
        let new = Users::new(vec![d, c2, b2]).unwrap();
        let got = diff(&old, &new);
        assert_eq!(got.added, [0]);
        assert_eq!(got.removed, [0]);
        assert_eq!(
            got.changed,
            [
                Change {
                    old: 2,
                    new: 1,
                    secret: true,
                    limits: false
                },
                Change {
                    old: 1,
                    new: 2,
                    secret: false,
                    limits: true
                }
            ]
        );
        assert!(got.kept.is_empty() && !got.is_empty());
        let same = Users::new(vec![a, b, c]).unwrap();
        let got = diff(&old, &same);
        assert!(got.is_empty());
        assert_eq!(got.kept, [(0, 0), (1, 1), (2, 2)]);
    }
}
