#!/usr/bin/env python3
"""End-to-end smoke test of one mtpx binary, possibly under an emulator (static-smoke.sh).

1. `mtpx --version` prints "mtpx <version of Cargo.toml>".
2. `mtpx generate-secret www.example.com` prints an ee (FakeTLS) secret for that host.
3. `mtpx simple-run 127.0.0.1:<port> dd<key> --dc-override 2=127.0.0.1:<fake DC>`; a dd client
   (padded intermediate, DC 2) sends MTProto-shaped packets through it; the answers must be
   the fake DC's, byte for byte, and the fake DC must have seen exactly what was sent.
   Then SIGTERM: mtpx exits 0 and never printed "panic".

The fake DC and the obfuscated2 client are tests/interop/fake_dc.py (needs `cryptography` or
`pyaes`). Loopback only.  Usage: smoke.py --bin PATH [--arch x86_64|aarch64] [--runner "qemu-aarch64-static"]
"""

import argparse
import asyncio
import base64
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))

from fake_dc import (  # noqa: E402
    FakeDc, answer_for, client_frame, encode_packet, mtproto_plain, read_packet)

STEP = 30  # seconds; generous for emulation


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("smoke: ok   " + what.split("\n")[0], flush=True)


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def run_quick(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP)
    return r.returncode, r.stdout.strip(), r.stderr


async def wait_listening(port, proc):
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError("mtpx exited early with %s" % proc.returncode)
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("mtpx did not listen on 127.0.0.1:%d" % port)


async def exchange(cmd, key):
    dc = await FakeDc().start()
    port = free_port()
    argv = cmd + ["simple-run", "127.0.0.1:%d" % port, "dd" + key.hex(),
                  "--dc-override", "2=127.0.0.1:%d" % dc.port, "--workers", "1"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_listening(port, proc)
        # std names its threads through pthread_setname_np, which src/sys.rs stands in for.
        names, deadline = set(), time.monotonic() + STEP
        while "mtpx-worker-0" not in names and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the worker may not have started yet
            names = set()
            for t in os.listdir("/proc/%d/task" % proc.pid):
                try:
                    with open("/proc/%d/task/%s/comm" % (proc.pid, t)) as f:
                        names.add(f.read().strip())
                except OSError:
                    pass  # a thread that just ended
        check("mtpx-worker-0" in names, "threads carry their names: %s" % sorted(names))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frame, enc, dec = client_frame(key, "padded", 2)
        payloads = [mtproto_plain(0x5F00000000000000 + 4 * i, os.urandom(n))
                    for i, n in enumerate((40, 4, 1000, 40000))]
        writer.write(frame)
        for i, p in enumerate(payloads):
            writer.write(enc.apply(encode_packet("padded", p, os.urandom(i % 4))))
        await writer.drain()

        async def readexactly(n):
            return dec.apply(await reader.readexactly(n))

        for p in payloads:
            got, _n, _ack, _pad = await asyncio.wait_for(read_packet("padded", readexactly), STEP)
            check(got == answer_for(p), "answer for a %d-byte request matches" % len(p))
        writer.close()
        s = dc.valid_sessions()
        check(len(s) == 1 and s[0].tag == "padded" and s[0].dc == 2,
              "fake DC saw one padded session for DC 2: %s" % [x.summary() for x in dc.sessions])
        check(s[0].packets == payloads, "fake DC received exactly the requests")
        check(not s[0].frame_problems, "proxy->DC frame follows the rules")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), STEP)
        except asyncio.TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        await dc.stop()
    err = err.decode(errors="replace")
    check(proc.returncode == 0, "mtpx exits 0 on SIGTERM (got %s)\n%s" % (proc.returncode, err))
    check("panic" not in err.lower(), "no panic on stderr")


ELF_MACHINES = {"x86_64": 0x3E, "aarch64": 0xB7}


def check_elf(path, arch):
    """The binary is a 64-bit little-endian ELF for `arch` with no program interpreter."""
    with open(path, "rb") as f:
        data = f.read()
    check(data[:6] == b"\x7fELF\x02\x01", "%s is a 64-bit little-endian ELF" % path)
    machine = int.from_bytes(data[18:20], "little")
    check(machine == ELF_MACHINES[arch], "ELF machine is %s (0x%x)" % (arch, machine))
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    types = [int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little")
             for i in range(phnum)]
    check(3 not in types, "statically linked (no PT_INTERP, no dynamic loader)")
    # musl's getaddrinfo reads /etc/hosts; mtpx's own DNS client never does.
    check(b"/etc/hosts" not in data, "the libc resolver (getaddrinfo) is not linked in")
    # src/sys.rs stands in for libunwind (nothing unwinds under panic = "abort"): neither
    # libunwind's DWARF parser nor std's backtrace symbolizer (gimli) may come back.
    check(b"CIE ID is not zero" not in data and b"gimli" not in data,
          "libunwind and the backtrace symbolizer are not linked in")
    # src/sys.rs names threads itself: musl's pthread_setname_np (and with it printf) stays out.
    check(b"task/%d/comm" not in data, "musl's printf is not linked in")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--arch", choices=sorted(ELF_MACHINES), help="expected ELF machine")
    ap.add_argument("--runner", default="", help="emulator command prefix, e.g. qemu-aarch64")
    a = ap.parse_args()
    if a.arch:
        check_elf(a.bin, a.arch)
    cmd = shlex.split(a.runner) + [os.path.abspath(a.bin)]
    print("smoke: %s" % " ".join(cmd), flush=True)

    rc, out, err = run_quick(cmd + ["--version"])
    check(rc == 0 and out == "mtpx " + cargo_version(),
          "--version prints %r (got rc %d %r %r)" % ("mtpx " + cargo_version(), rc, out, err))

    rc, out, err = run_quick(cmd + ["generate-secret", "www.example.com"])
    raw = b64url_decode(out) if rc == 0 and re.fullmatch(r"[A-Za-z0-9_-]+", out) else b""
    check(len(raw) == 17 + len("www.example.com") and raw[0] == 0xEE
          and raw[17:] == b"www.example.com",
          "generate-secret prints an ee secret for www.example.com (got %r %r)" % (out, err))

    asyncio.run(asyncio.wait_for(exchange(cmd, os.urandom(16)), 4 * STEP))
    print("smoke: passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("smoke: FAIL " + str(e), file=sys.stderr, flush=True)
        sys.exit(1)
