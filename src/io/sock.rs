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

use crate::config::KeepAlive;

/// One connected (or connecting) TCP stream, nonblocking.
pub(crate) trait Sock {
    /// Reads into `buf`: `Ok(0)` is EOF, `WouldBlock` means wait for readiness.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads into several buffers at once (`readv`).
    fn read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    /// Writes from `buf`; may write part of it.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Sends FIN (`shutdown(Write)`); errors are ignored by callers.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Makes the coming close send RST instead of FIN (`SO_LINGER` 0).
    fn reset_on_close(&self);
    /// The state of a nonblocking `connect`: `Ok(true)` connected, `Ok(false)` still
    /// connecting (a spurious wake-up), `Err` failed (mio: `take_error`, then `peer_addr`).
    fn connect_state(&self) -> io::Result<bool>;
    /// The remote address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// A new upstream connection is up: `TCP_NODELAY`, and keep-alive when given (DC
    /// connections live long and idle: find a vanished DC or upstream).
    fn connected(&self, keep_alive: Option<&KeepAlive>);
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

    fn connected(&self, keep_alive: Option<&KeepAlive>) {
        let _ = self.set_nodelay(true);
        if let Some(ka) = keep_alive {
            let _ = crate::sys::set_keepalive(self, ka.idle, ka.interval, ka.count);
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
