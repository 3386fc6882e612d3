#!/usr/bin/env python3
"""Active-probing suite: mtpx must look exactly like the website its FakeTLS secret names.

Starts nginx on 127.0.0.1 (self-signed certificate for mtpx.test, short client_header_timeout)
and mtpx (ee secret for mtpx.test, fronting to that nginx, handshake timeout 2s). Every probe is
sent once to nginx directly ("real") and once to mtpx, and the two observations must be equal:

* TLS handshakes (curl, openssl s_client, Python ssl, Telegram-style hellos): randomness differs,
  so we compare the record sequence (type, version, length), the certificate, negotiated
  parameters, plaintext alerts, HTTP status/headers (less Date)/body, and how the connection ends;
* non-TLS probes (plain HTTP, random bytes, truncated hellos, idle): the raw bytes received
  (HTTP Date header normalised) and the close behaviour (FIN, RST, or still open).

A control mtpx fronts to a decoy nginx (EC certificate, other page, server_tokens off): every
probe that sees site content must tell the decoy apart, so a probe that cannot fail is caught.

The valid-client probe also checks mtpx's own answer (PROTOCOL.md §2.4): server random =
HMAC-SHA256(key, client_random ‖ flight with random zeroed); its replay must then be fronted.

With Node.js >= 24 (OpenSSL >= 3.5, .venv-pq-node from scripts/test-deps.sh), a third site
speaks X25519MLKEM768 (tests/pq/site.mjs) and another mtpx fronts it: TDLib 1.8.69's hello
(derived from the capture) and an x25519-only hello must get the same answer from both, with a
wrong secret (fronted) and with the right one (mtpx's own flight: ServerHello length, records,
key-share group and size of the site's, HMAC ok).

Python 3.11 stdlib + the `nginx`, `openssl` and `curl` CLIs. Loopback only. Prints a table and
`N passed, N failed` last; exits 1 on any failure, 2 if the harness could not start.
Usage: probes.py [--mtpx target/debug/mtpx] [--keep] [-v] [-k NAME-SUBSTRING]
(or `make probes`; ~15 s).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import hmac
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HOST = "mtpx.test"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A Node.js >= 24 (OpenSSL >= 3.5) for the X25519MLKEM768 site: scripts/test-deps.sh installs it.
PQ_NODE = os.environ.get("MTPX_PQ_NODE") or os.path.join(ROOT, ".venv-pq-node", "bin", "node")
PQ_SITE_JS = os.path.join(ROOT, "tests", "pq", "site.mjs")
TDLIB_HELLO = os.path.join(ROOT, "tests", "data", "tls", "tdlib-1.8.69-client-hello.bin")
NGINX_HEADER_TIMEOUT = 4  # s: nginx closes idle / half-handshaken connections after this
MTPX_HANDSHAKE_TIMEOUT = 2  # s: mtpx fronts a silent client after this
IDLE_WAIT = 14.0  # s: how long a probe waits for the server to close
VERBOSE = False
SBIN = "/usr/sbin:/usr/local/sbin:/sbin"  # where Debian puts nginx; not on a user's PATH


def log(*a):
    if VERBOSE:
        print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ processes


class Harness:
    def __init__(self, mtpx_bin: str, keep: bool):
        self.mtpx_bin = mtpx_bin
        self.keep = keep
        self.tmp = tempfile.mkdtemp(prefix="mtpx-probes-")
        os.chmod(self.tmp, 0o755)  # nginx workers drop to `nobody` when started as root
        self.procs: list[subprocess.Popen] = []
        self.key = os.urandom(16)
        self.secret_hex = "ee" + self.key.hex() + HOST.encode().hex()
        self.ports: dict[str, int] = {}
        self.by_name: dict[str, subprocess.Popen] = {}

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def start(self):
        # "site": the website of the secret. "decoy": another site (different certificate
        # type, page and server_tokens) that a control mtpx fronts to: every probe that carries
        # content must tell it from "site", or the probe could not catch a wrong answer.
        self._site("site", "rsa:2048", tokens="on", reset="on",
                   page="<!doctype html><title>mtpx.test</title><p>Hello from mtpx.test.</p>\n")
        self._site("decoy", "ec -pkeyopt ec_paramgen_curve:prime256v1", tokens="off", reset="off",
                   page="<!doctype html><title>decoy</title><p>Not the real site.</p>\n")
        self._mtpx("mtpx", "site")
        self._mtpx("mtpx-decoy", "decoy")
        self._pq_site("pqsite")
        self._mtpx("mtpx-pq", "pqsite")
        # Its scout learns the site's answer to both kinds of hello first.
        end = time.monotonic() + 20
        want = ("hello=x25519mlkem768 ", "group=0x11ec"), ("hello=x25519 ", "group=0x001d")
        while not all(any(all(w in ln for w in pair) for ln in tail(
                self.path("mtpx-pq.out"), 1 << 20).splitlines()) for pair in want):
            if time.monotonic() > end:
                raise RuntimeError("mtpx-pq's scout learned nothing: "
                                   + tail(self.path("mtpx-pq.out")))
            time.sleep(0.1)

    def _pq_site(self, name):
        """A site that speaks X25519MLKEM768: tests/pq/site.mjs on Node.js >= 24 (OpenSSL 3.5),
        RSA-2048 (a fixed-size signature: its flight size does not vary)."""
        d = self.path(name)
        os.makedirs(d)
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={HOST}", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
            timeout=60)
        out = open(self.path(f"{name}.out"), "w+b")
        p = subprocess.Popen([PQ_NODE, PQ_SITE_JS, f"{d}/cert.pem", f"{d}/key.pem"],
                             stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=die_with_parent)
        self.procs.append(p)
        self.by_name[name] = p
        self.ports[name] = int(p.stdout.readline())
        wait_port(self.ports[name], p, name, self.path(f"{name}.out"))

    def _site(self, name, keyspec, *, tokens, reset, page):
        d = self.path(name)
        os.makedirs(os.path.join(d, "www"))
        os.chmod(d, 0o755)
        os.chmod(os.path.join(d, "www"), 0o755)
        run(["openssl", "req", "-x509", "-newkey", *keyspec.split(), "-nodes", "-days", "2",
             "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
             "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"], timeout=60)
        with open(os.path.join(d, "www", "index.html"), "w") as f:
            f.write(page)
        os.chmod(os.path.join(d, "www", "index.html"), 0o644)
        port = self.ports[name] = free_port()
        conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    default_type text/html;
    server_tokens {tokens};
    client_header_timeout {NGINX_HEADER_TIMEOUT}s;
    keepalive_timeout {NGINX_HEADER_TIMEOUT}s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        # a timed-out request is answered with a TCP RST (many real sites do this)
        reset_timedout_connection {reset};
        server_name {HOST};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {d}/www;
        location / {{ try_files $uri $uri/index.html =404; }}
    }}
}}
"""
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or shutil.which("nginx", path=SBIN)
        p = self._spawn([nginx, "-p", d, "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
                        f"{name}.out", name)
        wait_port(port, p, f"nginx ({name})", self.path(f"{name}.out"))

    def _mtpx(self, name, site):
        port = self.ports[name] = free_port()
        conf = f"""secret = "{self.secret_hex}"
bind-to = "127.0.0.1:{port}"
tolerate-time-skewness = "10s"
[domain-fronting]
ip = "127.0.0.1"
port = {self.ports[site]}
[network.timeout]
handshake = "{MTPX_HANDSHAKE_TIMEOUT}s"
[defense.anti-replay]
enabled = true
"""
        with open(self.path(f"{name}.toml"), "w") as f:
            f.write(conf)
        p = self._spawn([self.mtpx_bin, "run", self.path(f"{name}.toml")], f"{name}.out", name)
        wait_port(port, p, name, self.path(f"{name}.out"))

    def _spawn(self, argv, out, name):
        f = open(self.path(out), "wb")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=die_with_parent)
        f.close()
        self.procs.append(p)
        self.by_name[name] = p
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.procs.clear()
        if self.keep:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def die_with_parent():
    """In the child before exec: SIGKILL it if this harness dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-Linux)
        pass


def run(argv, timeout, input=None):
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, out, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {tail(out)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s: {tail(out)}")


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------- raw socket exchanges


def exchange(port, data: bytes, *, half_close=False, wait=IDLE_WAIT, chunks=None):
    """Connects, sends `data` (or each (delay seconds, bytes) of `chunks` after its delay),
    optionally shuts down writing, then reads
    until the server closes. Returns (bytes received, close kind, seconds until close).
    close kind: FIN (orderly EOF), RST (connection reset) or OPEN (still open after `wait`)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.monotonic()
    got = bytearray()
    kind = "OPEN"
    try:
        for delay, c in (chunks if chunks is not None else ([(0, data)] if data else [])):
            time.sleep(delay)
            s.sendall(c)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        end = t0 + wait
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                kind = "RST"
                break
            if not b:
                kind = "FIN"
                break
            got += b
    finally:
        s.close()
    return bytes(got), kind, time.monotonic() - t0


def read_flight(port, hello, timeout=5.0):
    """Sends a hello and reads until three whole TLS records (or close / timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(hello)
        got, end = b"", time.monotonic() + timeout
        while len(records(got)[0]) < 3 and time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return got, "timeout/RST"
            if not b:
                return got, "FIN"
            got += b
        return got, "OPEN"


def read_site_flight(port, hello, timeout=5.0, quiet=0.5):
    """Sends a hello and reads the server's whole first flight: everything until the server
    goes quiet (it then waits for the client's Finished)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(hello)
        got, end = b"", time.monotonic() + timeout
        while time.monotonic() < end:
            s.settimeout(quiet if got else max(0.01, end - time.monotonic()))
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            got += b
        return got


def records(data: bytes):
    """Splits a byte stream into TLS records: [(type, version, length, payload)], plus the
    number of trailing bytes that do not form a whole record."""
    out, i = [], 0
    while i + 5 <= len(data):
        t, v, n = data[i], data[i + 1:i + 3], struct.unpack(">H", data[i + 3:i + 5])[0]
        if i + 5 + n > len(data):
            break
        out.append((t, v.hex(), n, data[i + 5:i + 5 + n]))
        i += 5 + n
    return out, len(data) - i


def describe_records(data: bytes) -> str:
    recs, rest = records(data)
    s = " ".join(f"{t:02x}/{v}/{n}" for t, v, n, _ in recs)
    return s + (f" +{rest}B" if rest else "")


def tls_summary(data: bytes) -> dict:
    """What can be compared in a TLS server's answer despite its fresh randomness."""
    recs, rest = records(data)
    d = {"records": " ".join(f"{t:02x}/{v}/{n}" for t, v, n, _ in recs), "trailing": rest}
    for t, _, _, p in recs:
        if t == 0x15:  # plaintext alert: compare exact bytes
            d.setdefault("alerts", []).append(p.hex())
        if t == 0x16 and p[:1] == b"\x02":  # ServerHello
            body = p[4:]
            sl = body[34]
            sid = body[35:35 + sl]
            off = 35 + sl
            d["sh.session_id"] = sid.hex()
            d["sh.cipher"] = body[off:off + 2].hex()
            d["sh.compression"] = body[off + 2]
            ext = body[off + 5:]
            names, j = [], 0
            while j + 4 <= len(ext):
                et, el = struct.unpack(">HH", ext[j:j + 4])
                ed = ext[j + 4:j + 4 + el]
                names.append(f"{et:04x}")
                if et == 0x002b:
                    d["sh.version"] = ed.hex()
                if et == 0x0033:
                    d["sh.key_share_group"] = ed[:2].hex()
                j += 4 + el
            d["sh.extensions"] = ",".join(names)
        elif t == 0x16:
            d.setdefault("plain_handshake_types", []).append(p[0])
    return d


# --------------------------------------------------------------- Telegram-style ClientHellos


def grease(rng):
    b = rng.randrange(16) * 0x10 + 0x0A
    return bytes([b, b])


def client_hello(key: bytes, sni: str, ts: int, seed=None, suites=None,
                 record_version=b"\x03\x01") -> bytes:
    """A ClientHello laid out like Telegram's (TDLib, Chrome-like): record 16 03 01, 517 bytes,
    SNI, a genuine-looking x25519 key share; client random = HMAC-SHA256(key, hello with the
    random zeroed) XOR (28 zero bytes ‖ u32le(ts)) (PROTOCOL.md §2.3)."""
    rng = random.Random(seed)
    rb = lambda n: bytes(rng.randrange(256) for _ in range(n))  # noqa: E731
    g = [grease(rng) for _ in range(4)]
    if g[2] == g[3]:
        g[3] = bytes([g[3][0] ^ 0x10] * 2)

    def ext(t: int, data: bytes) -> bytes:
        return struct.pack(">HH", t, len(data)) + data

    def vec16(b):
        return struct.pack(">H", len(b)) + b

    if suites is None:
        suites = g[0] + bytes.fromhex(
            "130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    name = sni.encode()
    exts = b"".join([
        ext(int.from_bytes(g[2], "big"), b""),
        ext(0x0000, vec16(b"\x00" + vec16(name))),
        ext(0x0017, b""),
        ext(0xFF01, b"\x00"),
        ext(0x000A, vec16(g[1] + bytes.fromhex("001d00170018"))),
        ext(0x000B, b"\x01\x00"),
        ext(0x0023, b""),
        ext(0x0010, vec16(b"\x02h2\x08http/1.1")),
        ext(0x0005, b"\x01\x00\x00\x00\x00"),
        ext(0x000D, vec16(bytes.fromhex("04030804040105030805050108060601"))),
        ext(0x0012, b""),
        ext(0x0033, vec16(g[1] + b"\x00\x01\x00" + b"\x00\x1d\x00\x20" + rb(32))),
        ext(0x002D, b"\x01\x01"),
        ext(0x002B, b"\x06" + g[1] + b"\x03\x04\x03\x03"),
        ext(0x001B, b"\x02\x00\x02"),
        ext(int.from_bytes(g[3], "big"), b"\x00"),
    ])
    body_wo_ext = b"\x03\x03" + bytes(32) + b"\x20" + rb(32) + vec16(suites) + b"\x01\x00"
    # padding extension so that the record is 517 bytes, like TDLib
    fixed = 5 + 4 + len(body_wo_ext) + 2 + len(exts)
    pad = max(0, 517 - fixed - 4)
    exts += ext(0x0015, bytes(pad))
    body = body_wo_ext + vec16(exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    rec = b"\x16" + record_version + struct.pack(">H", len(hs)) + hs
    mac = hmac.new(key, rec, hashlib.sha256).digest()
    rnd = bytes(a ^ b for a, b in zip(mac, bytes(28) + struct.pack("<I", ts & 0xFFFFFFFF)))
    return rec[:11] + rnd + rec[43:]


def tdlib_hello(key: bytes, sni: str, ts: int) -> bytes:
    """A ClientHello exactly shaped like TDLib 1.8.69's captured one (tests/data/tls/): same
    suites, extensions and order, X25519MLKEM768 (a fake ML-KEM-768 encapsulation key:
    coefficients uniform mod q) and x25519 shares, SNI `sni`, a fresh session id and the
    HMAC random of `key` (PROTOCOL.md §2.3)."""
    t = open(TDLIB_HELLO, "rb").read()
    p = 5 + 4 + 2 + 32
    sid_at = p + 1
    p += 1 + t[p]
    p += 2 + struct.unpack(">H", t[p:p + 2])[0]
    p += 1 + t[p]
    head, i, exts = t[:p], p + 2, b""
    while i + 4 <= len(t):
        kind, n = struct.unpack(">HH", t[i:i + 4])
        data = t[i + 4:i + 4 + n]
        if kind == 0x0000:
            name = sni.encode()
            data = struct.pack(">HBH", len(name) + 3, 0, len(name)) + name
        elif kind == 0x0033:
            shares, j, x = b"", 2, os.urandom(32)
            while j + 4 <= len(data):
                g, ln = struct.unpack(">HH", data[j:j + 4])
                if g == 0x11EC:
                    coeffs = [random.randrange(3329) for _ in range(768)]
                    ek = b"".join(bytes([a & 0xFF, a >> 8 | (b & 15) << 4, b >> 4])
                                  for a, b in zip(coeffs[::2], coeffs[1::2]))
                    body = ek + os.urandom(32) + x
                elif g == 0x001D:
                    body = x
                else:
                    body = data[j + 4:j + 4 + ln]
                shares += data[j:j + 4] + body
                j += 4 + ln
            data = struct.pack(">H", len(shares)) + shares
        exts += struct.pack(">HH", kind, len(data)) + data
        i += 4 + n
    body = head[9:] + struct.pack(">H", len(exts)) + exts
    rec = bytearray(b"\x16\x03\x01" + struct.pack(">H", len(body) + 4) + b"\x01"
                    + len(body).to_bytes(3, "big") + body)
    rec[sid_at:sid_at + 32] = os.urandom(32)
    rec[11:43] = bytes(32)
    mac = hmac.new(key, bytes(rec), hashlib.sha256).digest()
    rec[11:43] = bytes(a ^ b for a, b in zip(mac, bytes(28) + struct.pack("<I", ts & 0xFFFFFFFF)))
    return bytes(rec)


class ShapeMismatch(AssertionError):
    """mtpx answered a valid hello itself, but its flight is not shaped like the site's."""


def check_mtpx_flight(key: bytes, hello: bytes, resp: bytes, site: list[bytes]) -> str | None:
    """None if `resp` is mtpx's own server flight for `hello` (PROTOCOL.md §2.4), shaped like
    the site's answers `site` to the same kind of hello: same ServerHello record length, same
    CCS, and a total length within the range the site itself shows (TLS fidelity)."""
    recs, rest = records(resp)
    if len(recs) != 3 or rest:
        return f"expected 3 whole records, got {describe_records(resp)}"
    (t1, v1, n1, p1), (t2, v2, n2, p2), (t3, v3, n3, _) = recs
    if (t1, v1, t2, v2, p2, t3, v3) != (0x16, "0303", 0x14, "0303", b"\x01", 0x17, "0303"):
        return f"unexpected record layout {describe_records(resp)}"
    if p1[0] != 2 or p1[38:39 + 32] != hello[43:76]:
        return "ServerHello does not echo the session id"
    site_recs = [records(x)[0] for x in site]
    if any(not r or r[0][0] != 0x16 for r in site_recs):
        return "the site did not answer the hello with a ServerHello"
    if any(r[0][2] != n1 for r in site_recs):
        return f"ServerHello record is {n1} bytes, the site's is {site_recs[0][0][2]}"
    lo, hi = min(len(x) for x in site), max(len(x) for x in site)
    if not lo <= len(resp) <= hi:
        return f"flight is {len(resp)} bytes, the site's is {lo}..{hi}"
    zeroed = resp[:11] + bytes(32) + resp[43:]
    want = hmac.new(key, hello[11:43] + zeroed, hashlib.sha256).digest()
    if resp[11:43] != want:
        return "server random is not HMAC(key, client_random ‖ flight)"
    return None


# --------------------------------------------------------------------------------- observations


def raw_obs(port, data, *, half_close=False, wait=IDLE_WAIT, tls=False, chunks=None):
    got, kind, secs = exchange(port, data, half_close=half_close, wait=wait, chunks=chunks)
    if tls:
        obs = tls_summary(got)
        obs["bytes"] = len(got)
    else:
        obs = {"bytes": len(got), "data": normalise_http(got).hex()}
    obs["close"] = kind
    return obs, f"{len(got)}B {kind} {secs:.1f}s" + (
        f" [{describe_records(got)}]" if tls else f" {short(got)}")


def normalise_http(b: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r\n]*", b"Date: <normalised>", b)


def short(b: bytes, n=48) -> str:
    if not b:
        return "''"
    first = b.split(b"\r\n", 1)[0] if b[:4].isascii() and b[:1].isalpha() else b[:12].hex()
    return repr(first[:n]) if isinstance(first, bytes) else first


def curl_obs(port, path, extra=()):
    hdr = tempfile.NamedTemporaryFile(delete=False)
    hdr.close()
    try:
        p = subprocess.run(
            ["curl", "-k", "-sS", "--max-time", "10", *extra, "--resolve", f"{HOST}:{port}:127.0.0.1",
             "-D", hdr.name, "-o", "-", "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}",
             f"https://{HOST}:{port}{path}"], capture_output=True, timeout=15)
        with open(hdr.name, "rb") as f:
            headers = normalise_http(f.read())
    finally:
        os.unlink(hdr.name)
    body, _, meta = p.stdout.rpartition(b"\n")
    obs = {"rc": p.returncode, "meta": meta.decode(), "headers": headers.decode(errors="replace"),
           "body_sha256": hashlib.sha256(body).hexdigest(), "body_len": len(body),
           "stderr": re.sub(r":\d+", ":<port>", p.stderr.decode(errors="replace")).strip()}
    return obs, f"rc={p.returncode} {meta.decode()} body={len(body)}B"


_BIG = []


def big_file():
    """A 4 MiB request body (made once, removed at exit)."""
    if not _BIG:
        f = tempfile.NamedTemporaryFile(prefix="mtpx-probes-body-", delete=False)
        f.write(random.Random(7).randbytes(4 << 20))
        f.close()
        _BIG.append(f.name)
        import atexit
        atexit.register(os.unlink, f.name)
    return _BIG[0]


def s_client_obs(port, servername=HOST, extra=()):
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *extra]
    if servername:
        argv += ["-servername", servername]
    p = subprocess.run(argv, input=b"", capture_output=True, timeout=15)
    out = p.stdout.decode(errors="replace")
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    # (not the SSL-Session block: whether TLS 1.3 session tickets arrive before s_client
    # exits is a matter of timing)
    keep = ("Cipher is", "Server Temp Key", "Peer signature type",
            "Peer signing digest", "Verify return code", "Server public key")
    lines = sorted({ln.strip() for ln in out.splitlines() if any(k in ln for k in keep)})
    obs = {"rc": p.returncode, "certs": [hashlib.sha256(c.encode()).hexdigest() for c in pems],
           "lines": lines}
    proto = next((ln for ln in lines if ln.startswith("New,")), "")
    return obs, f"rc={p.returncode} certs={len(pems)} {proto[:40]}"


GET = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


def python_tls_obs(port, max_version, request=GET):
    """A full HTTPS request through ssl.SSLObject over a raw socket, recording every byte the
    server sends, so that the record sequence (type, version, length) can be compared."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = max_version
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outg, server_hostname=HOST)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    wire = bytearray()
    kind = "OPEN"
    body = bytearray()

    def flush():
        d = outg.read()
        if d:
            s.sendall(d)

    def feed():
        nonlocal kind
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            kind = "RST"
            b = b""
        if not b:
            if kind == "OPEN":
                kind = "FIN"
            inc.write_eof()
            return False
        wire.extend(b)
        inc.write(b)
        return True

    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not feed():
                    raise
        flush()
        cert = obj.getpeercert(binary_form=True)
        obj.write(request)
        flush()
        while True:
            try:
                d = obj.read(65536)
                if not d:
                    break
                body.extend(d)
            except ssl.SSLWantReadError:
                if not feed():
                    break
            except ssl.SSLZeroReturnError:
                break
        flush()
        # after close_notify, wait for the TCP close itself
        s.settimeout(IDLE_WAIT)
        while kind == "OPEN":
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                kind = "RST"
                break
            if not b:
                kind = "FIN"
                break
            wire.extend(b)
    finally:
        s.close()
    recs = describe_records(bytes(wire))
    status = normalise_http(bytes(body)).split(b"\r\n", 1)[0].decode(errors="replace")
    obs = {"version": obj.version(), "cipher": obj.cipher()[0], "records": recs,
           "cert": hashlib.sha256(cert).hexdigest(), "response": normalise_http(bytes(body)).hex(),
           "close": kind}
    return obs, f"{obj.version()} {status} {len(wire)}B {kind} [{recs}]"


# ------------------------------------------------------------------------------------ the probes


class Probe:
    def __init__(self, name, fn, real=True):
        self.name, self.fn = name, fn
        self.real_port_needed = real


def make_probes(key: bytes, real: int, mtpx: int):
    """[(name, fn)]: fn() -> ((real obs, real summary), (mtpx obs, mtpx summary)).
    `real` is the site's port, `mtpx` the port of an mtpx fronting to some site."""
    now = lambda: int(time.time())  # noqa: E731
    rng = random.Random(20240601)
    random_bytes = bytes([0x47 ^ 0x5A]) + rng.randbytes(299)  # first byte not 0x16 / not ASCII
    http_req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: probe\r\n\r\n".encode()
    # mtpx fronts a silent client after its handshake timeout (+ up to 0.25 s sweep); speaking
    # 1 s later reaches the site well before the site's own timeout on either path.
    late = MTPX_HANDSHAKE_TIMEOUT + 1.0
    assert late < NGINX_HEADER_TIMEOUT

    def both(fn):
        return lambda: (fn(real), fn(mtpx))

    probes = [
        ("curl https GET /", both(lambda p: curl_obs(p, "/"))),
        ("curl https GET /missing (404)", both(lambda p: curl_obs(p, "/missing"))),
        ("curl https POST / 4 MiB body (413)",
         both(lambda p: curl_obs(p, "/", ("--data-binary", "@" + big_file())))),
        ("openssl s_client -showcerts", both(lambda p: s_client_obs(p))),
        ("openssl s_client -tls1_2", both(lambda p: s_client_obs(p, extra=("-tls1_2",)))),
        ("openssl s_client, no SNI", both(lambda p: s_client_obs(p, servername=None,
                                                                   extra=("-noservername",)))),
        ("TLS1.3 record sequence (GET /)",
         both(lambda p: python_tls_obs(p, ssl.TLSVersion.TLSv1_3))),
        ("TLS1.2 record sequence (GET /)",
         both(lambda p: python_tls_obs(p, ssl.TLSVersion.TLSv1_2))),
        ("plain HTTP on the TLS port", both(lambda p: raw_obs(p, http_req))),
        ("plain HTTP + 256 KiB junk, held open",
         both(lambda p: raw_obs(p, http_req + bytes(range(256)) * 1024))),
        ("random bytes (300B, held open)", both(lambda p: raw_obs(p, random_bytes))),
        ("random bytes (300B, then FIN)",
         both(lambda p: raw_obs(p, random_bytes, half_close=True))),
    ]

    def hello_probe(make, label):
        def go():
            hello = make()
            return (raw_obs(real, hello, half_close=True, tls=True),
                    raw_obs(mtpx, hello, half_close=True, tls=True))
        probes.append((label, go))

    hello_probe(lambda: client_hello(os.urandom(16), HOST, now()), "hello, wrong secret")
    hello_probe(lambda: client_hello(key, HOST, now() - 3600), "hello, stale timestamp (-1h)")
    hello_probe(lambda: client_hello(key, HOST, now() + 3600), "hello, future timestamp (+1h)")
    hello_probe(lambda: client_hello(key, "www.other.test", now()), "hello, wrong SNI")
    hello_probe(lambda: client_hello(key, HOST.upper(), now()), "hello, SNI in upper case")
    hello_probe(lambda: client_hello(key, HOST, now(), record_version=b"\x03\x03"),
                "hello, record version 03 03")
    hello_probe(lambda: client_hello(key, HOST, now(), suites=b"\x0a\x0a\x1a\x1a"),
                "hello, only GREASE suites (alert)")

    def replay():
        # The site's own answers to Telegram-shaped hellos (wrong key: it never sees ours).
        site = [read_site_flight(real, client_hello(os.urandom(16), HOST, now()))
                for _ in range(3)]
        hello = client_hello(key, HOST, now())
        got, kind = read_flight(mtpx, hello)
        err = check_mtpx_flight(key, hello, got, site)
        if err and (err.startswith("flight is") or err.startswith("ServerHello record is")):
            raise ShapeMismatch(f"mtpx's flight does not look like the site's: {err}")
        if err:
            raise AssertionError(f"valid hello was not answered by mtpx itself: {err} "
                                 f"(got {len(got)}B {kind})")
        r = raw_obs(real, hello, half_close=True, tls=True)
        m = raw_obs(mtpx, hello, half_close=True, tls=True)
        return (r[0], "(1st: mtpx's own flight, HMAC ok) " + r[1]), m
    probes.append(("valid hello (mtpx answers), then replay", replay))

    def truncated(half_close):
        def go():
            hello = client_hello(key, HOST, now())[:150]
            return (raw_obs(real, hello, half_close=half_close),
                    raw_obs(mtpx, hello, half_close=half_close))
        return go
    probes.append(("truncated hello (150B), then FIN", truncated(True)))
    probes.append(("truncated hello (150B), held open", truncated(False)))

    def truncated_late():
        hello = client_hello(os.urandom(16), HOST, now())
        chunks = [(0, hello[:150]), (late, hello[150:])]
        return (raw_obs(real, b"", chunks=chunks, tls=True, wait=late + 5),
                raw_obs(mtpx, b"", chunks=chunks, tls=True, wait=late + 5))
    probes.append((f"hello 150B, rest {late:g}s later", truncated_late))
    partial = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode()
    probes.append(("TLS1.3, partial HTTP request, held open",
                   both(lambda p: python_tls_obs(p, ssl.TLSVersion.TLSv1_3, partial))))
    probes.append(("idle connection (nothing sent)", both(lambda p: raw_obs(p, b""))))
    probes.append((f"idle {late:g}s, then plain HTTP",
                   both(lambda p: raw_obs(p, b"", chunks=[(late, http_req)], wait=late + 5))))
    return probes


def pq_probes(key: bytes, real: int, mtpx: int):
    """Against a site that speaks X25519MLKEM768 (`real`) and an mtpx fronting it: TDLib
    1.8.69's hello and an x25519-only hello, with a wrong secret (fronted: the same answer) and
    with the right one (mtpx's own flight: the site's ServerHello length, records, key-share
    group and flight size, HMAC ok). A hello without an X25519MLKEM768 share never gets one."""
    now = lambda: int(time.time())  # noqa: E731
    out = []
    for label, make, group in (("TDLib 1.8.69 hello", tdlib_hello, "11ec"),
                               ("x25519-only hello", client_hello, "001d")):
        def wrong(make=make):
            hello = make(os.urandom(16), HOST, now())
            return (raw_obs(real, hello, half_close=True, tls=True),
                    raw_obs(mtpx, hello, half_close=True, tls=True))
        out.append((f"PQ site: {label}, wrong secret", wrong))

        def valid(make=make, group=group, label=label):
            site = [read_site_flight(real, make(os.urandom(16), HOST, now())) for _ in range(3)]
            groups = {tls_summary(x).get("sh.key_share_group") for x in site}
            if groups != {group}:
                raise AssertionError(f"the site answered {label} with {groups}, not {group}")
            hello = make(key, HOST, now())
            got, kind = read_flight(mtpx, hello)
            err = check_mtpx_flight(key, hello, got, site)
            if err:
                raise AssertionError(f"mtpx's answer to a valid {label}: {err} "
                                     f"(got {len(got)}B {kind})")
            m = tls_summary(got)
            r = tls_summary(site[0])
            keys = ("sh.key_share_group", "sh.extensions", "sh.version", "sh.compression")
            return (({k: r.get(k) for k in keys}, f"{describe_records(site[0])[:40]}"),
                    ({k: m.get(k) for k in keys}, f"(mtpx, HMAC ok) {describe_records(got)[:30]}"))
        out.append((f"PQ site: valid {label} (mtpx answers)", valid))
    return out


# Probes that see no site-specific content (0 bytes then FIN, a generic alert) cannot tell one
# nginx from another; they still fail if mtpx answers itself, resets, or never closes.
CONTROL_BLIND = {"truncated hello (150B), then FIN", "truncated hello (150B), held open",
                 "idle connection (nothing sent)",
                 # a plaintext handshake_failure alert is the same from any OpenSSL server
                 "hello, only GREASE suites (alert)"}


def diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            va, vb = str(a.get(k)), str(b.get(k))
            out.append(f"{k}: real={va[:300]!s} mtpx={vb[:300]!s}")
    return out


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtpx", default=os.environ.get("MTPX_BIN", "target/debug/mtpx"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-k", "--only", help="run only probes whose name contains this")
    args = ap.parse_args()
    VERBOSE = args.verbose
    for tool in ("nginx", "openssl", "curl"):
        if not (shutil.which(tool) or (tool == "nginx" and shutil.which(tool, path=SBIN))):
            print(f"probes: FAIL: `{tool}` not found; install it: scripts/test-deps.sh --system "
                  "(as root)", file=sys.stderr)
            return 2
    if not os.access(PQ_NODE, os.X_OK):
        print(f"probes: FAIL: {PQ_NODE} not found; install it: scripts/test-deps.sh",
              file=sys.stderr)
        return 2
    if not os.access(args.mtpx, os.X_OK):
        print(f"probes: {args.mtpx} is not executable (cargo build first)", file=sys.stderr)
        return 2

    h = Harness(args.mtpx, args.keep)

    def on_signal(sig, _frame):
        signal.signal(sig, signal.SIG_DFL)
        h.stop()  # first, so that probes still waiting on the servers end at once
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        try:
            h.start()
        except Exception as e:  # noqa: BLE001
            print(f"probes: harness failed to start: {e}", file=sys.stderr)
            return 2
        P = h.ports
        print(f"site: nginx on 127.0.0.1:{P['site']}; mtpx on 127.0.0.1:{P['mtpx']} fronting to "
              f"it (handshake timeout {MTPX_HANDSHAKE_TIMEOUT}s; nginx client_header_timeout "
              f"{NGINX_HEADER_TIMEOUT}s); control: mtpx on :{P['mtpx-decoy']} fronting to a "
              f"decoy nginx on :{P['decoy']}")
        probes = make_probes(h.key, P["site"], P["mtpx"])
        probes += pq_probes(h.key, P["pqsite"], P["mtpx-pq"])
        control = [(n, fn) for n, fn in make_probes(h.key, P["site"], P["mtpx-decoy"])
                   if n not in CONTROL_BLIND]
        if args.only:
            probes = [p for p in probes if args.only in p[0]]
            control = [p for p in control if args.only in p[0]]
        results, detected = {}, {}

        def outcome(f):
            try:
                (ro, rs), (mo, ms) = f.result()
                return rs, ms, diff(ro, mo), None
            except Exception as e:  # noqa: BLE001
                log(traceback.format_exc())
                return "-", "-", None, f"{type(e).__name__}: {e}"

        # Probes are independent, so they all run at once (the slow ones wait for server
        # timeouts); within a probe the real site is asked first, then mtpx.
        with cf.ThreadPoolExecutor(max_workers=len(probes) + len(control) or 1) as ex:
            futs = {ex.submit(fn): ("main", n) for n, fn in probes}
            futs.update({ex.submit(fn): ("control", n) for n, fn in control})
            for f in cf.as_completed(futs, timeout=100):
                suite, name = futs[f]
                rs, ms, d, err = outcome(f)
                if suite == "main":
                    if err:
                        results[name] = (rs, ms, "FAIL", [err])
                    else:
                        results[name] = (rs, ms, "PASS" if not d else "FAIL", d)
                else:
                    # the control mtpx fronts to the decoy: the probe must see a difference
                    # A fake flight shaped unlike the site's is a difference the probe saw.
                    if err and err.startswith("ShapeMismatch"):
                        detected[name] = True
                    else:
                        detected[name] = bool(d) if not err else f"error: {err}"
        if control:
            missed = [n for n, _ in control if detected.get(n) is not True]
            k = len(control) - len(missed)
            results["control: decoy told apart"] = (
                "site", f"decoy detected by {k}/{len(control)} probes",
                "FAIL" if missed else "PASS",
                [f"probe cannot tell the decoy from the site: {n} ({detected.get(n)})"
                 for n in missed])
        for name, proc in h.by_name.items():
            if proc.poll() is not None:
                results[f"{name} still running"] = ("-", "-", "FAIL",
                                                    [f"exited with {proc.returncode}"])
        for name in [n for n in ("mtpx", "mtpx-decoy", "mtpx-pq") if n in h.by_name]:
            proc = h.by_name[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=5)
                    ok = rc == 0
                    results[f"{name} exits 0 on SIGTERM"] = (
                        "-", f"rc={rc}", "PASS" if ok else "FAIL", [] if ok else [f"rc={rc}"])
                except subprocess.TimeoutExpired:
                    results[f"{name} exits 0 on SIGTERM"] = ("-", "hung", "FAIL",
                                                             ["no exit within 5s"])
            out = tail(h.path(f"{name}.out"), 1 << 20)
            if "panicked" in out:
                results[f"{name} never panics"] = (
                    "-", "panic", "FAIL", [ln for ln in out.splitlines() if "panick" in ln][:3])
        order = [n for n, _ in probes] + [n for n in results if n not in dict(probes)]
        w = max(len(n) for n in order)
        print(f"{'probe':<{w}}  {'real server':<46}  {'mtpx':<46}  verdict")
        for n in order:
            rs, ms, v, d = results[n]
            print(f"{n:<{w}}  {rs[:46]:<46}  {ms[:46]:<46}  {v}")
            for line in d:
                print(f"{'':<{w}}    ! {line}")
        if VERBOSE:
            for n in order:
                print(f"--- {n}\n  real: {results[n][0]}\n  mtpx: {results[n][1]}")
        passed = sum(1 for r in results.values() if r[2] == "PASS")
        failed = len(results) - passed
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0
    finally:
        h.stop()


if __name__ == "__main__":
    sys.exit(main())
