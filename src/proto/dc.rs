//! Telegram DC addresses: the built-in table, `prefer-ip` ordering and configured overrides
//! (PROTOCOL.md §4).
//!
//! Pure / no I/O: no resolving, no dialling; [`DcTable`] only answers "which addresses, in which
//! order" for the DC index a client asked for.
//!
//! Invariants:
//! * [`DcTable`] is built once at start-up; [`DcTable::lookup`] and friends allocate nothing and
//!   never panic, for every `i16` (including `i16::MIN`).
//! * A client's DC index is signed: negative means a media request for `|dc|`, and 0 means DC 2
//!   (PROTOCOL.md §3.2). Lookup order: override for the exact index, else override for `|dc|`,
//!   else the built-in list for `|dc|`, filtered and ordered by [`PreferIp`].
//! * Overrides are used exactly as configured (not filtered by [`PreferIp`]); an override
//!   replaces the built-in list for its id. Empty overrides are ignored.
//! * Returned lists are never empty: a DC left with no address (say `only-ipv4` with a v6-only
//!   override elsewhere) is unknown.
//! * No shuffling here (the caller may rotate the list).
//! * `auto-update` (PROTOCOL.md §4): addresses for DC 203 from Telegram's proxy config come
//!   first within their family, then the built-in ones ([`DcTable::with_updates`]): the
//!   published list is the current one, the built-in one a fallback (mtg appends it, so a moved
//!   CDN address cost every media connection a connect timeout first). An override for 203
//!   still replaces both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Deref;

/// The port every built-in Telegram DC listens on.
pub const DC_PORT: u16 = 443;

/// The DC used when the client sends 0, and the fallback for unknown DCs.
pub const DEFAULT_DC: i16 = 2;

/// The DC whose addresses `auto-update` keeps current (the media CDN).
pub const CDN_DC: u16 = 203;

/// Most addresses one DC may have (overrides included; `auto-update` adds at most
/// [`MAX_UPDATED`] per family).
pub const MAX_DC_ADDRS: usize = 16;

/// Most auto-updated DC 203 addresses used per family.
pub const MAX_UPDATED: usize = 6;

/// A DC's addresses by value (for callers that cannot borrow the table: it may be replaced
/// while they use the list). Dereferences to the slice; at most [`MAX_DC_ADDRS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DcAddrs {
    len: u8,
    addrs: [SocketAddr; MAX_DC_ADDRS],
}

impl DcAddrs {
    /// The first [`MAX_DC_ADDRS`] of `list`.
    pub fn from_slice(list: &[SocketAddr]) -> DcAddrs {
        let mut addrs = [SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0); MAX_DC_ADDRS];
        let n = list.len().min(MAX_DC_ADDRS);
        addrs[..n].copy_from_slice(&list[..n]);
        DcAddrs {
            len: n as u8,
            addrs,
        }
    }
}

impl Deref for DcAddrs {
    type Target = [SocketAddr];

    fn deref(&self) -> &[SocketAddr] {
        &self.addrs[..usize::from(self.len)]
    }
}

/// Which address families to dial, and in which order (`prefer-ip` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PreferIp {
    /// IPv6 addresses first, then IPv4 (the default).
    #[default]
    PreferIpv6,
    /// IPv4 addresses first, then IPv6.
    PreferIpv4,
    /// IPv6 addresses only.
    OnlyIpv6,
    /// IPv4 addresses only.
    OnlyIpv4,
}

impl PreferIp {
    /// Parses the config spelling: `prefer-ipv6`, `prefer-ipv4`, `only-ipv6` or `only-ipv4`.
    pub fn parse(s: &str) -> Option<PreferIp> {
        match s {
            "prefer-ipv6" => Some(PreferIp::PreferIpv6),
            "prefer-ipv4" => Some(PreferIp::PreferIpv4),
            "only-ipv6" => Some(PreferIp::OnlyIpv6),
            "only-ipv4" => Some(PreferIp::OnlyIpv4),
            _ => None,
        }
    }

    /// The config spelling (inverse of [`PreferIp::parse`]).
    pub fn as_str(self) -> &'static str {
        match self {
            PreferIp::PreferIpv6 => "prefer-ipv6",
            PreferIp::PreferIpv4 => "prefer-ipv4",
            PreferIp::OnlyIpv6 => "only-ipv6",
            PreferIp::OnlyIpv4 => "only-ipv4",
        }
    }
}

/// One row of the built-in table (all on port [`DC_PORT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinDc {
    /// The DC number.
    pub id: u16,
    /// IPv4 addresses, in table order.
    pub ipv4: &'static [Ipv4Addr],
    /// IPv6 addresses, in table order.
    pub ipv6: &'static [Ipv6Addr],
}

/// The hard-coded Telegram DCs (PROTOCOL.md §4). 203 is the CDN DC.
pub const BUILTIN: [BuiltinDc; 6] = [
    BuiltinDc {
        id: 1,
        ipv4: &[Ipv4Addr::new(149, 154, 175, 50)],
        ipv6: &[Ipv6Addr::new(0x2001, 0xb28, 0xf23d, 0xf001, 0, 0, 0, 0xa)],
    },
    BuiltinDc {
        id: 2,
        ipv4: &[
            Ipv4Addr::new(149, 154, 167, 51),
            Ipv4Addr::new(95, 161, 76, 100),
        ],
        ipv6: &[Ipv6Addr::new(0x2001, 0x67c, 0x4e8, 0xf002, 0, 0, 0, 0xa)],
    },
    BuiltinDc {
        id: 3,
        ipv4: &[Ipv4Addr::new(149, 154, 175, 100)],
        ipv6: &[Ipv6Addr::new(0x2001, 0xb28, 0xf23d, 0xf003, 0, 0, 0, 0xa)],
    },
    BuiltinDc {
        id: 4,
        ipv4: &[Ipv4Addr::new(149, 154, 167, 91)],
        ipv6: &[Ipv6Addr::new(0x2001, 0x67c, 0x4e8, 0xf004, 0, 0, 0, 0xa)],
    },
    BuiltinDc {
        id: 5,
        ipv4: &[Ipv4Addr::new(149, 154, 171, 5)],
        ipv6: &[Ipv6Addr::new(0x2001, 0xb28, 0xf23f, 0xf005, 0, 0, 0, 0xa)],
    },
    BuiltinDc {
        id: 203,
        ipv4: &[Ipv4Addr::new(91, 105, 192, 100)],
        ipv6: &[Ipv6Addr::new(
            0x2a0a, 0xf280, 0x203, 0xa, 0x5000, 0, 0, 0x100,
        )],
    },
];

/// The built-in row for DC `dc` (unsigned: callers strip the media sign first), if any.
pub fn builtin(dc: u16) -> Option<&'static BuiltinDc> {
    BUILTIN.iter().find(|row| row.id == dc)
}

/// The built-in addresses of `row` in dialling order for `prefer`, each family led by the
/// `updated` addresses of that family (at most [`MAX_UPDATED`] of each, duplicates dropped).
fn ordered(row: &BuiltinDc, prefer: PreferIp, updated: &[SocketAddr]) -> Vec<SocketAddr> {
    let family = |v6: bool| {
        let mut list: Vec<SocketAddr> = Vec::new();
        for a in updated.iter().filter(|a| a.is_ipv6() == v6) {
            if list.len() < MAX_UPDATED && !list.contains(a) {
                list.push(*a);
            }
        }
        let builtin: Vec<SocketAddr> = if v6 {
            row.ipv6
                .iter()
                .map(|&ip| SocketAddr::new(IpAddr::V6(ip), DC_PORT))
                .collect()
        } else {
            row.ipv4
                .iter()
                .map(|&ip| SocketAddr::new(IpAddr::V4(ip), DC_PORT))
                .collect()
        };
        for a in builtin {
            if !list.contains(&a) {
                list.push(a);
            }
        }
        list.into_iter()
    };
    let (v4, v6) = (family(false), family(true));
    match prefer {
        PreferIp::PreferIpv6 => v6.chain(v4).collect(),
        PreferIp::PreferIpv4 => v4.chain(v6).collect(),
        PreferIp::OnlyIpv6 => v6.collect(),
        PreferIp::OnlyIpv4 => v4.collect(),
    }
}

/// Where to dial for each DC index; built once, then read-only.
#[derive(Clone, Debug)]
pub struct DcTable {
    /// Built-in DCs with their addresses already ordered; rows left empty are dropped.
    builtin: Vec<(u16, Vec<SocketAddr>)>,
    /// Configured overrides by exact (signed) id; one entry per id, never empty.
    overrides: Vec<(i16, Vec<SocketAddr>)>,
    /// Every id that resolves, sorted.
    known: Vec<i16>,
}

impl DcTable {
    /// Builds the table. `overrides` are `(dc id, addresses)` pairs from the config; an override
    /// REPLACES the built-in list for that exact id: one for -2 applies only to media requests
    /// for DC 2, one for 2 applies to 2 and (when -2 has none) to -2. A later pair for the same
    /// id replaces an earlier one; pairs with no address are ignored. Overrides for 0 are never
    /// used, since 0 means DC 2.
    pub fn new(prefer: PreferIp, overrides: &[(i16, Vec<SocketAddr>)]) -> DcTable {
        DcTable::with_updates(prefer, overrides, &[])
    }

    /// [`DcTable::new`] with `updated`, the DC 203 addresses of Telegram's proxy config
    /// (`auto-update`), put before the built-in ones of their family.
    pub fn with_updates(
        prefer: PreferIp,
        overrides: &[(i16, Vec<SocketAddr>)],
        updated: &[SocketAddr],
    ) -> DcTable {
        let builtin: Vec<(u16, Vec<SocketAddr>)> = BUILTIN
            .iter()
            .map(|row| {
                let upd = if row.id == CDN_DC { updated } else { &[] };
                (row.id, ordered(row, prefer, upd))
            })
            .filter(|(_, addrs)| !addrs.is_empty())
            .collect();

        let mut merged: Vec<(i16, Vec<SocketAddr>)> = Vec::new();
        for (id, addrs) in overrides {
            if addrs.is_empty() || *id == 0 {
                continue;
            }
            match merged.iter_mut().find(|(known, _)| known == id) {
                Some(slot) => slot.1.clone_from(addrs),
                None => merged.push((*id, addrs.clone())),
            }
        }

        let mut known: Vec<i16> = builtin
            .iter()
            .filter_map(|(id, _)| i16::try_from(*id).ok())
            .chain(merged.iter().map(|(id, _)| *id))
            .collect();
        super::sort_small_by_key(&mut known, |id| *id);
        known.dedup();

        DcTable {
            builtin,
            overrides: merged,
            known,
        }
    }

    fn override_for(&self, dc: i16) -> Option<&[SocketAddr]> {
        self.overrides
            .iter()
            .find(|(id, _)| *id == dc)
            .map(|(_, addrs)| addrs.as_slice())
    }

    fn builtin_for(&self, dc: u16) -> Option<&[SocketAddr]> {
        self.builtin
            .iter()
            .find(|(id, _)| *id == dc)
            .map(|(_, addrs)| addrs.as_slice())
    }

    /// Addresses to dial, in order, for the DC index the client sent (signed): the override
    /// for the exact index, else the override for `|dc|`, else the built-in `|dc|` ordered by
    /// preference. 0 means DC 2. `None` if the DC is unknown. Never empty, never allocates.
    pub fn lookup(&self, dc: i16) -> Option<&[SocketAddr]> {
        let dc = if dc == 0 { DEFAULT_DC } else { dc };
        if let Some(addrs) = self.override_for(dc) {
            return Some(addrs);
        }
        let abs = dc.unsigned_abs();
        if dc < 0 {
            // i16::MIN has no positive counterpart: only the built-in search below (which
            // finds nothing) applies.
            if let Some(addrs) = i16::try_from(abs).ok().and_then(|a| self.override_for(a)) {
                return Some(addrs);
            }
        }
        self.builtin_for(abs)
    }

    /// Like [`lookup`](Self::lookup), also giving the DC number to put in the DC frame (always
    /// positive: `|dc|`, 2 for 0). With `fallback` (`allow-fallback-on-unknown-dc`), an unknown
    /// DC resolves to DC 2's list and number 2; without it, `None`.
    pub fn lookup_or_fallback(&self, dc: i16, fallback: bool) -> Option<(i16, &[SocketAddr])> {
        if let Some(addrs) = self.lookup(dc) {
            let number = if dc == 0 {
                DEFAULT_DC
            } else {
                dc.saturating_abs()
            };
            return Some((number, addrs));
        }
        if fallback {
            return self.lookup(DEFAULT_DC).map(|addrs| (DEFAULT_DC, addrs));
        }
        None
    }

    /// Every DC index that [`lookup`](Self::lookup) resolves on its own (built-in ids and
    /// override ids, including negative ones), ascending. Negative ids served by their
    /// positive counterpart are not listed. For `doctor`.
    pub fn known_ids(&self) -> impl Iterator<Item = i16> + '_ {
        self.known.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn v(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| sa(s)).collect()
    }

    const ALL: [PreferIp; 4] = [
        PreferIp::PreferIpv6,
        PreferIp::PreferIpv4,
        PreferIp::OnlyIpv6,
        PreferIp::OnlyIpv4,
    ];

    #[test]
    fn accepts_builtin_table_values() {
        let t = DcTable::new(PreferIp::PreferIpv4, &[]);
        let expect: [(i16, &[&str]); 6] = [
            (1, &["149.154.175.50:443", "[2001:b28:f23d:f001::a]:443"]),
            (
                2,
                &[
                    "149.154.167.51:443",
                    "95.161.76.100:443",
                    "[2001:67c:4e8:f002::a]:443",
                ],
            ),
            (3, &["149.154.175.100:443", "[2001:b28:f23d:f003::a]:443"]),
            (4, &["149.154.167.91:443", "[2001:67c:4e8:f004::a]:443"]),
            (5, &["149.154.171.5:443", "[2001:b28:f23f:f005::a]:443"]),
            (
                203,
                &["91.105.192.100:443", "[2a0a:f280:203:a:5000::100]:443"],
            ),
        ];
        for (dc, addrs) in expect {
            assert_eq!(t.lookup(dc), Some(v(addrs).as_slice()), "dc {dc}");
        }
        assert_eq!(builtin(2).map(|r| r.ipv4.len()), Some(2));
        assert_eq!(builtin(6), None);
        assert_eq!(builtin(0), None);
    }

    #[test]
    fn accepts_every_preference_ordering() {
        let cases: [(PreferIp, &[&str]); 4] = [
            (
                PreferIp::PreferIpv6,
                &[
                    "[2001:67c:4e8:f002::a]:443",
                    "149.154.167.51:443",
                    "95.161.76.100:443",
                ],
            ),
            (
                PreferIp::PreferIpv4,
                &[
                    "149.154.167.51:443",
                    "95.161.76.100:443",
                    "[2001:67c:4e8:f002::a]:443",
                ],
            ),
            (PreferIp::OnlyIpv6, &["[2001:67c:4e8:f002::a]:443"]),
            (
                PreferIp::OnlyIpv4,
                &["149.154.167.51:443", "95.161.76.100:443"],
            ),
        ];
        for (prefer, addrs) in cases {
            let t = DcTable::new(prefer, &[]);
            assert_eq!(t.lookup(2), Some(v(addrs).as_slice()), "{prefer:?}");
            // Media requests use the same list.
            assert_eq!(t.lookup(-2), Some(v(addrs).as_slice()), "{prefer:?}");
        }
        assert_eq!(PreferIp::default(), PreferIp::PreferIpv6);
    }

    #[test]
    fn accepts_prefer_ip_spellings_and_rejects_others() {
        for p in ALL {
            assert_eq!(PreferIp::parse(p.as_str()), Some(p));
        }
        for bad in [
            "",
            "ipv4",
            "prefer-ipv5",
            "PREFER-IPV4",
            " only-ipv6",
            "only-ipv6 ",
        ] {
            assert_eq!(PreferIp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_exact_override_replacing_builtin_unfiltered() {
        let ov = vec![(3, v(&["[2001:db8::3]:8443", "192.0.2.3:443"]))];
        for prefer in ALL {
            let t = DcTable::new(prefer, &ov);
            // Used as given, even against the family preference.
            assert_eq!(t.lookup(3), Some(ov[0].1.as_slice()), "{prefer:?}");
            assert_eq!(t.lookup(-3), Some(ov[0].1.as_slice()), "{prefer:?}");
            // Other DCs keep their built-in lists.
            assert_eq!(
                t.lookup(1).map(<[_]>::len),
                Some(1 + usize::from(prefer_both(prefer)))
            );
        }
    }

    fn prefer_both(p: PreferIp) -> bool {
        matches!(p, PreferIp::PreferIpv6 | PreferIp::PreferIpv4)
    }

    #[test]
    fn accepts_positive_override_for_media_requests() {
        let ov = vec![(2, v(&["192.0.2.2:443"]))];
        let t = DcTable::new(PreferIp::PreferIpv6, &ov);
        assert_eq!(t.lookup(2), Some(ov[0].1.as_slice()));
        assert_eq!(t.lookup(-2), Some(ov[0].1.as_slice()));
        assert_eq!(t.lookup(0), Some(ov[0].1.as_slice()));
    }

    #[test]
    fn accepts_media_override_only_for_media_requests() {
        let ov = vec![(-2, v(&["192.0.2.102:443"]))];
        let t = DcTable::new(PreferIp::OnlyIpv4, &ov);
        assert_eq!(t.lookup(-2), Some(ov[0].1.as_slice()));
        let builtin2 = v(&["149.154.167.51:443", "95.161.76.100:443"]);
        assert_eq!(t.lookup(2), Some(builtin2.as_slice()));
        assert_eq!(t.lookup(0), Some(builtin2.as_slice()));

        // Both present: each applies to its own id.
        let ov = vec![(2, v(&["192.0.2.2:443"])), (-2, v(&["192.0.2.102:443"]))];
        let t = DcTable::new(PreferIp::OnlyIpv4, &ov);
        assert_eq!(t.lookup(2), Some(ov[0].1.as_slice()));
        assert_eq!(t.lookup(-2), Some(ov[1].1.as_slice()));
    }

    #[test]
    fn accepts_overrides_for_new_dcs_last_one_winning_and_ignores_empty() {
        let ov = vec![
            (10002, v(&["192.0.2.1:443"])),
            (10002, v(&["192.0.2.9:443"])),
            (7, Vec::new()),
            (0, v(&["192.0.2.100:443"])),
        ];
        let t = DcTable::new(PreferIp::PreferIpv6, &ov);
        assert_eq!(t.lookup(10002), Some(v(&["192.0.2.9:443"]).as_slice()));
        assert_eq!(t.lookup(-10002), Some(v(&["192.0.2.9:443"]).as_slice()));
        assert_eq!(t.lookup(7), None);
        // 0 always means DC 2, whatever is configured for 0.
        assert_eq!(t.lookup(0), t.lookup(2));
        assert_eq!(t.lookup(0).map(<[_]>::len), Some(3));
        assert_eq!(
            t.known_ids().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 203, 10002]
        );
    }

    #[test]
    fn accepts_dc_zero_as_dc_two() {
        for prefer in ALL {
            let t = DcTable::new(prefer, &[]);
            assert!(t.lookup(0).is_some());
            assert_eq!(t.lookup(0), t.lookup(2));
            let (n, addrs) = t.lookup_or_fallback(0, false).expect("dc 0 resolves");
            assert_eq!(n, 2);
            assert_eq!(Some(addrs), t.lookup(2));
        }
    }

    #[test]
    fn rejects_unknown_dc_without_fallback() {
        let t = DcTable::new(PreferIp::PreferIpv6, &[]);
        for dc in [6, -6, 10002, -10002, 202, 204, i16::MAX, i16::MIN, -1 - 203] {
            assert_eq!(t.lookup(dc), None, "{dc}");
            assert_eq!(t.lookup_or_fallback(dc, false), None, "{dc}");
        }
    }

    #[test]
    fn accepts_unknown_dc_with_fallback_to_two() {
        let t = DcTable::new(PreferIp::PreferIpv4, &[]);
        for dc in [6, -6, 10002, i16::MAX, i16::MIN] {
            let (n, addrs) = t.lookup_or_fallback(dc, true).expect("fallback");
            assert_eq!(n, 2, "{dc}");
            assert_eq!(Some(addrs), t.lookup(2));
        }
        // Known DCs are not redirected, and media requests give the positive number.
        let (n, addrs) = t.lookup_or_fallback(-4, true).expect("dc -4");
        assert_eq!(n, 4);
        assert_eq!(Some(addrs), t.lookup(4));
        assert_eq!(t.lookup_or_fallback(203, false).map(|x| x.0), Some(203));
        assert_eq!(t.lookup_or_fallback(-203, false).map(|x| x.0), Some(203));
    }

    #[test]
    fn accepts_every_i16_without_panic() {
        let ov = vec![
            (i16::MIN, v(&["192.0.2.8:443"])),
            (i16::MAX, v(&["192.0.2.7:443"])),
        ];
        let t = DcTable::new(PreferIp::OnlyIpv6, &ov);
        let mut resolved = 0;
        for dc in i16::MIN..=i16::MAX {
            if t.lookup(dc).is_some() {
                resolved += 1;
            }
            let _ = t.lookup_or_fallback(dc, true);
        }
        // 1..5, 203, their negatives, 0, plus the two overrides (i16::MAX also serves -i16::MAX).
        assert_eq!(resolved, 6 * 2 + 1 + 3);
        assert_eq!(t.lookup(i16::MIN), Some(ov[0].1.as_slice()));
        assert_eq!(
            t.lookup_or_fallback(i16::MIN, false).map(|x| x.0),
            Some(i16::MAX)
        );
    }

    #[test]
    fn puts_updated_cdn_addresses_first_in_their_family() {
        let upd = v(&[
            "[2001:db8::203]:443",
            "192.0.2.203:443",
            "91.105.192.100:443",
            "192.0.2.204:8443",
        ]);
        let t = DcTable::with_updates(PreferIp::PreferIpv4, &[], &upd);
        assert_eq!(
            t.lookup(203),
            Some(
                v(&[
                    "192.0.2.203:443",
                    "91.105.192.100:443",
                    "192.0.2.204:8443",
                    "[2001:db8::203]:443",
                    "[2a0a:f280:203:a:5000::100]:443",
                ])
                .as_slice()
            )
        );
        assert_eq!(t.lookup(-203), t.lookup(203));
        // Other DCs are untouched; only-ipv6 keeps only the v6 ones.
        assert_eq!(
            t.lookup(2),
            DcTable::new(PreferIp::PreferIpv4, &[]).lookup(2)
        );
        let t = DcTable::with_updates(PreferIp::OnlyIpv6, &[], &upd);
        assert_eq!(
            t.lookup(203),
            Some(v(&["[2001:db8::203]:443", "[2a0a:f280:203:a:5000::100]:443"]).as_slice())
        );
        // An override still replaces everything.
        let ov = vec![(203, v(&["127.0.0.1:9"]))];
        let t = DcTable::with_updates(PreferIp::PreferIpv4, &ov, &upd);
        assert_eq!(t.lookup(203), Some(ov[0].1.as_slice()));
        // A flood of updates is capped per family.
        let many: Vec<SocketAddr> = (1..=50u8)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 443)))
            .collect();
        let t = DcTable::with_updates(PreferIp::OnlyIpv4, &[], &many);
        assert_eq!(t.lookup(203).map(<[_]>::len), Some(MAX_UPDATED + 1));
    }

    #[test]
    fn dc_addrs_hold_a_list_by_value() {
        let list = v(&["192.0.2.1:1", "[::1]:2"]);
        let a = DcAddrs::from_slice(&list);
        assert_eq!(&*a, list.as_slice());
        let long: Vec<SocketAddr> = (0..40u16)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        assert_eq!(DcAddrs::from_slice(&long).len(), MAX_DC_ADDRS);
        assert!(DcAddrs::from_slice(&[]).is_empty());
    }

    #[test]
    fn accepts_known_ids_sorted() {
        let t = DcTable::new(PreferIp::PreferIpv6, &[(-2, v(&["192.0.2.2:443"]))]);
        assert_eq!(
            t.known_ids().collect::<Vec<_>>(),
            vec![-2, 1, 2, 3, 4, 5, 203]
        );
    }
}
