//! Telegram's middle-proxy ("ME") RPC protocol, the way a proxy with an ad tag talks to
//! Telegram: sans-IO, for one TCP connection to one middle proxy per client connection.
//!
//! Learned from the official MTProxy (`net/net-tcp-rpc-client.c`, `net-tcp-rpc-common.c`,
//! `net-crypto-aes.c`, `mtproto/mtproto-proxy.c`) and alexbers/mtprotoproxy; written here from
//! that description. Everything is little-endian.
//!
//! **Packets.** `[len u32][seq i32][payload][crc32 u32]`, `len` counting all four parts (a
//! multiple of 4, at least 16). `crc32` is CRC-32/ISO-HDLC over `len`, `seq` and the payload.
//! Each side numbers its packets from -2: -2 is the nonce, -1 the handshake, then 0, 1, 2…
//! Once encrypted, a sender pads its output to whole 16-byte blocks with 4-byte words of
//! value 4 (a "packet" of length 4), which the reader skips.
//!
//! **Handshake** ([`handshake::MeHandshake`]). In clear: we send `RPC_NONCE(key_select =
//! first 4 bytes of the proxy secret, schema = 1 (AES), crypto_ts = our unix time, nonce[16])`;
//! the middle proxy answers the same with its own nonce (its `crypto_ts` within 30 s of ours).
//! Both then switch to AES-256-CBC with keys from [`derive_keys`], chained across packets for
//! the life of the connection: we send `RPC_HANDSHAKE(flags 0, sender_pid[12], peer_pid[12])`,
//! it answers `RPC_HANDSHAKE` echoing our pid (or `RPC_HANDSHAKE_ERROR`).
//!
//! **Session** ([`codec`]). Each client packet becomes one `RPC_PROXY_REQ(flags, conn_id,
//! client ip[16] port[4], our ip[16] port[4], extra)`: the extra is `TL_PROXY_TAG` with the
//! ad tag as a TL string. Answers are `RPC_PROXY_ANS(flags, conn_id, data)`, `RPC_SIMPLE_ACK
//! (conn_id, confirm)` (a quick ack for the client) and `RPC_CLOSE_EXT(conn_id)` (the middle
//! proxy closed the client's session); `RPC_PING(id)` is answered with `RPC_PONG(id)`; we
//! send `RPC_CLOSE_CONN(conn_id)` when the client leaves.
//!
//! What is not here: sockets, timers, the choice of middle proxy, reconnects (the I/O layer).

pub mod codec;
pub mod handshake;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::hash::{md5, sha1};

/// `RPC_NONCE`: the first packet of each side (in clear).
pub const RPC_NONCE: u32 = 0x7acb_87aa;
/// `RPC_HANDSHAKE`: the second packet of each side (encrypted).
pub const RPC_HANDSHAKE: u32 = 0x7682_eef5;
/// `RPC_HANDSHAKE_ERROR`: the middle proxy refused our handshake.
pub const RPC_HANDSHAKE_ERROR: u32 = 0x6a27_beda;
/// A client packet toward Telegram.
pub const RPC_PROXY_REQ: u32 = 0x36ce_f1ee;
/// A packet from Telegram for a client.
pub const RPC_PROXY_ANS: u32 = 0x4403_da0d;
/// We tell the middle proxy a client left.
pub const RPC_CLOSE_CONN: u32 = 0x1fcf_425d;
/// The middle proxy tells us to close a client.
pub const RPC_CLOSE_EXT: u32 = 0x5eb6_34a2;
/// A quick acknowledgement for a client.
pub const RPC_SIMPLE_ACK: u32 = 0x3bac_409b;
/// Keep-alive request (either side), answered with [`RPC_PONG`].
pub const RPC_PING: u32 = 0x5730_a2df;
/// Keep-alive answer.
pub const RPC_PONG: u32 = 0x8430_eaa7;
/// The TL constructor of the ad tag in a [`RPC_PROXY_REQ`]'s extra.
pub const TL_PROXY_TAG: u32 = 0xdb1e_26ae;
/// `crypto_schema` of an AES nonce.
pub const CRYPTO_AES: u32 = 1;

/// `RPC_PROXY_REQ` flag: the message is not encrypted by MTProto (its auth_key_id is 0).
pub const FLAG_NOT_ENCRYPTED: u32 = 0x2;
/// `RPC_PROXY_REQ` flag: an ad tag follows in the extra.
pub const FLAG_HAS_AD_TAG: u32 = 0x8;
/// `RPC_PROXY_REQ` flag: always set by proxies (MTProxy's "magic").
pub const FLAG_MAGIC: u32 = 0x1000;
/// `RPC_PROXY_REQ` flag: the client used an obfuscated2 transport.
pub const FLAG_EXTMODE2: u32 = 0x2_0000;
/// `RPC_PROXY_REQ` flag: padded intermediate transport (`dd`).
pub const FLAG_PAD: u32 = 0x800_0000;
/// `RPC_PROXY_REQ` flag: intermediate transport (`ee`, and `dd` with [`FLAG_PAD`]).
pub const FLAG_INTERMEDIATE: u32 = 0x2000_0000;
/// `RPC_PROXY_REQ` flag: abridged transport (`ef`).
pub const FLAG_ABRIDGED: u32 = 0x4000_0000;
/// `RPC_PROXY_REQ` flag: the client asked for a quick ack of this packet.
pub const FLAG_QUICKACK: u32 = 0x8000_0000;

/// The 4-byte padding word (a length of 4) that fills encrypted output to whole blocks.
pub const PAD_WORD: [u8; 4] = [4, 0, 0, 0];
/// Smallest proxy secret MTProxy accepts (`MIN_PWD_LEN`).
pub const MIN_SECRET: usize = 32;
/// Largest proxy secret MTProxy accepts (`MAX_PWD_LEN`).
pub const MAX_SECRET: usize = 256;
/// Largest packet accepted from a middle proxy (len field).
pub const MAX_PACKET: u32 = 1 << 24;
/// Accepted difference between our and the middle proxy's `crypto_ts` (MTProxy's client check).
pub const MAX_TS_SKEW: u32 = 30;

/// Why a middle-proxy exchange failed. `Copy`, no allocation; `as_str` is the stable label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeError {
    /// A packet length that is not a multiple of 4, too short or too long.
    BadLength,
    /// A packet number out of sequence.
    BadSeq,
    /// A packet whose CRC-32 does not match.
    BadCrc,
    /// The nonce answer is malformed or names another key or schema.
    BadNonce,
    /// The middle proxy's clock differs from ours by more than [`MAX_TS_SKEW`] seconds.
    ClockSkew,
    /// The handshake answer is malformed, has unknown flags or does not echo our pid.
    BadHandshake,
    /// The middle proxy answered `RPC_HANDSHAKE_ERROR` (wrong proxy secret, wrong address…).
    HandshakeRefused,
    /// An answer for another client connection id.
    BadConnId,
    /// A malformed answer (`RPC_PROXY_ANS` shorter than its header).
    BadAnswer,
    /// The client's transport framing is invalid (zero or malformed length).
    BadClientPacket,
    /// A client packet over [`codec::MAX_CLIENT_PACKET`] bytes.
    ClientPacketTooLarge,
    /// The proxy secret is shorter than [`MIN_SECRET`] or longer than [`MAX_SECRET`] bytes.
    BadSecret,
}

impl MeError {
    /// A short, stable, lowercase label (logs, doctor).
    pub fn as_str(self) -> &'static str {
        match self {
            MeError::BadLength => "bad-packet-length",
            MeError::BadSeq => "bad-packet-seq",
            MeError::BadCrc => "bad-crc32",
            MeError::BadNonce => "bad-nonce",
            MeError::ClockSkew => "clock-skew",
            MeError::BadHandshake => "bad-handshake",
            MeError::HandshakeRefused => "handshake-refused",
            MeError::BadConnId => "bad-conn-id",
            MeError::BadAnswer => "bad-answer",
            MeError::BadClientPacket => "bad-client-packet",
            MeError::ClientPacketTooLarge => "client-packet-too-large",
            MeError::BadSecret => "bad-proxy-secret",
        }
    }
}

impl fmt::Display for MeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// AES-256-CBC state of one direction (NIST SP 800-38A), chained across calls: the key and
/// the last ciphertext block. The key schedule is expanded on each call (as
/// [`super::obfs2::CompactCtr`] does), so a connection carries 48 bytes per direction.
#[derive(Clone)]
pub struct CompactCbc {
    key: [u8; 32],
    iv: [u8; 16],
}

impl CompactCbc {
    /// A stream starting from `iv`.
    pub fn new(key: [u8; 32], iv: [u8; 16]) -> CompactCbc {
        CompactCbc { key, iv }
    }

    /// Encrypts the whole blocks of `data` in place (a trailing partial block is untouched).
    pub fn encrypt(&mut self, data: &mut [u8]) {
        mtpx_ctr::cbc_encrypt(&self.key, &mut self.iv, data);
    }

    /// Decrypts the whole blocks of `data` in place (a trailing partial block is untouched).
    /// Built for size with the rest of mtpx, one block at a time (see `crates/ctr-hot` for why
    /// the hot-path crate does not do it): several hundred MB/s per core with AES-NI.
    #[inline(never)]
    pub fn decrypt(&mut self, data: &mut [u8]) {
        use aes::cipher::{BlockCipherDecrypt, KeyInit};
        let aes = aes::Aes256Dec::new(&self.key.into());
        let mut prev = self.iv;
        for b in data.chunks_exact_mut(16) {
            let mut c = [0u8; 16];
            c.copy_from_slice(b);
            let block: &mut [u8; 16] = b.try_into().expect("16-byte chunk");
            aes.decrypt_block(block.into());
            for (x, p) in b.iter_mut().zip(prev) {
                *x ^= p;
            }
            prev = c;
        }
        self.iv = prev;
    }
}

impl fmt::Debug for CompactCbc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompactCbc(..)")
    }
}

/// Keys of one middle-proxy connection, seen from our side.
#[derive(Clone, Debug)]
pub struct Keys {
    /// What we send (the "CLIENT" key).
    pub write: CompactCbc,
    /// What the middle proxy sends (the "SERVER" key).
    pub read: CompactCbc,
}

/// The key derivation of MTProxy's `aes_create_keys` for the client side:
/// `s = nonce_srv . nonce_clt . clt_ts . srv_ip . clt_port . PURPOSE . clt_ip . srv_port .
/// secret . nonce_srv . [clt_ipv6 . srv_ipv6] . nonce_clt`, `key = MD5(s[1..])[..12] .
/// SHA1(s)`, `iv = MD5(s[2..])`, PURPOSE `CLIENT` for what we send and `SERVER` for what we
/// receive. IPv4 addresses go in as 32-bit numbers (little-endian, so the octets reversed) and
/// the IPv6 parts are left out; with IPv6 both IPv4 fields are zero and the 16-byte addresses
/// follow the second server nonce. Ports are 16-bit little-endian. `ours` is our address as the
/// middle proxy sees it (behind NAT: the public address), `theirs` the middle proxy's.
/// Fails only for a secret outside [`MIN_SECRET`]`..=`[`MAX_SECRET`] bytes.
pub fn derive_keys(
    nonce_srv: &[u8; 16],
    nonce_clt: &[u8; 16],
    clt_ts: u32,
    ours: SocketAddr,
    theirs: SocketAddr,
    secret: &[u8],
) -> Result<Keys, MeError> {
    if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
        return Err(MeError::BadSecret);
    }
    let (clt_ip, srv_ip) = (ours.ip().to_canonical(), theirs.ip().to_canonical());
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(u32::from(a).to_le_bytes()),
        IpAddr::V6(_) => None,
    };
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    // Both IPv4: the v4 form; otherwise both as IPv6 (mapped where needed).
    let four = v4(clt_ip).zip(v4(srv_ip));
    let mut s = [0u8; 70 + MAX_SECRET + 32 + 16];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        s[n..n + b.len()].copy_from_slice(b);
        n += b.len();
    };
    put(nonce_srv);
    put(nonce_clt);
    put(&clt_ts.to_le_bytes());
    put(&four.map_or([0; 4], |f| f.1));
    put(&ours.port().to_le_bytes());
    put(b"CLIENT");
    put(&four.map_or([0; 4], |f| f.0));
    put(&theirs.port().to_le_bytes());
    put(secret);
    put(nonce_srv);
    if four.is_none() {
        put(&v6(clt_ip));
        put(&v6(srv_ip));
    }
    put(nonce_clt);
    let key_iv = |s: &[u8]| {
        let mut key = [0u8; 32];
        key[..12].copy_from_slice(&md5(&s[1..])[..12]);
        key[12..].copy_from_slice(&sha1(s));
        CompactCbc::new(key, md5(&s[2..]))
    };
    let write = key_iv(&s[..n]);
    s[42..48].copy_from_slice(b"SERVER");
    let read = key_iv(&s[..n]);
    s.fill(0);
    Ok(Keys { write, read })
}

/// An address as `RPC_PROXY_REQ` carries it: 16 bytes of IPv6 (IPv4 mapped) and the port as
/// a 32-bit little-endian number.
pub fn addr_field(a: SocketAddr) -> [u8; 20] {
    let mut out = [0u8; 20];
    let ip = match a.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&u32::from(a.port()).to_le_bytes());
    out
}

/// Our 12-byte process id (MTProxy's `struct process_id`: ip u32, port u16, pid u16, utime
/// i32): our IPv4 address (0 for IPv6), port 0, a 16-bit id and our start time. The middle
/// proxy echoes it in its handshake answer.
pub fn process_id(ours: IpAddr, pid: u16, utime: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    if let IpAddr::V4(a) = ours.to_canonical() {
        if !a.is_loopback() {
            out[..4].copy_from_slice(&u32::from(a).to_le_bytes());
        }
    }
    out[6..8].copy_from_slice(&pid.to_le_bytes());
    out[8..].copy_from_slice(&utime.to_le_bytes());
    out
}

/// The peer's process id as we expect it: its IPv4 address (0 for loopback or IPv6) and port,
/// pid and time unknown (0: any).
pub fn peer_process_id(theirs: SocketAddr) -> [u8; 12] {
    let mut out = [0u8; 12];
    if let IpAddr::V4(a) = theirs.ip().to_canonical() {
        if !a.is_loopback() {
            out[..4].copy_from_slice(&u32::from(a).to_le_bytes());
        }
    }
    out[4..6].copy_from_slice(&theirs.port().to_le_bytes());
    out
}

/// MTProxy's `matches_pid(x, y)`: every non-zero field of `y` (ip, port, pid, utime) equals
/// the same field of `x`.
pub fn pid_matches(x: &[u8; 12], y: &[u8; 12]) -> bool {
    [0..4, 4..6, 6..8, 8..12]
        .into_iter()
        .all(|r| y[r.clone()].iter().all(|&b| b == 0) || x[r.clone()] == y[r])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Writes one unencrypted-layout packet `[len][seq][payload][crc]` into `out` (which must hold
/// `payload.len() + 12` bytes) and returns its length.
pub fn write_packet(out: &mut [u8], seq: i32, payload: &[u8]) -> usize {
    let len = payload.len() + 12;
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&seq.to_le_bytes());
    out[8..len - 4].copy_from_slice(payload);
    let crc = super::hash::crc32(&out[..len - 4]);
    out[len - 4..len].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Pads `out[..len]` (`len` a multiple of 4, as packets are) with [`PAD_WORD`]s to whole
/// 16-byte blocks; returns the new length.
pub fn pad_to_block(out: &mut [u8], mut len: usize) -> usize {
    while len % 16 != 0 {
        let k = (16 - len % 16).min(4);
        out[len..len + k].copy_from_slice(&PAD_WORD[..k]);
        len += k;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::encoding::hex_encode;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const KEY_V4_CLIENT: &str = "392ebc3020a45360ee0b4262e0ac9347029dfb598aa40c9ef2076b486a870b22";
    const IV_V4_CLIENT: &str = "d57d120fb70394540652c818f9933aaa";
    const KEY_V4_SERVER: &str = "25f5a41c89a519610303057c163f7f1c0b2029baeb15d0955a165e3c85c4e1f2";
    const IV_V4_SERVER: &str = "9533eae089ade0995efbce15256bf6ce";
    const KEY_V6_CLIENT: &str = "707ce6794439e460e18152f56b3e4e8622dfe12e3b7da2016d50de735f2706ac";
    const IV_V6_CLIENT: &str = "84e5220165e5681b4105a12613776172";
    const KEY_V6_SERVER: &str = "fff828f57905e0143cd2d83bda2aa4dfef1898451d8387887ff22d0415a714bc";
    const IV_V6_SERVER: &str = "0f4d22b91d59f9afbd4f7aa1900d39a3";

    /// Expected keys computed with Python's hashlib from mtprotoproxy's formula
    /// (`get_middleproxy_aes_key_and_iv`), independently of this code:
    /// nonce_srv = 00..0f, nonce_clt = 10..1f, ts = 0x5f5e1000, secret = bytes(range(32, 96)).
    #[test]
    fn derives_the_keys_of_the_reference_formula() {
        let ns: [u8; 16] = std::array::from_fn(|i| i as u8);
        let nc: [u8; 16] = std::array::from_fn(|i| 16 + i as u8);
        let secret: Vec<u8> = (32..96).collect();
        for (ours, theirs, want) in [
            (
                "203.0.113.7:40000",
                "149.154.175.50:8888",
                [KEY_V4_CLIENT, IV_V4_CLIENT, KEY_V4_SERVER, IV_V4_SERVER],
            ),
            (
                "[2001:db8::7]:40000",
                "[2001:b28:f23d:f001::d]:8888",
                [KEY_V6_CLIENT, IV_V6_CLIENT, KEY_V6_SERVER, IV_V6_SERVER],
            ),
        ] {
            let k = derive_keys(&ns, &nc, 0x5f5e_1000, sa(ours), sa(theirs), &secret).unwrap();
            let got = [&k.write.key[..], &k.write.iv, &k.read.key, &k.read.iv].map(hex_encode);
            assert_eq!(got, want, "{ours} -> {theirs}");
        }
    }

    #[test]
    fn rejects_secrets_of_the_wrong_size() {
        let z = [0u8; 16];
        let a = sa("127.0.0.1:1");
        for n in [0, 31, 257] {
            let e = derive_keys(&z, &z, 0, a, a, &vec![1; n]).unwrap_err();
            assert_eq!(e, MeError::BadSecret);
        }
        for n in [32, 128, 256] {
            assert!(derive_keys(&z, &z, 0, a, a, &vec![1; n]).is_ok());
        }
    }

    #[test]
    fn encodes_addresses_and_pids() {
        assert_eq!(
            hex_encode(&addr_field(sa("1.2.3.4:443"))),
            "00000000000000000000ffff01020304bb010000"
        );
        assert_eq!(
            hex_encode(&addr_field(sa("[2001:db8::1]:80"))),
            "20010db800000000000000000000000150000000"
        );
        // A v4-mapped v6 socket address is the v4 one.
        assert_eq!(
            addr_field(sa("[::ffff:1.2.3.4]:443")),
            addr_field(sa("1.2.3.4:443"))
        );
        let p = process_id("10.0.0.1".parse().unwrap(), 0x1234, 0x5566_7788);
        assert_eq!(hex_encode(&p), "0100000a0000341288776655");
        assert_eq!(
            &process_id("127.0.0.1".parse().unwrap(), 1, 2)[..4],
            &[0; 4]
        );
        let peer = peer_process_id(sa("149.154.175.50:8888"));
        assert_eq!(hex_encode(&peer), "32af9a95b822000000000000");
        assert!(pid_matches(&p, &[0; 12]));
        assert!(pid_matches(&p, &p));
        let mut other = p;
        other[7] ^= 1;
        assert!(!pid_matches(&p, &other));
    }

    fn unhex(s: &str) -> Vec<u8> {
        crate::formats::encoding::hex_decode(s).unwrap()
    }

    // NIST SP 800-38A F.2.5 / F.2.6 (CBC-AES256).
    const SP_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const SP_IV: &str = "000102030405060708090a0b0c0d0e0f";
    const SP_PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                            30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
    const SP_CIPHER: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d\
                             39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b";

    fn sp_cbc() -> CompactCbc {
        CompactCbc::new(
            unhex(SP_KEY).try_into().unwrap(),
            unhex(SP_IV).try_into().unwrap(),
        )
    }

    #[test]
    fn cbc_matches_sp800_38a_both_ways_and_chains_across_calls() {
        let mut data = unhex(SP_PLAIN);
        sp_cbc().encrypt(&mut data);
        assert_eq!(hex_encode(&data), SP_CIPHER);
        let mut d = sp_cbc();
        d.decrypt(&mut data);
        assert_eq!(hex_encode(&data), SP_PLAIN);
        assert_eq!(hex_encode(&d.iv), &SP_CIPHER[96..]);
        for split in [0, 16, 32, 48, 64] {
            let mut c = unhex(SP_CIPHER);
            c.extend_from_slice(&[0xaa; 7]);
            let mut d = sp_cbc();
            let (a, b) = c.split_at_mut(split);
            d.decrypt(a);
            d.decrypt(b);
            assert_eq!(hex_encode(&c[..64]), SP_PLAIN, "split {split}");
            assert_eq!(&c[64..], &[0xaa; 7], "a partial block is left alone");
        }
        // Long runs, against one call per block.
        let mut long: Vec<u8> = (0..16 * 21).map(|i| (i * 13 % 256) as u8).collect();
        let plain = long.clone();
        sp_cbc().encrypt(&mut long);
        let mut one = long.clone();
        let mut d = sp_cbc();
        for b in one.chunks_mut(16) {
            d.decrypt(b);
        }
        assert_eq!(one, plain);
        sp_cbc().decrypt(&mut long);
        assert_eq!(long, plain);
    }

    #[test]
    fn writes_packets_and_padding() {
        let mut out = [0u8; 64];
        let n = write_packet(&mut out, -2, &[1, 2, 3, 4]);
        assert_eq!(n, 16);
        assert_eq!(&out[..8], &[16, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(le32(&out[12..16]), crate::proto::hash::crc32(&out[..12]));
        let n = write_packet(&mut out, 0, &[9; 8]);
        assert_eq!(pad_to_block(&mut out, n), 32);
        assert_eq!(&out[20..32], &[4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]);
    }
}

#[cfg(test)]
mod codec_tests;
