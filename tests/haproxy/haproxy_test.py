#!/usr/bin/env python3
"""End to end behind a real HAProxy: scaling mtpx out the way an operator does.

  clients --> HAProxy (mode tcp, balance roundrobin, send-proxy-v2) --> mtpx A / mtpx B --> fake DC

1. A fake Telegram DC (tests/interop/fake_dc.py) on 127.0.0.1.
2. Two `mtpx run <config>` instances: the same dd secret, `proxy-protocol-listener = true`,
   `[network.dc-overrides] 2 = fake DC`, `debug = true`, Prometheus on their own ports.
3. `haproxy -f <cfg> -db` in the foreground: a TCP frontend, both mtpx as servers with
   `send-proxy-v2`, round robin.
4. N dd clients (obfuscated2 frame + padded intermediate, DC 2) go through HAProxy; each checks
   the fake DC's answers byte for byte.  Then:
   * both instances served some (Prometheus `mtg_accepted_connections` / `mtg_handshakes`
     and `conn-closed` log lines), and between them exactly N;
   * every `conn-closed` line of those connections shows client=127.0.0.1:<the client socket's
     own local port> (taken from the PROXY v2 header), never HAProxy's backend connection port;
   * a client straight to one instance without a PROXY header still works (header optional),
     and is logged with its own port too.
5. SIGTERM: each mtpx exits 0 and never printed "panic"; HAProxy is stopped.

Env: MTPX_BIN (default target/debug/mtpx), HAPROXY_BIN (default haproxy), CLIENTS (default 6).
Last line: "N passed, N failed"; exit status 1 on any failure.  Loopback only; bounded (~50 s).
"""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))

from checks import RESULTS, check, free_port, log  # noqa: E402
from fake_dc import (  # noqa: E402
    FakeDc, answer_for, client_frame, encode_packet, mtproto_plain, read_packet)

OVERALL_TIMEOUT = 50  # seconds, whole run
STEP = 10  # seconds, one wait
MTPX = os.environ.get("MTPX_BIN", os.path.join(ROOT, "target", "debug", "mtpx"))
HAPROXY = os.environ.get("HAPROXY_BIN", "haproxy")
CLIENTS = int(os.environ.get("CLIENTS", "6"))

PROCS = []  # every child started; all stopped on every exit path


def listening(port):
    """Is something listening on 127.0.0.1:port?  Read from /proc, so no probe connection
    reaches mtpx or HAProxy (a probe would be balanced and logged like a client)."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:  # no /proc: fall back to a probe connection
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False
    return False


class Child:
    """A child process with its output in a file."""

    def __init__(self, name, argv, cwd):
        self.name, self.argv = name, argv
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=self.out, cwd=cwd)
        PROCS.append(self)

    def output(self):
        self.out.seek(0)
        return self.out.read().decode("utf-8", "replace")

    async def wait_listening(self, ports):
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if all(listening(p) for p in ports):
                return True
            await asyncio.sleep(0.05)
        return False

    def why_not(self):
        state = ("exited with %s" % self.proc.returncode if self.proc.poll() is not None
                 else "running but not listening")
        return "%s; argv %s; output:\n%s" % (state, " ".join(self.argv), self.output()[-2000:])

    def stop(self, sig=signal.SIGTERM, grace=STEP):
        """Signal, wait up to `grace`, then SIGKILL.  Returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def stop_all():
    for c in PROCS:
        try:
            c.stop(grace=3)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


# --- one dd client ---------------------------------------------------------------------------

async def dd_client(port, key, seed):
    """One dd client session through 127.0.0.1:port.  Returns (local port, error or None)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), STEP)
    local_port = writer.get_extra_info("sockname")[1]
    try:
        frame, enc, dec = client_frame(key, "padded", 2)
        sizes = (40, 4, 1000 + seed, 20000 + 16 * seed)
        payloads = [mtproto_plain(0x5F00000000000000 + (seed << 16) + 4 * i, os.urandom(n))
                    for i, n in enumerate(sizes)]
        writer.write(frame)
        for i, p in enumerate(payloads):
            writer.write(enc.apply(encode_packet("padded", p, os.urandom((i + seed) % 4))))
        await writer.drain()

        async def readexactly(n):
            return dec.apply(await reader.readexactly(n))

        for p in payloads:
            got, _n, _ack, _pad = await asyncio.wait_for(read_packet("padded", readexactly), STEP)
            if got != answer_for(p):
                return local_port, "answer to a %d-byte request differs" % len(p)
        return local_port, None
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
        return local_port, "%s: %s" % (type(e).__name__, e)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


# --- helpers on mtpx's outputs ---------------------------------------------------------------

def closed_clients(text):
    """client= values of the conn-closed lines in a logfmt or JSON log."""
    out = []
    for line in text.splitlines():
        if "conn-closed" not in line:
            continue
        m = re.search(r'"?client"?\s*[=:]\s*"?([0-9.:\[\]a-f]+)"?', line)
        if m:
            out.append(m.group(1))
    return out


def scrape(port, names=("mtg_accepted_connections", "mtg_handshakes")):
    """{name: value} of unlabelled counters on a Prometheus endpoint."""
    with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=STEP) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            out[parts[0]] = int(float(parts[1]))
    return out


async def wait_for(pred, timeout=STEP):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return pred()


# --- the scenario ----------------------------------------------------------------------------

MTPX_CONFIG = """\
secret = "{secret}"
bind-to = "127.0.0.1:{port}"
proxy-protocol-listener = true
debug = true
workers = 1

[network.dc-overrides]
2 = "127.0.0.1:{dc}"

[stats.prometheus]
enabled = true
bind-to = "127.0.0.1:{prom}"
"""

HAPROXY_CONFIG = """\
global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend mtproto
    bind 127.0.0.1:{port}
    default_backend mtpx

backend mtpx
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy-v2
    server b 127.0.0.1:{b} send-proxy-v2
"""


async def scenario(tmp):
    for path, what in ((MTPX, "mtpx binary (cargo build)"),):
        if not check("%s exists at %s" % (what, path), os.access(path, os.X_OK)):
            return
    hap = shutil.which(HAPROXY) or shutil.which(HAPROXY, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not check("haproxy found (%s)" % HAPROXY, hap,
                 "install it: scripts/test-deps.sh --system (as root)"):
        return
    log(subprocess.run([hap, "-v"], capture_output=True, text=True).stdout.splitlines()[0])

    r = subprocess.run([MTPX, "generate-secret", "--dd", "x"], capture_output=True, text=True,
                       timeout=STEP)
    secret = r.stdout.strip()
    if not check("mtpx generate-secret --dd makes a dd secret",
                 r.returncode == 0 and re.fullmatch(r"dd[0-9a-f]{32}", secret), r.stdout + r.stderr):
        return
    key = bytes.fromhex(secret[2:])

    dc = await FakeDc().start()
    try:
        await with_dc(tmp, hap, secret, key, dc)
    finally:
        await dc.stop()


async def with_dc(tmp, hap, secret, key, dc):
    # Two mtpx instances.
    inst = []
    for name in ("a", "b"):
        port, prom = free_port(), free_port()
        cfg = os.path.join(tmp, "mtpx-%s.toml" % name)
        with open(cfg, "w") as f:
            f.write(MTPX_CONFIG.format(secret=secret, port=port, dc=dc.port, prom=prom))
        child = Child("mtpx " + name, [MTPX, "run", cfg], tmp)
        inst.append((name, port, prom, child))
    for name, port, prom, child in inst:
        if not check("mtpx %s listens on :%d (metrics :%d)" % (name, port, prom),
                     await child.wait_listening([port, prom]), child.why_not()):
            return

    # HAProxy in front of them.
    front = free_port()
    hcfg = os.path.join(tmp, "haproxy.cfg")
    with open(hcfg, "w") as f:
        f.write(HAPROXY_CONFIG.format(port=front, a=inst[0][1], b=inst[1][1]))
    r = subprocess.run([hap, "-c", "-f", hcfg], capture_output=True, text=True, timeout=STEP)
    if not check("haproxy accepts its config", r.returncode == 0, r.stdout + r.stderr):
        return
    ha = Child("haproxy", [hap, "-f", hcfg, "-db"], tmp)
    if not check("haproxy listens on :%d" % front, await ha.wait_listening([front]), ha.why_not()):
        return

    # N clients through HAProxy, concurrently.
    results = await asyncio.gather(*(dd_client(front, key, i) for i in range(CLIENTS)))
    client_ports = [p for p, _ in results]
    errors = ["client %d (port %d): %s" % (i, p, e) for i, (p, e) in enumerate(results) if e]
    check("%d dd clients through HAProxy get the fake DC's answers byte for byte" % CLIENTS,
          not errors, "; ".join(errors) + "\n" + ha.output()[-1500:])
    log("client local ports: %s" % client_ports)

    # Who served what: logs (conn-closed at debug level) and Prometheus.
    want = {"127.0.0.1:%d" % p for p in client_ports}

    def seen():
        return [closed_clients(c.output()) for _n, _p, _m, c in inst]

    await wait_for(lambda: want <= set(sum(seen(), [])))
    per = seen()
    for (name, _p, _m, _c), lines in zip(inst, per):
        log("mtpx %s conn-closed client=%s" % (name, lines))
    check("both mtpx instances served some clients (logs)", all(per),
          "per instance: %s" % per)
    logged = sum(per, [])
    check("every client's own address (127.0.0.1:<its local port>) is logged by mtpx",
          want <= set(logged), "missing %s; logged %s" % (sorted(want - set(logged)), logged))
    stray = [c for c in logged if c not in want]
    check("no connection was logged under another address (HAProxy's backend port)",
          not stray and len(logged) == CLIENTS,
          "not client ports: %s (HAProxy's own connections?); %d lines for %d clients"
          % (stray, len(logged), CLIENTS))
    check("each client was served by exactly one instance",
          all(sum(lines.count(c) for lines in per) == 1 for c in want), str(per))

    counts = []
    for name, _p, prom, _c in inst:
        try:
            counts.append(scrape(prom))
        except OSError as e:
            counts.append({"error": str(e)})
    log("prometheus: a=%s b=%s" % tuple(counts))
    for metric in ("mtg_accepted_connections", "mtg_handshakes"):
        vals = [c.get(metric) for c in counts]
        check("both instances count %s > 0 in Prometheus" % metric,
              all(isinstance(v, int) and v > 0 for v in vals), str(counts))
        check("%s adds up to %d across the instances" % (metric, CLIENTS),
              all(isinstance(v, int) for v in vals) and sum(vals) == CLIENTS, str(counts))

    # Straight to instance a, no PROXY header: still served, logged with its own port.
    name, port, prom, child = inst[0]
    direct_port, err = await dd_client(port, key, 100)
    check("a client straight to mtpx %s without a PROXY header works" % name, err is None, str(err))
    addr = "127.0.0.1:%d" % direct_port
    check("the direct client is logged as %s" % addr,
          await wait_for(lambda: addr in closed_clients(child.output())),
          str(closed_clients(child.output())))

    # Shut down: HAProxy, then mtpx (SIGTERM: exit 0, no panic).
    ha.stop(signal.SIGTERM, 5)
    for name, _p, _m, c in inst:
        rc = c.stop(signal.SIGTERM, STEP)
        out = c.output()
        check("mtpx %s exits 0 on SIGTERM" % name, rc == 0, "exit %s\n%s" % (rc, out[-1500:]))
        check("mtpx %s printed no panic" % name, "panic" not in out.lower(), out[-1500:])


async def main_async(tmp):
    try:
        await asyncio.wait_for(scenario(tmp), OVERALL_TIMEOUT)
    except asyncio.TimeoutError:
        check("whole run within %d s" % OVERALL_TIMEOUT, False)


def on_signal(signum, _frame):
    stop_all()
    print("interrupted by signal %d" % signum, flush=True)
    passed = sum(1 for _, ok in RESULTS if ok)
    print("%d passed, %d failed" % (passed, len(RESULTS) - passed + 1), flush=True)
    os._exit(1)


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with tempfile.TemporaryDirectory(prefix="mtpx-haproxy-") as tmp:
            try:
                asyncio.run(main_async(tmp))
            except Exception as e:  # noqa: BLE001 - reported as a failure
                check("no unexpected exception", False, "%s: %s" % (type(e).__name__, e))
            finally:
                stop_all()
                for c in PROCS:
                    c.out.close()
    finally:
        stop_all()
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed or not RESULTS else 0


if __name__ == "__main__":
    sys.exit(main())
