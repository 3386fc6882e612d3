"""A fronting site that speaks X25519MLKEM768 for the interop tests: tests/pq/site.mjs on
Node.js >= 24 (OpenSSL >= 3.5): .venv-pq-node/bin/node, which scripts/test-deps.sh installs
(or MTPX_PQ_NODE).  Missing, `PqSite.start` raises (the case fails; it never skips).
Loopback only."""

import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SITE_JS = os.path.join(os.path.dirname(HERE), "pq", "site.mjs")

# What mtpx's scout logs once it learned the site's answer to each kind of hello.
LEARNED_PQ = ("hello=x25519mlkem768", "group=0x11ec")
LEARNED_CLASSIC = ("hello=x25519 ", "group=0x001d")


class PqSite:
    def __init__(self, proc, port, tmp):
        self.proc, self.port, self.tmp = proc, port, tmp

    @staticmethod
    def start(tmp):
        node = os.environ.get("MTPX_PQ_NODE") or os.path.join(
            os.path.dirname(os.path.dirname(HERE)), ".venv-pq-node", "bin", "node")
        if not os.access(node, os.X_OK):
            raise RuntimeError("%s not found: run scripts/test-deps.sh (make test does)" % node)
        d = os.path.join(tmp, "pq-site")
        os.makedirs(d, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", "/CN=www.example.com",
                        "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "cert.pem")],
                       check=True, capture_output=True, timeout=60)
        proc = subprocess.Popen([node, SITE_JS, os.path.join(d, "cert.pem"),
                                 os.path.join(d, "key.pem")],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        port = int(proc.stdout.readline())
        return PqSite(proc, port, d)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def learned(log_text):
    """True once mtpx's log says the scout learned X25519MLKEM768 and x25519 answers."""
    lines = [ln for ln in log_text.splitlines() if "event=scout-raid" in ln]
    has = lambda want: any(all(w in ln for w in want) for ln in lines)  # noqa: E731
    return has(LEARNED_PQ) and has(LEARNED_CLASSIC)
