//! Pure formats beside the relay path (sans-IO, like [`crate::proto`], but not part of what a
//! client connection speaks): text encodings, JSON strings, QR codes, SNTP, HTTP/1.x, DNS, the
//! observing TLS 1.3 client, netsets, the metrics exposition formats, RFC 3339 dates and the
//! users' quota state file.
//!
//! Used by the background threads ([`crate::background`]), the command line and `doctor`.
//! Nothing here touches a socket, the clock or the OS random source (`make layering`).

pub mod dns;
pub mod encoding;
pub mod http;
pub mod iplist;
pub mod json;
pub mod metrics;
pub mod proxy_config;
pub mod qr;
pub mod rfc3339;
pub mod sntp;
pub mod state;
pub mod tls13;
