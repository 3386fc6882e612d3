//! Drives a [`tls13::Client`] over a blocking socket: the scout's timing observations and the
//! resolver's DNS over TLS / HTTPS. Background threads and the CLI only, never a worker.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::formats::tls13::{self, Step};

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Connects to `addr`, runs the handshake with `opts`, sends `request`, then calls `each`
/// with the arrival time and every [`Step::Data`], [`Step::Plain`] or [`Step::Closed`] until
/// it returns false, the server closes or `deadline` passes (all fine once established).
/// Errors: connect or I/O failures, a failed handshake (alert, unsupported parameters, bad
/// Finished), or a close/timeout before the handshake completed.
pub(crate) fn session(
    addr: SocketAddr,
    opts: tls13::Options<'_>,
    request: &[u8],
    deadline: Instant,
    mut each: impl FnMut(Instant, Step) -> bool,
) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, left(deadline)?)?;
    session_on(stream, opts, request, deadline, &mut each)
}

fn left(d: Instant) -> io::Result<std::time::Duration> {
    match d.checked_duration_since(Instant::now()) {
        Some(t) if !t.is_zero() => Ok(t),
        _ => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

/// [`session`] over a stream already connected (e.g. through a SOCKS5 upstream). One copy
/// for every caller (`dyn`: binary size).
#[inline(never)]
pub(crate) fn session_on(
    mut stream: TcpStream,
    opts: tls13::Options<'_>,
    request: &[u8],
    deadline: Instant,
    each: &mut dyn FnMut(Instant, Step) -> bool,
) -> io::Result<()> {
    let (mut client, hello) = tls13::Client::start(&mut crate::io::OsRng, opts, request);
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(&hello)?;
    let mut buf = vec![0u8; 2 * tls13::MAX_RECORD];
    let mut len = 0usize;
    while let Ok(wait) = left(deadline) {
        stream.set_read_timeout(Some(wait))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        };
        let at = Instant::now();
        len += n;
        while len >= 5 {
            let rec = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if rec > tls13::MAX_RECORD {
                return Err(invalid("oversized TLS record"));
            }
            if len < rec {
                break;
            }
            match client
                .on_record(&mut buf[..rec])
                .map_err(|e| invalid(e.0))?
            {
                Step::Wait => {}
                Step::Send(out) => stream.write_all(&out)?,
                step => {
                    if !each(at, step) {
                        return Ok(());
                    }
                }
            }
            buf.copy_within(rec..len, 0);
            len -= rec;
        }
    }
    if client.established() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed or went quiet during the TLS handshake",
        ))
    }
}
