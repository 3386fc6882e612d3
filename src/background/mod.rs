//! What runs beside the event loop, on threads of its own: the scout learning the fronting
//! site's TLS shape and timing, the IP-list fetcher, the blocking DNS resolver and TLS driver
//! they use, the fronting site's DNS refresh, the metrics exporters (Prometheus endpoint,
//! StatsD sender), and the foreground thread that waits for signals.
//!
//! I/O layer, like [`crate::io`], but never on a worker thread: these may block (DNS, HTTP,
//! TLS), so a worker only ever reads what they publish (atomics, or a short lock).

pub(crate) mod front_dns;
pub(crate) mod lists;
pub(crate) mod metrics;
pub mod resolve;
pub mod scout;
pub mod signals;
mod tls;
pub mod users;
