#!/usr/bin/env bash
# mtcute interop: runs mtcute_interop.py with the pinned mtcute (tests/interop/mtcute, npm ci)
# on Node.js from PyPI (.venv-node), both put there by scripts/test-deps.sh (run here first: a
# no-op when everything is present), inside a network namespace with only loopback
# (`unshare -n`, or `unshare -rn` when not root, as tdlib.sh does). Needs unshare and ip.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3, makes the venvs).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$root/scripts/test-deps.sh" --quiet
export PATH="$root/.venv-node/bin:$PATH"
echo "interop-mtcute: node $(node --version) at $(command -v node), npm $(npm --version)" >&2
cd "$root"
export MTPX_BIN="${MTPX_BIN:-$root/target/debug/mtpx}"
ns=-n
[ "$(id -u)" = 0 ] || ns=-rn
exec unshare "$ns" -- sh -c 'ip link set lo up && exec "$0" tests/interop/mtcute_interop.py "$@"' \
    "$root/.venv/bin/python" "$@"
