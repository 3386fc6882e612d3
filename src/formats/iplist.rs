//! FireHOL netset parser and an immutable IP prefix table (PROTOCOL.md §8.7).
//!
//! Pure / no I/O: the caller reads or downloads each list, hands its text to [`parse_netset`],
//! logs the [`LineError`]s, and builds one [`IpTable`] from all the lists' [`Cidr`]s. A table is
//! never changed after it is built; an update builds a new one and swaps it in.
//!
//! Unlike mtg, a malformed line is skipped and the rest of the file still loads (§11.7).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network: an address with its host bits cleared, and a prefix length (≤ 32 for IPv4,
/// ≤ 128 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits, host bits masked off; `None` if `prefix` is
    /// too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `addr/n`; a bare address is a /32 or
    /// /128, host bits in a CIDR are masked off.
    pub fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "invalid IP address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| "invalid prefix length")?
            }
            Some(_) => return Err("invalid prefix length"),
        };
        Cidr::new(addr, prefix).ok_or("prefix length too long for the address family")
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network (same family only; no IPv4-mapped translation).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// A line of a netset that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The offending entry (comment and surrounding whitespace removed; at most 100 bytes).
    pub text: String,
    /// What is wrong with it.
    pub error: &'static str,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} ({:?})", self.line, self.error, self.text)
    }
}

/// Longest excerpt of a bad line kept in a [`LineError`].
const EXCERPT: usize = 100;

/// Parses a FireHOL netset/ipset: one IPv4/IPv6 address or CIDR per line, `#` starts a comment
/// (whole line or trailing), blank lines are skipped, whitespace is trimmed. Malformed lines are
/// reported and skipped; everything else is returned in file order.
pub fn parse_netset(text: &str) -> (Vec<Cidr>, Vec<LineError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cidrs = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split_once('#').map_or(line, |(e, _)| e).trim();
        if entry.is_empty() {
            continue;
        }
        match Cidr::parse(entry) {
            Ok(c) => cidrs.push(c),
            Err(error) => {
                let mut end = entry.len().min(EXCERPT);
                while !entry.is_char_boundary(end) {
                    end -= 1;
                }
                errors.push(LineError {
                    line: i + 1,
                    text: entry.get(..end).unwrap_or_default().to_string(),
                    error,
                });
            }
        }
    }
    (cidrs, errors)
}

/// An immutable set of IP networks: sorted, merged, non-overlapping inclusive ranges per family,
/// looked up by binary search.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4 addresses here, both in lists (a
/// mapped CIDR of prefix ≥ 96 goes into the IPv4 ranges) and in [`IpTable::contains`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpTable {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    entries: usize,
}

/// The top 96 bits of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), shifted down.
const MAPPED_PREFIX: u128 = 0xffff;

impl IpTable {
    /// An empty table (matches nothing).
    pub fn new() -> IpTable {
        IpTable::default()
    }

    /// A table of `0.0.0.0/0` and `::/0` (matches everything): a disabled allowlist.
    pub fn any() -> IpTable {
        IpTable {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
            entries: 2,
        }
    }

    /// Builds a table from any number of CIDRs (chain several lists' iterators).
    pub fn from_cidrs<'a, I: IntoIterator<Item = &'a Cidr>>(cidrs: I) -> IpTable {
        let mut t = IpTable::default();
        for c in cidrs {
            t.entries += 1;
            match c.addr {
                IpAddr::V4(a) => {
                    let lo = u32::from(a);
                    t.v4.push((lo, lo | !mask32(c.prefix)));
                }
                IpAddr::V6(a) => {
                    let lo = u128::from(a);
                    if c.prefix >= 96 && lo >> 32 == MAPPED_PREFIX {
                        // ::ffff:a.b.c.d/n is a.b.c.d/(n-96); the low 32 bits hold the address.
                        let lo4 = lo as u32;
                        t.v4.push((lo4, lo4 | !mask32(c.prefix - 96)));
                    } else {
                        t.v6.push((lo, lo | !mask128(c.prefix)));
                    }
                }
            }
        }
        merge(&mut t.v4);
        merge(&mut t.v6);
        t
    }

    /// Builds a table from several lists.
    pub fn from_lists(lists: &[Vec<Cidr>]) -> IpTable {
        IpTable::from_cidrs(lists.iter().flatten())
    }

    /// Whether `ip` is inside any network of the table.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }

    /// Number of CIDRs the table was built from (before merging): the `iplist_size` metric.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the table was built from no CIDR at all.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Number of disjoint ranges after merging (IPv4 plus IPv6).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// Sorts inclusive ranges and merges overlapping and adjacent ones.
fn merge<T: Copy + Ord + Successor>(v: &mut Vec<(T, T)>) {
    crate::proto::sort_heap(v); // size: see sort_heap
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for &(lo, hi) in v.iter() {
        match out.last_mut() {
            // `lo` ≤ last.hi + 1 (no successor: last.hi is the maximum, so it covers `lo`).
            Some(last) if last.1.succ().is_none_or(|n| lo <= n) => {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => out.push((lo, hi)),
        }
    }
    *v = out;
}

fn lookup<T: Copy + Ord>(v: &[(T, T)], x: T) -> bool {
    let i = v.partition_point(|&(lo, _)| lo <= x);
    i.checked_sub(1)
        .and_then(|i| v.get(i))
        .is_some_and(|&(_, hi)| x <= hi)
}

trait Successor: Sized {
    fn succ(self) -> Option<Self>;
}

impl Successor for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Rng, XorShift64};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(text: &str) -> IpTable {
        let (c, e) = parse_netset(text);
        assert!(e.is_empty(), "{e:?}");
        IpTable::from_cidrs(&c)
    }

    const GOOD: &str = include_str!("../../tests/data/iplist/good_ipset.ipset");
    const BROKEN: &str = include_str!("../../tests/data/iplist/broken_ipset.ipset");
    const REMOTE: &str = include_str!("../../tests/data/iplist/remote_ipset.ipset");

    #[test]
    fn accepts_mtg_good_ipset() {
        let (cidrs, errors) = parse_netset(GOOD);
        assert!(errors.is_empty());
        let shown: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.10/32",
                "10.1.0.0/24",
                "2001:db8:85a3::8a2e:370:7334/128"
            ]
        );
        let t = IpTable::from_cidrs(&cidrs);
        assert!(t.contains(ip("10.0.0.10")));
        assert!(t.contains(ip("10.1.0.100")));
        assert!(t.contains(ip("2001:db8:85a3::8a2e:370:7334")));
        assert!(!t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("10.0.0.11")));
        assert!(!t.contains(ip("10.1.1.0")));
        assert!(!t.contains(ip("2001:db8:85a3::8a2e:370:7335")));
        assert_eq!((t.len(), t.ranges()), (3, 3));
    }

    #[test]
    fn rejects_mtg_broken_ipset_line_and_keeps_the_rest() {
        let (cidrs, errors) = parse_netset(BROKEN);
        assert!(cidrs.is_empty());
        assert_eq!(
            errors,
            [LineError {
                line: 5,
                text: "ajsdkfbd".to_string(),
                error: "invalid IP address"
            }]
        );
        assert!(!IpTable::from_cidrs(&cidrs).contains(ip("10.0.0.10")));
        // mtpx keeps loading after a bad line (mtg would stop there).
        let (cidrs, errors) = parse_netset(&format!("{BROKEN}10.0.0.10\n"));
        assert_eq!(errors.len(), 1);
        assert!(IpTable::from_cidrs(&cidrs).contains(ip("10.0.0.10")));
    }

    #[test]
    fn accepts_mtg_remote_ipset_combined_with_good() {
        let (a, _) = parse_netset(GOOD);
        let (b, _) = parse_netset(REMOTE);
        let t = IpTable::from_lists(&[a, b]);
        assert!(t.contains(ip("10.2.2.2")));
        assert!(t.contains(ip("10.1.0.100")));
        assert!(!t.contains(ip("10.2.2.3")));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn accepts_comments_whitespace_crlf_and_masks_host_bits() {
        let text = "\u{feff}# head\r\n\t 192.168.1.77/16 \t# trailing\r\n\r\n   \n#only\n::1\n2001:db8::ff/120\n";
        let (cidrs, errors) = parse_netset(text);
        assert!(errors.is_empty(), "{errors:?}");
        let shown: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["192.168.0.0/16", "::1/128", "2001:db8::/120"]);
        assert_eq!(cidrs[0].addr(), ip("192.168.0.0"));
        assert_eq!(cidrs[0].prefix(), 16);
    }

    #[test]
    fn rejects_malformed_lines_with_their_numbers() {
        let text = "1.2.3.4/33\n1.2.3.4\n::/129\n1.2.3.4/\n1.2.3.4/-1\n1.2.3.4/+8\n1.2.3.4/0008\n\
                    1.2.3\n1.2.3.4 5.6.7.8\n01.2.3.4\n::g\n1.2.3.4//8\n/8\n10.0.0.0/8\n";
        let (cidrs, errors) = parse_netset(text);
        assert_eq!(cidrs.len(), 2);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        assert_eq!(
            errors[0].error,
            "prefix length too long for the address family"
        );
        assert_eq!(errors[1].text, "::/129");
        assert_eq!(errors[3].error, "invalid prefix length");
        // Long junk is cut to a bounded excerpt at a char boundary.
        let junk = "\u{e9}".repeat(80);
        let (_, errors) = parse_netset(&junk);
        assert!(errors[0].text.len() <= EXCERPT && errors[0].text.starts_with('\u{e9}'));
    }

    #[test]
    fn accepts_overlapping_and_adjacent_merges() {
        let t = table("10.0.0.0/25\n10.0.0.128/25\n10.0.1.0/24\n10.0.0.5\n10.0.3.0/24\n");
        assert_eq!(t.len(), 5);
        assert_eq!(t.ranges(), 2); // 10.0.0.0-10.0.1.255 and 10.0.3.0/24
        assert!(t.contains(ip("10.0.1.255")));
        assert!(!t.contains(ip("10.0.2.0")));
        assert!(t.contains(ip("10.0.3.0")));
        let t = table("10.0.0.0/8\n10.1.2.3\n10.200.0.0/16\n");
        assert_eq!(t.ranges(), 1);
        let t = table("::/1\n8000::/1\n");
        assert_eq!(t.ranges(), 1);
        assert!(t.contains(ip("ffff::1")));
        assert!(!t.contains(ip("1.2.3.4")));
        let t = table("1.1.1.1\n1.1.1.1\n");
        assert_eq!((t.len(), t.ranges()), (2, 1));
    }

    #[test]
    fn accepts_edges() {
        let t = table("255.255.255.255\n0.0.0.0\nffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\n::\n");
        assert!(t.contains(ip("255.255.255.255")));
        assert!(t.contains(ip("0.0.0.0")));
        assert!(!t.contains(ip("255.255.255.254")));
        assert!(!t.contains(ip("0.0.0.1")));
        assert!(t.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(t.contains(ip("::")));
        assert!(!t.contains(ip("::2")));
        let t = table("255.255.255.0/24\n255.255.255.255/32\n0.0.0.0/0\n");
        assert_eq!(t.ranges(), 1);
        assert!(t.contains(ip("128.0.0.1")));
        assert!(!t.contains(ip("2001:db8::1")));
        let t = table("::/0\n");
        assert!(t.contains(ip("2001:db8::1")));
        // An IPv6 /0 does not swallow IPv4 clients (mapped or not).
        assert!(!t.contains(ip("1.2.3.4")));
        assert!(!t.contains(ip("::ffff:1.2.3.4")));
        let any = IpTable::any();
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "2001:db8::1",
            "::ffff:9.9.9.9",
        ] {
            assert!(any.contains(ip(a)), "{a}");
        }
        assert_eq!((any.len(), any.ranges()), (2, 2));
        let empty = IpTable::new();
        assert!(empty.is_empty() && !empty.contains(ip("1.2.3.4")));
    }

    #[test]
    fn accepts_ipv4_mapped_ipv6_as_ipv4() {
        let t = table("10.0.0.0/8\n");
        assert!(t.contains(ip("::ffff:10.9.8.7")));
        assert!(!t.contains(ip("::ffff:11.0.0.0")));
        assert!(!t.contains(ip("::10.9.8.7"))); // IPv4-compatible is not mapped
        let t = table("::ffff:192.0.2.0/120\n::ffff:0:0/96\n");
        assert_eq!(t.ranges(), 1); // both land in the IPv4 table, merged
        assert!(t.contains(ip("8.8.8.8")));
        let t = table("::ffff:192.0.2.0/120\n");
        assert!(t.contains(ip("192.0.2.200")));
        assert!(t.contains(ip("::ffff:192.0.2.1")));
        assert!(!t.contains(ip("192.0.3.0")));
    }

    /// Reference semantics for the property test: a linear scan, mapped addresses as IPv4.
    fn naive(cidrs: &[Cidr], x: IpAddr) -> bool {
        let canon = |a: IpAddr| match a {
            IpAddr::V6(v) => v.to_ipv4_mapped().map_or(a, IpAddr::V4),
            v4 => v4,
        };
        let x = canon(x);
        cidrs.iter().any(|c| match c.addr {
            IpAddr::V6(v) if c.prefix >= 96 && v.to_ipv4_mapped().is_some() => {
                let n = Cidr::new(canon(c.addr), c.prefix - 96).unwrap();
                n.contains(x)
            }
            _ => c.contains(x),
        })
    }

    #[test]
    fn accepts_property_against_linear_scan() {
        let mut rng = XorShift64(0x1915_7ab1e);
        // Few distinct high bits so that networks overlap, nest and touch often.
        let rand_ip = |rng: &mut XorShift64| -> IpAddr {
            let hi = rng.below(4);
            match rng.below(3) {
                0 => IpAddr::V4(Ipv4Addr::from(
                    (hi << 30) | (rng.next_u64() as u32 >> rng.below(32)),
                )),
                1 => IpAddr::V6(Ipv6Addr::from(
                    (u128::from(hi) << 126) | (u128::from(rng.next_u64()) << rng.below(64)),
                )),
                _ => {
                    IpAddr::V6(Ipv4Addr::from((hi << 30) | rng.next_u64() as u32).to_ipv6_mapped())
                }
            }
        };
        for round in 0..200 {
            let n = rng.below(40) as usize;
            let mut cidrs = Vec::new();
            for _ in 0..n {
                let a = rand_ip(&mut rng);
                let max = if a.is_ipv4() { 33 } else { 129 };
                let p = rng.below(max) as u8;
                cidrs.push(Cidr::new(a, p).unwrap());
            }
            let t = IpTable::from_cidrs(&cidrs);
            assert_eq!(t.len(), n);
            for _ in 0..300 {
                // Probe random addresses and the exact edges of listed networks.
                let x = match rng.below(3) {
                    0 if n > 0 => {
                        let c = cidrs[rng.below(n as u32) as usize];
                        match c.addr {
                            IpAddr::V4(a) => {
                                let lo = u32::from(a);
                                let hi = lo | !mask32(c.prefix);
                                let pick = [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)];
                                IpAddr::V4(pick[rng.below(4) as usize].into())
                            }
                            IpAddr::V6(a) => {
                                let lo = u128::from(a);
                                let hi = lo | !mask128(c.prefix);
                                let pick = [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)];
                                IpAddr::V6(pick[rng.below(4) as usize].into())
                            }
                        }
                    }
                    _ => rand_ip(&mut rng),
                };
                assert_eq!(
                    t.contains(x),
                    naive(&cidrs, x),
                    "round {round}, {x}, {cidrs:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_truncation_sweep() {
        // Every prefix of a valid file parses to a prefix of its entries or a line error on
        // the last (cut) line only, never a panic.
        let text = "10.0.0.0/8 # c\n2001:db8::/32\n1.2.3.4\n";
        let (full, _) = parse_netset(text);
        for n in 0..=text.len() {
            let (cidrs, errors) = parse_netset(&text[..n]);
            assert!(cidrs.len() <= full.len());
            assert!(errors.len() <= 1, "{n}: {errors:?}");
            if let Some(e) = errors.first() {
                assert_eq!(e.line, text[..n].lines().count());
            }
        }
    }

    #[test]
    fn rejects_garbage_sweep() {
        let alphabet = b"0123456789abcdef:./# \t\r\nxX-";
        let mut rng = XorShift64(0xbad_5e7);
        for _ in 0..5_000 {
            let n = rng.below(120) as usize;
            let s: String = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len() as u32) as usize] as char)
                .collect();
            let (cidrs, errors) = parse_netset(&s);
            for e in &errors {
                assert!(e.line >= 1 && e.line <= s.lines().count());
            }
            let t = IpTable::from_cidrs(&cidrs);
            assert!(t.ranges() <= t.len());
            let mut raw = vec![0u8; n];
            rng.fill(&mut raw);
            let (cidrs, _) = parse_netset(&String::from_utf8_lossy(&raw));
            let _ = IpTable::from_cidrs(&cidrs);
        }
    }
}
