#!/usr/bin/env bash
# mtcute interop: installs the pinned mtcute (npm ci, first run only) into
# tests/interop/mtcute/node_modules, then runs mtcute_interop.py inside a network namespace with
# only loopback (`unshare -n`, as tdlib.sh does).  Needs node + npm, Python, unshare and ip.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/tests/interop/mtcute"
py="${PYTHON:-python3}"
for tool in node npm unshare ip; do
    command -v "$tool" >/dev/null || { echo "interop-mtcute: '$tool' not found (nodejs, npm, util-linux, iproute2)" >&2; exit 2; }
done
if ! [ -f "$dir/node_modules/@mtcute/node/package.json" ]; then
    echo "interop-mtcute: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
cd "$root"
export MTPX_BIN="${MTPX_BIN:-$root/target/debug/mtpx}"
exec unshare -n -- sh -c 'ip link set lo up && exec "$0" tests/interop/mtcute_interop.py "$@"' \
    "$py" "$@"
