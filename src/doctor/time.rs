//! Section **Time skew**: an SNTP query to each NTP server; the offset against
//! `tolerate-time-skewness`.
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{
    Check, DEFAULT_NTP, NTP_ADDRS, NTP_PORT, NTP_WAIT, RESOLVE_WAIT, Status, crashed, parallel,
    parse_host_port, short_err,
};
use crate::background::resolve;
use crate::config::{Config, fmt_duration};
use crate::formats::sntp::{self, NtpTimestamp};
use crate::proto::secret::SecretKind;

/// The verdict on a clock `offset_secs` away from NTP time, given the tolerance: the ratio
/// |offset| / tolerance under 0.3 is ok, under 0.7 a warning, else a failure.
pub fn skew_status(offset_secs: f64, tolerance: Duration) -> Status {
    let tol = tolerance.as_secs_f64();
    let ratio = if tol > 0.0 {
        offset_secs.abs() / tol
    } else if offset_secs == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    if ratio.is_nan() || ratio >= 0.7 {
        Status::Fail
    } else if ratio >= 0.3 {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn now_ntp() -> NtpTimestamp {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos()),
        Err(_) => NtpTimestamp::ZERO,
    }
}

/// One SNTP exchange with `addr` (RFC 4330), waiting at most `wait`.
pub fn sntp_query(addr: SocketAddr, wait: Duration) -> io::Result<sntp::Sample> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    let deadline = Instant::now() + wait;
    let sent = now_ntp();
    sock.send(&sntp::request(sent))?;
    let mut buf = [0u8; 512];
    let mut bad: Option<io::Error> = None;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer in {}", fmt_duration(wait)),
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(bad.unwrap_or_else(timed_out));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                let received = now_ntp();
                match sntp::parse_response(buf.get(..n).unwrap_or(&[]), sent, received) {
                    Ok(sample) => return Ok(sample),
                    // A stale or forged datagram: keep waiting for the real answer.
                    Err(sntp::SntpError::OriginateMismatch) => {
                        bad = Some(io::Error::new(
                            io::ErrorKind::InvalidData,
                            sntp::SntpError::OriginateMismatch.to_string(),
                        ));
                    }
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(bad.unwrap_or_else(timed_out));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn time_checks(config: &Config, servers: &[(String, u16)]) -> Vec<Check> {
    // --ntp flags first, then `[network] ntp` from the config, then pool.ntp.org.
    let from_config: Vec<(String, u16)> = config
        .ntp
        .iter()
        .filter_map(|s| parse_host_port(s, NTP_PORT))
        .collect();
    let default = [(DEFAULT_NTP.to_string(), NTP_PORT)];
    let servers = if !servers.is_empty() {
        servers
    } else if !from_config.is_empty() {
        &from_config[..]
    } else {
        &default[..]
    };
    parallel(servers, |(host, port)| time_check(config, host, *port))
        .into_iter()
        .map(|c| c.unwrap_or_else(|| crashed("Time skew")))
        .collect()
}

fn time_check(config: &Config, host: &str, port: u16) -> Check {
    const S: &str = "Time skew";
    let name = if port == NTP_PORT {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let unreachable_hint = || {
        Some(
            "no NTP answer, so the clock was not checked: UDP port 123 may be blocked here; \
             try another server with --ntp HOST"
                .to_string(),
        )
    };
    let addrs = match resolve::resolve(config.nameserver().as_ref(), host, port, RESOLVE_WAIT) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return Check::new(S, name, Status::Warn, "no address", unreachable_hint());
        }
        Err(e) => {
            return Check::new(S, name, Status::Warn, short_err(&e), unreachable_hint());
        }
    };
    let mut errors = Vec::new();
    for &addr in addrs.iter().take(NTP_ADDRS) {
        match sntp_query(addr, NTP_WAIT) {
            Ok(sample) => {
                let tol = config.tolerate_time_skewness;
                let mut status = skew_status(sample.offset, tol);
                // Only FakeTLS handshakes carry a timestamp the proxy checks.
                let faketls = config.secret.kind == SecretKind::FakeTls;
                if !faketls {
                    status = status.min(Status::Warn);
                }
                let off = sample.offset.abs();
                let way = if sample.offset > 0.0 {
                    "behind"
                } else {
                    "ahead of"
                };
                let pct = if tol.is_zero() {
                    100.0
                } else {
                    100.0 * off / tol.as_secs_f64()
                };
                let msg = format!(
                    "this clock is {off:.3} s {way} {addr} (stratum {}): {pct:.0}% of \
                     tolerate-time-skewness = {}",
                    sample.stratum,
                    fmt_duration(tol)
                );
                let hint = match status {
                    Status::Ok => None,
                    Status::Warn if !faketls => Some(
                        "the clock is off: no harm to classic and dd secrets, but an ee secret \
                         would reject clients; run an NTP client (chrony, systemd-timesyncd)"
                            .to_string(),
                    ),
                    Status::Warn => Some(
                        "the clock drifts towards the tolerance: run an NTP client \
                         (chrony, systemd-timesyncd)"
                            .to_string(),
                    ),
                    Status::Fail => Some(
                        "FakeTLS clients with a correct clock are (or soon will be) rejected: \
                         sync the clock (chrony, systemd-timesyncd) or raise \
                         tolerate-time-skewness"
                            .to_string(),
                    ),
                };
                return Check::new(S, name, status, msg, hint);
            }
            Err(e) => errors.push(format!("{addr}: {}", short_err(&e))),
        }
    }
    Check::new(
        S,
        name,
        Status::Warn,
        format!("unreachable ({})", errors.join("; ")),
        unreachable_hint(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_bands() {
        let t = Duration::from_secs(10);
        assert_eq!(skew_status(0.0, t), Status::Ok);
        assert_eq!(skew_status(2.99, t), Status::Ok);
        assert_eq!(skew_status(-2.99, t), Status::Ok);
        assert_eq!(skew_status(3.0, t), Status::Warn);
        assert_eq!(skew_status(-6.99, t), Status::Warn);
        assert_eq!(skew_status(7.0, t), Status::Fail);
        assert_eq!(skew_status(-1e9, t), Status::Fail);
        assert_eq!(skew_status(f64::NAN, t), Status::Fail);
        assert_eq!(skew_status(0.0, Duration::ZERO), Status::Ok);
        assert_eq!(skew_status(0.1, Duration::ZERO), Status::Fail);
    }
}
