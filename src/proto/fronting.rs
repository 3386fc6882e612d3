//! Domain-fronting decisions that need no socket.
//!
//! Pure / no I/O: the proxy's listening addresses, and how to tell the host's own addresses,
//! are passed in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether a connection to `target` would reach one of `listeners` (this process's own
/// listening sockets), given `is_local`, which tells the host's own addresses: same port, and
/// the same address, or a listener on the unspecified address (0.0.0.0 or ::) and `target` a
/// loopback or local address. Fronting to such a target would send a failed handshake back
/// into the proxy, which fronts it again, and so on.
///
/// As the kernel sees it: an IPv4-mapped IPv6 target is its IPv4 address; connecting to
/// 0.0.0.0 or :: reaches the loopback address; a listener on :: also takes IPv4 (Linux's
/// default, `IPV6_V6ONLY` off), one on 0.0.0.0 only IPv4; all of 127.0.0.0/8 is local.
pub fn reaches_listener(
    target: SocketAddr,
    listeners: &[SocketAddr],
    is_local: impl Fn(IpAddr) -> bool,
) -> bool {
    let ip = match target.ip().to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    listeners.iter().any(|l| {
        let own = l.ip().to_canonical();
        if l.port() != target.port() {
            return false;
        }
        if own == ip {
            return true;
        }
        let family = match l.ip() {
            IpAddr::V4(_) => ip.is_ipv4(),
            IpAddr::V6(_) => true,
        };
        own.is_unspecified() && family && (ip.is_loopback() || is_local(ip))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn rejects_targets_that_reach_our_own_listener() {
        let local = [
            ip("127.0.0.1"),
            ip("192.0.2.10"),
            ip("::1"),
            ip("2001:db8::10"),
        ];
        let cases: &[(&str, &str)] = &[
            // (target, listener)
            ("127.0.0.1:443", "127.0.0.1:443"),
            ("192.0.2.10:443", "192.0.2.10:443"),
            ("[::ffff:192.0.2.10]:443", "192.0.2.10:443"),
            ("192.0.2.10:443", "0.0.0.0:443"),
            ("127.0.0.1:443", "0.0.0.0:443"),
            ("127.3.4.5:443", "0.0.0.0:443"),
            ("0.0.0.0:443", "0.0.0.0:443"),
            ("0.0.0.0:443", "127.0.0.1:443"),
            ("[2001:db8::10]:443", "[::]:443"),
            ("[::1]:443", "[::]:443"),
            ("[::]:443", "[::1]:443"),
            // A listener on :: takes IPv4 too.
            ("192.0.2.10:443", "[::]:443"),
            ("127.0.0.1:443", "[::]:443"),
        ];
        for (target, listener) in cases {
            assert!(
                reaches_listener(sa(target), &[sa("127.0.0.1:9090"), sa(listener)], |a| local
                    .contains(&a)),
                "{target} -> {listener}"
            );
        }
    }

    #[test]
    fn accepts_targets_elsewhere() {
        let local = [ip("127.0.0.1"), ip("192.0.2.10"), ip("::1")];
        let cases: &[(&str, &str)] = &[
            // Another port of this host (a local web server), another host, another address
            // of a specifically bound listener, another family of a 0.0.0.0 listener.
            ("127.0.0.1:8443", "0.0.0.0:443"),
            ("192.0.2.10:8443", "192.0.2.10:443"),
            ("198.51.100.7:443", "0.0.0.0:443"),
            ("198.51.100.7:443", "[::]:443"),
            ("127.0.0.2:443", "127.0.0.1:443"),
            ("192.0.2.10:443", "127.0.0.1:443"),
            ("[::1]:443", "0.0.0.0:443"),
            ("[2001:db8::99]:443", "[::]:443"),
        ];
        for (target, listener) in cases {
            assert!(
                !reaches_listener(sa(target), &[sa(listener)], |a| local.contains(&a)),
                "{target} -> {listener}"
            );
        }
        assert!(!reaches_listener(sa("127.0.0.1:443"), &[], |_| true));
    }
}
