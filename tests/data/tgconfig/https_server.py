#!/usr/bin/env python3
"""A static HTTPS server on 127.0.0.1 for tests (Python's ssl module = OpenSSL, TLS 1.3).

Serves the files given as NAME=PATH arguments at /NAME (read on every request), 404 for
anything else. Prints its port on one line, then "GET /path" per request; serves until killed.

Usage: https_server.py CERT KEY NAME=PATH [NAME=PATH ...]
"""

import socket
import ssl
import sys
import threading

cert, key = sys.argv[1], sys.argv[2]
files = dict(arg.split("=", 1) for arg in sys.argv[3:])

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
lock = threading.Lock()


def serve(conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as s:
            s.settimeout(10)
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = s.recv(4096)
                if not chunk:
                    return
                req += chunk
            method, path = req.split(b" ")[:2]
            with lock:
                print(method.decode(), path.decode(), flush=True)
            name = path.decode().lstrip("/")
            if method == b"GET" and name in files:
                with open(files[name], "rb") as f:
                    body = f.read()
                head = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                s.sendall((head % len(body)).encode() + body)
            else:
                s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except (OSError, ssl.SSLError):
        pass


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
