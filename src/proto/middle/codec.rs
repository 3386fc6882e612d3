//! The relay half of a middle-proxy connection: client transport packets to encrypted
//! `RPC_PROXY_REQ`s ([`Encoder`]) and `RPC_PROXY_ANS`s back to client transport packets
//! ([`Decoder`]), streaming, allocation-free, with bounded state.
//!
//! # For the integrator (one middle-proxy connection per client connection)
//!
//! After [`super::handshake::MeHandshake`] returns `Connected { link, .. }`, call
//! [`Link::session`] with the client's transport tag, a random connection id and the two
//! addresses; it gives an [`Encoder`] and a [`Decoder`].
//!
//! **Client → middle proxy** ([`Encoder::encode`]): `input` is the client's bytes after the
//! obfuscated2 decryption (what direct mode would re-encrypt for the DC), in any pieces;
//! `out` is free room in the buffer that is written to the middle-proxy socket. It appends
//! only whole 16-byte AES-CBC blocks and returns how much input it took (the rest must be
//! offered again: it stops when `out` is full) and how much it wrote. It needs a second
//! buffer: the output grows by 92 to 108 bytes per client packet, so it cannot work in place.
//! A client packet of any size up to [`MAX_CLIENT_PACKET`] streams through: its RPC header is
//! written once its first 8 bytes are seen, then the payload follows as it comes. State
//! kept between calls: under 16 bytes of plaintext not yet making a block, a few header bytes.
//!
//! **Middle proxy → client** ([`Decoder::decode`]): works in place. Read ciphertext from the
//! middle-proxy socket into `buf[at + HEADROOM..]` and call `decode(buf, at, n, rng)`; the
//! plaintext for the client (what direct mode would get from the DC after the obfuscated2
//! decryption: transport packets, quick acks) is then `buf[at..at + out]`, to be encrypted
//! with the client's obfuscated2 key (and framed in TLS records for FakeTLS) as in direct mode.
//! Everything given is consumed (a partial cipher block is kept inside). [`HEADROOM`] is the
//! room the output may need ahead of the input: a client packet header or a quick ack is
//! emitted before the data that pays for it arrives, and the kept partial block is put back in
//! front of the new bytes. Output never exceeds input by more than [`HEADROOM`] bytes, so a read
//! of `n` bytes yields at most `n + HEADROOM` bytes for the client (for 16 KiB TLS records,
//! read at most `16384 - HEADROOM` bytes at a time). Payloads stream the same way (the CRC-32
//! of a packet is checked when its end arrives: an error then closes the connection after the
//! data went out, as authenticated MTProto data, never as a decision).
//!
//! [`Decoded`] also reports what is not client data: `closed` (the middle proxy sent
//! `RPC_CLOSE_EXT`: flush the output, then close the client), `ping` (answer with
//! [`Encoder::queue_pong`]) and `pongs` (answers to [`Encoder::queue_ping`]).
//!
//! Both sides return [`MeError`] for anything malformed; the connection is then closed (a
//! middle-proxy error is never mirrored to the client).

use std::net::SocketAddr;

use super::{
    CompactCbc, FLAG_ABRIDGED, FLAG_EXTMODE2, FLAG_HAS_AD_TAG, FLAG_INTERMEDIATE, FLAG_MAGIC,
    FLAG_NOT_ENCRYPTED, FLAG_PAD, FLAG_QUICKACK, MAX_PACKET, MeError, PAD_WORD, RPC_CLOSE_CONN,
    RPC_CLOSE_EXT, RPC_HANDSHAKE, RPC_HANDSHAKE_ERROR, RPC_PING, RPC_PONG, RPC_PROXY_ANS,
    RPC_PROXY_REQ, RPC_SIMPLE_ACK, TL_PROXY_TAG, addr_field, le32, le64,
};
use crate::proto::Rng;
use crate::proto::hash::Crc32;
use crate::proto::obfs2::Tag;

/// Room the decoder's output may need in front of its input (see the module doc).
pub const HEADROOM: usize = 24;
/// Largest client packet forwarded (MTProxy's `MAX_POST_SIZE`, 1 MiB - 4 KiB).
pub const MAX_CLIENT_PACKET: u32 = 262_144 * 4 - 4096;
/// Free room in `out` with which [`Encoder::encode`] always makes progress: a kept partial
/// block, `[len][seq]`, the `RPC_PROXY_REQ` header with the ad-tag extra and 8 payload bytes.
pub const MIN_OUT_ROOM: usize = 128;
/// One padded control packet (`RPC_PING`, `RPC_PONG`, `RPC_CLOSE_CONN`): 24 bytes + 8 padding.
const CONTROL_LEN: usize = 32;

/// Who the session is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// The client's transport (from its obfuscated2 frame).
    pub tag: Tag,
    /// A random id for this client connection (`out_conn_id`), echoed in every answer.
    pub conn_id: u64,
    /// The client's address (after a PROXY protocol header, if any).
    pub client: SocketAddr,
    /// The address the client connected to, as it sees it (the public address and port).
    pub ours: SocketAddr,
    /// The ad tag sent with every packet (`None`: no extra, no sponsored channel).
    pub ad_tag: Option<[u8; 16]>,
}

/// What the handshake hands over: the keys in use, both packet counters, and the reader
/// (which may already hold the first bytes that followed the handshake answer).
#[derive(Clone, Debug)]
pub struct Link {
    pub(crate) write: CompactCbc,
    pub(crate) decoder: Decoder,
}

impl Link {
    /// A link as a completed handshake leaves it, from its keys (for fuzzing and tests: the
    /// handshake is the way to get one).
    #[doc(hidden)]
    pub fn from_keys(write: CompactCbc, read: CompactCbc) -> Link {
        let mut decoder = Decoder::for_handshake(read);
        decoder.seq = 0;
        decoder.handshake = false;
        Link { write, decoder }
    }

    /// The encoder and decoder for one client on this connection.
    pub fn session(self, p: &SessionParams) -> (Encoder, Decoder) {
        let mut decoder = self.decoder;
        decoder.tag = p.tag;
        decoder.conn_id = p.conn_id;
        (Encoder::new(self.write, p), decoder)
    }
}

// ----------------------------------------------------------------------------- encoder

/// Where the encoder is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    /// Reading a packet's length header: `got` bytes of it in `hdr`.
    Header { got: u8, hdr: [u8; 4] },
    /// Reading the first `min(8, len)` payload bytes (whether MTProto encrypted them decides
    /// a flag of the request header, written before them).
    Peek {
        len: u32,
        quickack: bool,
        skip: u8,
        got: u8,
        buf: [u8; 8],
    },
    /// Streaming `left` more payload bytes.
    Payload { left: u32, skip: u8 },
    /// The payload is done: CRC and padding still to write.
    Trailer { skip: u8 },
    /// Dropping the padded transport's `left` trailing bytes.
    Skip { left: u8 },
}

/// Client → middle proxy (see the module doc).
#[derive(Clone, Debug)]
pub struct Encoder {
    cbc: CompactCbc,
    seq: i32,
    crc: Crc32,
    state: Up,
    /// Plaintext not yet making a whole block (always empty between packets).
    blk: [u8; 16],
    blk_len: u8,
    /// The `RPC_PROXY_REQ` header after the flags: conn_id, addresses, extra.
    req: [u8; 76],
    req_len: u8,
    flags: u32,
    tag: Tag,
    ping: Option<u64>,
    pong: Option<u64>,
}

/// What [`Encoder::encode`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Input bytes taken (offer the rest again).
    pub consumed: usize,
    /// Bytes appended at the start of `out` (whole cipher blocks).
    pub written: usize,
}

impl Encoder {
    fn new(cbc: CompactCbc, p: &SessionParams) -> Encoder {
        let mut req = [0u8; 76];
        req[..8].copy_from_slice(&p.conn_id.to_le_bytes());
        req[8..28].copy_from_slice(&addr_field(p.client));
        req[28..48].copy_from_slice(&addr_field(p.ours));
        let mut flags = FLAG_MAGIC
            | FLAG_EXTMODE2
            | match p.tag {
                Tag::Abridged => FLAG_ABRIDGED,
                Tag::Intermediate => FLAG_INTERMEDIATE,
                Tag::Padded => FLAG_INTERMEDIATE | FLAG_PAD,
            };
        let req_len = match p.ad_tag {
            Some(t) => {
                flags |= FLAG_HAS_AD_TAG;
                req[48..52].copy_from_slice(&24u32.to_le_bytes());
                req[52..56].copy_from_slice(&TL_PROXY_TAG.to_le_bytes());
                req[56] = 16;
                req[57..73].copy_from_slice(&t);
                76
            }
            None => 48,
        };
        Encoder {
            cbc,
            seq: 0,
            crc: Crc32::new(),
            state: Up::Header {
                got: 0,
                hdr: [0; 4],
            },
            blk: [0; 16],
            blk_len: 0,
            req,
            req_len,
            flags,
            tag: p.tag,
            ping: None,
            pong: None,
        }
    }

    /// Sends `RPC_PING(id)` at the next packet boundary (keep-alive).
    pub fn queue_ping(&mut self, id: u64) {
        self.ping = Some(id);
    }

    /// Sends `RPC_PONG(id)` at the next packet boundary (the answer to [`Decoded::ping`]).
    pub fn queue_pong(&mut self, id: u64) {
        self.pong = Some(id);
    }

    /// Whether the encoder is between client packets (nothing of a request half-written).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, Up::Header { .. } | Up::Peek { .. })
    }

    /// Whether a queued ping or pong still waits for a packet boundary.
    pub fn has_queued(&self) -> bool {
        self.ping.is_some() || self.pong.is_some()
    }

    /// Writes `RPC_CLOSE_CONN` (the client left) into `out` when between packets; returns its
    /// length, or 0 (mid-packet, or `out` shorter than 32 bytes: just close the socket).
    pub fn close(&mut self, out: &mut [u8]) -> usize {
        if !self.at_boundary() || out.len() < CONTROL_LEN || self.blk_len != 0 {
            return 0;
        }
        let mut p = [0u8; 12];
        p[..4].copy_from_slice(&RPC_CLOSE_CONN.to_le_bytes());
        p[4..].copy_from_slice(&self.req[..8]);
        let n = self.control(out, &p);
        self.cbc.encrypt(&mut out[..n]);
        n
    }

    /// Writes one control packet (`payload` of 12 bytes) padded to 32 bytes, in clear.
    fn control(&mut self, out: &mut [u8], payload: &[u8; 12]) -> usize {
        let n = super::write_packet(out, self.seq, payload);
        self.seq = self.seq.wrapping_add(1);
        super::pad_to_block(out, n)
    }

    /// Queued pings/pongs, when at a boundary and there is room; returns the new `w`.
    fn controls(&mut self, out: &mut [u8], mut w: usize) -> usize {
        if !self.at_boundary() {
            return w;
        }
        for pong in [true, false] {
            let slot = if pong { &mut self.pong } else { &mut self.ping };
            let Some(id) = *slot else { continue };
            if out.len() - w < CONTROL_LEN {
                break;
            }
            *slot = None;
            let mut p = [0u8; 12];
            let kind = if pong { RPC_PONG } else { RPC_PING };
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[4..].copy_from_slice(&id.to_le_bytes());
            w += self.control(&mut out[w..], &p);
        }
        w
    }

    /// Takes client bytes from `input` and appends encrypted requests to `out` (see the module
    /// doc). Errors: a malformed client length ([`MeError::BadClientPacket`]) or one over
    /// [`MAX_CLIENT_PACKET`]. With less than [`MIN_OUT_ROOM`] bytes of `out`, it may take
    /// nothing.
    #[inline(never)]
    pub fn encode(&mut self, input: &[u8], out: &mut [u8]) -> Result<Encoded, MeError> {
        let blk = usize::from(self.blk_len);
        if out.len() < blk + 16 {
            return Ok(Encoded::default());
        }
        out[..blk].copy_from_slice(&self.blk[..blk]);
        let mut w = self.controls(out, blk);
        let mut i = 0;
        let result = loop {
            match self.step(input, &mut i, out, &mut w) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        w = self.controls(out, w);
        let whole = w / 16 * 16;
        self.cbc.encrypt(&mut out[..whole]);
        self.blk[..w - whole].copy_from_slice(&out[whole..w]);
        self.blk_len = (w - whole) as u8;
        result.map(|()| Encoded {
            consumed: i,
            written: whole,
        })
    }

    /// One state step; `Ok(false)` when out of input or room.
    fn step(
        &mut self,
        input: &[u8],
        i: &mut usize,
        out: &mut [u8],
        w: &mut usize,
    ) -> Result<bool, MeError> {
        let rest = &input[*i..];
        let room = out.len() - *w;
        match self.state {
            Up::Header { mut got, mut hdr } => {
                let Some(&b) = rest.first() else {
                    return Ok(false);
                };
                hdr[usize::from(got)] = b;
                got += 1;
                *i += 1;
                let need = match self.tag {
                    Tag::Abridged if hdr[0] & 0x7f == 0x7f => 4,
                    Tag::Abridged => 1,
                    _ => 4,
                };
                if got < need {
                    self.state = Up::Header { got, hdr };
                    return Ok(true);
                }
                let (len, quickack) = match self.tag {
                    Tag::Abridged => {
                        let q = hdr[0] & 0x80 != 0;
                        if need == 1 {
                            (u32::from(hdr[0] & 0x7f) * 4, q)
                        } else {
                            let words = le32(&[hdr[1], hdr[2], hdr[3], 0]);
                            // MTProxy refuses the long form for what fits the short one.
                            if words < 0x7f {
                                return Err(MeError::BadClientPacket);
                            }
                            (words.saturating_mul(4), q)
                        }
                    }
                    _ => {
                        let v = le32(&hdr);
                        if v & 0x4000_0000 != 0 {
                            return Err(MeError::BadClientPacket);
                        }
                        (v & 0x7fff_ffff, v & 0x8000_0000 != 0)
                    }
                };
                if len > MAX_CLIENT_PACKET {
                    return Err(MeError::ClientPacketTooLarge);
                }
                let (len, skip) = match self.tag {
                    Tag::Padded => (len & !3, (len & 3) as u8),
                    _ if len % 4 != 0 => return Err(MeError::BadClientPacket),
                    _ => (len, 0),
                };
                if len == 0 {
                    return Err(MeError::BadClientPacket);
                }
                self.state = Up::Peek {
                    len,
                    quickack,
                    skip,
                    got: 0,
                    buf: [0; 8],
                };
                Ok(true)
            }
            Up::Peek {
                len,
                quickack,
                skip,
                mut got,
                mut buf,
            } => {
                let need = len.min(8) as usize;
                let take = (need - usize::from(got)).min(rest.len());
                buf[usize::from(got)..usize::from(got) + take].copy_from_slice(&rest[..take]);
                got += take as u8;
                *i += take;
                if usize::from(got) < need {
                    self.state = Up::Peek {
                        len,
                        quickack,
                        skip,
                        got,
                        buf,
                    };
                    return Ok(false);
                }
                let req_len = usize::from(self.req_len);
                if room < 8 + 8 + req_len + need {
                    // No room for the request header: keep the peeked bytes for later.
                    self.state = Up::Peek {
                        len,
                        quickack,
                        skip,
                        got,
                        buf,
                    };
                    return Ok(false);
                }
                let mut flags = self.flags;
                if quickack {
                    flags |= FLAG_QUICKACK;
                }
                if need == 8 && buf == [0; 8] {
                    flags |= FLAG_NOT_ENCRYPTED;
                }
                let total = 12 + 8 + req_len as u32 + len;
                let o = &mut out[*w..];
                o[..4].copy_from_slice(&total.to_le_bytes());
                o[4..8].copy_from_slice(&self.seq.to_le_bytes());
                o[8..12].copy_from_slice(&RPC_PROXY_REQ.to_le_bytes());
                o[12..16].copy_from_slice(&flags.to_le_bytes());
                o[16..16 + req_len].copy_from_slice(&self.req[..req_len]);
                o[16 + req_len..16 + req_len + need].copy_from_slice(&buf[..need]);
                let n = 16 + req_len + need;
                self.crc = Crc32::new();
                self.crc.update(&o[..n]);
                self.seq = self.seq.wrapping_add(1);
                *w += n;
                let left = len - need as u32;
                self.state = if left == 0 {
                    Up::Trailer { skip }
                } else {
                    Up::Payload { left, skip }
                };
                Ok(true)
            }
            Up::Payload { left, skip } => {
                let k = (left as usize).min(rest.len()).min(room);
                if k == 0 {
                    return Ok(false);
                }
                out[*w..*w + k].copy_from_slice(&rest[..k]);
                self.crc.update(&rest[..k]);
                *w += k;
                *i += k;
                let left = left - k as u32;
                self.state = if left == 0 {
                    Up::Trailer { skip }
                } else {
                    Up::Payload { left, skip }
                };
                Ok(true)
            }
            Up::Trailer { skip } => {
                if room < 16 {
                    return Ok(false);
                }
                out[*w..*w + 4].copy_from_slice(&self.crc.value().to_le_bytes());
                *w += 4;
                // `out[0]` is where a cipher block starts (the kept partial block comes first),
                // so the packet ends on a block boundary when `w` is a multiple of 16.
                while *w % 16 != 0 {
                    out[*w..*w + 4].copy_from_slice(&PAD_WORD);
                    *w += 4;
                }
                self.state = if skip > 0 {
                    Up::Skip { left: skip }
                } else {
                    Up::Header {
                        got: 0,
                        hdr: [0; 4],
                    }
                };
                Ok(true)
            }
            Up::Skip { left } => {
                let k = usize::from(left).min(rest.len());
                if k == 0 {
                    return Ok(false);
                }
                *i += k;
                self.state = if k == usize::from(left) {
                    Up::Header {
                        got: 0,
                        hdr: [0; 4],
                    }
                } else {
                    Up::Skip {
                        left: left - k as u8,
                    }
                };
                Ok(true)
            }
        }
    }
}

// ----------------------------------------------------------------------------- decoder

/// Where the decoder is in the middle proxy's (decrypted) byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Down {
    /// Reading a packet length (a length of 4 is a padding word).
    Len { got: u8, b: [u8; 4] },
    /// Reading the packet number.
    Seq { len: u32, got: u8, b: [u8; 4] },
    /// Reading the RPC header (`need` bytes of the payload, `left` payload bytes to come).
    Head { left: u32, need: u8 },
    /// Moving `left` data bytes to the client, then `pad` random bytes.
    Data { left: u32, pad: u8 },
    /// Skipping `left` payload bytes.
    Skip { left: u32 },
    /// Reading the CRC-32.
    Crc { got: u8, b: [u8; 4] },
}

/// Middle proxy → client (see the module doc).
#[derive(Clone, Debug)]
pub struct Decoder {
    cbc: CompactCbc,
    seq: i32,
    crc: Crc32,
    state: Down,
    /// Ciphertext not yet making a whole block.
    carry: [u8; 16],
    carry_len: u8,
    /// The RPC header of the current packet.
    hdr: [u8; 32],
    hdr_got: u8,
    tag: Tag,
    conn_id: u64,
    /// The handshake answer is still expected (packet -1).
    handshake: bool,
    /// The handshake answer's 32 bytes once its CRC checked out.
    pub(crate) answer: Option<[u8; 32]>,
}

/// What [`Decoder::decode`] produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes for the client at `buf[at..at + out]`.
    pub out: usize,
    /// The middle proxy sent `RPC_CLOSE_EXT`: after the output, close the client.
    pub closed: bool,
    /// The middle proxy sent `RPC_PING(id)`: answer with [`Encoder::queue_pong`].
    pub ping: Option<u64>,
    /// `RPC_PONG`s received (answers to [`Encoder::queue_ping`]).
    pub pongs: u32,
}

impl Decoder {
    /// A decoder expecting the handshake answer (packet -1) under `cbc`.
    pub(crate) fn for_handshake(cbc: CompactCbc) -> Decoder {
        Decoder {
            cbc,
            seq: -1,
            crc: Crc32::new(),
            state: Down::Len { got: 0, b: [0; 4] },
            carry: [0; 16],
            carry_len: 0,
            hdr: [0; 32],
            hdr_got: 0,
            tag: Tag::Intermediate,
            conn_id: 0,
            handshake: true,
            answer: None,
        }
    }

    /// Decrypts and decodes `buf[at + HEADROOM..at + HEADROOM + len]`, writing the client's
    /// bytes to `buf[at..]` (see the module doc). `buf` must hold `at + HEADROOM + len` bytes.
    #[inline(never)]
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        at: usize,
        len: usize,
        rng: &mut dyn Rng,
    ) -> Result<Decoded, MeError> {
        let carry = usize::from(self.carry_len);
        let start = at + HEADROOM - carry;
        let end = at + HEADROOM + len;
        buf[start..at + HEADROOM].copy_from_slice(&self.carry[..carry]);
        let whole = (end - start) / 16 * 16;
        let stop = start + whole;
        self.cbc.decrypt(&mut buf[start..stop]);
        self.carry_len = (end - stop) as u8;
        self.carry[..end - stop].copy_from_slice(&buf[stop..end]);
        let mut d = Decoded::default();
        let (mut r, mut w) = (start, at);
        while r < stop {
            self.step(buf, &mut r, stop, &mut w, &mut d, rng)?;
        }
        d.out = w - at;
        Ok(d)
    }

    /// Writes `bytes` at `w`, which must stay behind the read position `r`.
    fn emit(buf: &mut [u8], w: &mut usize, r: usize, bytes: &[u8]) -> Result<(), MeError> {
        if *w + bytes.len() > r {
            // Cannot happen with HEADROOM (see the module doc); refuse rather than corrupt.
            return Err(MeError::BadAnswer);
        }
        buf[*w..*w + bytes.len()].copy_from_slice(bytes);
        *w += bytes.len();
        Ok(())
    }

    fn step(
        &mut self,
        buf: &mut [u8],
        r: &mut usize,
        stop: usize,
        w: &mut usize,
        d: &mut Decoded,
        rng: &mut dyn Rng,
    ) -> Result<(), MeError> {
        let avail = stop - *r;
        match self.state {
            Down::Len { mut got, mut b } => {
                let k = (4 - usize::from(got)).min(avail);
                b[usize::from(got)..usize::from(got) + k].copy_from_slice(&buf[*r..*r + k]);
                *r += k;
                got += k as u8;
                if got < 4 {
                    self.state = Down::Len { got, b };
                    return Ok(());
                }
                let len = le32(&b);
                if len == 4 {
                    self.state = Down::Len { got: 0, b: [0; 4] };
                    return Ok(());
                }
                if len % 4 != 0 || !(16..=MAX_PACKET).contains(&len) {
                    return Err(MeError::BadLength);
                }
                self.crc = Crc32::new();
                self.crc.update(&b);
                self.state = Down::Seq {
                    len,
                    got: 0,
                    b: [0; 4],
                };
            }
            Down::Seq {
                len,
                mut got,
                mut b,
            } => {
                let k = (4 - usize::from(got)).min(avail);
                b[usize::from(got)..usize::from(got) + k].copy_from_slice(&buf[*r..*r + k]);
                *r += k;
                got += k as u8;
                if got < 4 {
                    self.state = Down::Seq { len, got, b };
                    return Ok(());
                }
                self.crc.update(&b);
                if le32(&b) as i32 != self.seq {
                    return Err(MeError::BadSeq);
                }
                self.seq = self.seq.wrapping_add(1);
                self.hdr_got = 0;
                self.state = Down::Head {
                    left: len - 12,
                    need: 4,
                };
            }
            Down::Head { left, need } => {
                let got = usize::from(self.hdr_got);
                let k = (usize::from(need) - got).min(avail);
                self.hdr[got..got + k].copy_from_slice(&buf[*r..*r + k]);
                self.crc.update(&buf[*r..*r + k]);
                *r += k;
                self.hdr_got += k as u8;
                let left = left - k as u32;
                if self.hdr_got < need {
                    self.state = Down::Head { left, need };
                    return Ok(());
                }
                let kind = le32(&self.hdr);
                let payload = u32::from(need) + left;
                if need == 4 {
                    let full: u32 = match kind {
                        RPC_PROXY_ANS | RPC_SIMPLE_ACK => 16,
                        RPC_CLOSE_EXT | RPC_PING | RPC_PONG => 12,
                        RPC_HANDSHAKE if self.handshake => 32,
                        _ => 4,
                    };
                    let more = full.min(payload);
                    if more > 4 {
                        self.state = Down::Head {
                            left,
                            need: more as u8,
                        };
                        return Ok(());
                    }
                }
                self.state = self.header_done(kind, payload, left, buf, w, *r, d, rng)?;
            }
            Down::Data { left, pad } => {
                let k = (left as usize).min(avail);
                self.crc.update(&buf[*r..*r + k]);
                buf.copy_within(*r..*r + k, *w);
                *r += k;
                *w += k;
                let left = left - k as u32;
                if left > 0 {
                    self.state = Down::Data { left, pad };
                    return Ok(());
                }
                if pad > 0 {
                    let mut p = [0u8; 3];
                    rng.fill(&mut p[..usize::from(pad)]);
                    Self::emit(buf, w, *r, &p[..usize::from(pad)])?;
                }
                self.state = Down::Crc { got: 0, b: [0; 4] };
            }
            Down::Skip { left } => {
                let k = (left as usize).min(avail);
                self.crc.update(&buf[*r..*r + k]);
                *r += k;
                let left = left - k as u32;
                self.state = if left > 0 {
                    Down::Skip { left }
                } else {
                    Down::Crc { got: 0, b: [0; 4] }
                };
            }
            Down::Crc { mut got, mut b } => {
                let k = (4 - usize::from(got)).min(avail);
                b[usize::from(got)..usize::from(got) + k].copy_from_slice(&buf[*r..*r + k]);
                *r += k;
                got += k as u8;
                if got < 4 {
                    self.state = Down::Crc { got, b };
                    return Ok(());
                }
                if le32(&b) != self.crc.value() {
                    return Err(MeError::BadCrc);
                }
                if self.handshake && self.answer.is_none() {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&self.hdr);
                    self.answer = Some(a);
                    self.handshake = false;
                }
                self.state = Down::Len { got: 0, b: [0; 4] };
            }
        }
        Ok(())
    }

    /// The RPC header of a packet is complete (`payload` bytes in all, `left` after the
    /// header): act on it and say what comes next.
    #[allow(clippy::too_many_arguments)]
    fn header_done(
        &mut self,
        kind: u32,
        payload: u32,
        left: u32,
        buf: &mut [u8],
        w: &mut usize,
        r: usize,
        d: &mut Decoded,
        rng: &mut dyn Rng,
    ) -> Result<Down, MeError> {
        let skip = |left: u32| {
            if left > 0 {
                Down::Skip { left }
            } else {
                Down::Crc { got: 0, b: [0; 4] }
            }
        };
        if self.handshake {
            // Packet -1 must be the handshake answer.
            return match kind {
                RPC_HANDSHAKE if payload == 32 => Ok(skip(left)),
                RPC_HANDSHAKE_ERROR => Err(MeError::HandshakeRefused),
                _ => Err(MeError::BadHandshake),
            };
        }
        let conn = || le64(&self.hdr[4..12]);
        match kind {
            RPC_PROXY_ANS => {
                // (`left` is a multiple of 4: packet lengths are.)
                if payload < 16 {
                    return Err(MeError::BadAnswer);
                }
                if le64(&self.hdr[8..16]) != self.conn_id {
                    return Err(MeError::BadConnId);
                }
                let mut h = [0u8; 4];
                let (n, pad) = match self.tag {
                    Tag::Abridged if left / 4 < 0x7f => {
                        h[0] = (left / 4) as u8;
                        (1, 0)
                    }
                    Tag::Abridged => {
                        h = ((left / 4) << 8 | 0x7f).to_le_bytes();
                        (4, 0)
                    }
                    Tag::Intermediate => {
                        h = left.to_le_bytes();
                        (4, 0)
                    }
                    Tag::Padded => {
                        let pad = rng.below(4);
                        h = (left + pad).to_le_bytes();
                        (4, pad as u8)
                    }
                };
                Self::emit(buf, w, r, &h[..n])?;
                Ok(if left > 0 {
                    Down::Data { left, pad }
                } else if pad > 0 {
                    Down::Data { left: 0, pad }
                } else {
                    Down::Crc { got: 0, b: [0; 4] }
                })
            }
            RPC_SIMPLE_ACK if payload == 16 => {
                if conn() != self.conn_id {
                    return Err(MeError::BadConnId);
                }
                let mut c = [0u8; 4];
                c.copy_from_slice(&self.hdr[12..16]);
                if self.tag == Tag::Abridged {
                    c.reverse();
                }
                Self::emit(buf, w, r, &c)?;
                Ok(skip(left))
            }
            RPC_CLOSE_EXT if payload == 12 => {
                if conn() != self.conn_id {
                    return Err(MeError::BadConnId);
                }
                d.closed = true;
                Ok(skip(left))
            }
            RPC_PING if payload == 12 => {
                d.ping = Some(conn());
                Ok(skip(left))
            }
            RPC_PONG => {
                d.pongs += 1;
                Ok(skip(left))
            }
            // Unknown operations are ignored, as MTProxy does.
            _ => Ok(skip(left)),
        }
    }
}
