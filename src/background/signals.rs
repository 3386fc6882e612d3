//! The foreground: `mtpx run` starts the proxy, then this thread waits for signals (SIGHUP
//! reloads the IP lists, SIGTERM/SIGINT stop gracefully). The handlers themselves only set
//! flags ([`crate::sys`]); this loop reads them every 100 ms. SIGHUP also reloads the users.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::Config;
use crate::io::{ShapingCell, start};
use crate::log::Level;

/// Runs the proxy in the foreground until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(config: Config) -> io::Result<()> {
    crate::sys::install_signal_handlers()?;
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) => {
            // Each relayed connection holds two sockets.
            let need = 2 * config.concurrency as u64 + 64;
            if soft < need {
                crate::log_event!(
                    Level::Warn,
                    "fd-limit-low",
                    limit = soft,
                    concurrency = config.concurrency,
                    fits = soft.saturating_sub(64) / 2,
                    hint = "lower concurrency or raise the hard open-files limit"
                );
            }
        }
        Err(e) => crate::log_event!(Level::Warn, "fd-limit-unknown", error = e),
    }
    let secret_kind = config.secret.kind;
    let workers = config.workers;
    let (drs, delays) = (config.doppelganger.drs, ShapingCell::new(&config).is_on());
    let pq = if config.doppelganger.post_quantum {
        "mirror"
    } else {
        "off"
    };
    let proxy = start(config)?;
    crate::log_event!(
        Level::Info,
        "proxy-started",
        bind = proxy.local_addr(),
        workers = workers,
        secret_kind = secret_kind.as_str(),
        drs = drs,
        delays = delays,
        post_quantum = pq
    );
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let sig = crate::sys::take_signals();
        if sig & crate::sys::SIG_RELOAD != 0 {
            proxy.reload_lists();
            proxy.reload_users();
        }
        if sig & crate::sys::SIG_STOP != 0 {
            crate::log_event!(Level::Info, "shutdown-started", active = proxy.active());
            break;
        }
    }
    let stats = proxy.stats();
    proxy.shutdown();
    crate::log_event!(
        Level::Info,
        "proxy-stopped",
        accepted = stats.accepted.load(Ordering::Relaxed),
        handshakes = stats.handshakes.load(Ordering::Relaxed),
        rejected = stats.rejected.load(Ordering::Relaxed),
        bytes_up = stats.bytes_up.load(Ordering::Relaxed),
        bytes_down = stats.bytes_down.load(Ordering::Relaxed)
    );
    crate::log::flush();
    Ok(())
}
