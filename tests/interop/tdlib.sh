#!/usr/bin/env bash
# TDLib interop: creates/uses the venv at .venv (repo root; tdjson from requirements.txt), then
# runs tdlib_interop.py inside a fresh network namespace that has only loopback (`unshare -n`),
# so neither TDLib nor mtpx can reach anything outside the host.  Needs root (or user
# namespaces), util-linux `unshare` and iproute2 `ip`.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if ! "$venv/bin/python" -c 'import telethon, TelethonFakeTLS, pyaes, cryptography, tdjson' 2>/dev/null; then
    echo "interop: setting up $venv" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$root/tests/interop/requirements.txt"
fi
for tool in unshare ip; do
    command -v "$tool" >/dev/null || { echo "interop-tdlib: '$tool' not found (util-linux / iproute2)" >&2; exit 2; }
done
cd "$root"
export MTPX_BIN="${MTPX_BIN:-$root/target/debug/mtpx}"
exec unshare -n -- sh -c 'ip link set lo up && exec "$0" tests/interop/tdlib_interop.py "$@"' \
    "$venv/bin/python" "$@"
