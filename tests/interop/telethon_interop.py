"""End-to-end interop: Telethon's MTProxy connection classes -> mtpx -> fake DC.

For each client kind (dd secret + padded intermediate; classic secret + abridged; classic secret
+ intermediate) this starts a fake DC on 127.0.0.1, starts `mtpx simple-run` with
`--dc-override 2=127.0.0.1:<dc port>`, connects Telethon's connection through it with dc_id 2,
sends MTProto-shaped packets (small, around the abridged length boundary, pipelined, and one
large), and checks the answers byte for byte; the fake DC must have seen the client's tag, DC 2,
exactly the bytes sent and a well-formed proxy->DC frame.  Negative cases: a wrong classic
secret and a non-dd tag on a dd secret must never reach the DC and must be closed by mtpx.
With an ee secret the same checks run through TelethonFakeTLS (a third-party FakeTLS client):
its wrong-key client must be fronted to a stand-in site that gets its ClientHello whole.
mtpx must exit 0 on SIGTERM with no "panic" on stderr.

Env: MTPX_BIN (default target/debug/mtpx), MTPX_VECTORS (default tests/data/mtg).
`--reference` runs the same checks against ref_proxy.py (checks the harness itself).
Last line: "N passed, N failed"; exit status 1 on any failure.  Loopback only.
"""

import asyncio
import base64
import glob
import json
import logging
import os
import signal
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import fake_dc  # noqa: E402
from checks import RESULTS, check, free_port, log  # noqa: E402
from fake_dc import FakeDc, answer_for, mtproto_plain  # noqa: E402
from pqsite import PqSite, learned  # noqa: E402

from telethon.network.connection import (  # noqa: E402
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)
from telethon.network.connection.tcpabridged import AbridgedPacketCodec  # noqa: E402
from telethon.network.connection.tcpintermediate import (  # noqa: E402
    IntermediatePacketCodec,
    RandomizedIntermediatePacketCodec,
)
from telethon.network.connection.tcpmtproxy import MTProxyIO  # noqa: E402

try:
    from TelethonFakeTLS import ConnectionTcpMTProxyFakeTLS  # noqa: E402
except ImportError:  # checked in main: the requirements pin it
    ConnectionTcpMTProxyFakeTLS = None

OVERALL_TIMEOUT = 180  # ~40 s on an idle 2-core machine; pure-Python AES on the client side
STEP_TIMEOUT = 45


class Loggers(dict):
    def __missing__(self, key):
        return logging.getLogger(key)


LOGGERS = Loggers()
PIDS = []  # every proxy started, killed at exit whatever happened




def first_diff(a, b):
    """Where two byte strings (or lists of them) first differ, for failure messages."""
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return "item %d: %s" % (i, first_diff(x, y))
        return "%d items vs %d" % (len(a), len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "lengths %d/%d, first difference at byte %d (%02x vs %02x)" % (
                len(a), len(b), i, x, y)
    return "lengths %d/%d, one is a prefix of the other" % (len(a), len(b))


# --- harness self-checks (no mtpx needed) ----------------------------------------------------

def b64any(s):
    s = s.replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4))


async def self_checks():
    # 1. mtg's obfuscation fixtures: the proxy side of a client frame.
    vec_dir = os.environ.get("MTPX_VECTORS", os.path.join(ROOT, "tests", "data", "mtg"))
    files = sorted(glob.glob(os.path.join(
        vec_dir, "mtglib", "internal", "obfuscation", "testdata", "*.json")))
    check("self: mtg obfuscation vectors found under %s" % vec_dir, files)
    for path in files:
        v = json.load(open(path))
        key, frame = b64any(v["secret"]), b64any(v["frame"])
        c2p, p2c = fake_dc.client_keys(frame, key)
        plain = c2p.apply(frame)
        dc = struct.unpack("<h", plain[60:62])[0]
        ok = (plain[56:60] == b"\xdd" * 4 and dc == v["dc"]
              and c2p.apply(b64any(v["decrypted"]["cipher"])) == b64any(v["decrypted"]["text"])
              and p2c.apply(b64any(v["encrypted"]["text"])) == b64any(v["encrypted"]["cipher"]))
        check("self: mtg vector %s" % os.path.basename(path), ok)

    # 2. Telethon's own client frame, parsed with our proxy-side key derivation.
    key = os.urandom(16)
    for codec, tag in ((AbridgedPacketCodec, "abridged"), (IntermediatePacketCodec, "intermediate"),
                       (RandomizedIntermediatePacketCodec, "padded")):
        header, t_enc, t_dec = MTProxyIO.init_header(key, -2, codec)
        c2p, p2c = fake_dc.client_keys(header, key)
        plain = c2p.apply(bytes(header))
        data = os.urandom(100)
        ok = (fake_dc.TAGS.get(plain[56:60]) == tag
              and struct.unpack("<h", plain[60:62])[0] == -2
              and c2p.apply(t_enc.encrypt(data)) == data
              and t_dec.encrypt(p2c.apply(data)) == data)
        check("self: Telethon %s frame parses on the proxy side" % tag, ok)

    # 3. Our DC frame round trip and framing against Telethon's codecs.
    for tag in ("abridged", "intermediate", "padded"):
        wire, enc, dec = fake_dc.dc_frame(tag, -4)
        got_tag, dc, d_dec, d_enc, _ = fake_dc.dc_accept(wire)
        ok = got_tag == tag and dc == -4 and not fake_dc.frame_problems(wire)
        ok = ok and d_dec.apply(enc.apply(b"abcd")) == b"abcd" and dec.apply(d_enc.apply(b"x")) == b"x"
        check("self: DC frame round trip (%s)" % tag, ok)

    codecs = {"abridged": AbridgedPacketCodec, "intermediate": IntermediatePacketCodec,
              "padded": RandomizedIntermediatePacketCodec}
    ok = True
    for tag, codec in codecs.items():
        for n in (0, 4, 484, 488, 492, 4096, 70000):
            payload = mtproto_plain(n, os.urandom(n))
            for raw in (codec(None).encode_packet(payload),
                        fake_dc.encode_packet(tag, payload, os.urandom(n % 16) if tag == "padded" else b"")):
                reader = asyncio.StreamReader()
                reader.feed_data(raw)
                reader.feed_eof()
                got = await fake_dc.read_packet(tag, reader.readexactly)
                ok = ok and got[0] == payload and reader.at_eof()
                if tag != "padded":  # Telethon decodes ours (its padded reader wants pad < 4)
                    reader = asyncio.StreamReader()
                    reader.feed_data(fake_dc.encode_packet(tag, payload))
                    reader.feed_eof()
                    ok = ok and await codec(None).read_packet(reader) == payload
    check("self: transport framing agrees with Telethon's codecs", ok)
    check("self: TelethonFakeTLS is installed (tests/interop/requirements.txt)",
          ConnectionTcpMTProxyFakeTLS is not None)
    if ConnectionTcpMTProxyFakeTLS is not None:
        # TelethonFakeTLS reads the ServerHello as exactly 127 bytes: a post-quantum one (a
        # 1,210-byte X25519MLKEM768 ServerHello) fails its check. Its own hello offers x25519
        # only, so mtpx never sends it one (with post-quantum = "mirror" or "off").
        import hmac as hmac_mod
        from TelethonFakeTLS.FakeTLS.FakeTLSHello import MTProxyFakeTLSClientCodec
        key = os.urandom(16)
        h = MTProxyFakeTLSClientCodec(key.hex() + b"example.com".hex())
        h.build_new_client_hello_packet()
        sid = h.client_hello_dict["session_id"]

        def flight(sh_len):
            """A valid server flight (HMAC and all) whose ServerHello record is sh_len bytes."""
            body = b"\x03\x03" + bytes(32) + b"\x20" + sid + bytes(sh_len - 4 - 2 - 32 - 1 - 32)
            f = (b"\x16\x03\x03" + sh_len.to_bytes(2, "big") + b"\x02"
                 + (sh_len - 4).to_bytes(3, "big") + body + b"\x14\x03\x03\x00\x01\x01"
                 + b"\x17\x03\x03\x00\x10" + bytes(16))
            mac = hmac_mod.new(key, h.client_hello_dict["random"] + f, "sha256").digest()
            return f[:11] + mac + f[43:]
        logging.disable(logging.CRITICAL)
        try:
            short_ok = h.verify_server_hello(flight(122))
            long_ok = h.verify_server_hello(flight(1210))
        finally:
            logging.disable(logging.NOTSET)
        check("self: TelethonFakeTLS reads a 122-byte ServerHello, not a 1,210-byte "
              "(X25519MLKEM768) one", short_ok and not long_ok, "%r %r" % (short_ok, long_ok))
        hello = h.glue_pkt()
        check("self: TelethonFakeTLS's hello offers x25519 only (no 0x11ec key share)",
              b"\x00\x1d\x00\x20" in hello and b"\x11\xec\x04\xc0" not in hello)


# --- mtpx process ----------------------------------------------------------------------------

class Proxy:
    def __init__(self, argv_prefix, secret, overrides, extra=()):
        self.port = free_port()
        self.argv = list(argv_prefix) + ["simple-run", "127.0.0.1:%d" % self.port, secret]
        self.argv += list(extra)
        for dc, addr in overrides.items():
            self.argv += ["--dc-override", "%d=%s" % (dc, addr)]
        self.err = tempfile.TemporaryFile()
        self.proc = None

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=self.err, stderr=self.err, cwd=HERE)
        PIDS.append(self.proc.pid)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
                w.close()
                return True
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.1)
        return False

    def why_not(self):
        state = ("exited with code %s" % self.proc.returncode if self.proc.returncode is not None
                 else "running but not accepting on port %d" % self.port)
        return "%s; argv %s; output: %s" % (state, " ".join(self.argv), self.output()[-2000:])

    def output(self):
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    async def stop(self, name):
        if self.proc is None or self.proc.returncode is not None:
            check("%s: mtpx was still running at the end" % name, False,
                  "it exited early with code %s" % (self.proc.returncode if self.proc else None))
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # mtpx's shutdown grace period is 10 s: a connection still open delays the exit.
                rc = await asyncio.wait_for(self.proc.wait(), 15)
                check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "exit code %s" % rc)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                check("%s: mtpx exits 0 on SIGTERM" % name, False,
                      "still running 15 s after SIGTERM; " + self.output()[-3000:])
        out = self.output()
        check("%s: no panic in mtpx output" % name, "panic" not in out.lower(), out[-2000:])
        return out


class FrontSite:
    """A stand-in for the fronting site: records the first TLS record of each connection, then
    closes it (as a site refusing the handshake would)."""

    def __init__(self):
        self.hellos = []
        self.server = None
        self.port = None

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, r, w):
        try:
            head = await asyncio.wait_for(r.readexactly(5), 10)
            body = await asyncio.wait_for(r.readexactly(int.from_bytes(head[3:5], "big")), 10)
            self.hellos.append(head + body)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        w.close()

    def close(self):
        self.server.close()


# --- the cases -------------------------------------------------------------------------------

def new_sessions(dc, before):
    return dc.sessions[before:]


async def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


async def exercise(name, conn_cls, secret, tag, port, dc, dc_id, big_body):
    """A good client: packets out, answers back, byte for byte."""
    before = len(dc.sessions)
    conn = conn_cls("127.0.0.1", 443, dc_id, loggers=LOGGERS, proxy=("127.0.0.1", port, secret))
    try:
        await asyncio.wait_for(conn.connect(timeout=5), 10)
    except Exception as e:  # noqa: BLE001 - reported as a failure
        check("%s: connects through mtpx" % name, False, "%s: %s" % (type(e).__name__, e))
        return
    check("%s: connects through mtpx" % name, True)
    sent = []
    msg_id = (int(time.time()) << 32)

    async def roundtrip(bodies, timeout):
        nonlocal msg_id
        payloads = []
        for body in bodies:
            msg_id += 4
            payloads.append(mtproto_plain(msg_id, body))
        for p in payloads:
            await asyncio.wait_for(conn.send(p), timeout)
            sent.append(p)
        got = []
        for _ in payloads:
            got.append(await asyncio.wait_for(conn.recv(), timeout))
        return payloads, got

    try:
        # 484/488/492-byte bodies put the abridged length right around the 1-byte limit.
        for size in (4, 100, 484, 488, 492, 4096):
            ps, got = await roundtrip([os.urandom(size)], 10)
            if not check("%s: %d-byte body answered byte for byte" % (name, size),
                         got[0] == answer_for(ps[0]),
                         first_diff(got[0], answer_for(ps[0]))):
                break
        ps, got = await roundtrip([os.urandom(n) for n in (8, 12, 16, 2048, 40)], 10)
        want = [answer_for(p) for p in ps]
        check("%s: 5 pipelined packets answered in order" % name, got == want,
              first_diff(got, want))
        t0 = time.monotonic()
        ps, got = await roundtrip([os.urandom(big_body)], STEP_TIMEOUT)
        check("%s: %d-byte body answered byte for byte" % (name, big_body),
              got[0] == answer_for(ps[0]), first_diff(got[0], answer_for(ps[0])))
        log("large packet round trip: %.1f s" % (time.monotonic() - t0))
    except Exception as e:  # noqa: BLE001
        check("%s: exchange" % name, False, "%s: %s" % (type(e).__name__, e))

    sess = new_sessions(dc, before)
    if check("%s: fake DC saw exactly one connection" % name, len(sess) == 1,
             "saw %d: %s" % (len(sess), [s.summary() for s in sess])):
        s = sess[0]
        check("%s: DC got the client's tag (%s)" % (name, tag), s.tag == tag, "got %s" % s.tag)
        # PROTOCOL.md 3.2 step 6 (kept by mtpx): a negative (media) DC index is routed by its
        # own override, but the DC frame carries abs(DC).
        check("%s: DC got dc id %d" % (name, abs(dc_id)), s.dc == abs(dc_id), "got %s" % s.dc)
        check("%s: DC frame obeys the first-bytes rules" % name, not s.frame_problems,
              "%s; wire frame %s" % (s.frame_problems, s.wire_frame.hex()))
        check("%s: DC received exactly the packets sent" % name, s.packets == sent,
              first_diff(s.packets, sent))
        check("%s: no transport error at the DC" % name, s.error is None, str(s.error))
        await conn.disconnect()
        check("%s: mtpx closes the DC side when the client leaves" % name,
              await wait_until(lambda: s.closed, 5))
    else:
        await conn.disconnect()


async def rejected(name, conn_cls, secret, port, dc):
    """A client mtpx must refuse: it is closed, and nothing reaches the DC."""
    before = len(dc.sessions)
    conn = conn_cls("127.0.0.1", 443, 2, loggers=LOGGERS, proxy=("127.0.0.1", port, secret))
    closed, how = False, ""
    try:
        # Telethon waits 2 s for the proxy to close after its frame.
        await asyncio.wait_for(conn.connect(timeout=5), 10)
        try:
            await asyncio.wait_for(conn.send(mtproto_plain(4, os.urandom(64))), 3)
            reply = await asyncio.wait_for(conn.recv(), 5)
            how = "got a %d-byte reply" % len(reply)
        except asyncio.TimeoutError:
            how = "connection still open after 7 s"
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            closed, how = True, "closed after first packet (%s)" % type(e).__name__
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        closed, how = True, "%s: %s" % (type(e).__name__, e)
    finally:
        await conn.disconnect()
        # Telethon's disconnect() does nothing after a failed connect(): close the socket here,
        # or mtpx keeps the (fronted) connection open until its idle timeout.
        if getattr(conn, "_writer", None) is not None:
            conn._writer.close()
    check("%s: mtpx closes the client" % name, closed, how)
    if closed:
        log(how)
    sess = new_sessions(dc, before)
    check("%s: nothing reaches the DC" % name, not sess, str([s.summary() for s in sess]))


async def ad_tag_cases(argv_prefix, dc):
    from harness import AD_TAG, FakeMeProc
    tmp = tempfile.mkdtemp(prefix="mtpx-telethon-adtag-")
    me = FakeMeProc(tmp, dc.port, "telethon")
    closed = free_port()
    try:
        tg = os.path.join(tmp, "proxy-config")
        with open(tg, "w") as f:
            f.write("default 2;\nproxy_for 2 127.0.0.1:%d;\nproxy_for -2 127.0.0.1:%d;\n"
                    % (me.port, me.port))
        cases = [("dd", "dd" + os.urandom(16).hex(), ConnectionTcpMTProxyRandomizedIntermediate),
                 ("classic", os.urandom(16).hex(), ConnectionTcpMTProxyAbridged)]
        for kind, secret, conn_cls in cases:
            name = "ad-tag %s" % kind
            conf = os.path.join(tmp, "mtpx-%s.toml" % kind)
            p = Proxy(argv_prefix, secret, {})
            with open(conf, "w") as f:
                f.write('secret = "%s"\nbind-to = "127.0.0.1:%d"\ndebug = true\n'
                        'ad-tag = "%s"\n[network]\nproxy-config-files = ["%s"]\n'
                        'proxy-secret-file = "%s"\n[domain-fronting]\nip = "127.0.0.1"\n'
                        'port = %d\n[network.dc-overrides]\n'
                        % (secret, p.port, AD_TAG, tg, me.secret_file, closed))
                for d in (1, 2, 3, 4, 5, 203):
                    f.write('%d = "127.0.0.1:%d"\n%d = "127.0.0.1:%d"\n' % (d, closed, -d, closed))
            p.argv = list(argv_prefix) + ["run", conf]
            before = len(me.requests())
            if check("%s: mtpx listens" % name, await p.start(), p.why_not()):
                # 256 KiB: a middle proxy takes client packets up to 1 MiB - 4 KiB.
                await exercise(name, conn_cls, secret, "intermediate" if kind == "dd"
                               else "abridged", p.port, dc, 2, 256 << 10)
                reqs = me.requests()[before:]
                check("%s: every request reached the middle proxy with the ad tag" % name,
                      len(reqs) >= 12 and all(r["ad_tag"] == AD_TAG for r in reqs)
                      and not me.errors(), "%d requests, errors %s" % (len(reqs), me.errors()))
            out = await p.stop(name)
            check("%s: mtpx logged no middle-proxy failure" % name,
                  "middle-proxy-failed" not in out and "middle-proxy-unreachable" not in out,
                  out[-1500:])
    finally:
        me.stop()


async def run_all(argv_prefix):
    await self_checks()
    dc = await FakeDc().start()
    dc_media = await FakeDc().start()
    log("fake DCs on 127.0.0.1:%d (dc 2) and 127.0.0.1:%d (dc -2)" % (dc.port, dc_media.port))
    overrides = {2: "127.0.0.1:%d" % dc.port, -2: "127.0.0.1:%d" % dc_media.port}
    try:
        # dd secret: padded intermediate (what Telegram apps use with dd secrets).
        key = os.urandom(16).hex()
        p = Proxy(argv_prefix, "dd" + key, overrides)
        if check("dd: mtpx simple-run listens", await p.start(), p.why_not()):
            await exercise("dd/padded", ConnectionTcpMTProxyRandomizedIntermediate, "dd" + key,
                           "padded", p.port, dc, 2, 1 << 20)
            await exercise("dd/padded dc -2", ConnectionTcpMTProxyRandomizedIntermediate,
                           "dd" + key, "padded", p.port, dc_media, -2, 256)
            # Telethon strips "dd" and then speaks intermediate: a dd secret must refuse that.
            await rejected("dd secret + intermediate tag", ConnectionTcpMTProxyIntermediate,
                           "dd" + key, p.port, dc)
        await p.stop("dd")

        key = os.urandom(16).hex()
        p = Proxy(argv_prefix, key, overrides)
        if check("classic: mtpx simple-run listens", await p.start(), p.why_not()):
            await exercise("classic/abridged", ConnectionTcpMTProxyAbridged, key, "abridged",
                           p.port, dc, 2, 384 << 10)
            await exercise("classic/intermediate", ConnectionTcpMTProxyIntermediate, key,
                           "intermediate", p.port, dc, 2, 384 << 10)
            await rejected("classic wrong secret", ConnectionTcpMTProxyIntermediate,
                           os.urandom(16).hex(), p.port, dc)
        await p.stop("classic")

        # ee secret: TelethonFakeTLS (a third-party FakeTLS client for Telethon, PyPI), then
        # padded intermediate inside the TLS records.  It reads the ServerHello as exactly 127
        # bytes and checks its HMAC; a wrong key must be fronted (to a closed local port).
        if ConnectionTcpMTProxyFakeTLS is not None:
            key = os.urandom(16).hex()
            host = b"fronted.example"
            secret = "ee" + key + host.hex()
            site = await FrontSite().start()
            p = Proxy(argv_prefix, secret, overrides,
                      ["--domain-fronting-ip", "127.0.0.1", "--domain-fronting-port", str(site.port)])
            if check("ee: mtpx simple-run listens", await p.start(), p.why_not()):
                # TelethonFakeTLS takes the secret without its "ee" prefix.
                await exercise("ee/faketls", ConnectionTcpMTProxyFakeTLS, secret[2:], "padded",
                               p.port, dc, 2, 1 << 20)
                await exercise("ee/faketls dc -2", ConnectionTcpMTProxyFakeTLS, secret[2:],
                               "padded", p.port, dc_media, -2, 256)
                before = len(site.hellos)
                await rejected("ee wrong secret", ConnectionTcpMTProxyFakeTLS,
                               os.urandom(16).hex() + host.hex(), p.port, dc)
                got = site.hellos[before:]
                # The site gets the client's hello unchanged: a TLS handshake record naming the
                # secret's host, exactly as long as its header says.
                check("ee wrong secret: fronted, the site got the client's hello whole",
                      len(got) == 1 and got[0][:3] == b"\x16\x03\x01" and host in got[0]
                      and len(got[0]) == 5 + int.from_bytes(got[0][3:5], "big"),
                      repr([g[:16].hex() for g in got]))
            await p.stop("ee")
            site.close()

        # An ad tag: Telethon -> mtpx -> the fake middle proxy (fake_me.py: RPC handshake, keys,
        # CRC-32 framing, the tag of every request) -> the fake DC. Every DC address of mtpx
        # points at a closed port: only the middle proxy leads to the fake DC, which it dials
        # with the intermediate transport (padded or not).
        if "ref_proxy" not in " ".join(argv_prefix):
            await ad_tag_cases(argv_prefix, dc)

        # ee through TelethonFakeTLS while mtpx fronts a site that speaks X25519MLKEM768:
        # with post-quantum = "mirror" (its x25519-only hello gets the site's x25519 answer, a
        # 127-byte ServerHello record) and "off".
        pq = PqSite.start(tempfile.mkdtemp(prefix="mtpx-telethon-pq-")) \
            if ConnectionTcpMTProxyFakeTLS is not None and "ref_proxy" not in " ".join(argv_prefix) \
            else None
        if pq is None:
            log("(the X25519MLKEM768-site cases run against mtpx only, not --reference)")
        else:
            try:
                for mode in ("mirror", "off"):
                    key = os.urandom(16).hex()
                    secret = "ee" + key + b"www.example.com".hex()
                    conf = os.path.join(pq.tmp, "mtpx-%s.toml" % mode)
                    with open(conf, "w") as f:
                        f.write('secret = "%s"\nbind-to = "127.0.0.1:%%d"\ndebug = true\n'
                                '[domain-fronting]\nip = "127.0.0.1"\nport = %d\n'
                                '[defense.doppelganger]\npost-quantum = "%s"\n'
                                '[network.dc-overrides]\n' % (secret, pq.port, mode))
                        for dc_id, addr in overrides.items():
                            f.write('%d = "%s"\n' % (dc_id, addr))
                    p = Proxy(argv_prefix, secret, overrides)
                    with open(conf) as f:
                        text = f.read() % p.port
                    with open(conf, "w") as f:
                        f.write(text)
                    p.argv = list(argv_prefix) + ["run", conf]
                    name = "ee/faketls pq-site post-quantum=%s" % mode
                    if check("%s: mtpx listens" % name, await p.start(), p.why_not()):
                        ok = await wait_until(lambda: learned(p.output()), 20)
                        check("%s: the scout learned the site's answers" % name, ok,
                              p.output()[-1500:])
                        await exercise(name, ConnectionTcpMTProxyFakeTLS, secret[2:], "padded",
                                       p.port, dc, 2, 64 << 10)
                    await p.stop(name)
            finally:
                pq.stop()
    finally:
        await dc.stop()
        await dc_media.stop()


def main(argv):
    logging.basicConfig(level=logging.ERROR, format="     telethon: %(message)s")
    if "--reference" in argv:
        prefix = [sys.executable, os.path.join(HERE, "ref_proxy.py")]
    else:
        binary = os.environ.get("MTPX_BIN", os.path.join(ROOT, "target", "debug", "mtpx"))
        binary = os.path.abspath(os.path.join(ROOT, binary))
        if not os.access(binary, os.X_OK):
            check("mtpx binary exists (%s)" % binary, False, "build it first: cargo build")
            prefix = None
        else:
            prefix = [binary]
    t0 = time.monotonic()
    if prefix is not None:
        try:
            asyncio.run(asyncio.wait_for(run_all(prefix), OVERALL_TIMEOUT))
        except asyncio.TimeoutError:
            check("everything within %d s" % OVERALL_TIMEOUT, False)
        finally:
            for pid in PIDS:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("interop took %.1f s" % (time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
