"""Shared pieces of the real-client interop tests (tdlib_interop.py, mtcute_interop.py): checks
and their summary, the loopback-only isolation check, a fake DC on a background loop, and an
mtpx process (simple-run, or a config with traffic shaping) with every DC overridden to it.
"""

import asyncio
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from fake_dc import FakeDc  # noqa: E402

REQ_PQ_MULTI = struct.pack("<I", 0xBE7E8EF1)  # f1 8e 7e be
REQ_DH_PARAMS = struct.pack("<I", 0xD712E4BE)
MTPX = os.environ.get("MTPX_BIN", os.path.join(ROOT, "target", "debug", "mtpx"))
from checks import RESULTS, check, free_port, log  # noqa: E402

__all__ = [
    "MTPX", "REQ_DH_PARAMS", "REQ_PQ_MULTI", "RESULTS", "AdTag", "DcThread", "FakeMeProc", "Mtpx",
    "check", "dh_session",
    "finish", "free_port", "generate_secret", "isolation_problems", "log", "req_pq_session",
    "require_isolation", "wait_for",
]


def finish():
    passed = sum(ok for _, ok in RESULTS)
    failed = len(RESULTS) - passed
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.stdout.flush()
    # TDLib threads may still be running; do not wait for them.
    os._exit(1 if failed else 0)


# --- isolation ---------------------------------------------------------------------------------

def isolation_problems():
    """[] if outside addresses are unreachable (loopback-only namespace), else what is wrong.

    Sends nothing outside: the interface list comes first (refuse at once if there is more
    than lo), then UDP connect() (a route lookup only, no packet), and only when both say
    "no route" a TCP connect, which must then fail at once with ENETUNREACH.
    """
    ifaces = sorted(n for _, n in socket.if_nameindex())
    if ifaces != ["lo"]:
        return ["interfaces %s (want only lo)" % ifaces]
    problems = []
    targets = ((socket.AF_INET, ("1.1.1.1", 443)), (socket.AF_INET, ("149.154.167.51", 443)),
               (socket.AF_INET6, ("2606:4700:4700::1111", 443)))
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        for fam, addr in targets:
            s = socket.socket(fam, kind)
            s.setblocking(False)
            try:
                rc = s.connect_ex(addr)
            except OSError as e:
                rc = e.errno
            finally:
                s.close()
            if rc != errno.ENETUNREACH:
                problems.append("%s connect %s -> %s (want ENETUNREACH)" % (
                    "udp" if kind == socket.SOCK_DGRAM else "tcp", addr[0],
                    errno.errorcode.get(rc, rc)))
        if problems:
            return problems
    lo = socket.socket()
    try:
        lo.bind(("127.0.0.1", 0))
    except OSError as e:
        problems.append("loopback unusable: %s" % e)
    finally:
        lo.close()
    return problems


def require_isolation(script):
    """Exits 2 unless outside addresses are unreachable; else records that as a check."""
    problems = isolation_problems()
    if problems:
        print("REFUSING TO RUN: not in a loopback-only network namespace (run tests/interop/"
              "%s, which uses `unshare -n`): %s" % (script, "; ".join(problems)), flush=True)
        sys.exit(2)
    check("isolation: outside addresses unreachable (ENETUNREACH), only lo", True)
    if not os.access(MTPX, os.X_OK):
        check("mtpx binary at %s" % MTPX, False)
        finish()


# --- fake DC in a background asyncio loop -------------------------------------------------------

class DcThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def new_dc(self, answer=None):
        return self.run(FakeDc(answer=answer).start())


# --- mtpx --------------------------------------------------------------------------------------

def generate_secret(kind):
    args = [MTPX, "generate-secret"]
    args += {"ee": ["--hex"], "dd": ["--dd"], "classic": ["--classic"]}[kind]
    out = subprocess.run(args + ["www.example.com"], capture_output=True, text=True, timeout=10,
                         check=True).stdout.strip()
    return out


AD_TAG = "0123456789abcdef0123456789abcdef"


class FakeMeProc:
    """tests/interop/fake_me.py (a fake Telegram middle proxy) relaying to the fake DC on
    `dc_port`, checking every request's ad tag against AD_TAG; killed by stop()."""

    def __init__(self, tmp, dc_port, name):
        self.secret_file = os.path.join(tmp, "proxy-secret-%s" % name)
        with open(self.secret_file, "wb") as f:
            f.write(os.urandom(128))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_me.py"), "--secret-file", self.secret_file,
             "--dc", "127.0.0.1:%d" % dc_port, "--ad-tag", AD_TAG],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if '"listening"' not in first:
            raise RuntimeError("fake_me.py did not start: %r" % first)
        self.port = json.loads(first)["port"]
        self.events = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def requests(self):
        return [e for e in self.events if e.get("event") == "req"]

    def errors(self):
        return [e for e in self.events if e.get("event") == "error"]

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


class AdTag:
    """What Mtpx needs for an ad tag: a fake middle proxy (its port and proxy secret)."""

    def __init__(self, me):
        self.me = me


class Mtpx:
    """mtpx with every DC overridden to the fake DC. Fronted connections go to a closed local
    port, or to `front_port` (a real site: the scout then learns its TLS answers). `shaped`
    turns traffic shaping on; `post_quantum` sets [defense.doppelganger] post-quantum.
    With `ad_tag` (an AdTag), the secret carries AD_TAG: mtpx reads Telegram's config and
    proxy secret from files naming the fake middle proxy for every DC, and every DC address
    points at a closed port, so the fake DC is reached only through the middle proxy."""

    def __init__(self, secret, dc_port, tmp, name, shaped=False, front_port=None,
                 post_quantum=None, ad_tag=None, users=None):
        """`users`: [(name, secret)] served as `[users.NAME]` tables (then `secret` is the
        top-level one, or None for none)."""
        self.port = free_port()
        self.err_path = os.path.join(tmp, "mtpx-%s.log" % name)
        dcs = [d for dc in (1, 2, 3, 4, 5, 203) for d in (dc, -dc)]
        closed = front_port or free_port()  # fronted connections never leave the host
        if shaped or post_quantum or ad_tag or users:
            conf = os.path.join(tmp, "mtpx-%s.toml" % name)
            shaping = ('drs = true\ndelays = true\ndelay-shape = 1.0\ndelay-scale = "20ms"\n'
                       if shaped else '')
            tagged = ''
            if ad_tag:
                tg = os.path.join(tmp, "proxy-config-%s" % name)
                with open(tg, "w") as f:
                    f.write("default 2;\n")
                    for d in dcs:
                        f.write("proxy_for %d 127.0.0.1:%d;\n" % (d, ad_tag.me.port))
                tagged = ('ad-tag = "%s"\n[network]\nproxy-config-files = ["%s"]\n'
                          'proxy-secret-file = "%s"\n' % (AD_TAG, tg, ad_tag.me.secret_file))
                dc_port = free_port()  # direct relaying would find nothing
            with open(conf, "w") as f:
                if secret:
                    f.write('secret = "%s"\n' % secret)
                f.write('bind-to = "127.0.0.1:%d"\ndebug = true\n%s'
                        '[domain-fronting]\nip = "127.0.0.1"\nport = %d\n'
                        '[defense.doppelganger]\nlearn = %s\n%s%s'
                        '[network.dc-overrides]\n' % (
                            self.port, tagged, closed,
                            "true" if front_port else "false",
                            shaping, 'post-quantum = "%s"\n' % post_quantum if post_quantum
                            else ''))
                for d in dcs:
                    f.write('%d = "127.0.0.1:%d"\n' % (d, dc_port))
                for user, user_secret in users or ():
                    f.write('[users.%s]\nsecret = "%s"\n' % (user, user_secret))
            args = [MTPX, "run", conf]
        else:
            args = [MTPX, "simple-run", "127.0.0.1:%d" % self.port, secret, "-d"]
            for d in dcs:
                args += ["--dc-override", "%d=127.0.0.1:%d" % (d, dc_port)]
            args += ["--domain-fronting-ip", "127.0.0.1", "-p", str(closed)]
        self.err = open(self.err_path, "w+b")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.err, stderr=self.err)
        end = time.monotonic() + 10
        while time.monotonic() < end and self.proc.poll() is None:
            if "event=proxy-started" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError("mtpx did not start: %s" % self.log()[-2000:])

    def log(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "timeout"
        self.err.close()
        return rc


def wait_for(pred, timeout):
    """pred()'s first true value within timeout seconds, else its last value."""
    end = time.monotonic() + max(timeout, 0)
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(0.05)
    return pred()


def req_pq_session(dc):
    """The fake DC's session whose first packet is an unencrypted req_pq_multi, or None."""
    for s in dc.valid_sessions():
        if s.packets:
            p = s.packets[0]
            if p[0:8] == b"\0" * 8 and len(p) >= 24 and p[20:24] == REQ_PQ_MULTI:
                return s
    return None


def dh_session(dc):
    """The fake DC's session that went on to req_DH_params (the client read resPQ), or None."""
    for s in dc.valid_sessions():
        if any(p[0:8] == b"\0" * 8 and p[20:24] == REQ_DH_PARAMS for p in s.packets):
            return s
    return None
