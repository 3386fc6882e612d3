//! A blocking middle-proxy handshake (for `doctor` and tests; never a worker): drives
//! [`crate::proto::middle::handshake::MeHandshake`] over a plain socket, as the connections
//! drive it over a mio one (`io/conn/middle.rs`; same inputs: our address as the middle proxy
//! sees it, the proxy secret, the time, fresh randomness).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::proto::Rng;
use crate::proto::middle::codec::Link;
use crate::proto::middle::handshake::{HsParams, HsStep, MeHandshake, OUT_MAX};
use crate::proto::middle::process_id;

/// Our address as `peer` (a middle proxy) sees it: `public` (the config's public-ipv4 /
/// public-ipv6 of the socket's family, for a proxy behind NAT) or the socket's own address,
/// with the socket's port.
pub fn our_address(local: SocketAddr, public: (Option<IpAddr>, Option<IpAddr>)) -> SocketAddr {
    let ip = match local.ip().to_canonical() {
        IpAddr::V4(_) => public.0,
        IpAddr::V6(_) => public.1,
    };
    SocketAddr::new(ip.unwrap_or(local.ip()), local.port())
}

#[inline(never)]
/// Runs the RPC handshake on `stream` (connected to a middle proxy) within `timeout`.
/// Returns the link and the bytes read past the handshake (the session's first bytes), or what
/// went wrong.
pub fn handshake(
    stream: &mut TcpStream,
    secret: &[u8],
    public: (Option<IpAddr>, Option<IpAddr>),
    timeout: Duration,
) -> Result<(Box<Link>, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let theirs = stream.peer_addr().map_err(|e| e.to_string())?;
    let ours = our_address(stream.local_addr().map_err(|e| e.to_string())?, public);
    let now = crate::io::unix_now() as u32;
    let mut nonce = [0u8; 16];
    let mut pid_bytes = [0u8; 2];
    crate::io::OsRng.fill(&mut nonce);
    crate::io::OsRng.fill(&mut pid_bytes);
    let mut hs = MeHandshake::new(&HsParams {
        secret,
        ours,
        theirs,
        now_unix: now,
        nonce,
        pid: process_id(ours.ip(), u16::from_le_bytes(pid_bytes), now),
    })
    .map_err(|e| e.to_string())?;
    let mut out = [0u8; OUT_MAX];
    let n = hs.start(&mut out);
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(&out[..n])
        .map_err(|e| format!("cannot send the nonce: {e}"))?;
    let mut input: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match hs.handle(&input, &mut out) {
            HsStep::NeedMore { consumed } => {
                input.drain(..consumed);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("no handshake answer in time".into());
                }
                let _ = stream.set_read_timeout(Some(left));
                match stream.read(&mut buf) {
                    Ok(0) => return Err("the middle proxy closed the connection".into()),
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("no handshake answer: {e}")),
                }
            }
            HsStep::Send { consumed, len } => {
                input.drain(..consumed);
                stream
                    .write_all(&out[..len])
                    .map_err(|e| format!("cannot send the handshake: {e}"))?;
            }
            HsStep::Connected { consumed, link } => {
                input.drain(..consumed);
                return Ok((link, input));
            }
            HsStep::Failed(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_address_uses_the_public_ip_of_the_family() {
        let v4: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let v6: SocketAddr = "[fd00::2]:40001".parse().unwrap();
        let public = (
            Some("203.0.113.9".parse().unwrap()),
            Some("2001:db8::9".parse().unwrap()),
        );
        assert_eq!(
            our_address(v4, public),
            "203.0.113.9:40000".parse().unwrap()
        );
        assert_eq!(
            our_address(v6, public),
            "[2001:db8::9]:40001".parse().unwrap()
        );
        assert_eq!(our_address(v4, (None, None)), v4);
    }
}
