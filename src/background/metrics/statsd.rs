//! The StatsD sender: a thread that sends every metric over UDP at a fixed interval (counters
//! as increases since the last send, gauges as levels), and once more when stopped.
//!
//! Background I/O (never on a worker).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{MetricsSource, Service, Snapshot, render_statsd};
use crate::formats::metrics::{self as fmt, TagFormat};
use crate::log::Level;

/// Largest StatsD datagram (fits a 1500-byte MTU with IPv6 and UDP headers).
pub(crate) const STATSD_DATAGRAM: usize = 1432;
/// How often StatsD is sent when the proxy wires it with the default.
pub(crate) const STATSD_EVERY: Duration = Duration::from_secs(10);

/// The StatsD prefix for a configured `metric-prefix`: the configured value and a dot
/// (`mtg` → `mtg.client_connections`, as mtg's default). mtg itself glues a configured prefix
/// on without a dot (`mtgclient_connections`); config values can never contain a dot, so the
/// default cannot be told apart from a configured `mtg`, and the dotted form is the useful one.
pub(crate) fn statsd_prefix(configured: &str) -> String {
    if configured.is_empty() || configured.ends_with('.') {
        configured.to_string()
    } else {
        format!("{configured}.")
    }
}

/// Sends every metric to `addr` over UDP every `every` (and once more when stopped): counters
/// as increases since the last send (`|c`, unchanged ones omitted), gauges as levels (`|g`),
/// several lines per datagram of at most [`STATSD_DATAGRAM`] bytes.
pub(crate) fn spawn_statsd(
    addr: SocketAddr,
    prefix: String,
    format: TagFormat,
    every: Duration,
    source: MetricsSource,
) -> io::Result<Service> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let every = every.max(Duration::from_millis(10));
    let thread = std::thread::Builder::new()
        .name("mtpx-statsd".into())
        .spawn(move || {
            let mut base = Snapshot::default();
            let mut out = String::new();
            let mut failing = false;
            let mut next = Instant::now() + every;
            loop {
                let stopping = stop2.load(Ordering::SeqCst);
                if stopping || Instant::now() >= next {
                    let now = source.snapshot();
                    out.clear();
                    render_statsd(&mut out, format, &prefix, &now, &base);
                    base = now;
                    let mut ok = true;
                    for packet in fmt::split_packets(&out, STATSD_DATAGRAM) {
                        if let Err(e) = socket.send(packet.as_bytes()) {
                            ok = false;
                            if !failing {
                                crate::log_event!(
                                    Level::Warn,
                                    "statsd-send-failed",
                                    address = addr,
                                    error = e
                                );
                            }
                        }
                    }
                    failing = !ok;
                    next = Instant::now() + every;
                }
                if stopping {
                    return;
                }
                std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            }
        })?;
    Ok(Service {
        addr: None,
        stop,
        waker: None,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::tests::source;
    use super::*;
    use crate::proto::Reject;

    #[test]
    fn statsd_sends_deltas_and_gauges() {
        let (src, active) = source();
        let recv = UdpSocket::bind("127.0.0.1:0").unwrap();
        recv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        src.stats.accepted.store(3, Ordering::Relaxed);
        active.store(2, Ordering::Relaxed);
        let svc = spawn_statsd(
            recv.local_addr().unwrap(),
            statsd_prefix("mtg"),
            TagFormat::Datadog,
            Duration::from_millis(100),
            src.clone(),
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = recv.recv(&mut buf).unwrap();
        assert!(n <= STATSD_DATAGRAM);
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            first.lines().any(|l| l == "mtg.accepted_connections:3|c"),
            "{first}"
        );
        assert!(
            first.lines().any(|l| l == "mtg.client_connections:2|g"),
            "{first}"
        );
        src.stats.accepted.store(10, Ordering::Relaxed);
        src.stats.traffic(false, 203, 0, 500);
        drop(svc);
        // Drain: the last datagram carries the delta since the previous send.
        let mut all = String::new();
        recv.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok(n) = recv.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
        }
        assert!(
            all.lines().any(|l| l == "mtg.accepted_connections:7|c"),
            "{all}"
        );
        assert!(
            all.lines()
                .any(|l| l == "mtg.telegram_traffic:500|c|#dc:203,direction:to_client"),
            "{all}"
        );
        // Unchanged counters are not repeated.
        assert!(
            !all.lines().any(|l| l == "mtg.accepted_connections:3|c"),
            "{all}"
        );
    }

    #[test]
    fn statsd_datagrams_stay_under_the_limit() {
        let (src, _) = source();
        for r in Reject::ALL {
            for _ in 0..3 {
                src.stats.handshake_failed(r);
            }
        }
        let mut out = String::new();
        render_statsd(
            &mut out,
            TagFormat::Influxdb,
            "averyveryverylongprefix.",
            &src.snapshot(),
            &Snapshot::default(),
        );
        let packets: Vec<&str> = fmt::split_packets(&out, STATSD_DATAGRAM).collect();
        assert!(!packets.is_empty());
        let mut lines = 0;
        for p in &packets {
            assert!(p.len() <= STATSD_DATAGRAM);
            lines += p.lines().count();
        }
        assert_eq!(lines, out.lines().count());
        assert!(
            out.contains("averyveryverylongprefix.handshake_failures,reason=timeout:3|c\n"),
            "{out}"
        );
    }
}
