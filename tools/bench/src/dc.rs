//! The fake Telegram DC: one mio loop in its own process. It parses the proxy's obfuscated2
//! frame (`obfs2::dc_accept`), reads a 16-byte command and then holds, sinks, sources or echoes
//! data (see `common::OP_*`). It always closes first, so TIME_WAIT never sits on an ephemeral
//! port.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use aes::cipher::StreamCipher;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use mtpx::proto::obfs2::{self, AesCtr};

use crate::common::*;

const LISTENER: Token = Token(usize::MAX - 1);

#[derive(PartialEq, Eq)]
enum St {
    /// Reading the 64-byte frame and the command.
    Head,
    /// Hold: the answer byte was sent; waiting for any byte or EOF.
    Hold,
    /// Upload: receiving and checking.
    Sink,
    /// Download: sending.
    Source,
    /// Echo: sending back what arrives.
    Echo,
    /// Our write side is shut; waiting for the peer's EOF.
    Closing,
}

struct Conn {
    s: TcpStream,
    st: St,
    head: [u8; 64 + CMD_LEN],
    head_len: usize,
    dec: Option<AesCtr>,
    enc: Option<AesCtr>,
    /// Upload/download: bytes left and pattern position.
    left: u64,
    pos: u64,
    ok: bool,
    /// Pending output (already encrypted).
    out: Vec<u8>,
    out_at: usize,
    /// Shut the write side once `out` is flushed.
    shut_after: bool,
}

pub fn run() -> io::Result<()> {
    crate::die_with_parent();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    // A big accept backlog: the proxy connects in bursts.
    let std_l = listener.local_addr()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening {}", std_l.port());
    io::stdout().flush()?;
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; CHUNK];
    // Exit when the parent closes our stdin (or dies: PDEATHSIG).
    std::thread::spawn(|| {
        let mut b = [0u8; 64];
        while let Ok(n) = io::stdin().read(&mut b) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    loop {
        poll.poll(&mut events, Some(Duration::from_secs(1)))?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            next += 1;
                            poll.registry().register(
                                &mut s,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(
                                next,
                                Conn {
                                    s,
                                    st: St::Head,
                                    head: [0; 64 + CMD_LEN],
                                    head_len: 0,
                                    dec: None,
                                    enc: None,
                                    left: 0,
                                    pos: 0,
                                    ok: true,
                                    out: Vec::new(),
                                    out_at: 0,
                                    shut_after: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("fake-dc: accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                            break;
                        }
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            let done = drive(c, &mut scratch).unwrap_or(true);
            if done {
                if let Some(mut c) = conns.remove(&id) {
                    let _ = poll.registry().deregister(&mut c.s);
                }
            }
        }
    }
}

/// Writes pending output; `Ok(true)` when all of it is out.
fn flush(c: &mut Conn) -> io::Result<bool> {
    while c.out_at < c.out.len() {
        match c.s.write(&c.out[c.out_at..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => c.out_at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.out_at = 0;
    if c.shut_after {
        c.shut_after = false;
        let _ = c.s.shutdown(Shutdown::Write);
        c.st = St::Closing;
    }
    Ok(true)
}

fn queue(c: &mut Conn, plain: &[u8]) {
    let at = c.out.len();
    c.out.extend_from_slice(plain);
    if let Some(e) = c.enc.as_mut() {
        e.apply_keystream(&mut c.out[at..]);
    }
}

/// Drives a connection on any event (edge-triggered: read and write until WouldBlock).
/// `Ok(true)` when it is finished.
fn drive(c: &mut Conn, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        let mut progress = false;
        if !flush(c)? {
            // Output pending: no new reads for a source or an echo; others may still read.
            if c.st == St::Source || c.st == St::Echo {
                return Ok(false);
            }
        } else if c.st == St::Source {
            // Produce the next chunk.
            if c.left == 0 {
                c.shut_after = true;
                flush(c)?;
                progress = true;
            } else {
                let n = (c.left as usize).min(CHUNK);
                let p = pattern(c.pos, n);
                queue(c, p);
                c.pos += n as u64;
                c.left -= n as u64;
                progress = true;
            }
        }
        if c.st != St::Source || c.st == St::Closing {
            match c.s.read(scratch) {
                Ok(0) => {
                    // EOF from the proxy.
                    match c.st {
                        St::Closing => return Ok(true),
                        _ => {
                            // Close first (shut our side), then we are done.
                            let _ = c.s.shutdown(Shutdown::Write);
                            return Ok(true);
                        }
                    }
                }
                Ok(n) => {
                    progress = true;
                    on_data(c, &mut scratch[..n])?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                Err(e) => return Err(e),
            }
        }
        if !progress {
            return Ok(false);
        }
    }
}

fn on_data(c: &mut Conn, mut data: &mut [u8]) -> io::Result<()> {
    if c.st == St::Head {
        let k = (c.head.len() - c.head_len).min(data.len());
        c.head[c.head_len..c.head_len + k].copy_from_slice(&data[..k]);
        c.head_len += k;
        data = &mut data[k..];
        if c.head_len < c.head.len() {
            return Ok(());
        }
        let mut frame = [0u8; 64];
        frame.copy_from_slice(&c.head[..64]);
        let (_, _, mut dec, enc) = obfs2::dc_accept(&frame)
            .map_err(|r| io::Error::other(format!("bad frame from proxy: {r}")))?;
        let mut cmd = [0u8; CMD_LEN];
        cmd.copy_from_slice(&c.head[64..]);
        dec.apply_keystream(&mut cmd);
        c.dec = Some(dec);
        c.enc = Some(enc);
        let len = u64::from_le_bytes(cmd[8..16].try_into().unwrap_or([0; 8]));
        match cmd[0] {
            OP_HOLD => {
                queue(c, &[HELLO_BYTE]);
                if cmd[1] & FLAG_CLOSE != 0 {
                    c.shut_after = true;
                }
                c.st = St::Hold;
            }
            OP_UP => {
                c.left = len;
                c.st = St::Sink;
            }
            OP_DOWN => {
                c.left = len;
                c.st = St::Source;
            }
            OP_ECHO => c.st = St::Echo,
            _ => return Err(io::Error::other("unknown command")),
        }
        flush(c)?;
    }
    if data.is_empty() {
        return Ok(());
    }
    match c.st {
        St::Echo => {
            if let Some(d) = c.dec.as_mut() {
                d.apply_keystream(data);
            }
            queue(c, data);
            flush(c)?;
        }
        St::Hold => {
            // Any byte: close first.
            c.shut_after = true;
            flush(c)?;
        }
        St::Sink => {
            if let Some(d) = c.dec.as_mut() {
                d.apply_keystream(data);
            }
            let n = (data.len() as u64).min(c.left) as usize;
            if data.len() as u64 > c.left || !pattern_ok(c.pos, &data[..n]) {
                c.ok = false;
            }
            c.pos += n as u64;
            c.left -= n as u64;
            if c.left == 0 {
                let mut r = [0u8; REPLY_LEN];
                r[0] = u8::from(c.ok);
                r[8..].copy_from_slice(&c.pos.to_le_bytes());
                queue(c, &r);
                c.shut_after = true;
                flush(c)?;
            }
        }
        _ => {}
    }
    Ok(())
}
