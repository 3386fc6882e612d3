"""Check lines for the Python test harnesses (interop, TDLib, mtcute, HAProxy): `check(name, ok,
detail)` prints "ok  name" or "FAIL name -- detail" and records the result in RESULTS; `log`
prints an indented note; `free_port` picks a free TCP port on 127.0.0.1."""

import socket

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    line = "%s %s" % ("ok  " if ok else "FAIL", name)
    if detail and not ok:
        line += " -- " + detail
    print(line, flush=True)
    return bool(ok)


def log(msg):
    print("     " + msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
