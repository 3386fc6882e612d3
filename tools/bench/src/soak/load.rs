//! The soak's honest traffic: valid clients echoing through the fake DC, and probes that must
//! get the stand-in site's answer through mtpx as fast as from the site itself.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aes::cipher::StreamCipher;
use mtpx::proto::obfs2::{self, AesCtr, Tag};
use mtpx::proto::tlsprofile::HelloKind;
use mtpx::proto::{Rng, XorShift64};

use super::{DD, DIRECT, Env, below, site};
use crate::common::*;

/// DC ids the clients spread over (every one overridden to a fake DC).
const DCS: [i16; 4] = [1, 2, 3, 4];

/// A `dd` (padded intermediate) client: obfuscated2 straight on TCP.
pub struct DdConn {
    pub s: TcpStream,
    enc: AesCtr,
    dec: AesCtr,
    /// What was sent first: the frame and the command (what a recorder would replay).
    pub sent: Vec<u8>,
}

impl DdConn {
    pub fn connect(
        src: Ipv4Addr,
        proxy: SocketAddrV4,
        key: &[u8; 16],
        dc: i16,
        cmd: [u8; CMD_LEN],
    ) -> io::Result<DdConn> {
        let mut rng = XorShift64(seed());
        let mut s = connect_from(src, proxy)?;
        let (frame, mut enc, dec) = obfs2::client_frame(&mut rng, key, Tag::Padded, dc);
        let mut c = cmd;
        enc.apply_keystream(&mut c);
        let mut sent = frame.to_vec();
        sent.extend_from_slice(&c);
        s.write_all(&sent)?;
        Ok(DdConn { s, enc, dec, sent })
    }

    fn send(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.extend_from_slice(plain);
        self.enc.apply_keystream(out);
        self.s.write_all(out)
    }

    pub fn recv_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v)?;
        self.dec.apply_keystream(&mut v);
        Ok(v)
    }
}

/// A connection straight to a fake DC, as mtpx opens one (the control: no mtpx between).
pub struct DirectConn {
    s: TcpStream,
    enc: obfs2::CompactCtr,
    dec: obfs2::CompactCtr,
}

impl DirectConn {
    fn connect(src: Ipv4Addr, dc: SocketAddrV4, cmd: [u8; CMD_LEN]) -> io::Result<DirectConn> {
        let mut rng = XorShift64(seed());
        let mut s = connect_from(src, dc)?;
        let mut h = obfs2::dc_handshake(&mut rng, Tag::Padded, 2);
        let mut c = cmd;
        h.encrypt.apply_keystream(&mut c);
        let mut sent = h.frame.to_vec();
        sent.extend_from_slice(&c);
        s.write_all(&sent)?;
        Ok(DirectConn {
            s,
            enc: h.encrypt,
            dec: h.decrypt,
        })
    }
}

enum Conn {
    Tls(Client),
    Dd(DdConn),
    Direct(DirectConn),
}

impl Conn {
    fn stream(&self) -> &TcpStream {
        match self {
            Conn::Tls(c) => &c.s,
            Conn::Dd(c) => &c.s,
            Conn::Direct(c) => &c.s,
        }
    }

    fn echo(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let got = match self {
            Conn::Tls(c) => {
                c.send(plain, out)?;
                c.recv_exact(plain.len())?
            }
            Conn::Dd(c) => {
                c.send(plain, out)?;
                c.recv_exact(plain.len())?
            }
            Conn::Direct(c) => {
                out.clear();
                out.extend_from_slice(plain);
                c.enc.apply_keystream(out);
                c.s.write_all(out)?;
                let mut v = vec![0u8; plain.len()];
                c.s.read_exact(&mut v)?;
                c.dec.apply_keystream(&mut v);
                v
            }
        };
        if got != plain {
            return Err(io::Error::other("echo: bytes differ"));
        }
        Ok(())
    }
}

/// Echo round trips at least this long are kept one by one ([`super::Slow`]).
const SLOW_US: u32 = 20_000;

/// Client `i` of `kind` ([`EE`], [`DD`] or [`DIRECT`]: the control, straight to a fake DC):
/// connects, echoes every `echo_ms` (± half), reconnects every so many echoes, until the run
/// stops. Latencies and errors go to the phase they started in.
pub fn client(env: Arc<Env>, i: usize, kind: usize) {
    let o = &env.opts;
    let mut rng = XorShift64(seed());
    let src = Ipv4Addr::new(127, 0, 1 + kind as u8, (i % 250 + 1) as u8);
    let dd = kind == DD;
    let dc = DCS[i % DCS.len()];
    let mut out = Vec::with_capacity(2 * o.echo_max + 64);
    let mut pos = 0u64;
    // Spread the first connections over one echo interval.
    std::thread::sleep(Duration::from_millis(below(&mut rng, o.echo_ms.max(1))));
    while !env.stop.load(Ordering::Relaxed) {
        let phase = env.rec.phase();
        let t0 = Instant::now();
        let conn = if kind == DIRECT {
            DirectConn::connect(src, env.dcs[i % env.dcs.len()], command(OP_ECHO, 0, 0))
                .map(Conn::Direct)
        } else if dd {
            DdConn::connect(src, env.dd, &env.dd_key, dc, command(OP_ECHO, 0, 0)).map(Conn::Dd)
        } else {
            let t = Target {
                proxy: env.ee,
                src,
                key: env.ee_key,
                host: env.host.clone(),
            };
            Client::connect(&t, dc, command(OP_ECHO, 0, 0), o.echo_max + 64).map(Conn::Tls)
        };
        let mut conn = match conn.and_then(|c| {
            c.stream().set_read_timeout(Some(o.echo_timeout))?;
            c.stream().set_write_timeout(Some(o.echo_timeout))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                env.rec.error(phase, kind, format!("connect: {e}"));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        // The handshake's cost shows in the first echo (the DC answers nothing before it).
        let mut first = Some(t0);
        for nth in 0..o.reconnect_every {
            if env.stop.load(Ordering::Relaxed) {
                return;
            }
            let gap = o.echo_ms / 2 + below(&mut rng, o.echo_ms.max(1));
            if first.is_none() {
                std::thread::sleep(Duration::from_millis(gap));
            }
            let phase = env.rec.phase();
            let n = 1 + below(&mut rng, o.echo_max as u64) as usize;
            let t = Instant::now();
            match conn.echo(pattern(pos, n), &mut out) {
                Ok(()) => {
                    let rtt = t.elapsed().as_micros() as u32;
                    match first.take() {
                        Some(t0) if kind != DIRECT => env.rec.at(phase, |p| {
                            p.hs.push(t0.elapsed().as_micros() as u32);
                        }),
                        Some(_) => {}
                        None => env.rec.at(phase, |p| {
                            p.rtt[kind].push(rtt);
                            if env.rec.since_phase_ms(t) >= super::ONSET_MS {
                                p.rtt_steady[kind].push(rtt);
                            }
                            if rtt >= SLOW_US {
                                p.slow.push(super::Slow {
                                    at_ms: env.rec.since_phase_ms(t),
                                    kind: kind as u8,
                                    client: i as u16,
                                    nth: nth as u16,
                                    size: n as u32,
                                    rtt,
                                });
                            }
                        }),
                    }
                    pos += n as u64;
                }
                Err(e) => {
                    env.rec
                        .error(phase, kind, format!("echo after {:?}: {e}", t.elapsed()));
                    break;
                }
            }
        }
    }
}

/// What a probe sends.
#[derive(Clone, Copy)]
pub enum Probe {
    /// Random bytes (not a TLS record) to the ee port: the site answers with an alert.
    EeGarbage,
    /// A browser's ClientHello (not ours: no secret) to the ee port: the site's flight.
    EeHello,
    /// 63 random bytes to the dd port, one short of a frame: the site's alert.
    DdShort,
}

impl Probe {
    pub fn name(self) -> &'static str {
        match self {
            Probe::EeGarbage => "ee garbage",
            Probe::EeHello => "ee browser hello",
            Probe::DdShort => "dd 63 bytes",
        }
    }

    fn bytes(self, rng: &mut XorShift64, host: &str) -> Vec<u8> {
        match self {
            Probe::EeGarbage => {
                let mut b = vec![0u8; 64 + below(rng, 512) as usize];
                rng.fill(&mut b);
                // Not a handshake record, and not a GET (the site answers those otherwise).
                b[0] = 0x20 + (b[0] % 0x20);
                b
            }
            Probe::EeHello => {
                mtpx::proto::browserhello::browser_hello(rng, host, HelloKind::Classic)
            }
            Probe::DdShort => loop {
                let mut b = vec![0u8; 63];
                rng.fill(&mut b);
                if !obfs2::is_forbidden_start(&b) {
                    break b;
                }
            },
        }
    }

    /// The first byte of the site's answer.
    fn answer(self) -> u8 {
        match self {
            Probe::EeHello => site::FLIGHT[0],
            Probe::EeGarbage | Probe::DdShort => site::ALERT[0],
        }
    }
}

/// Probes of one kind in a loop, each one straight to the site and then through mtpx.
pub fn prober(env: Arc<Env>, kind: Probe, k: usize) {
    let mut rng = XorShift64(seed());
    let via = match kind {
        Probe::DdShort => env.dd,
        _ => env.ee,
    };
    let mut n = k;
    let mut pair = (k as u32) << 20;
    // Spread the probers over one pause.
    std::thread::sleep(Duration::from_millis(below(
        &mut rng,
        env.opts.probe_ms.max(1),
    )));
    while !env.stop.load(Ordering::Relaxed) {
        let bytes = kind.bytes(&mut rng, &env.host);
        pair += 1;
        for direct in [true, false] {
            n += 7;
            let src = Ipv4Addr::new(127, 0, 10 + (n / 250 % 4) as u8, (n % 250 + 1) as u8);
            let phase = env.rec.phase();
            let dst = if direct { env.site } else { via };
            let t = Instant::now();
            let r = probe(src, dst, &bytes, kind.answer(), env.opts.probe_timeout);
            let at_ms = env.rec.since_phase_ms(t);
            env.rec.at(phase, |p| {
                p.probe_log.push(super::ProbeRec {
                    at_ms,
                    kind: kind.name(),
                    via: !direct,
                    pair,
                    result: r,
                });
                let s = p.probes.entry(kind.name()).or_default();
                match (r, direct) {
                    (Ok(us), true) => s.direct.push(us),
                    (Ok(us), false) => s.via.push(us),
                    (Err(why), true) => *s.direct_fail.entry(why).or_default() += 1,
                    (Err(why), false) => *s.via_fail.entry(why).or_default() += 1,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(env.opts.probe_ms));
    }
}

/// One probe: microseconds from the connect to the first byte of the expected answer, or why
/// not.
fn probe(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    bytes: &[u8],
    answer: u8,
    limit: Duration,
) -> Result<u32, &'static str> {
    let t0 = Instant::now();
    let mut s =
        super::connect_timeout_from(src, dst, Duration::from_secs(3)).map_err(|_| "no connect")?;
    s.set_read_timeout(Some(limit)).map_err(|_| "socket")?;
    s.write_all(bytes).map_err(|_| "write failed")?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) if b[0] == answer => Ok(t0.elapsed().as_micros() as u32),
        Ok(1) => Err("wrong answer"),
        Ok(_) => Err("closed, no answer"),
        Err(e) if super::timed_out(&e) => Err("silent"),
        Err(_) => Err("reset, no answer"),
    }
}
