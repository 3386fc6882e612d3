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

import json
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_dc import res_pq_answer  # noqa: E402
from harness import (  # noqa: E402
    AD_TAG, REQ_PQ_MULTI, AdTag, DcThread, FakeMeProc, Mtpx, check, dh_session, finish,
    generate_secret, log, req_pq_session, require_isolation,
)
from harness import wait_for as harness_wait_for  # noqa: E402
from pqsite import PqSite, learned  # noqa: E402

DEADLINE = time.monotonic() + 230  # whole run stays under four minutes
CASE_TIMEOUT = 20
NEGATIVE_WAIT = 6
API_ID, API_HASH = 94575, "a3406de8d171bb422bb6ddf3bbd800e2"  # TDLib's public test values


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
    return harness_wait_for(pred, min(timeout, DEADLINE - time.monotonic()))


# --- cases -------------------------------------------------------------------------------------

# TDLib 1.8.69's ClientHello fingerprint (tests/data/tls/tdlib-1.8.69-client-hello.bin).
TDLIB_JA4 = "t13d1516h2_8daaf6152771_806a8c22fdea"


def positive_case(td, dct, tmp, kind, pq_site=None):
    """`kind`: ee, dd, classic, "ee shaped"; with `pq_site`, mtpx fronts that X25519MLKEM768
    site and answers TDLib's post-quantum hello as it does (a ServerHello of ~1,210 bytes).
    "... ad-tag": the secret has an ad tag, so TDLib reaches the fake DC through mtpx and the
    fake middle proxy (fake_me.py checks the RPC handshake, CRC-32 framing and the tag)."""
    name = "tdlib %s" % kind
    shaped = "shaped" in kind
    secret = generate_secret(kind.split()[0])
    dc = dct.new_dc(answer=res_pq_answer)
    me = FakeMeProc(tmp, dc.port, kind.replace(" ", "-")) if "ad-tag" in kind else None
    mtpx = Mtpx(secret, dc.port, tmp, kind.replace(" ", "-"), shaped=shaped,
                front_port=pq_site.port if pq_site else None, ad_tag=me and AdTag(me))
    log("%s: secret %s..., mtpx 127.0.0.1:%d, fake DC 127.0.0.1:%d"
        % (name, secret[:2] if kind != "classic" else "(classic)", mtpx.port, dc.port))
    if pq_site:
        check("%s: the scout learned the site's X25519MLKEM768 and x25519 answers" % name,
              wait_for(lambda: learned(mtpx.log()), CASE_TIMEOUT), mtpx.log()[-1500:])
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
        # The fake middle proxy opens its DC connections as intermediate (padded or not).
        want_tag = None if kind == "classic" else "intermediate" if me else "padded"
        check("%s: frame tag %s" % (name, want_tag or "any"),
              s.tag == want_tag if want_tag else s.tag in ("abridged", "intermediate", "padded"),
              "tag %s" % s.tag)
        check("%s: frame well formed" % name, not s.frame_problems, str(s.frame_problems))
        check("%s: DC id chosen by TDLib is a real DC" % name,
              s.dc in (1, 2, 3, 4, 5, -1, -2, -3, -4, -5, 203, -203), "dc %s" % s.dc)
        # auth_key_id 0, msg_id, message_data_length, then req_pq_multi#be7e8ef1 nonce:int128.
        # TDLib 1.8.69 pads its unencrypted handshake messages with random bytes, so the
        # length covers more than the 20 bytes of req_pq_multi.
        # Through a middle proxy, the 4-byte-aligned part of TDLib's transport padding stays
        # in the packet (as MTProxy does: only the padded transport's len % 4 bytes go).
        msg_len = struct.unpack("<I", p[16:20])[0]
        extra = len(p) - 20 - msg_len
        check("%s: first packet: auth_key_id 0, req_pq_multi, consistent length" % name,
              p[0:8] == b"\0" * 8 and p[20:24] == REQ_PQ_MULTI and msg_len >= 20
              and (0 <= extra < 16 and extra % 4 == 0 if me else extra == 0)
              and struct.unpack("<Q", p[8:16])[0] % 4 == 0, p[:40].hex())
        # The DC->client direction: TDLib parsed our resPQ and goes on with req_DH_params.
        dh = wait_for(lambda: dh_session(dc), CASE_TIMEOUT)
        check("%s: TDLib read resPQ through mtpx and sent req_DH_params" % name, dh,
              "sessions: %s" % [x.summary() for x in dc.sessions])
        if me:
            reqs = me.requests()
            check("%s: the middle proxy got TDLib's packets with the ad tag" % name,
                  reqs and all(r["ad_tag"] == AD_TAG for r in reqs) and not me.errors(),
                  "requests %s, errors %s" % (reqs[:3], me.errors()))
        if shaped:
            text = mtpx.log()
            check("%s: mtpx started with drs and delays on" % name,
                  "drs=true delays=true" in text, text[-800:])
        if kind.startswith("ee"):
            # mtpx counted TDLib's hello (post-quantum: X25519MLKEM768 offered) as a client's.
            text = mtpx.log()
            check("%s: TDLib's hello counted as a client's, JA4 %s" % (name, TDLIB_JA4),
                  "event=client-hello class=client ja4=%s" % TDLIB_JA4 in text, text[-800:])
    close_client(td, cid)
    rc = mtpx.stop()
    text = mtpx.log()
    check("%s: mtpx exits 0 on SIGTERM" % name, rc == 0, "rc %s" % rc)
    check("%s: no panic in mtpx log" % name, "panic" not in text.lower(),
          text[-1500:] if "panic" in text.lower() else "")
    dct.run(dc.stop())
    if me:
        me.stop()


def hello_fields(rec):
    """(suites, [(extension type, data)]) of a one-record ClientHello."""
    body = rec[9:]
    p = 2 + 32
    p += 1 + body[p]
    n = struct.unpack(">H", body[p:p + 2])[0]
    suites = body[p + 2:p + 2 + n]
    p += 2 + n
    p += 1 + body[p]
    end = p + 2 + struct.unpack(">H", body[p:p + 2])[0]
    p += 2
    exts = []
    while p < end:
        t, ln = struct.unpack(">HH", body[p:p + 4])
        exts.append((t, body[p + 4:p + 4 + ln]))
        p += 4 + ln
    return suites, exts


def capture_case(td, tmp):
    """TDLib's real ClientHello: `testProxy` against a plain listening socket that records what
    arrives. It must have the shape of the fixture tests/data/tls/tdlib-1.8.69-client-hello.bin
    (the same cipher suites, the same extensions but for their order, GREASE values and ECH
    GREASE length, a 1,216-byte X25519MLKEM768 share then an x25519 one). With MTPX_CAPTURE_DIR
    set, the hello is written there (to refresh the fixture)."""
    name = "tdlib capture"
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    got = []

    def serve():
        c, _ = ls.accept()
        c.settimeout(3)
        d = b""
        try:
            while len(d) < 5 or len(d) < 5 + struct.unpack(">H", d[3:5])[0]:
                b = c.recv(65536)
                if not b:
                    break
                d += b
        except OSError:
            pass
        got.append(d)
        c.close()
    threading.Thread(target=serve, daemon=True).start()
    cid = td.create()
    secret = generate_secret("ee")
    td.request(cid, {"@type": "testProxy", "proxy": {
        "@type": "proxy", "server": "127.0.0.1", "port": ls.getsockname()[1],
        "type": {"@type": "proxyTypeMtproto", "secret": secret}}, "dc_id": 2, "timeout": 5})
    wait_for(lambda: got, CASE_TIMEOUT)
    ls.close()
    if not check("%s: TDLib sent a ClientHello to testProxy's socket" % name, got and got[0]):
        return
    hello = got[0]
    log("%s: %d bytes, record %s" % (name, len(hello), hello[:5].hex()))
    if os.environ.get("MTPX_CAPTURE_DIR"):
        path = os.path.join(os.environ["MTPX_CAPTURE_DIR"], "tdlib-client-hello.bin")
        with open(path, "wb") as f:
            f.write(hello)
        log("%s: wrote %s" % (name, path))
    fixture = open(os.path.join(HERE, "..", "data", "tls", "tdlib-1.8.69-client-hello.bin"),
                   "rb").read()
    grease = lambda t: t & 0x0F0F == 0x0A0A  # noqa: E731
    (s1, e1), (s2, e2) = hello_fields(hello), hello_fields(fixture)
    strip = lambda s: [s[i:i + 2] for i in range(0, len(s), 2)  # noqa: E731
                       if not grease(struct.unpack(">H", s[i:i + 2])[0])]
    check("%s: same cipher suites as the fixture" % name, strip(s1) == strip(s2), s1.hex())
    types = lambda e: sorted(t for t, _ in e if not grease(t))  # noqa: E731
    check("%s: same extensions as the fixture" % name, types(e1) == types(e2),
          "%s vs %s" % (types(e1), types(e2)))
    same = {t: d for t, d in e2}
    check("%s: same groups, signature algorithms, ALPN, versions as the fixture" % name,
          all(d[4:] == same.get(t, b"")[4:] if t == 0x0A else d == same.get(t)
              for t, d in e1 if t in (0x0d, 0x10, 0x0a, 0x1b, 0x2d)), str(e1)[:300])
    ks = dict(e1).get(0x33, b"")
    entries, j = [], 2
    while j + 4 <= len(ks):
        g, ln = struct.unpack(">HH", ks[j:j + 4])
        entries.append((g, ln))
        j += 4 + ln
    check("%s: key shares GREASE, X25519MLKEM768 (1,216 bytes), x25519 (32)" % name,
          [e for e in entries if not grease(e[0])] == [(0x11EC, 1216), (0x1D, 32)], str(entries))


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
    fronted = wait_for(lambda: re.search(r"event=fronting", mtpx.log()), CASE_TIMEOUT)
    time.sleep(min(NEGATIVE_WAIT, max(0, DEADLINE - time.monotonic() - 5)))
    text = mtpx.log()
    lines = [ln for ln in text.splitlines() if "event=fronting" in ln]
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
    require_isolation("tdlib.sh")
    threading.Timer(max(1, DEADLINE - time.monotonic() + 3),
                    lambda: (check("overall time limit", False), finish())).start()
    tmp = tempfile.mkdtemp(prefix="mtpx-tdlib-")
    try:
        td = Td()
        dct = DcThread()
        log("TDLib %s" % json.loads(tdjson.td_execute(json.dumps(
            {"@type": "getOption", "name": "version"}).encode()))["value"])
        try:
            capture_case(td, tmp)
        except Exception as e:  # noqa: BLE001
            check("tdlib capture: ran", False, "%s: %s" % (type(e).__name__, e))
        for kind in ("ee", "dd", "classic", "ee shaped", "ee ad-tag", "dd ad-tag"):
            try:
                positive_case(td, dct, tmp, kind)
            except Exception as e:  # noqa: BLE001
                check("tdlib %s: ran" % kind, False, "%s: %s" % (type(e).__name__, e))
        site = PqSite.start(tmp)
        if site:
            try:
                for kind in ("ee pq-site", "ee shaped pq-site"):
                    try:
                        positive_case(td, dct, tmp, kind, site)
                    except Exception as e:  # noqa: BLE001
                        check("tdlib %s: ran" % kind, False, "%s: %s" % (type(e).__name__, e))
            finally:
                site.stop()
        try:
            negative_case(td, dct, tmp)
        except Exception as e:  # noqa: BLE001
            check("tdlib ee wrong key: ran", False, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
