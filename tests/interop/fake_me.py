"""A fake Telegram middle proxy ("ME") for tests: what a proxy with an ad tag talks to.

Written from the protocol description (MTProxy's net-tcp-rpc-client.c / net-crypto-aes.c /
mtproto-proxy.c and alexbers/mtprotoproxy, read for facts), independently of mtpx's Rust code:

* RPC packets `[len u32][seq i32][payload][crc32]`, numbered from -2 in each direction; the
  CRC-32 (zlib's) covers len, seq and payload; once encrypted, output is padded to 16-byte
  blocks with 4-byte words of value 4, which the reader skips.
* handshake: RPC_NONCE in clear both ways (key_select = first 4 bytes of the proxy secret,
  schema 1 = AES, crypto_ts within 30 s, 16-byte nonce), then AES-256-CBC (chained for the whole
  connection) with keys from MD5/SHA-1 over the nonces, the client's timestamp, both addresses
  and ports, "CLIENT"/"SERVER" and the secret; then RPC_HANDSHAKE both ways (ours echoes the
  client's pid).
* RPC_PROXY_REQ(flags, conn_id, client addr+port, proxy addr+port, [extra: TL_PROXY_TAG
  ad tag], data): checked (flags, addresses, the ad tag given with --ad-tag) and relayed to the
  fake DC (--dc, e.g. tests/interop/fake_dc.py or the Rust FakeDc) over obfuscated2, one DC
  connection per conn_id; every packet the DC sends back goes to the proxy as RPC_PROXY_ANS.
  A request with the quick-ack flag is acknowledged with RPC_SIMPLE_ACK. RPC_PING gets
  RPC_PONG; RPC_CLOSE_CONN closes the DC side.

Keep-alive on command: a line "ping" on stdin sends RPC_PING on every connection (the answer,
RPC_PONG, is reported as a "pong" event).

Dies mid-session on command: a line "die" on stdin, or --die-after N requests in all, resets
every connection and closes the listener (later connects are refused): failover tests.

Prints one JSON line per event on stdout (the first: {"event": "listening", "port": P}).
Only ever listens on 127.0.0.1.

    python3 fake_me.py --secret-file S --dc 127.0.0.1:9443 [--ad-tag HEX] [--port 0]
"""

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import sys
import time
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_dc  # noqa: E402  (obfuscated2 toward the DC, transport framing)

RPC_NONCE = 0x7ACB87AA
RPC_HANDSHAKE = 0x7682EEF5
RPC_PROXY_REQ = 0x36CEF1EE
RPC_PROXY_ANS = 0x4403DA0D
RPC_CLOSE_CONN = 0x1FCF425D
RPC_CLOSE_EXT = 0x5EB634A2
RPC_SIMPLE_ACK = 0x3BAC409B
RPC_PING = 0x5730A2DF
RPC_PONG = 0x8430EAA7
TL_PROXY_TAG = 0xDB1E26AE

F_NOT_ENCRYPTED = 0x2
F_HAS_AD_TAG = 0x8
F_MAGIC = 0x1000
F_EXTMODE2 = 0x20000
F_PAD = 0x8000000
F_INTERMEDIATE = 0x20000000
F_ABRIDGED = 0x40000000
F_QUICKACK = 0x80000000

PAD_WORD = struct.pack("<I", 4)


def emit(**event):
    print(json.dumps(event), flush=True)


class Refused(Exception):
    """The peer broke the protocol; the connection is closed."""


def crc32(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def packet(seq, payload):
    body = struct.pack("<Ii", len(payload) + 12, seq) + payload
    return body + struct.pack("<I", crc32(body))


def ip_bytes(host):
    """(4 bytes for the IPv4 fields, 16 bytes IPv6 or None): MTProxy's two key layouts."""
    try:
        v4 = socket.inet_pton(socket.AF_INET, host)
        return v4[::-1], None  # a 32-bit number, stored little-endian
    except OSError:
        return b"\0" * 4, socket.inet_pton(socket.AF_INET6, host)


def derive(nonce_srv, nonce_clt, clt_ts, srv, clt, secret, purpose):
    """key, iv for one direction (`purpose` b"CLIENT": what the proxy sends)."""
    srv4, srv6 = ip_bytes(srv[0])
    clt4, clt6 = ip_bytes(clt[0])
    s = nonce_srv + nonce_clt + clt_ts + srv4 + struct.pack("<H", clt[1]) + purpose
    s += clt4 + struct.pack("<H", srv[1]) + secret + nonce_srv
    if srv6 is not None:
        s += clt6 + srv6
    s += nonce_clt
    key = hashlib.md5(s[1:]).digest()[:12] + hashlib.sha1(s).digest()
    return key, hashlib.md5(s[2:]).digest()


def addr_field(b):
    """'ip:port' from 16 bytes of IPv6 (IPv4 mapped) + a 32-bit port."""
    ip = b[:16]
    port = struct.unpack("<I", b[16:20])[0]
    if ip[:12] == b"\0" * 10 + b"\xff\xff":
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, ip[12:]), port)
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, ip), port)


class MeConnection:
    """One proxy connection to this middle proxy."""

    def __init__(self, server, reader, writer):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.dec = None
        self.enc = None
        self.plain = b""
        self.in_seq = -2
        self.out_seq = -2
        self.links = {}  # conn_id -> (DC writer, DC encrypt, task)

    # --- packets ------------------------------------------------------------------------

    async def take(self, n):
        while len(self.plain) < n:
            if self.dec is None:
                self.plain += await self.reader.readexactly(n - len(self.plain))
            else:
                need = -(-(n - len(self.plain)) // 16) * 16
                self.plain += self.dec.update(await self.reader.readexactly(need))
        out, self.plain = self.plain[:n], self.plain[n:]
        return out

    async def read(self):
        while True:
            head = await self.take(4)
            n = struct.unpack("<I", head)[0]
            if n == 4:
                continue
            if n % 4 or n < 16 or n > 1 << 24:
                raise Refused("bad packet length %d" % n)
            rest = await self.take(n - 4)
            body, crc = head + rest[:-4], struct.unpack("<I", rest[-4:])[0]
            if crc32(body) != crc:
                raise Refused("bad crc32")
            seq = struct.unpack("<i", body[4:8])[0]
            if seq != self.in_seq:
                raise Refused("packet %d where %d was expected" % (seq, self.in_seq))
            self.in_seq += 1
            return body[8:]

    def write(self, payload):
        data = packet(self.out_seq, payload)
        self.out_seq += 1
        if self.enc is not None:
            while len(data) % 16:
                data += PAD_WORD
            data = self.enc.update(data)
        self.writer.write(data)

    # --- handshake ----------------------------------------------------------------------

    async def handshake(self):
        p = await self.read()
        if len(p) != 32:
            raise Refused("nonce of %d bytes" % len(p))
        kind, key_sel, schema, ts = struct.unpack("<I4sII", p[:16])
        if kind != RPC_NONCE or key_sel != self.server.secret[:4] or schema != 1:
            raise Refused("bad nonce (type %x, schema %d)" % (kind, schema))
        if abs(ts - int(time.time())) > 30:
            raise Refused("client clock off by %d s" % (ts - int(time.time())))
        nonce_clt = p[16:32]
        nonce_srv = os.urandom(16)
        my_ts = int(time.time()) & 0xFFFFFFFF
        self.write(struct.pack("<I4sII", RPC_NONCE, key_sel, 1, my_ts) + nonce_srv)
        await self.writer.drain()
        srv = self.writer.get_extra_info("sockname")[:2]
        clt = self.writer.get_extra_info("peername")[:2]
        args = (nonce_srv, nonce_clt, p[12:16], srv, clt, self.server.secret)
        rkey, riv = derive(*args, b"CLIENT")
        wkey, wiv = derive(*args, b"SERVER")
        self.dec = Cipher(algorithms.AES(rkey), modes.CBC(riv)).decryptor()
        self.enc = Cipher(algorithms.AES(wkey), modes.CBC(wiv)).encryptor()
        try:
            h = await self.read()
        except Refused as e:
            raise Refused("handshake packet: %s (wrong keys?)" % e) from None
        if len(h) != 32 or struct.unpack("<I", h[:4])[0] != RPC_HANDSHAKE:
            raise Refused("bad handshake packet")
        flags = struct.unpack("<I", h[4:8])[0]
        if flags:
            raise Refused("handshake flags %x" % flags)
        sender_pid = h[8:20]
        my_pid = struct.pack("<IHHI", 0, 8888, os.getpid() & 0xFFFF, int(time.time()))
        self.write(struct.pack("<II", RPC_HANDSHAKE, 0) + my_pid + sender_pid)
        await self.writer.drain()
        emit(event="handshake", peer="%s:%d" % clt, pid=sender_pid.hex())

    # --- session ------------------------------------------------------------------------

    async def serve(self):
        while True:
            p = await self.read()
            kind = struct.unpack("<I", p[:4])[0]
            if kind == RPC_PROXY_REQ:
                await self.proxy_req(p)
            elif kind == RPC_PING and len(p) == 12:
                emit(event="ping")
                self.write(struct.pack("<I", RPC_PONG) + p[4:12])
            elif kind == RPC_PONG and len(p) == 12:
                emit(event="pong", id=struct.unpack("<Q", p[4:12])[0])
            elif kind == RPC_CLOSE_CONN and len(p) == 12:
                conn_id = struct.unpack("<Q", p[4:12])[0]
                emit(event="close_conn", conn_id=conn_id)
                link = self.links.pop(conn_id, None)
                if link:
                    link[0].close()
            else:
                raise Refused("unexpected packet type %x" % kind)

    async def proxy_req(self, p):
        if len(p) < 56:
            raise Refused("short RPC_PROXY_REQ")
        flags, conn_id = struct.unpack("<IQ", p[4:16])
        client, ours = addr_field(p[16:36]), addr_field(p[36:56])
        at = 56
        ad_tag = None
        if flags & F_HAS_AD_TAG:
            extra = struct.unpack("<I", p[56:60])[0]
            if extra % 4 or 60 + extra > len(p):
                raise Refused("bad extra size %d" % extra)
            x = p[60 : 60 + extra]
            if struct.unpack("<I", x[:4])[0] != TL_PROXY_TAG or x[4] != 16:
                raise Refused("extra is not a proxy tag")
            ad_tag = x[5:21].hex()
            at = 60 + extra
        data = p[at:]
        if not flags & F_MAGIC or not flags & F_EXTMODE2:
            raise Refused("flags %x lack magic/extmode2" % flags)
        if flags & (F_ABRIDGED | F_INTERMEDIATE) in (0, F_ABRIDGED | F_INTERMEDIATE):
            raise Refused("flags %x name no single transport" % flags)
        if bool(flags & F_NOT_ENCRYPTED) != (data[:8] == b"\0" * 8 and len(data) >= 8):
            raise Refused("not-encrypted flag does not match the data")
        if self.server.ad_tag is not None and ad_tag != self.server.ad_tag:
            raise Refused("ad tag %s, expected %s" % (ad_tag, self.server.ad_tag))
        self.server.requests += 1
        emit(event="req", conn_id=conn_id, flags=flags, ad_tag=ad_tag, len=len(data),
             client=client, ours=ours, seq=self.in_seq - 1)
        if flags & F_QUICKACK:
            confirm = struct.unpack("<I", hashlib.sha256(data).digest()[:4])[0] | 0x80000000
            self.write(struct.pack("<IQI", RPC_SIMPLE_ACK, conn_id, confirm))
        if conn_id not in self.links:
            await self.open_dc(conn_id, "abridged" if flags & F_ABRIDGED else "intermediate")
        w, enc, tag, _ = self.links[conn_id]
        w.write(enc.apply(fake_dc.encode_packet(tag, data)))
        await w.drain()
        if self.server.die_after and self.server.requests >= self.server.die_after:
            self.server.die()

    async def open_dc(self, conn_id, tag):
        host, port = self.server.dc
        r, w = await asyncio.open_connection(host, port)
        frame, enc, dec = fake_dc.dc_frame(tag, self.server.dc_id)
        w.write(frame)

        async def pump():
            async def readexactly(n):
                return dec.apply(await r.readexactly(n))

            try:
                while True:
                    data, _, _, _ = await fake_dc.read_packet(tag, readexactly)
                    self.write(struct.pack("<IIQ", RPC_PROXY_ANS, 0, conn_id) + data)
                    await self.writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                if conn_id in self.links and not self.writer.is_closing():
                    self.write(struct.pack("<IQ", RPC_CLOSE_EXT, conn_id))
                    emit(event="close_ext", conn_id=conn_id)

        self.links[conn_id] = (w, enc, tag, asyncio.ensure_future(pump()))

    def reset(self):
        """Dies: an RST, not a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()
        for w, _, _, _ in self.links.values():
            w.transport.abort()


class FakeMe:
    def __init__(self, args):
        with open(args.secret_file, "rb") as f:
            self.secret = f.read()
        self.ad_tag = args.ad_tag.lower() if args.ad_tag else None
        host, port = args.dc.rsplit(":", 1)
        self.dc = (host, int(port))
        self.dc_id = args.dc_id
        self.die_after = args.die_after
        self.requests = 0
        self.conns = []
        self.listener = None

    async def handle(self, reader, writer):
        c = MeConnection(self, reader, writer)
        self.conns.append(c)
        try:
            await c.handshake()
            await c.serve()
        except Refused as e:
            emit(event="error", why=str(e))
            writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            emit(event="closed")
        finally:
            for w, _, _, task in c.links.values():
                task.cancel()
                w.close()

    def die(self):
        emit(event="died", requests=self.requests)
        if self.listener is not None:
            self.listener.close()
        for c in self.conns:
            c.reset()

    async def control(self):
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if line.strip() == "die":
                self.die()
            elif line.strip() == "ping":
                # Keep-alive from our side: every proxy connection must answer RPC_PONG.
                for i, c in enumerate(self.conns):
                    if c.enc is not None and not c.writer.is_closing():
                        c.write(struct.pack("<IQ", RPC_PING, 0x70696E6700 + i))
                        emit(event="ping_sent", id=0x70696E6700 + i)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--dc", required=True, help="fake DC, host:port")
    ap.add_argument("--dc-id", type=int, default=2)
    ap.add_argument("--ad-tag", help="expected ad tag (hex); every request must carry it")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--die-after", type=int, default=0, help="die after this many requests")
    me = FakeMe(ap.parse_args())
    me.listener = await asyncio.start_server(me.handle, "127.0.0.1", ap.parse_args().port)
    emit(event="listening", port=me.listener.sockets[0].getsockname()[1])
    asyncio.ensure_future(me.control())
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
