//! The client side of the middle-proxy RPC handshake (see [`super`]): nonce exchange in clear,
//! key derivation, then the encrypted `RPC_HANDSHAKE` exchange. Sans-IO, like
//! [`crate::proto::socks5`]: bytes in, bytes to send / connected / failed out; the time and
//! the random nonce and pid are passed in.
//!
//! Usage: [`MeHandshake::new`] once the TCP connection is up, write [`MeHandshake::start`]'s
//! bytes, then feed everything read to [`MeHandshake::handle`] (the input not consumed is
//! offered again with the next bytes) until `Connected` or `Failed`. MTProxy gives the whole
//! exchange 3 seconds; the timeout is the caller's.

use std::net::SocketAddr;

use super::codec::{Decoder, HEADROOM, Link};
use super::{
    CRYPTO_AES, MAX_SECRET, MAX_TS_SKEW, MeError, RPC_HANDSHAKE, RPC_NONCE, derive_keys, le32,
    pad_to_block, peer_process_id, pid_matches, write_packet,
};

/// Largest output of one step ([`MeHandshake::start`] or [`HsStep::Send`]).
pub const OUT_MAX: usize = 48;
/// The nonce packet: 12 bytes of framing around 32 bytes.
const NONCE_PACKET: usize = 44;
/// RPCF_USE_CRC32C: the peer wants CRC32-C, which we never ask for.
const FLAG_CRC32C: u32 = 2048;

/// The decoder's random source while nothing can reach a client (the padded transport's
/// random padding is only drawn for client data).
struct NoOutput;

impl crate::proto::Rng for NoOutput {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}

/// Everything the handshake needs to know.
#[derive(Clone, Copy, Debug)]
pub struct HsParams<'a> {
    /// The proxy secret (`getProxySecret`, 32..=256 bytes).
    pub secret: &'a [u8],
    /// Our address as the middle proxy sees it: the public IP (`public-ipv4`/`-ipv6` behind
    /// NAT) and the socket's local port.
    pub ours: SocketAddr,
    /// The middle proxy's address.
    pub theirs: SocketAddr,
    /// Unix time now (our `crypto_ts`; the answer's must be within 30 s of it).
    pub now_unix: u32,
    /// 16 random bytes.
    pub nonce: [u8; 16],
    /// Our process id ([`super::process_id`]).
    pub pid: [u8; 12],
}

/// What the caller does next after [`MeHandshake::handle`].
#[derive(Debug)]
pub enum HsStep {
    /// `consumed` input bytes were used (maybe 0); read more and offer the rest again.
    NeedMore { consumed: usize },
    /// `consumed` input bytes were used; write `out[..len]`, then keep reading.
    Send { consumed: usize, len: usize },
    /// The connection is ready after `consumed` input bytes; the rest (if any) belongs to the
    /// session: give it to the decoder from [`Link::session`].
    Connected { consumed: usize, link: Box<Link> },
    /// The handshake failed: close the connection (try another middle proxy).
    Failed(MeError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    Nonce,
    Answer,
    Done,
    Failed(MeError),
}

/// One handshake with one middle proxy.
pub struct MeHandshake {
    state: State,
    secret: [u8; MAX_SECRET],
    secret_len: usize,
    ours: SocketAddr,
    theirs: SocketAddr,
    ts: u32,
    nonce: [u8; 16],
    pid: [u8; 12],
    link: Option<Box<Link>>,
}

impl std::fmt::Debug for MeHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeHandshake")
            .field("state", &self.state)
            .field("theirs", &self.theirs)
            .finish_non_exhaustive()
    }
}

impl Drop for MeHandshake {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

impl MeHandshake {
    /// A handshake; fails only for a secret of the wrong size.
    pub fn new(p: &HsParams<'_>) -> Result<MeHandshake, MeError> {
        if !(super::MIN_SECRET..=MAX_SECRET).contains(&p.secret.len()) {
            return Err(MeError::BadSecret);
        }
        let mut secret = [0u8; MAX_SECRET];
        secret[..p.secret.len()].copy_from_slice(p.secret);
        Ok(MeHandshake {
            state: State::Start,
            secret,
            secret_len: p.secret.len(),
            ours: p.ours,
            theirs: p.theirs,
            ts: p.now_unix,
            nonce: p.nonce,
            pid: p.pid,
            link: None,
        })
    }

    /// Writes the nonce packet into `out` (at least [`OUT_MAX`] bytes) and returns its length
    /// (0 if already started or `out` is too short).
    pub fn start(&mut self, out: &mut [u8]) -> usize {
        if self.state != State::Start || out.len() < OUT_MAX {
            return 0;
        }
        self.state = State::Nonce;
        let mut p = [0u8; 32];
        p[..4].copy_from_slice(&RPC_NONCE.to_le_bytes());
        p[4..8].copy_from_slice(&self.secret[..4]);
        p[8..12].copy_from_slice(&CRYPTO_AES.to_le_bytes());
        p[12..16].copy_from_slice(&self.ts.to_le_bytes());
        p[16..].copy_from_slice(&self.nonce);
        write_packet(out, -2, &p)
    }

    /// Feeds the bytes received and not yet consumed; `out` needs [`OUT_MAX`] bytes. See
    /// [`HsStep`]. After `Connected` or `Failed`, the same failure (or
    /// [`MeError::BadHandshake`]) is returned again.
    #[inline(never)]
    pub fn handle(&mut self, input: &[u8], out: &mut [u8]) -> HsStep {
        let step = match self.state {
            State::Nonce => self.nonce_answer(input, out),
            State::Answer => self.handshake_answer(input),
            State::Failed(e) => HsStep::Failed(e),
            State::Start | State::Done => HsStep::Failed(MeError::BadHandshake),
        };
        if let HsStep::Failed(e) = step {
            self.state = State::Failed(e);
        }
        step
    }

    fn nonce_answer(&mut self, input: &[u8], out: &mut [u8]) -> HsStep {
        // Padding words (a length of 4) may come first.
        let mut at = 0;
        while input.len() >= at + 4 && le32(&input[at..]) == 4 {
            at += 4;
        }
        let Some(pkt) = input.get(at..at + 4) else {
            return HsStep::NeedMore { consumed: at };
        };
        if le32(pkt) as usize != NONCE_PACKET {
            return HsStep::Failed(if le32(pkt) % 4 != 0 || le32(pkt) < 16 {
                MeError::BadLength
            } else {
                MeError::BadNonce
            });
        }
        let Some(pkt) = input.get(at..at + NONCE_PACKET) else {
            return HsStep::NeedMore { consumed: at };
        };
        if le32(&pkt[4..]) as i32 != -2 {
            return HsStep::Failed(MeError::BadSeq);
        }
        if le32(&pkt[40..]) != crate::proto::hash::crc32(&pkt[..40]) {
            return HsStep::Failed(MeError::BadCrc);
        }
        let p = &pkt[8..40];
        if le32(p) != RPC_NONCE || p[4..8] != self.secret[..4] || le32(&p[8..]) != CRYPTO_AES {
            return HsStep::Failed(MeError::BadNonce);
        }
        let their_ts = le32(&p[12..]);
        if (their_ts.wrapping_sub(self.ts) as i32).unsigned_abs() > MAX_TS_SKEW {
            return HsStep::Failed(MeError::ClockSkew);
        }
        let mut srv_nonce = [0u8; 16];
        srv_nonce.copy_from_slice(&p[16..32]);
        let keys = match derive_keys(
            &srv_nonce,
            &self.nonce,
            self.ts,
            self.ours,
            self.theirs,
            &self.secret[..self.secret_len],
        ) {
            Ok(k) => k,
            Err(e) => return HsStep::Failed(e),
        };
        let mut write = keys.write;
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&RPC_HANDSHAKE.to_le_bytes());
        // flags 0: CRC-32, not CRC32-C.
        h[8..20].copy_from_slice(&self.pid);
        h[20..32].copy_from_slice(&peer_process_id(self.theirs));
        let n = write_packet(out, -1, &h);
        let n = pad_to_block(out, n);
        write.encrypt(&mut out[..n]);
        self.link = Some(Box::new(Link {
            write,
            decoder: Decoder::for_handshake(keys.read),
        }));
        self.state = State::Answer;
        HsStep::Send {
            consumed: at + NONCE_PACKET,
            len: n,
        }
    }

    fn handshake_answer(&mut self, input: &[u8]) -> HsStep {
        let Some(link) = self.link.as_mut() else {
            return HsStep::Failed(MeError::BadHandshake);
        };
        let mut consumed = 0;
        let mut block = [0u8; HEADROOM + 16];
        let mut rng = NoOutput;
        for c in input.chunks_exact(16) {
            block[HEADROOM..].copy_from_slice(c);
            consumed += 16;
            match link.decoder.decode(&mut block, 0, 16, &mut rng) {
                Ok(d) if d.out == 0 => {}
                Ok(_) => return HsStep::Failed(MeError::BadHandshake),
                Err(e) => return HsStep::Failed(e),
            }
            if let Some(a) = link.decoder.answer {
                let flags = le32(&a[4..]);
                let mut peer = [0u8; 12];
                peer.copy_from_slice(&a[20..32]);
                if flags & 0xff != 0 || flags & FLAG_CRC32C != 0 || !pid_matches(&self.pid, &peer) {
                    return HsStep::Failed(MeError::BadHandshake);
                }
                self.state = State::Done;
                let link = self.link.take().expect("checked above");
                return HsStep::Connected { consumed, link };
            }
        }
        HsStep::NeedMore { consumed }
    }
}
