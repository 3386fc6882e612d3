#!/usr/bin/env bash
# HAProxy (send-proxy-v2, round robin) in front of two mtpx instances: tests/haproxy/haproxy_test.py.
# Needs: the `haproxy` binary (Debian/Ubuntu: apt-get install -y haproxy) and a built
# target/debug/mtpx (cargo build). Python deps (cryptography or pyaes, for fake_dc.py) come from
# the venv at .venv (created here from tests/interop/requirements.txt if missing).
# Env: MTPX_BIN, HAPROXY_BIN, CLIENTS, PYTHON (default python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if "$venv/bin/python" -c 'import cryptography' 2>/dev/null \
        || "$venv/bin/python" -c 'import pyaes' 2>/dev/null; then
    py="$venv/bin/python"
elif ! "$py" -c 'import cryptography' 2>/dev/null && ! "$py" -c 'import pyaes' 2>/dev/null; then
    echo "haproxy test: setting up $venv" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$root/tests/interop/requirements.txt"
    py="$venv/bin/python"
fi
cd "$root"
# Hard bound on top of the script's own 50 s limit (it cleans up its children on SIGTERM).
exec timeout -k 5 60 "$py" tests/haproxy/haproxy_test.py "$@"
