"""End-to-end interop with mtcute (a TypeScript MTProto client library with its own MTProxy and
FakeTLS code, npm `@mtcute/node`, pinned in tests/interop/mtcute/): mtcute -> mtpx -> fake DC.

An independent implementation of the client side next to TDLib (tdlib_interop.py) and
Telethon/TelethonFakeTLS (telethon_interop.py): its ClientHello is its own Chrome-like one, it
checks mtpx's ServerHello + CCS + first application-data record against the HMAC, and reads
every later record as data.  For each secret kind (ee, dd, classic, and ee with traffic shaping
on) the fake DC must get, through mtpx, a well-formed frame (padded tag for ee/dd), DC 2, an
unencrypted req_pq_multi, and after answering resPQ, req_DH_params (mtcute read the
DC->client direction).  Negative control: mtcute with a wrong ee key is fronted (to a closed
local port) and the fake DC sees nothing.  mtpx must exit 0 on SIGTERM and never panic.

Runs in a loopback-only network namespace (tests/interop/mtcute.sh); refuses otherwise.
Env: MTPX_BIN (default target/debug/mtpx).  Last line "N passed, N failed"; exit 1 on failure.
"""

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_dc import answer_for, res_pq_answer  # noqa: E402
from harness import (  # noqa: E402
    REQ_DH_PARAMS, REQ_PQ_MULTI, DcThread, Mtpx, check, dh_session, finish, generate_secret,
    log, req_pq_session, require_isolation, wait_for,
)

from pqsite import PqSite, learned  # noqa: E402

CLIENT_DIR = os.path.join(HERE, "mtcute")
CASE_TIMEOUT = 20
NEGATIVE_WAIT = 4


class Client:
    """`node client.mjs <port> <secret>`; output kept for failure messages."""

    def __init__(self, tmp, name, port, secret):
        self.path = os.path.join(tmp, "mtcute-%s.log" % name)
        self.out = open(self.path, "w+b")
        self.proc = subprocess.Popen(["node", "client.mjs", str(port), secret], cwd=CLIENT_DIR,
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def log(self):
        with open(self.path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.out.close()


def mtcute_version():
    import json
    with open(os.path.join(CLIENT_DIR, "node_modules", "@mtcute", "core", "package.json")) as f:
        return json.load(f)["version"]


def positive_case(dct, tmp, kind, pq_site=None):
    """`kind`: ee, dd, classic, "ee shaped"; with `pq_site`, mtpx fronts that X25519MLKEM768
    site (mtcute copies TDLib 1.8.69: its hello offers X25519MLKEM768 too, so it gets the site's
    X25519MLKEM768 answer, a ServerHello of ~1,210 bytes)."""
    name = "mtcute %s" % kind
    shaped = "shaped" in kind
    secret = generate_secret("ee" if kind.startswith("ee") else kind)
    # resPQ for req_pq_multi; anything else gets the generic answer (never expected here).
    dc = dct.new_dc(answer=lambda p: res_pq_answer(p) or answer_for(p))
    mtpx = Mtpx(secret, dc.port, tmp, "mtcute-" + kind.replace(" ", "-"), shaped=shaped,
                front_port=pq_site.port if pq_site else None)
    if pq_site:
        check("%s: the scout learned the site's X25519MLKEM768 and x25519 answers" % name,
              wait_for(lambda: learned(mtpx.log()), CASE_TIMEOUT), mtpx.log()[-1500:])
    client = Client(tmp, kind.replace(" ", "-"), mtpx.port, secret)
    try:
        s = wait_for(lambda: req_pq_session(dc), CASE_TIMEOUT)
        if not check("%s: fake DC got req_pq_multi through mtpx" % name, s,
                     "sessions %s; mtcute: %s; mtpx: %s" % (
                         [x.summary() for x in dc.sessions], client.log()[-1500:],
                         mtpx.log()[-1500:])):
            return
        p = s.packets[0]
        log("%s: frame tag=%s dc=%d; first packet %d bytes: %s"
            % (name, s.tag, s.dc, len(p), p[:28].hex()))
        want_tag = "intermediate" if kind == "classic" else "padded"
        check("%s: frame tag %s" % (name, want_tag), s.tag == want_tag, "tag %s" % s.tag)
        check("%s: frame well formed" % name, not s.frame_problems, str(s.frame_problems))
        check("%s: DC 2 (mtcute's default)" % name, s.dc == 2, "dc %s" % s.dc)
        msg_len = struct.unpack("<I", p[16:20])[0]
        check("%s: first packet: auth_key_id 0, req_pq_multi, consistent length" % name,
              p[0:8] == b"\0" * 8 and p[20:24] == REQ_PQ_MULTI and msg_len == len(p) - 20,
              p[:40].hex())
        dh = wait_for(lambda: dh_session(dc), CASE_TIMEOUT)
        check("%s: mtcute read resPQ through mtpx and sent req_DH_params" % name, dh,
              "sessions %s; mtcute: %s" % ([x.summary() for x in dc.sessions],
                                           client.log()[-1500:]))
        if shaped:
            check("%s: mtpx started with drs and delays on" % name,
                  "drs=true delays=true" in mtpx.log(), mtpx.log()[-800:])
    finally:
        client.stop()
        rc = mtpx.stop()
        text = mtpx.log()
        check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
        check("%s: no panic in mtpx log" % name, "panic" not in text.lower(), text[-1500:])
        dct.run(dc.stop())


def negative_case(dct, tmp):
    name = "mtcute ee wrong key"
    good = generate_secret("ee")
    wrong = generate_secret("ee")
    dc = dct.new_dc()
    mtpx = Mtpx(good, dc.port, tmp, "mtcute-ee-wrong")
    client = Client(tmp, "ee-wrong", mtpx.port, wrong)
    try:
        fronted = wait_for(lambda: re.search(r"event=fronting .*reason=bad-digest", mtpx.log()),
                           CASE_TIMEOUT)
        time.sleep(NEGATIVE_WAIT)
        text = mtpx.log()
        check("%s: mtpx fronted mtcute's connection (bad digest)" % name, fronted, text[-1500:])
        closed = [ln for ln in text.splitlines() if "event=conn-closed" in ln]
        check("%s: every connection closed with dc=0 (never relayed)" % name,
              closed and all(re.search(r" dc=0( |$)", ln) for ln in closed), text[-1500:])
        check("%s: fake DC saw nothing" % name, not dc.sessions,
              "sessions: %s" % [x.summary() for x in dc.sessions])
    finally:
        client.stop()
        rc = mtpx.stop()
        check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
        check("%s: no panic in mtpx log" % name, "panic" not in mtpx.log().lower())
        dct.run(dc.stop())


def two_users_case(dct, tmp):
    """TDLib and mtcute as two users of one listener (issue 15): two ee secrets with different
    hosts in `[users.NAME]` tables; each client's session reaches the fake DC and reads resPQ
    back, and mtpx names each user in its log (never the secret)."""
    name = "tdlib + mtcute as two users"
    from tdlib_interop import Td, close_client, start_client
    td_secret = generate_secret("ee")
    mc_key = generate_secret("ee")[2:34]
    mc_secret = "ee" + mc_key + b"www.example.org".hex()
    dc = dct.new_dc(answer=lambda p: res_pq_answer(p) or answer_for(p))
    mtpx = Mtpx(None, dc.port, tmp, "two-users", users=[("tdlib", td_secret),
                                                        ("mtcute", mc_secret)])
    td = Td()
    cid, _, _ = start_client(td, tmp, "two-users", mtpx.port, td_secret)
    client = Client(tmp, "two-users", mtpx.port, mc_secret)
    stopped = False
    try:
        for user in ("tdlib", "mtcute"):
            seen = wait_for(lambda u=user: re.search(r"event=user-connected .*user=%s " % u,
                                                     mtpx.log()), CASE_TIMEOUT)
            check("%s: mtpx admitted user %s" % (name, user), seen, mtpx.log()[-1500:])
        dh = wait_for(lambda: len([s for s in dc.valid_sessions() if any(
            p[0:8] == b"\0" * 8 and p[20:24] == REQ_DH_PARAMS for p in s.packets)]) >= 2,
            CASE_TIMEOUT)
        check("%s: both read resPQ through mtpx and sent req_DH_params" % name, dh,
              "sessions %s; mtcute: %s" % ([x.summary() for x in dc.sessions],
                                           client.log()[-800:]))
        # Each user's own relay carried the DC's answer back (its connections' close lines
        # name the user, with bytes toward the client).
        client.stop()
        close_client(td, cid)
        stopped = True
        for user in ("tdlib", "mtcute"):
            pat = r"event=conn-closed .* user=%s dc=-?\d+ bytes_up=[1-9]\d* bytes_down=[1-9]" % user
            seen = wait_for(lambda p=pat: re.search(p, mtpx.log()), CASE_TIMEOUT)
            check("%s: %s's relay carried bytes both ways" % (name, user), seen,
                  mtpx.log()[-1500:])
        text = mtpx.log()
        check("%s: no secret in mtpx's log" % name,
              td_secret[2:34] not in text and mc_key not in text, "")
    finally:
        if not stopped:
            client.stop()
            close_client(td, cid)
        rc = mtpx.stop()
        check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
        check("%s: no panic in mtpx log" % name, "panic" not in mtpx.log().lower())
        dct.run(dc.stop())


def main():
    require_isolation("mtcute.sh")
    if sys.argv[1:] == ["two-users"]:
        # Only the two-users case (a quick local run).
        tmp = tempfile.mkdtemp(prefix="mtpx-mtcute-")
        try:
            two_users_case(DcThread(), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        finish()
        return
    threading.Timer(240, lambda: (check("overall time limit (240 s)", False), finish())).start()
    log("mtcute %s, node %s" % (mtcute_version(), subprocess.run(
        ["node", "--version"], capture_output=True, text=True).stdout.strip()))
    tmp = tempfile.mkdtemp(prefix="mtpx-mtcute-")
    try:
        dct = DcThread()
        for kind in ("ee", "dd", "classic", "ee shaped"):
            try:
                positive_case(dct, tmp, kind)
            except Exception as e:  # noqa: BLE001
                check("mtcute %s: ran" % kind, False, "%s: %s" % (type(e).__name__, e))
        site = PqSite.start(tmp)
        if site:
            try:
                for kind in ("ee pq-site", "ee shaped pq-site"):
                    try:
                        positive_case(dct, tmp, kind, site)
                    except Exception as e:  # noqa: BLE001
                        check("mtcute %s: ran" % kind, False, "%s: %s" % (type(e).__name__, e))
            finally:
                site.stop()
        try:
            negative_case(dct, tmp)
        except Exception as e:  # noqa: BLE001
            check("mtcute ee wrong key: ran", False, "%s: %s" % (type(e).__name__, e))
        try:
            two_users_case(dct, tmp)
        except Exception as e:  # noqa: BLE001
            check("tdlib + mtcute as two users: ran", False, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
