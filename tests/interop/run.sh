#!/usr/bin/env bash
# Telethon interop: creates/uses the venv at .venv (repo root), then runs telethon_interop.py.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3). Args are passed through
# (e.g. --reference to check the harness against the pure-Python reference proxy).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if ! "$venv/bin/python" -c 'import telethon, TelethonFakeTLS, pyaes, cryptography' 2>/dev/null; then
    echo "interop: setting up $venv" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$root/tests/interop/requirements.txt"
fi
cd "$root"
exec "$venv/bin/python" tests/interop/telethon_interop.py "$@"
