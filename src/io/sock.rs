//! The sockets a connection drives, behind two small traits: [`Sock`] (one connected TCP
//! stream) and [`Net`] (opening one toward an address). The worker uses mio's `TcpStream`
//! (and [`MioNet`], which registers new sockets with its `Poll`); tests use a scripted fake
//! (`io/conn/tests.rs`) that returns partial writes, `WouldBlock`, EOF and resets at chosen
//! steps, without the kernel.
//!
//! I/O layer. The connection is generic over these traits (monomorphised: no dynamic dispatch
//! per read or write).

use std::io::{self, ErrorKind, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use std::time::Duration;

use crate::config::Config;

/// One connected (or connecting) TCP stream, nonblocking.
pub(crate) trait Sock {
    /// Reads into `buf`: `Ok(0)` is EOF, `WouldBlock` means wait for readiness.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads into several buffers at once (`readv`).
    fn read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    /// Writes from `buf`; may write part of it.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// [`Sock::write`] with more bytes to follow at once (`MSG_MORE`): the kernel may hold a
    /// partial segment until the next write or [`Sock::push`].
    fn write_more(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }
    /// Sends what [`Sock::write_more`] left held (errors are ignored: the next write or read
    /// reports a broken socket).
    fn push(&self) {}
    /// Sends FIN (`shutdown(Write)`); errors are ignored by callers.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Makes the coming close send RST instead of FIN (`SO_LINGER` 0).
    fn reset_on_close(&self);
    /// The state of a nonblocking `connect`: `Ok(true)` connected, `Ok(false)` still
    /// connecting (a spurious wake-up), `Err` failed (mio: `take_error`, then `peer_addr`).
    fn connect_state(&self) -> io::Result<bool>;
    /// The remote address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// A new upstream connection is up: `TCP_NODELAY`; toward a DC (or a SOCKS5 upstream
    /// toward one), also [`dc_socket_options`] from `dc` (DC connections live long and idle:
    /// find a vanished DC or upstream).
    fn connected(&self, dc: Option<&Config>);
}

/// Opens upstream connections for a connection in slot `slot`.
pub(crate) trait Net {
    /// The socket type opened.
    type Sock: Sock;
    /// Starts a nonblocking connect to `addr` and registers it for the connection's upstream
    /// readiness events.
    fn connect(&mut self, addr: SocketAddr, slot: usize) -> io::Result<Self::Sock>;
}

/// Index of the client socket in readiness arrays and tokens.
pub(crate) const CLIENT: usize = 0;
/// Index of the upstream (DC or fronting site) socket.
pub(crate) const UPSTREAM: usize = 1;

/// The token of a connection's socket: `slot << 1 | side`.
pub(crate) fn token(slot: usize, side: usize) -> Token {
    Token(slot << 1 | side)
}

impl Sock for TcpStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }

    fn read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        Read::read_vectored(&mut &*self, bufs)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Write::write(&mut &*self, buf)
    }

    fn write_more(&self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send_more(self, buf)
    }

    fn push(&self) {
        // Setting TCP_NODELAY (already on) pushes the segments held by MSG_MORE.
        let _ = crate::sys::set_nodelay(self);
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn reset_on_close(&self) {
        let _ = crate::sys::set_linger_zero(self);
    }

    fn connect_state(&self) -> io::Result<bool> {
        if let Some(e) = self.take_error()? {
            return Err(e);
        }
        match TcpStream::peer_addr(self) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn connected(&self, dc: Option<&Config>) {
        let _ = self.set_nodelay(true);
        if let Some(config) = dc {
            dc_socket_options(self, config);
        }
    }
}

/// Upstream sockets of a worker: mio streams registered with its `Poll`.
pub(crate) struct MioNet<'a> {
    pub(crate) registry: &'a Registry,
}

impl Net for MioNet<'_> {
    type Sock = TcpStream;

    fn connect(&mut self, addr: SocketAddr, slot: usize) -> io::Result<TcpStream> {
        let mut s = TcpStream::connect(addr)?;
        self.registry.register(
            &mut s,
            token(slot, UPSTREAM),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(s)
    }
}

/// Socket options of a connection to a DC (or to a SOCKS5 upstream toward one): keep-alive
/// as configured (`[network.keep-alive]`), and `TCP_USER_TIMEOUT` ([`dc_user_timeout`]).
pub(crate) fn dc_socket_options(sock: &impl std::os::fd::AsRawFd, config: &Config) {
    let ka = &config.keep_alive;
    if !ka.disabled {
        let _ = crate::sys::set_keepalive(sock, ka.idle, ka.interval, ka.count);
    }
    let _ = crate::sys::set_user_timeout(sock, dc_user_timeout(config));
}

/// How long data sent to a DC may stay unacknowledged before the kernel gives the connection
/// up. Without a limit Linux retransmits for about 15 minutes (`tcp_retries2`), all that time
/// holding the relay's buffers for a DC that is gone. Linux also applies this limit to
/// unanswered keep-alive probes, so with keep-alive on it is the keep-alive detection time,
/// idle + interval × count (2m30s by default): a vanished DC is found as fast whether or not
/// data was in flight. With keep-alive off, the idle timeout: a relay that moves nothing for
/// that long is closed anyway.
pub(crate) fn dc_user_timeout(config: &Config) -> Duration {
    let ka = &config.keep_alive;
    if ka.disabled {
        config.timeouts.idle
    } else {
        ka.idle
            .saturating_add(ka.interval.saturating_mul(ka.count.clamp(1, 127)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn dc_sockets_get_keepalive_and_a_user_timeout() {
        let secret = crate::proto::secret::Secret::generate(
            crate::proto::secret::SecretKind::Secure,
            "",
            &mut crate::proto::XorShift64(1),
        );
        let mut config = crate::config::Config::simple(([127, 0, 0, 1], 443).into(), secret);
        config.keep_alive.idle = Duration::from_secs(20);
        config.keep_alive.interval = Duration::from_secs(5);
        config.keep_alive.count = 4;
        config.timeouts.idle = Duration::from_secs(77);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let opt = |s: &std::net::TcpStream, level, name| {
            crate::sys::getsockopt_int(s.as_raw_fd(), level, name)
        };
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        super::dc_socket_options(&s, &config);
        // 20 s + 4 × 5 s, in milliseconds.
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 40_000);
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 20);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
        // Keep-alive off: the idle timeout.
        config.keep_alive.disabled = true;
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        super::dc_socket_options(&s, &config);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 77_000);
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    }
}
