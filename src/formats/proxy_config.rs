//! Telegram's published proxy configuration (PROTOCOL.md §4): `getProxyConfig` /
//! `getProxyConfigV6` (the middle proxies per DC, and the current DC 203 addresses mtg's
//! `auto-update` uses) and `getProxySecret` (the middle proxies' shared secret).
//!
//! Pure. The grammar is MTProxy's (`mtproto/mtproto-config.c`), one statement per line:
//! `proxy_for <dc> <ip>:<port>;` (dc -32768..32767, negative for media; IPv6 in brackets),
//! `default <dc>;`, and `proxy <ip>:<port>;`, `timeout <ms>;`, `min_connections <n>;`,
//! `max_connections <n>;` (accepted, unused); `#` starts a comment. Like MTProxy, anything
//! else rejects the whole file, so that an error page, a truncated download or a hostile
//! file never replaces a good list: the caller keeps the previous one. Host names are refused
//! (only addresses: no resolver is needed, none can be steered), and so are unspecified,
//! multicast and broadcast addresses and port 0.
//!
//! Which family a file holds is read from its addresses: `getProxyConfig` has IPv4 ones,
//! `getProxyConfigV6` IPv6 ones, and a file may hold both.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Largest config accepted (Telegram's is about 2 KiB).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Most `proxy_for` / `proxy` entries accepted.
pub const MAX_ENTRIES: usize = 1024;
/// The CDN DC whose addresses `auto-update` follows.
pub const CDN_DC: i16 = 203;

/// One parsed config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `(dc, address)` in file order (`proxy` lines have dc 0).
    pub entries: Vec<(i16, SocketAddr)>,
    /// The `default` DC, if given.
    pub default_dc: Option<i16>,
}

impl ProxyConfig {
    /// The addresses listed for exactly `dc` (negative ids are other lists), in file order.
    pub fn addrs_for(&self, dc: i16) -> impl Iterator<Item = SocketAddr> + '_ {
        self.entries
            .iter()
            .filter(move |(d, _)| *d == dc)
            .map(|(_, a)| *a)
    }
}

/// Why a config was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Over [`MAX_CONFIG_BYTES`].
    TooLarge(usize),
    /// Not UTF-8 text, or it has control characters (binary data).
    NotText,
    /// A line that is not a statement of the grammar (1-based line number, why).
    BadLine(usize, &'static str),
    /// No `proxy_for` or `proxy` entry at all (an empty or unrelated file).
    NoEntries,
    /// Over [`MAX_ENTRIES`] entries.
    TooManyEntries,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooLarge(n) => {
                write!(f, "{n} bytes, larger than {MAX_CONFIG_BYTES}")
            }
            ConfigError::NotText => f.write_str("not a text file"),
            ConfigError::BadLine(n, why) => write!(f, "line {n}: {why}"),
            ConfigError::NoEntries => f.write_str("no proxy_for line"),
            ConfigError::TooManyEntries => write!(f, "more than {MAX_ENTRIES} entries"),
        }
    }
}

/// `-32768..=32767` as MTProxy reads a target id.
fn dc_id(s: &str) -> Option<i16> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `a.b.c.d:port` or `[v6]:port`, usable as a destination.
fn address(s: &str) -> Result<SocketAddr, &'static str> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| "expected <ip>:<port> or [<ipv6>]:<port> (no host names)")?;
    let bad = match a.ip() {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if bad || a.port() == 0 {
        return Err("not a usable address (unspecified, multicast, broadcast or port 0)");
    }
    Ok(a)
}

/// Parses a `getProxyConfig` file (see the module doc).
#[inline(never)]
pub fn parse(bytes: &[u8]) -> Result<ProxyConfig, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotText)?;
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ConfigError::NotText);
    }
    let mut cfg = ProxyConfig::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some(stmt) = line.strip_suffix(';') else {
            return Err(ConfigError::BadLine(n, "a statement must end with ';'"));
        };
        let mut words = stmt.split_ascii_whitespace();
        let keyword = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let bad = |why| Err(ConfigError::BadLine(n, why));
        match (keyword, args.as_slice()) {
            ("proxy_for", [dc, addr]) => {
                let Some(dc) = dc_id(dc) else {
                    return bad("the DC id must be an integer from -32768 to 32767");
                };
                let a = address(addr).map_err(|why| ConfigError::BadLine(n, why))?;
                cfg.entries.push((dc, a));
            }
            ("proxy", [addr]) => {
                let a = address(addr).map_err(|why| ConfigError::BadLine(n, why))?;
                cfg.entries.push((0, a));
            }
            ("default", [dc]) => match dc_id(dc) {
                Some(dc) => cfg.default_dc = Some(dc),
                None => return bad("the DC id must be an integer from -32768 to 32767"),
            },
            ("timeout" | "min_connections" | "max_connections", [v]) => {
                if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return bad("expected a number");
                }
            }
            (
                "proxy_for" | "proxy" | "default" | "timeout" | "min_connections"
                | "max_connections",
                _,
            ) => return bad("wrong number of arguments"),
            _ => return bad("unknown statement"),
        }
        if cfg.entries.len() > MAX_ENTRIES {
            return Err(ConfigError::TooManyEntries);
        }
    }
    if cfg.entries.is_empty() {
        return Err(ConfigError::NoEntries);
    }
    Ok(cfg)
}

/// Why a proxy secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// Not 32..=256 bytes (MTProxy's limits).
    Length(usize),
    /// Only printable text: an error page, not 128 random bytes.
    Text,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Length(n) => write!(
                f,
                "{n} bytes; a proxy secret has {} to {}",
                crate::proto::middle::MIN_SECRET,
                crate::proto::middle::MAX_SECRET
            ),
            SecretError::Text => f.write_str("it is text (an error page?), not a binary secret"),
        }
    }
}

/// Checks a `getProxySecret` body (binary, 128 random bytes today).
pub fn check_secret(bytes: &[u8]) -> Result<(), SecretError> {
    if !(crate::proto::middle::MIN_SECRET..=crate::proto::middle::MAX_SECRET).contains(&bytes.len())
    {
        return Err(SecretError::Length(bytes.len()));
    }
    // 32 random bytes are all printable with probability (95/256)^32 < 1e-13.
    if bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Err(SecretError::Text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Telegram's getProxyConfig (values illustrative).
    const SAMPLE: &str = "# force_probability 10 10\n\
        default 2;\n\
        proxy_for 1 149.154.175.50:8888;\n\
        proxy_for -1 149.154.175.50:8888;\n\
        proxy_for 2 149.154.161.144:8888;\n\
        proxy_for -2 149.154.161.144:8888;\n\
        proxy_for 4 91.108.4.136:8888;\n\
        proxy_for 203 91.105.192.110:443;\n\
        proxy_for -203 91.105.192.110:443;\n";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_telegrams_format() {
        let c = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(c.default_dc, Some(2));
        assert_eq!(c.entries.len(), 7);
        assert_eq!(c.entries[1], (-1, sa("149.154.175.50:8888")));
        assert_eq!(
            c.addrs_for(CDN_DC).collect::<Vec<_>>(),
            [sa("91.105.192.110:443")]
        );
        // Negative ids are their own lists.
        assert_eq!(c.addrs_for(-203).count(), 1);
        assert_eq!(c.addrs_for(3).count(), 0);
    }

    #[test]
    fn accepts_ipv6_crlf_comments_and_ignored_statements() {
        let text = "timeout 300;\r\nmin_connections 4;\r\nmax_connections 8;\r\n\
                    proxy_for 203 [2a0a:f280:203:a:5000::100]:443; # cdn\r\n\
                    proxy 127.0.0.1:8888;\r\n   \r\n\tproxy_for\t-32768  [::1]:1 ;\r\n";
        let c = parse(text.as_bytes()).unwrap();
        assert_eq!(
            c.entries,
            [
                (203, sa("[2a0a:f280:203:a:5000::100]:443")),
                (0, sa("127.0.0.1:8888")),
                (-32768, sa("[::1]:1")),
            ]
        );
        assert_eq!(c.default_dc, None);
    }

    #[test]
    fn rejects_anything_else_whole() {
        let cases: [(&str, ConfigError); 13] = [
            ("", ConfigError::NoEntries),
            ("# nothing\n\n", ConfigError::NoEntries),
            ("default 2;\n", ConfigError::NoEntries),
            (
                "<html><body>502</body></html>\n",
                ConfigError::BadLine(1, "a statement must end with ';'"),
            ),
            (
                "proxy_for 203 91.105.192.110:443\n",
                ConfigError::BadLine(1, "a statement must end with ';'"),
            ),
            (
                "proxy_for 203 core.telegram.org:443;\n",
                ConfigError::BadLine(1, "expected <ip>:<port> or [<ipv6>]:<port> (no host names)"),
            ),
            (
                "proxy_for 203 0.0.0.0:443;\n",
                ConfigError::BadLine(
                    1,
                    "not a usable address (unspecified, multicast, broadcast or port 0)",
                ),
            ),
            (
                "proxy_for 203 1.2.3.4:0;\n",
                ConfigError::BadLine(
                    1,
                    "not a usable address (unspecified, multicast, broadcast or port 0)",
                ),
            ),
            (
                "proxy_for 40000 1.2.3.4:1;\n",
                ConfigError::BadLine(1, "the DC id must be an integer from -32768 to 32767"),
            ),
            (
                "proxy_for +2 1.2.3.4:1;\n",
                ConfigError::BadLine(1, "the DC id must be an integer from -32768 to 32767"),
            ),
            (
                "proxy_for 2 1.2.3.4:1 5.6.7.8:1;\n",
                ConfigError::BadLine(1, "wrong number of arguments"),
            ),
            (
                "proxy_for 2 1.2.3.4:1;\nrm -rf /;\n",
                ConfigError::BadLine(2, "unknown statement"),
            ),
            ("proxy_for 2 1.2.3.4:1;\0\n", ConfigError::NotText),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text.as_bytes()), Err(want), "{text:?}");
        }
        assert_eq!(
            parse(&[0xff, 0xfe, b';']),
            Err(ConfigError::NotText),
            "not UTF-8"
        );
        let big = "proxy_for 2 1.2.3.4:1;\n".repeat(3000);
        assert_eq!(parse(big.as_bytes()), Err(ConfigError::TooLarge(big.len())));
        let many = "proxy_for 2 1.2.3.4:1;\n".repeat(MAX_ENTRIES + 1);
        assert_eq!(parse(many.as_bytes()), Err(ConfigError::TooManyEntries));
    }

    #[test]
    fn every_prefix_parses_or_fails_cleanly() {
        for cut in 0..SAMPLE.len() {
            let _ = parse(&SAMPLE.as_bytes()[..cut]);
        }
    }

    #[test]
    fn checks_secrets() {
        let mut s: Vec<u8> = (0..128u32).map(|i| (i * 97 + 3) as u8).collect();
        assert_eq!(check_secret(&s), Ok(()));
        assert_eq!(check_secret(&s[..31]), Err(SecretError::Length(31)));
        s.resize(257, 1);
        assert_eq!(check_secret(&s), Err(SecretError::Length(257)));
        let page = b"<html><head><title>404 Not Found</title></head></html>\n";
        assert_eq!(check_secret(page), Err(SecretError::Text));
    }
}
