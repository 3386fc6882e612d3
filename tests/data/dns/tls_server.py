#!/usr/bin/env python3
"""DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484, GET) on 127.0.0.1, for tests.

Python's ssl module (OpenSSL) is the independent TLS 1.3 server. Answers A / AAAA for the
names given as NAME=IP arguments (NXDOMAIN for anything else), prints "<dot-port> <doh-port>"
on one line, then one line "<dot|doh> <name> <A|AAAA|type>" per query answered, and serves
until killed. Loopback only.

Usage: tls_server.py CERT KEY NAME=IP [NAME=IP ...]
"""

import base64
import socket
import ssl
import struct
import sys
import threading
import urllib.parse

cert, key = sys.argv[1], sys.argv[2]
table = {}
for arg in sys.argv[3:]:
    name, ip = arg.split("=", 1)
    table.setdefault(name.lower().rstrip("."), []).append(ip)

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3


lock = threading.Lock()


def answer(q: bytes, via: str) -> bytes:
    qid = q[:2]
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1 : i + 1 + q[i]].decode("ascii"))
        i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
    question = q[12 : i + 5]
    name = ".".join(labels).lower()
    with lock:
        print(via, name, {1: "A", 28: "AAAA"}.get(qtype, qtype), flush=True)
    ips = table.get(name)
    records = b""
    count = 0
    for ip in ips or []:
        v6 = ":" in ip
        if (qtype, v6) in ((1, False), (28, True)):
            data = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, ip)
            records += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(data)) + data
            count += 1
    flags = 0x8180 | (0 if ips else 3)
    return qid + struct.pack(">HHHHH", flags, 1, count, 0, 0) + question + records


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise EOFError
        out += d
    return out


def dot(conn):
    while True:
        (n,) = struct.unpack(">H", recv_exact(conn, 2))
        a = answer(recv_exact(conn, n), "dot")
        conn.sendall(struct.pack(">H", len(a)) + a)


def doh(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        d = conn.recv(4096)
        if not d:
            return
        head += d
    line = head.split(b"\r\n", 1)[0].decode("ascii")
    method, target, _ = line.split(" ")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if method != "GET" or "dns" not in query:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return
    b64 = query["dns"][0]
    a = answer(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)), "doh")
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(a)
        + a
    )


def serve(listener, handler):
    while True:
        raw, _ = listener.accept()

        def run(raw=raw):
            try:
                raw.settimeout(10)
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    handler(conn)
            except Exception:
                pass
            finally:
                raw.close()

        threading.Thread(target=run, daemon=True).start()


listeners = []
for handler in (dot, doh):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    listeners.append((ls, handler))
print(" ".join(str(ls.getsockname()[1]) for ls, _ in listeners), flush=True)
threads = [threading.Thread(target=serve, args=lh, daemon=True) for lh in listeners]
for t in threads:
    t.start()
for t in threads:
    t.join()
