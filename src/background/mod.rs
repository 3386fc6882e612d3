//! What runs beside the event loop, on threads of its own: the scout learning the fronting
//! site's TLS shape and timing, the IP-list fetcher, Telegram's proxy config (auto-update), the
//! blocking DNS resolver, HTTP(S)/SOCKS5 fetcher and TLS driver they use, the middle-proxy
//! handshake over a plain socket (doctor), the fronting site's DNS refresh, the metrics exporters (Prometheus endpoint,
//! StatsD sender), and the foreground thread that waits for signals.
//!
//! I/O layer, like [`crate::io`], but never on a worker thread: these may block (DNS, HTTP,
//! TLS), so a worker only ever reads what they publish (atomics, or a short lock).

pub(crate) mod fetch;
pub(crate) mod front_dns;
pub(crate) mod lists;
pub(crate) mod metrics;
pub mod middle;
pub mod resolve;
pub mod scout;
pub mod signals;
pub(crate) mod telegram;
mod tls;
pub mod users;
