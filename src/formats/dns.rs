//! A minimal DNS stub-resolver codec (RFC 1035): A/AAAA queries, response parsing, and
//! `/etc/resolv.conf` parsing.
//!
//! Pure: bytes in, typed results out. The sockets, ids and timeouts live in `background::resolve`.
//! Every parser here works on untrusted input and never panics: all reads are bounds-checked,
//! name compression pointers may only point backwards and the number of jumps is capped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::proto::codec::Reader;

/// Record types this resolver asks for or follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    /// IPv4 address (1).
    A,
    /// IPv6 address (28).
    Aaaa,
}

impl QType {
    /// The wire value of the type.
    pub fn code(self) -> u16 {
        match self {
            QType::A => TYPE_A,
            QType::Aaaa => TYPE_AAAA,
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
/// The longest name on the wire (RFC 1035 §3.1), including the root label.
const MAX_NAME_WIRE: usize = 255;
/// Compression jumps allowed while decoding one name.
const MAX_JUMPS: usize = 32;
/// CNAME hops followed inside one answer.
const MAX_CNAME_HOPS: usize = 8;
/// Nameservers used from resolv.conf (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// The largest DNS message over UDP without EDNS.
pub const UDP_MAX: usize = 512;

/// Why a query could not be built or a response was not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// The host name is empty, too long, or has an empty/overlong/invalid label.
    BadName,
    /// The message is cut short or structurally invalid.
    Malformed,
    /// The response id does not match the query (not ours: ignore it).
    IdMismatch,
    /// The message is a query, not a response.
    NotResponse,
    /// The question section does not echo our question (not ours: ignore it).
    QuestionMismatch,
    /// The name does not exist (RCODE 3). Authoritative: do not ask other servers.
    NxDomain,
    /// Any other non-zero RCODE (SERVFAIL, REFUSED, ...): ask the next server.
    Rcode(u8),
}

impl DnsError {
    /// True if the message is not an answer to our question at all (the resolver keeps
    /// waiting for the real one instead of giving up on the server).
    pub fn is_foreign(self) -> bool {
        matches!(
            self,
            DnsError::IdMismatch | DnsError::NotResponse | DnsError::QuestionMismatch
        )
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::BadName => f.write_str("invalid host name"),
            DnsError::Malformed => f.write_str("malformed DNS message"),
            DnsError::IdMismatch => f.write_str("DNS id mismatch"),
            DnsError::NotResponse => f.write_str("DNS message is not a response"),
            DnsError::QuestionMismatch => f.write_str("DNS question mismatch"),
            DnsError::NxDomain => f.write_str("no such host (NXDOMAIN)"),
            DnsError::Rcode(2) => f.write_str("DNS server failure (SERVFAIL)"),
            DnsError::Rcode(5) => f.write_str("DNS query refused (REFUSED)"),
            DnsError::Rcode(c) => write!(f, "DNS error rcode {c}"),
        }
    }
}

/// A usable response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Addresses of the asked type owned by the name or an alias on its CNAME chain, with TTLs
    /// in seconds. May be empty (the name exists but has no such record).
    pub addrs: Vec<(IpAddr, u32)>,
    /// The TC bit: the answer was truncated; ask again over TCP. When set, `addrs` is empty.
    pub truncated: bool,
}

/// Validates `name` and encodes it as wire labels (lowercase is not forced: DNS is
/// case-insensitive and servers echo what they got). A single trailing dot is allowed.
fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(DnsError::BadName);
    }
    let start = out.len();
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(DnsError::BadName);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - start > MAX_NAME_WIRE {
        return Err(DnsError::BadName);
    }
    Ok(())
}

/// A standard recursive query (RD set) for `name` of type `qtype` with message id `id`.
pub fn build_query(id: u16, name: &str, qtype: QType) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // QR=0, opcode QUERY, RD=1
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1, AN=NS=AR=0
    encode_name(name, &mut q)?;
    q.extend_from_slice(&qtype.code().to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// The big-endian u16 at `at` of the message.
fn be16(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    Reader::at(msg, at)
        .and_then(|mut r| r.u16())
        .ok_or(DnsError::Malformed)
}

/// The big-endian u32 at `at` of the message.
fn be32(msg: &[u8], at: usize) -> Result<u32, DnsError> {
    Reader::at(msg, at)
        .and_then(|mut r| r.u32())
        .ok_or(DnsError::Malformed)
}

/// Decodes the (possibly compressed) name at `pos` into lowercase dotted form without the
/// trailing dot ("" for the root). Returns the name and the position just after it in the
/// message (after the first pointer if it was compressed).
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut jumps = 0usize;
    let mut end = None;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Malformed)?;
        match len & 0xC0 {
            0x00 => {
                wire_len += 1 + len as usize;
                if wire_len > MAX_NAME_WIRE {
                    return Err(DnsError::Malformed);
                }
                if len == 0 {
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len as usize)
                    .ok_or(DnsError::Malformed)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    // Keep names comparable and printable; bytes outside ASCII are escaped so
                    // they can never collide with a real label.
                    if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                        name.push(b.to_ascii_lowercase() as char);
                    } else {
                        name.push_str(&format!("\\{b:03}"));
                    }
                }
                pos += 1 + len as usize;
            }
            0xC0 => {
                let target = (be16(msg, pos)? & 0x3FFF) as usize;
                // Pointers must point strictly backwards: together with the jump cap this
                // rules out loops.
                jumps += 1;
                if target >= pos || jumps > MAX_JUMPS {
                    return Err(DnsError::Malformed);
                }
                if end.is_none() {
                    end = Some(pos + 2);
                }
                pos = target;
            }
            _ => return Err(DnsError::Malformed), // 0x40/0x80: extended/reserved label types
        }
    }
}

/// Normalises a host name as `read_name` would produce it (lowercase, no trailing dot).
fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

struct Record {
    owner: String,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata_at: usize,
    rdata_len: usize,
}

fn read_record(msg: &[u8], pos: usize) -> Result<(Record, usize), DnsError> {
    let (owner, p) = read_name(msg, pos)?;
    let rtype = be16(msg, p)?;
    let class = be16(msg, p + 2)?;
    let ttl = be32(msg, p + 4)?;
    let rdata_len = be16(msg, p + 8)? as usize;
    let rdata_at = p + 10;
    if msg.len() < rdata_at + rdata_len {
        return Err(DnsError::Malformed);
    }
    // RFC 2181 §8: a TTL with the top bit set is treated as zero.
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    let rec = Record {
        owner,
        rtype,
        class,
        ttl,
        rdata_at,
        rdata_len,
    };
    Ok((rec, rdata_at + rdata_len))
}

/// Parses `msg` as the response to the query `(id, name, qtype)`.
///
/// Checks the id, QR, opcode, RCODE and the echoed question; follows the CNAME chain within
/// the answer section (at most 8 hops) and collects the addresses of the asked type owned by
/// any name on the chain. A response with TC set yields `Answer { truncated: true, .. }`.
pub fn parse_response(msg: &[u8], id: u16, name: &str, qtype: QType) -> Result<Answer, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Malformed);
    }
    if be16(msg, 0)? != id {
        return Err(DnsError::IdMismatch);
    }
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(DnsError::QuestionMismatch); // not a standard query's answer
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0xF) as u8;
    let qdcount = be16(msg, 4)?;
    let ancount = be16(msg, 6)? as usize;

    // The question must be echoed (servers may omit it only for errors like FORMERR, which
    // we treat as foreign since we never send malformed queries).
    if qdcount != 1 {
        if truncated && qdcount == 0 && rcode == 0 {
            return Ok(Answer {
                addrs: Vec::new(),
                truncated,
            });
        }
        return Err(DnsError::QuestionMismatch);
    }
    let want = normalise(name);
    let (qname, mut pos) = read_name(msg, HEADER_LEN)?;
    let qt = be16(msg, pos)?;
    let qc = be16(msg, pos + 2)?;
    pos += 4;
    if qname != want || qt != qtype.code() || qc != CLASS_IN {
        return Err(DnsError::QuestionMismatch);
    }
    match rcode {
        0 => {}
        3 => return Err(DnsError::NxDomain),
        c => return Err(DnsError::Rcode(c)),
    }
    if truncated {
        return Ok(Answer {
            addrs: Vec::new(),
            truncated,
        });
    }

    let mut records = Vec::with_capacity(ancount.min(64));
    for _ in 0..ancount {
        let (rec, next) = read_record(msg, pos)?;
        records.push(rec);
        pos = next;
    }

    // The chain of names: the asked name, then each CNAME target in turn.
    let mut chain = vec![want];
    for _ in 0..MAX_CNAME_HOPS {
        let Some(last) = chain.last() else { break };
        let next = records
            .iter()
            .find(|r| r.rtype == TYPE_CNAME && r.class == CLASS_IN && r.owner == *last);
        let Some(r) = next else { break };
        let (target, end) = read_name(msg, r.rdata_at)?;
        if end != r.rdata_at + r.rdata_len || chain.contains(&target) {
            break; // a CNAME whose rdata is not exactly one name, or a loop: stop here
        }
        chain.push(target);
    }

    let mut addrs = Vec::new();
    for r in &records {
        if r.class != CLASS_IN || r.rtype != qtype.code() || !chain.contains(&r.owner) {
            continue;
        }
        let Some(data) = msg.get(r.rdata_at..r.rdata_at + r.rdata_len) else {
            return Err(DnsError::Malformed);
        };
        let ip = match (qtype, data.len()) {
            (QType::A, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                IpAddr::V4(Ipv4Addr::from(b))
            }
            (QType::Aaaa, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(DnsError::Malformed),
        };
        if !addrs.iter().any(|(a, _)| *a == ip) {
            addrs.push((ip, r.ttl));
        }
    }
    Ok(Answer { addrs, truncated })
}

/// What mtpx uses from `/etc/resolv.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameservers in file order, port 53, at most [`MAX_NAMESERVERS`]. Never empty: without a
    /// `nameserver` line this is `127.0.0.1:53`, as glibc does.
    pub nameservers: Vec<SocketAddr>,
    /// Seconds to wait for one server per try (`options timeout:n`, default 5, at most 30).
    pub timeout_secs: u32,
    /// Rounds over all servers (`options attempts:n`, default 2, 1..=5).
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            timeout_secs: 5,
            attempts: 2,
        }
    }
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    // fe80::1%2: a link-local server with a numeric zone. Named zones (%eth0) would need
    // if_nametoindex; such lines are skipped.
    let (ip, zone) = text.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    let scope = zone.parse::<u32>().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

/// Parses resolv.conf text: `nameserver` lines (IPv4/IPv6) and `options timeout:n attempts:n`;
/// everything else (search, domain, sortlist, other options, comments) is ignored.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(addr) = words.next().and_then(parse_nameserver)
                    && conf.nameservers.len() < MAX_NAMESERVERS
                    && !conf.nameservers.contains(&addr)
                {
                    conf.nameservers.push(addr);
                }
            }
            Some("options") => {
                for opt in words {
                    if let Some(v) = opt.strip_prefix("timeout:")
                        && let Ok(n) = v.parse::<u32>()
                    {
                        conf.timeout_secs = n.clamp(1, 30);
                    } else if let Some(v) = opt.strip_prefix("attempts:")
                        && let Ok(n) = v.parse::<u32>()
                    {
                        conf.attempts = n.clamp(1, 5);
                    }
                }
            }
            _ => {}
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = ResolvConf::default().nameservers;
    }
    conf
}

/// A DNS server and how to reach it (`[network] dns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nameserver {
    pub addr: std::net::SocketAddr,
    pub transport: Transport,
}

/// How queries travel to a [`Nameserver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP, TCP when truncated (RFC 1035, RFC 7766).
    Plain,
    /// DNS over TLS (RFC 7858): length-prefixed messages in a TLS 1.3 session.
    Tls,
    /// DNS over HTTPS (RFC 8484): `GET <path>?dns=<base64url>` over TLS 1.3.
    Https(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Rng, XorShift64};

    /// A response builder independent of the parser under test.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(id: u16, flags: u16, qd: u16, an: u16) -> Self {
            let mut v = Vec::new();
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&flags.to_be_bytes());
            v.extend_from_slice(&qd.to_be_bytes());
            v.extend_from_slice(&an.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 0]);
            Msg(v)
        }
        fn name(mut self, name: &str) -> Self {
            for l in name.split('.').filter(|l| !l.is_empty()) {
                self.0.push(l.len() as u8);
                self.0.extend_from_slice(l.as_bytes());
            }
            self.0.push(0);
            self
        }
        fn ptr(mut self, at: u16) -> Self {
            self.0.extend_from_slice(&(0xC000 | at).to_be_bytes());
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn u16(self, v: u16) -> Self {
            self.raw(&v.to_be_bytes())
        }
        fn rr_head(self, rtype: u16, ttl: u32, rdlen: u16) -> Self {
            self.u16(rtype).u16(1).raw(&ttl.to_be_bytes()).u16(rdlen)
        }
    }

    const OK: u16 = 0x8180; // QR, RD, RA, rcode 0

    fn example_a() -> Vec<u8> {
        // example.com A -> www.example.com CNAME -> 192.0.2.1, 192.0.2.2 (compressed names)
        Msg::new(0x1234, OK, 1, 4)
            .name("Example.COM")
            .u16(1)
            .u16(1)
            .ptr(12)
            .rr_head(TYPE_CNAME, 300, 6)
            .raw(&[3, b'w', b'w', b'w'])
            .ptr(12)
            .raw(&[3, b'w', b'w', b'w'])
            .ptr(12)
            .rr_head(TYPE_A, 60, 4)
            .raw(&[192, 0, 2, 1])
            .ptr(12 + 17 + 12) // "www" + ptr inside the CNAME rdata
            .rr_head(TYPE_A, 0x8000_0000, 4)
            .raw(&[192, 0, 2, 2])
            // an unrelated A record that must not be collected
            .name("evil.test")
            .rr_head(TYPE_A, 60, 4)
            .raw(&[6, 6, 6, 6])
            .0
    }

    #[test]
    fn query_layout() {
        let q = build_query(0xBEEF, "a.Example.com.", QType::Aaaa).unwrap();
        assert_eq!(
            q,
            [
                0xBE, 0xEF, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 7, b'E', b'x', b'a', b'm', b'p',
                b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 28, 0, 1
            ]
        );
    }

    #[test]
    fn query_rejects_bad_names() {
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "ä.com",
            &"x".repeat(64),
            &["abcdefghi"; 26].join("."),
        ] {
            assert_eq!(
                build_query(1, bad, QType::A),
                Err(DnsError::BadName),
                "{bad:?}"
            );
        }
        assert!(build_query(1, &"x".repeat(63), QType::A).is_ok());
        // 253 characters: the longest valid name.
        let longest = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(build_query(1, &longest, QType::A).is_ok());
        assert!(build_query(1, &format!("{longest}b"), QType::A).is_err());
    }

    #[test]
    fn follows_cname_and_collects_ttls() {
        let a = parse_response(&example_a(), 0x1234, "example.com", QType::A).unwrap();
        assert!(!a.truncated);
        assert_eq!(
            a.addrs,
            vec![
                (IpAddr::from([192, 0, 2, 1]), 60),
                (IpAddr::from([192, 0, 2, 2]), 0)
            ]
        );
    }

    #[test]
    fn checks_id_qr_and_question() {
        let m = example_a();
        assert_eq!(
            parse_response(&m, 0x1235, "example.com", QType::A),
            Err(DnsError::IdMismatch)
        );
        assert_eq!(
            parse_response(&m, 0x1234, "example.org", QType::A),
            Err(DnsError::QuestionMismatch)
        );
        assert_eq!(
            parse_response(&m, 0x1234, "example.com", QType::Aaaa),
            Err(DnsError::QuestionMismatch)
        );
        let mut q = m.clone();
        q[2] &= 0x7F;
        assert_eq!(
            parse_response(&q, 0x1234, "example.com", QType::A),
            Err(DnsError::NotResponse)
        );
        assert!(DnsError::IdMismatch.is_foreign() && !DnsError::NxDomain.is_foreign());
    }

    #[test]
    fn rcodes_and_truncation() {
        let base = |flags| Msg::new(7, flags, 1, 0).name("a.test").u16(28).u16(1).0;
        assert_eq!(
            parse_response(&base(0x8183), 7, "a.test", QType::Aaaa),
            Err(DnsError::NxDomain)
        );
        assert_eq!(
            parse_response(&base(0x8182), 7, "a.test", QType::Aaaa),
            Err(DnsError::Rcode(2))
        );
        let tc = parse_response(&base(0x8380), 7, "a.test", QType::Aaaa).unwrap();
        assert!(tc.truncated && tc.addrs.is_empty());
        // TC with answers cut mid-record is still just "truncated".
        let mut cut = base(0x8380);
        cut[7] = 3;
        cut.extend_from_slice(&[0xC0, 12, 0, 28]);
        assert!(
            parse_response(&cut, 7, "a.test", QType::Aaaa)
                .unwrap()
                .truncated
        );
        // NOERROR, no data.
        let empty = parse_response(&base(0x8180), 7, "a.test.", QType::Aaaa).unwrap();
        assert_eq!(empty, Answer::default());
    }

    #[test]
    fn aaaa_records() {
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let m = Msg::new(9, OK, 1, 1)
            .name("v6.test")
            .u16(28)
            .u16(1)
            .ptr(12)
            .rr_head(28, 30, 16)
            .raw(&ip.octets())
            .0;
        let a = parse_response(&m, 9, "V6.Test", QType::Aaaa).unwrap();
        assert_eq!(a.addrs, vec![(IpAddr::V6(ip), 30)]);
        // A wrong rdata length for the type is malformed.
        let mut bad = m.clone();
        let n = bad.len();
        bad[n - 17] = 15;
        bad.pop();
        assert_eq!(
            parse_response(&bad, 9, "v6.test", QType::Aaaa),
            Err(DnsError::Malformed)
        );
    }

    #[test]
    fn cname_loops_and_long_chains_terminate() {
        // a -> b -> a (loop), plus an A for b.
        let m = Msg::new(1, OK, 1, 3)
            .name("a.test")
            .u16(1)
            .u16(1)
            .ptr(12)
            .rr_head(TYPE_CNAME, 5, 4)
            .raw(&[1, b'b'])
            .ptr(14) // "test"
            .raw(&[1, b'b'])
            .ptr(14)
            .rr_head(TYPE_CNAME, 5, 2)
            .ptr(12)
            .raw(&[1, b'b'])
            .ptr(14)
            .rr_head(TYPE_A, 5, 4)
            .raw(&[10, 0, 0, 1])
            .0;
        let a = parse_response(&m, 1, "a.test", QType::A).unwrap();
        assert_eq!(a.addrs, vec![(IpAddr::from([10, 0, 0, 1]), 5)]);
    }

    #[test]
    fn compression_pointer_loops_are_rejected() {
        // The question name is a pointer to itself.
        let m = Msg::new(1, OK, 1, 0).ptr(12).u16(1).u16(1).0;
        assert_eq!(
            parse_response(&m, 1, "a", QType::A),
            Err(DnsError::Malformed)
        );
        // A forward pointer (to the type field).
        let m = Msg::new(1, OK, 1, 0).ptr(14).u16(1).u16(1).0;
        assert_eq!(
            parse_response(&m, 1, "a", QType::A),
            Err(DnsError::Malformed)
        );
        // Two labels pointing at each other: the second points back to the first, which is
        // itself a pointer forward.
        let m = Msg::new(1, OK, 1, 0)
            .raw(&[1, b'a'])
            .ptr(14)
            .u16(1)
            .u16(1)
            .0;
        assert_eq!(
            parse_response(&m, 1, "a", QType::A),
            Err(DnsError::Malformed)
        );
        // A name longer than 255 bytes built from backward pointers only is rejected.
        let mut v = Msg::new(1, OK, 1, 0).0;
        v.push(63);
        v.extend_from_slice(&[b'x'; 63]);
        v.push(0);
        let mut links = vec![12u16];
        for _ in 0..4 {
            let here = v.len() as u16;
            v.push(63);
            v.extend_from_slice(&[b'y'; 63]);
            v.extend_from_slice(&(0xC000 | links[links.len() - 1]).to_be_bytes());
            links.push(here);
        }
        let (two, _) = read_name(&v, links[1] as usize).unwrap();
        assert_eq!(two.len(), 127);
        assert!(read_name(&v, links[2] as usize).is_ok()); // 3 labels: 193 wire bytes
        assert_eq!(read_name(&v, links[3] as usize), Err(DnsError::Malformed)); // 257
        assert_eq!(read_name(&v, links[4] as usize), Err(DnsError::Malformed));
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let full = example_a();
        for n in 0..full.len() {
            // Every strict prefix is malformed or foreign, never a panic, never addresses.
            if let Ok(a) = parse_response(&full[..n], 0x1234, "example.com", QType::A) {
                panic!("prefix {n} parsed as {a:?}");
            }
        }
        let mut rng = XorShift64(0xD15);
        for i in 0..20_000 {
            let mut m = full.clone();
            if i % 2 == 0 {
                // flip a few bytes
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(m.len() as u32) as usize;
                    let mut b = [0u8];
                    rng.fill(&mut b);
                    m[at] = b[0];
                }
            } else {
                let len = rng.below(600) as usize;
                m = vec![0; len];
                rng.fill(&mut m);
                if m.len() >= 4 {
                    m[0] = 0x12;
                    m[1] = 0x34;
                    m[2] |= 0x80;
                }
            }
            let _ = parse_response(&m, 0x1234, "example.com", QType::A);
            let _ = read_name(&m, rng.below(m.len() as u32 + 2) as usize);
        }
    }

    #[test]
    fn resolv_conf() {
        let c = parse_resolv_conf(
            "# generated\n\
             search example.com\n\
             nameserver 10.0.0.1 # office\n\
             nameserver\tfd00::53\n\
             nameserver fe80::1%eth0\n\
             nameserver fe80::2%3\n\
             nameserver 10.0.0.1\n\
             nameserver 10.0.0.4\n\
             nameserver not-an-ip\n\
             options ndots:2 timeout:3 rotate attempts:9\n\
             ; comment nameserver 1.1.1.1\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::2".parse().unwrap(), 53, 0, 3)),
            ]
        );
        assert_eq!((c.timeout_secs, c.attempts), (3, 5));

        let d = parse_resolv_conf("domain lan\noptions timeout:0 attempts:x\n");
        assert_eq!(d.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!((d.timeout_secs, d.attempts), (1, 2));
        assert_eq!(parse_resolv_conf(""), ResolvConf::default());
        assert_eq!(
            parse_resolv_conf("\u{0}\u{ffff}nameserver")
                .nameservers
                .len(),
            1
        );
    }
}
