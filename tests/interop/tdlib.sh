#!/usr/bin/env bash
# TDLib interop: runs tdlib_interop.py (tdjson from tests/interop/requirements.txt, in .venv,
# which scripts/test-deps.sh makes) inside a fresh network namespace that has only loopback
# (`unshare -n`; not root: `unshare -rn`, a user namespace too), so neither TDLib nor mtpx can
# reach anything outside the host. Needs util-linux `unshare` and iproute2 `ip`.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3, makes the venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$root/scripts/test-deps.sh" --quiet
cd "$root"
export MTPX_BIN="${MTPX_BIN:-$root/target/debug/mtpx}"
ns=-n
[ "$(id -u)" = 0 ] || ns=-rn
exec unshare "$ns" -- sh -c 'ip link set lo up && exec "$0" tests/interop/tdlib_interop.py "$@"' \
    "$root/.venv/bin/python" "$@"
