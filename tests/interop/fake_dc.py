"""A fake Telegram DC for interop tests: it sits behind mtpx (via --dc-override).

What it does, per connection (PROTOCOL.md sections 3.3 and 13.2):

* reads mtpx's 64-byte obfuscated2 frame G'.  No secret is involved on this hop:
  proxy->DC key = G'[8..40), iv = G'[40..56); DC->proxy key/iv = reverse(G'[8..56)) split 32/16.
  All 64 bytes are decrypted (so the read stream continues at keystream offset 64) and the
  tag (56..60) and DC id (i16le, 60..62) are taken from the decrypted frame.  It also records
  whether the bytes that were really sent break the "forbidden first bytes" rules.
* reads transport packets in the framing the tag names (abridged, intermediate, padded
  intermediate) and answers each with `answer_for(payload)` in the same framing.
* records everything it saw (`FakeDc.sessions`) so a driver can assert on it.

The answer is a deterministic transform of the request, so a driver can compute the expected
bytes on its own: an unencrypted-MTProto-shaped message (auth_key_id 0, msg_id + 1, length)
whose body is a SHA-256 based stream keyed by SHA-256(request body), as long as the request body.

Also usable on its own:  python3 fake_dc.py --port 9443   (prints one JSON line per session).
Only ever listens on loopback.
"""

import asyncio
import hashlib
import json
import os
import random
import struct
import sys

try:  # fast path; the pure-Python fallback is what Telethon itself uses
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class AesCtr:
        """AES-256-CTR with a 128-bit big-endian counter starting at `iv`."""

        def __init__(self, key, iv):
            assert len(key) == 32 and len(iv) == 16
            self._ctx = Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(iv))).encryptor()

        def apply(self, data):
            return self._ctx.update(bytes(data))

except ImportError:  # pragma: no cover - depends on the venv
    import pyaes

    class AesCtr:
        """AES-256-CTR with a 128-bit big-endian counter starting at `iv`."""

        def __init__(self, key, iv):
            assert len(key) == 32 and len(iv) == 16
            self._aes = pyaes.AESModeOfOperationCTR(bytes(key))
            self._aes._counter._counter = list(iv)

        def apply(self, data):
            return self._aes.encrypt(bytes(data))


TAGS = {
    b"\xef\xef\xef\xef": "abridged",
    b"\xee\xee\xee\xee": "intermediate",
    b"\xdd\xdd\xdd\xdd": "padded",
}
TAG_BYTES = {v: k for k, v in TAGS.items()}
FORBIDDEN_FIRST_WORDS = (b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02",
                         b"\xdd\xdd\xdd\xdd", b"\xee\xee\xee\xee")
MAX_PACKET = 16 << 20


# --- obfuscated2 -----------------------------------------------------------------------------

def frame_problems(wire):
    """Rules a DC frame must follow on the wire (PROTOCOL.md 3.3 step 1, 13.2). [] if fine."""
    problems = []
    if wire[0] == 0xEF:
        problems.append("first byte is 0xef")
    if bytes(wire[0:4]) in FORBIDDEN_FIRST_WORDS:
        problems.append("first word %s is forbidden" % bytes(wire[0:4]).hex())
    if bytes(wire[4:8]) == b"\0\0\0\0":
        problems.append("bytes 4..8 are zero")
    return problems


def dc_accept(wire):
    """DC side of the proxy->DC frame (no secret).

    Returns (tag_name or None, dc, decrypt, encrypt, decrypted_frame); `decrypt` has consumed
    64 bytes of keystream, `encrypt` none.
    """
    assert len(wire) == 64
    wire = bytes(wire)
    rev = wire[8:56][::-1]
    decrypt = AesCtr(wire[8:40], wire[40:56])
    encrypt = AesCtr(rev[0:32], rev[32:48])
    plain = decrypt.apply(wire)
    tag = TAGS.get(plain[56:60])
    dc = struct.unpack("<h", plain[60:62])[0]
    return tag, dc, decrypt, encrypt, plain


def client_keys(frame, secret_key):
    """Client side keys for a client->proxy frame: (encrypt c->p, decrypt p->c)."""
    rev = bytes(frame[8:56])[::-1]
    enc = AesCtr(hashlib.sha256(bytes(frame[8:40]) + secret_key).digest(), bytes(frame[40:56]))
    dec = AesCtr(hashlib.sha256(rev[0:32] + secret_key).digest(), rev[32:48])
    return enc, dec


def client_frame(secret_key, tag_name, dc, rng=os.urandom):
    """A client->proxy obfuscated2 frame: (wire bytes, encrypt (offset 64), decrypt (offset 0))."""
    while True:
        g = bytearray(rng(64))
        if not frame_problems(g) and g[0:4] != b"\xef\xef\xef\xef":
            break
    g[56:60] = TAG_BYTES[tag_name]
    g[60:62] = struct.pack("<h", dc)
    enc, dec = client_keys(g, secret_key)
    g[56:64] = enc.apply(bytes(g))[56:64]
    return bytes(g), enc, dec


def dc_frame(tag_name, dc, rng=os.urandom):
    """A proxy->DC frame the TDLib way (0..56 clear, 56..64 encrypted): (wire, encrypt, decrypt).

    Used by the reference proxy that checks this harness; mtpx has its own.
    """
    while True:
        g = bytearray(rng(64))
        if not frame_problems(g):
            break
    g[56:60] = TAG_BYTES[tag_name]
    g[60:62] = struct.pack("<h", dc)
    rev = bytes(g[8:56])[::-1]
    enc = AesCtr(bytes(g[8:40]), bytes(g[40:56]))
    dec = AesCtr(rev[0:32], rev[32:48])
    g[56:64] = enc.apply(bytes(g))[56:64]
    return bytes(g), enc, dec


# --- transport framing -----------------------------------------------------------------------

def mtproto_len(packet):
    """Length of the MTProto message at the start of `packet`, or None if not recognisable.

    Unencrypted (auth_key_id 0): 20 + inner length.  Encrypted: 24 + a multiple of 16.
    """
    if len(packet) < 20:
        return None
    if packet[0:8] == b"\0" * 8:
        n = 20 + struct.unpack("<I", packet[16:20])[0]
        return n if n <= len(packet) else None
    if len(packet) >= 24 + 16:
        return 24 + (len(packet) - 24) // 16 * 16
    return None


def encode_packet(tag_name, payload, pad=b""):
    """One transport packet carrying `payload` (+ `pad`, padded intermediate only)."""
    if tag_name == "abridged":
        assert len(payload) % 4 == 0 and not pad
        words = len(payload) // 4
        head = bytes([words]) if words < 0x7F else b"\x7f" + words.to_bytes(3, "little")
        return head + payload
    if tag_name == "intermediate":
        assert not pad
        return struct.pack("<I", len(payload)) + payload
    assert len(pad) < 16
    return struct.pack("<I", len(payload) + len(pad)) + payload + pad


async def read_packet(tag_name, readexactly):
    """Reads one packet; returns (payload, raw_len, quick_ack, padding_len)."""
    if tag_name == "abridged":
        b = (await readexactly(1))[0]
        quick_ack = bool(b & 0x80)
        words = b & 0x7F
        if words == 0x7F:
            words = int.from_bytes(await readexactly(3), "little")
        n = words * 4
    else:
        n = struct.unpack("<I", await readexactly(4))[0]
        quick_ack = bool(n & 0x80000000)
        n &= 0x7FFFFFFF
    if n > MAX_PACKET:
        raise ValueError("packet length %d too large" % n)
    raw = await readexactly(n)
    if tag_name != "padded":
        return raw, n, quick_ack, 0
    real = mtproto_len(raw)
    if real is None or n - real > 15:
        raise ValueError("padded packet of %d bytes holds no recognisable MTProto message" % n)
    return raw[:real], n, quick_ack, n - real


# --- the deterministic answer ----------------------------------------------------------------

def expand(seed, n):
    """n bytes: SHA-256(seed || counter_le32) blocks, concatenated."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(seed + struct.pack("<I", i)).digest()
        i += 1
    return bytes(out[:n])


def mtproto_plain(msg_id, body):
    """An unencrypted MTProto message: auth_key_id 0, msg_id, length, body."""
    return b"\0" * 8 + struct.pack("<QI", msg_id, len(body)) + body


def answer_for(payload):
    """The fake DC's answer to a request payload (an MTProto message as bytes)."""
    if payload[0:8] == b"\0" * 8 and len(payload) >= 20:
        msg_id = struct.unpack("<Q", payload[8:16])[0]
        body = payload[20:]
    else:
        msg_id, body = 0, payload
    seed = hashlib.sha256(body).digest()
    return mtproto_plain((msg_id + 1) & 0xFFFFFFFFFFFFFFFF, expand(seed, len(body)))


# --- a handshake-shaped answer (for real clients) --------------------------------------------

REQ_PQ_MULTI = 0xBE7E8EF1
RES_PQ = 0x05162463
VECTOR = 0x1CB5C415
# Telegram's production and test RSA key fingerprints (public constants every client knows).
RSA_FINGERPRINTS = (0xD09D1D85DE64FD85, 0xB25898DF208D2603)
# pq = 1229236417 * 1402015859 (the worked example of Telegram's auth-key documentation).
PQ = 1724114033281923457


def tl_bytes(b):
    """A TL `bytes`/`string` shorter than 254 bytes, padded to 4."""
    out = bytes([len(b)]) + b
    return out + b"\0" * (-len(out) % 4)


def res_pq_answer(payload):
    """resPQ for a req_pq_multi (else None): the nonce echoed, a fresh server_nonce, a pq a
    client factorises in microseconds, and Telegram's key fingerprints, so that a real client
    goes on with req_DH_params#d712e4be (which this DC cannot answer)."""
    if payload[0:8] != b"\0" * 8 or len(payload) < 40:
        return None
    if struct.unpack("<I", payload[20:24])[0] != REQ_PQ_MULTI:
        return None
    nonce = payload[24:40]
    body = (struct.pack("<I", RES_PQ) + nonce + os.urandom(16) + tl_bytes(PQ.to_bytes(8, "big"))
            + struct.pack("<II", VECTOR, len(RSA_FINGERPRINTS))
            + b"".join(struct.pack("<Q", f) for f in RSA_FINGERPRINTS))
    import time
    msg_id = (int(time.time()) << 32) | 1  # a server message: msg_id % 4 == 1
    return mtproto_plain(msg_id, body)


# --- the server ------------------------------------------------------------------------------

class Session:
    """What one accepted connection showed."""

    def __init__(self, peer):
        self.peer = peer
        self.wire_frame = b""
        self.tag = None
        self.dc = None
        self.frame_problems = []
        self.packets = []  # request payloads (padding stripped)
        self.paddings = []
        self.quick_acks = 0
        self.error = None
        self.closed = False

    def summary(self):
        return {
            "peer": "%s:%s" % self.peer[:2] if self.peer else None,
            "tag": self.tag, "dc": self.dc, "frame_problems": self.frame_problems,
            "packets": [len(p) for p in self.packets], "paddings": self.paddings,
            "error": self.error, "closed": self.closed,
        }


class FakeDc:
    """An asyncio fake DC on 127.0.0.1.  `await start()`, then `.port`; `await stop()`."""

    def __init__(self, host="127.0.0.1", port=0, max_pad=3, on_session_end=None, answer=None):
        # Telethon's padded-intermediate reader strips len % 4 bytes, so answer padding is
        # kept within 0..3 by default (the spec allows up to 15).
        self.host, self._port, self.max_pad = host, port, max_pad
        self.sessions = []
        self._server = None
        self._on_end = on_session_end
        # answer(payload) -> bytes to send back, or None for no answer; default answer_for.
        self._answer = answer or answer_for
        self._rng = random.Random(0x6D747078)

    @property
    def port(self):
        return self._server.sockets[0].getsockname()[1]

    def valid_sessions(self):
        return [s for s in self.sessions if s.tag is not None]

    async def start(self):
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        return self

    async def stop(self):
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader, writer):
        s = Session(writer.get_extra_info("peername"))
        self.sessions.append(s)
        try:
            s.wire_frame = await reader.readexactly(64)
            s.frame_problems = frame_problems(s.wire_frame)
            tag, s.dc, decrypt, encrypt, _ = dc_accept(s.wire_frame)
            if tag is None:
                s.error = "bad tag"
                return
            s.tag = tag

            async def readexactly(n):
                return decrypt.apply(await reader.readexactly(n))

            while True:
                try:
                    payload, _n, quick_ack, pad_len = await read_packet(tag, readexactly)
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        s.error = "eof inside a packet"
                    break
                s.packets.append(payload)
                s.paddings.append(pad_len)
                s.quick_acks += quick_ack
                answer = self._answer(payload)
                if answer is None:
                    continue
                pad = b""
                if tag == "padded" and self.max_pad:
                    pad = bytes(self._rng.randrange(256)
                                for _ in range(self._rng.randrange(self.max_pad + 1)))
                writer.write(encrypt.apply(encode_packet(tag, answer, pad)))
                await writer.drain()
        except asyncio.IncompleteReadError:
            s.error = "eof before the 64-byte frame"
        except (ConnectionError, ValueError) as e:
            s.error = "%s: %s" % (type(e).__name__, e)
        finally:
            s.closed = True
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            if self._on_end:
                self._on_end(s)


async def _main(port):
    dc = FakeDc(port=port, on_session_end=lambda s: print(json.dumps(s.summary()), flush=True))
    await dc.start()
    print("fake DC listening on 127.0.0.1:%d" % dc.port, file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(_main(ap.parse_args().port))
    except KeyboardInterrupt:
        pass
