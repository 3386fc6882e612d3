//! `mtpx access`: the `tg://proxy` and `https://t.me/proxy` links for a secret, as mtg's JSON
//! or as plain text.
//!
//! The JSON has mtg's shape and key order (`ipv4`, `ipv6`, `secret`; 2-space indent), minus the
//! `tg_qrcode`/`tme_qrcode` keys: those point at a third-party QR-code service and would hand it
//! the secret. Query keys are sorted (`port`, `secret`, `server`) and percent-encoded as Go's
//! `url.Values.Encode` does, so an IPv6 server appears unbracketed with `%3A` for each colon.
//! The link carries the base64 form of a FakeTLS secret unless `hex` is asked for; classic and
//! `dd` secrets always use hex, the form every client understands.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::formats::encoding::percent_encode;
use crate::proto::secret::{Secret, SecretKind};

/// The secret as it goes into a link.
fn link_secret(secret: &Secret, hex: bool) -> String {
    if hex || secret.kind != SecretKind::FakeTls {
        secret.to_hex()
    } else {
        secret.to_base64()
    }
}

/// The query string shared by both links: `port=…&secret=…&server=…`.
fn query(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!(
        "port={port}&secret={}&server={}",
        percent_encode(&link_secret(secret, hex)),
        percent_encode(&ip.to_string())
    )
}

/// `tg://proxy?port=…&secret=…&server=…`
pub fn tg_url(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!("tg://proxy?{}", query(secret, ip, port, hex))
}

/// `https://t.me/proxy?port=…&secret=…&server=…`
pub fn tme_url(secret: &Secret, ip: IpAddr, port: u16, hex: bool) -> String {
    format!("https://t.me/proxy?{}", query(secret, ip, port, hex))
}

fn json_family(out: &mut String, name: &str, secret: &Secret, ip: IpAddr, port: u16, hex: bool) {
    // Every value here is ASCII without quotes or backslashes (IPs, digits, hex, base64url,
    // percent-encoding), so no JSON escaping is needed.
    let _ = write!(
        out,
        "  \"{name}\": {{\n    \"ip\": \"{ip}\",\n    \"port\": {port},\n    \"tg_url\": \"{}\",\n    \"tme_url\": \"{}\"\n  }},\n",
        tg_url(secret, ip, port, hex),
        tme_url(secret, ip, port, hex)
    );
}

/// mtg's `access` JSON (without the QR-code keys and without a trailing newline). A family
/// whose address is unknown is omitted.
pub fn access_json(
    secret: &Secret,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    hex: bool,
) -> String {
    let mut out = String::from("{\n");
    if let Some(ip) = ipv4 {
        json_family(&mut out, "ipv4", secret, IpAddr::V4(ip), port, hex);
    }
    if let Some(ip) = ipv6 {
        json_family(&mut out, "ipv6", secret, IpAddr::V6(ip), port, hex);
    }
    let _ = write!(
        out,
        "  \"secret\": {{\n    \"hex\": \"{}\",\n    \"base64\": \"{}\"\n  }}\n}}",
        secret.to_hex(),
        secret.to_base64()
    );
    out
}

/// A short human-readable form: one link per line (`tg://` then `https://t.me/`, IPv4 first).
/// Empty when no address is known.
pub fn access_text(
    secret: &Secret,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    hex: bool,
) -> String {
    let mut out = String::new();
    let ips = ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6));
    for ip in ips {
        out.push_str(&tg_url(secret, ip, port, hex));
        out.push('\n');
        out.push_str(&tme_url(secret, ip, port, hex));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EE_HEX: &str =
        "ee367a189aee18fa31c190054efd4a8e9573746f726167652e676f6f676c65617069732e636f6d";

    fn ee() -> Secret {
        Secret::parse(EE_HEX).unwrap()
    }

    #[test]
    fn json_has_mtg_shape_for_both_families() {
        let s = ee();
        let b64 = s.to_base64();
        let got = access_json(
            &s,
            Some(Ipv4Addr::new(1, 2, 3, 4)),
            Some("2001:db8::1".parse().unwrap()),
            443,
            false,
        );
        let expected = format!(
            r#"{{
  "ipv4": {{
    "ip": "1.2.3.4",
    "port": 443,
    "tg_url": "tg://proxy?port=443&secret={b64}&server=1.2.3.4",
    "tme_url": "https://t.me/proxy?port=443&secret={b64}&server=1.2.3.4"
  }},
  "ipv6": {{
    "ip": "2001:db8::1",
    "port": 443,
    "tg_url": "tg://proxy?port=443&secret={b64}&server=2001%3Adb8%3A%3A1",
    "tme_url": "https://t.me/proxy?port=443&secret={b64}&server=2001%3Adb8%3A%3A1"
  }},
  "secret": {{
    "hex": "{EE_HEX}",
    "base64": "{b64}"
  }}
}}"#
        );
        assert_eq!(got, expected);
        assert!(b64.starts_with("7jZ6"), "{b64}");
    }

    #[test]
    fn json_omits_unknown_families_and_uses_hex_when_asked() {
        let got = access_json(&ee(), None, None, 8443, true);
        assert_eq!(
            got,
            format!(
                "{{\n  \"secret\": {{\n    \"hex\": \"{EE_HEX}\",\n    \"base64\": \"{}\"\n  }}\n}}",
                ee().to_base64()
            )
        );
        let got = access_json(&ee(), Some(Ipv4Addr::new(203, 0, 113, 1)), None, 8443, true);
        assert!(got.contains(&format!(
            "\"tg_url\": \"tg://proxy?port=8443&secret={EE_HEX}&server=203.0.113.1\""
        )));
        assert!(!got.contains("ipv6") && !got.contains("qrcode"));
    }

    #[test]
    fn classic_and_dd_secrets_link_in_hex() {
        let classic = Secret::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            tg_url(&classic, IpAddr::V4(Ipv4Addr::LOCALHOST), 443, false),
            "tg://proxy?port=443&secret=0123456789abcdef0123456789abcdef&server=127.0.0.1"
        );
        let dd = Secret::parse("dd0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            tme_url(&dd, IpAddr::V4(Ipv4Addr::LOCALHOST), 1, false),
            "https://t.me/proxy?port=1&secret=dd0123456789abcdef0123456789abcdef&server=127.0.0.1"
        );
    }

    #[test]
    fn text_is_one_link_per_line() {
        let s = ee();
        let b64 = s.to_base64();
        assert_eq!(
            access_text(&s, None, Some(Ipv6Addr::LOCALHOST), 443, false),
            format!(
                "tg://proxy?port=443&secret={b64}&server=%3A%3A1\nhttps://t.me/proxy?port=443&secret={b64}&server=%3A%3A1\n"
            )
        );
        assert_eq!(access_text(&s, None, None, 443, false), "");
    }
}
