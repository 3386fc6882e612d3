"""End-to-end interop with TDLib (the real Telegram client library): TDLib -> mtpx -> fake DC.

For each secret kind (ee/FakeTLS, dd, classic) this starts a fake DC (fake_dc.py) on 127.0.0.1,
`mtpx simple-run` with every DC (1..5, their negatives, 203) overridden to the fake DC, and a
fresh TDLib client (PyPI `tdjson`, TDLib's JSON interface) with `addProxy` pointing at mtpx.
TDLib then opens its own proxy connection: for ee a FakeTLS ClientHello, a check of mtpx's
ServerHello HMAC, then the obfuscated2 frame; for dd/classic the frame directly.  The test
asserts that the fake DC got, through mtpx, a well-formed proxy->DC frame (padded tag for
ee/dd), a DC id TDLib chose, and a first packet that is unencrypted MTProto (auth_key_id 0)
carrying req_pq_multi (0xbe7e8ef1), i.e. TDLib finished the proxy handshake.  The fake DC then
answers resPQ (nonce echoed, a small pq, Telegram's RSA key fingerprints) and must get
req_DH_params (0xd712e4be) back: TDLib read mtpx's DC->client direction (for ee: TLS records).
The fake DC has no real keys, so the exchange stops there (TDLib keeps retrying; fine).
A fourth case, "ee shaped", runs mtpx from a config file with traffic shaping on
(`[defense.doppelganger] drs = true, delays = true`, Weibull gaps of λ = 20 ms).

Negative control: a TDLib client with a wrong ee secret (other key, same host): mtpx must front
it (to --domain-fronting-ip 127.0.0.1 on a closed port) and the fake DC must see nothing.
mtpx must log no panic and exit 0 on SIGTERM.

NETWORK: this must run in a network namespace with only loopback (tests/interop/tdlib.sh does
`unshare -n`): TDLib likes to contact Telegram/Google/Firebase for configuration.  The test
checks that outside addresses are unreachable (ENETUNREACH) and refuses to run otherwise.

Env: MTPX_BIN (default target/debug/mtpx).  Last line "N passed, N failed"; exit 1 on failure,
2 if not isolated.
"""

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from fake_dc import FakeDc, res_pq_answer  # noqa: E402

MTPX = os.environ.get("MTPX_BIN", os.path.join(ROOT, "target", "debug", "mtpx"))
DEADLINE = time.monotonic() + 110  # whole run stays under two minutes
CASE_TIMEOUT = 20
NEGATIVE_WAIT = 6
REQ_PQ_MULTI = struct.pack("<I", 0xBE7E8EF1)  # f1 8e 7e be
REQ_DH_PARAMS = struct.pack("<I", 0xD712E4BE)
API_ID, API_HASH = 94575, "a3406de8d171bb422bb6ddf3bbd800e2"  # TDLib's public test values

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

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_secret(kind):
    args = [MTPX, "generate-secret"]
    args += {"ee": ["--hex"], "dd": ["--dd"], "classic": ["--classic"]}[kind]
    out = subprocess.run(args + ["www.example.com"], capture_output=True, text=True, timeout=10,
                         check=True).stdout.strip()
    return out


class Mtpx:
    def __init__(self, secret, dc_port, tmp, name, shaped=False):
        self.port = free_port()
        self.err_path = os.path.join(tmp, "mtpx-%s.log" % name)
        dcs = [d for dc in (1, 2, 3, 4, 5, 203) for d in (dc, -dc)]
        closed = free_port()  # fronted connections get refused, never leave the host
        if shaped:
            conf = os.path.join(tmp, "mtpx-%s.toml" % name)
            with open(conf, "w") as f:
                f.write('secret = "%s"\nbind-to = "127.0.0.1:%d"\ndebug = true\n'
                        '[domain-fronting]\nip = "127.0.0.1"\nport = %d\n'
                        '[defense.doppelganger]\nlearn = false\ndrs = true\ndelays = true\n'
                        'delay-shape = 1.0\ndelay-scale = "20ms"\n'
                        '[network.dc-overrides]\n' % (secret, self.port, closed))
                for d in dcs:
                    f.write('%d = "127.0.0.1:%d"\n' % (d, dc_port))
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


# --- TDLib -------------------------------------------------------------------------------------

import tdjson  # noqa: E402


class Td:
    """The TDLib JSON interface; one receiver thread dispatches to per-client queues."""

    def __init__(self):
        tdjson.td_execute(json.dumps({"@type": "setLogVerbosityLevel",
                                      "new_verbosity_level": 0}).encode())
        self.events = {}  # client_id -> list of dicts
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._recv, daemon=True)
        self.thread.start()

    def _recv(self):
        while True:
            raw = tdjson.td_receive(0.5)
            if raw is None:
                continue
            ev = json.loads(raw)
            cid = ev.get("@client_id")
            with self.cv:
                self.events.setdefault(cid, []).append(ev)
                self.cv.notify_all()

    def create(self):
        cid = tdjson.td_create_client_id()
        with self.cv:
            self.events.setdefault(cid, [])
        return cid

    def send(self, cid, req):
        tdjson.td_send(cid, json.dumps(req).encode())

    def request(self, cid, req):
        """Sends `req`; returns a function that waits (up to `timeout` s) for its answer."""
        extra = "x%d" % time.monotonic_ns()
        self.send(cid, dict(req, **{"@extra": extra}))

        def answer(timeout=10):
            end = time.monotonic() + timeout
            with self.cv:
                while True:
                    for ev in self.events.get(cid, []):
                        if ev.get("@extra") == extra:
                            return ev
                    left = end - time.monotonic()
                    if left <= 0:
                        return {"@type": "timeout"}
                    self.cv.wait(left)
        return answer

    def call(self, cid, req, timeout=10):
        return self.request(cid, req)(timeout)


def start_client(td, tmp, name, mtpx_port, secret):
    """A fresh TDLib client using the proxy; returns (client id, addProxy answer, params answer)."""
    cid = td.create()
    db = os.path.join(tmp, "td-" + name)
    os.makedirs(db)
    # TDLib answers addProxy only once it has its parameters, so send both, then wait.
    # TDLib 1.8.69: addProxy proxy:proxy enable:Bool; proxy = server, port, type.
    params = td.request(cid, {
        "@type": "setTdlibParameters", "use_test_dc": False,
        "database_directory": db, "files_directory": db, "database_encryption_key": "",
        "use_file_database": False, "use_chat_info_database": False,
        "use_message_database": False, "use_secret_chats": False,
        "api_id": API_ID, "api_hash": API_HASH, "system_language_code": "en",
        "device_model": "mtpx interop", "system_version": "linux",
        "application_version": "1.0"})
    proxy = td.request(cid, {"@type": "addProxy", "enable": True, "proxy": {
        "@type": "proxy", "server": "127.0.0.1", "port": mtpx_port,
        "type": {"@type": "proxyTypeMtproto", "secret": secret}}})
    params, proxy = params(), proxy()
    return cid, proxy, params


def close_client(td, cid):
    td.call(cid, {"@type": "close"}, timeout=5)


def wait_for(pred, timeout):
    end = min(time.monotonic() + timeout, DEADLINE)
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(0.05)
    return pred()


# --- cases -------------------------------------------------------------------------------------

def req_pq_session(dc):
    for s in dc.valid_sessions():
        if s.packets:
            p = s.packets[0]
            if p[0:8] == b"\0" * 8 and len(p) >= 24 and p[20:24] == REQ_PQ_MULTI:
                return s
    return None


def dh_session(dc):
    for s in dc.valid_sessions():
        if any(p[0:8] == b"\0" * 8 and p[20:24] == REQ_DH_PARAMS for p in s.packets):
            return s
    return None


def positive_case(td, dct, tmp, kind):
    name = "tdlib %s" % kind
    shaped = kind == "ee shaped"
    secret = generate_secret("ee" if shaped else kind)
    dc = dct.new_dc(answer=res_pq_answer)
    mtpx = Mtpx(secret, dc.port, tmp, kind.replace(" ", "-"), shaped=shaped)
    log("%s: secret %s..., mtpx 127.0.0.1:%d, fake DC 127.0.0.1:%d"
        % (name, secret[:2] if kind != "classic" else "(classic)", mtpx.port, dc.port))
    cid, proxy, params = start_client(td, tmp, kind, mtpx.port, secret)
    check("%s: addProxy accepted" % name, proxy.get("@type") == "addedProxy", json.dumps(proxy)[:200])
    check("%s: setTdlibParameters accepted" % name, params.get("@type") == "ok",
          json.dumps(params)[:200])
    s = wait_for(lambda: req_pq_session(dc), CASE_TIMEOUT)
    sessions = list(dc.sessions)
    if not check("%s: fake DC got req_pq_multi through mtpx" % name, s,
                 "sessions: %s" % [x.summary() for x in sessions]):
        log("mtpx log tail:\n" + mtpx.log()[-3000:])
    else:
        p = s.packets[0]
        log("%s: %d DC connection(s); frame tag=%s dc=%d; first packet %d bytes (+%d pad): %s"
            % (name, len(sessions), s.tag, s.dc, len(p), s.paddings[0], p[:40].hex()))
        want_tag = "padded" if kind in ("ee", "dd", "ee shaped") else None
        check("%s: frame tag %s" % (name, want_tag or "any"),
              s.tag == want_tag if want_tag else s.tag in ("abridged", "intermediate", "padded"),
              "tag %s" % s.tag)
        check("%s: frame well formed" % name, not s.frame_problems, str(s.frame_problems))
        check("%s: DC id chosen by TDLib is a real DC" % name,
              s.dc in (1, 2, 3, 4, 5, -1, -2, -3, -4, -5, 203, -203), "dc %s" % s.dc)
        # auth_key_id 0, msg_id, message_data_length, then req_pq_multi#be7e8ef1 nonce:int128.
        # TDLib 1.8.69 pads its unencrypted handshake messages with random bytes, so the
        # length covers more than the 20 bytes of req_pq_multi.
        msg_len = struct.unpack("<I", p[16:20])[0]
        check("%s: first packet: auth_key_id 0, req_pq_multi, consistent length" % name,
              p[0:8] == b"\0" * 8 and p[20:24] == REQ_PQ_MULTI and msg_len == len(p) - 20 >= 20
              and struct.unpack("<Q", p[8:16])[0] % 4 == 0, p[:40].hex())
        # The DC->client direction: TDLib parsed our resPQ and goes on with req_DH_params.
        dh = wait_for(lambda: dh_session(dc), CASE_TIMEOUT)
        check("%s: TDLib read resPQ through mtpx and sent req_DH_params" % name, dh,
              "sessions: %s" % [x.summary() for x in dc.sessions])
        if shaped:
            text = mtpx.log()
            check("%s: mtpx started with drs and delays on" % name,
                  "drs=true delays=true" in text, text[-800:])
    close_client(td, cid)
    rc = mtpx.stop()
    text = mtpx.log()
    check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
    check("%s: no panic in mtpx log" % name, "panic" not in text.lower(),
          text[-1500:] if "panic" in text.lower() else "")
    dct.run(dc.stop())


def negative_case(td, dct, tmp):
    name = "tdlib ee wrong key"
    good = generate_secret("ee")
    wrong = generate_secret("ee")
    assert good[2:34] != wrong[2:34] and good[34:] == wrong[34:]
    dc = dct.new_dc()
    mtpx = Mtpx(good, dc.port, tmp, "ee-wrong")
    cid, proxy, params = start_client(td, tmp, "ee-wrong", mtpx.port, wrong)
    check("%s: addProxy accepted" % name, proxy.get("@type") == "addedProxy", json.dumps(proxy)[:200])
    # Wait until mtpx has seen (and fronted) at least one TDLib connection, then a little more.
    fronted = wait_for(lambda: re.search(r"front", mtpx.log(), re.I), CASE_TIMEOUT)
    time.sleep(min(NEGATIVE_WAIT, max(0, DEADLINE - time.monotonic() - 5)))
    text = mtpx.log()
    lines = [ln for ln in text.splitlines() if re.search(r"front", ln, re.I)]
    if lines:
        log("%s: mtpx: %s" % (name, lines[0][:300]))
    check("%s: mtpx fronted TDLib's connection" % name, fronted, text[-1500:])
    closed = [ln for ln in text.splitlines() if "event=conn-closed" in ln]
    check("%s: every TDLib connection closed with dc=0 (never relayed)" % name,
          closed and all(re.search(r" dc=0( |$)", ln) for ln in closed), text[-1500:])
    check("%s: fake DC saw nothing" % name, not dc.sessions,
          "sessions: %s" % [x.summary() for x in dc.sessions])
    close_client(td, cid)
    rc = mtpx.stop()
    text = mtpx.log()
    check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
    check("%s: no panic in mtpx log" % name, "panic" not in text.lower())
    dct.run(dc.stop())


def main():
    problems = isolation_problems()
    if problems:
        print("REFUSING TO RUN: not in a loopback-only network namespace (run tests/interop/"
              "tdlib.sh, which uses `unshare -n`): " + "; ".join(problems), flush=True)
        sys.exit(2)
    check("isolation: outside addresses unreachable (ENETUNREACH), only lo", True)
    if not os.access(MTPX, os.X_OK):
        check("mtpx binary at %s" % MTPX, False)
        finish()
    threading.Timer(max(1, DEADLINE - time.monotonic() + 3),
                    lambda: (check("overall time limit", False), finish())).start()
    tmp = tempfile.mkdtemp(prefix="mtpx-tdlib-")
    try:
        td = Td()
        dct = DcThread()
        log("TDLib %s" % json.loads(tdjson.td_execute(json.dumps(
            {"@type": "getOption", "name": "version"}).encode()))["value"])
        for kind in ("ee", "dd", "classic", "ee shaped"):
            try:
                positive_case(td, dct, tmp, kind)
            except Exception as e:  # noqa: BLE001
                check("tdlib %s: ran" % kind, False, "%s: %s" % (type(e).__name__, e))
        try:
            negative_case(td, dct, tmp)
        except Exception as e:  # noqa: BLE001
            check("tdlib ee wrong key: ran", False, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
