#!/usr/bin/env bash
# HAProxy (send-proxy-v2, round robin) in front of two mtpx instances: tests/haproxy/haproxy_test.py.
# Needs the `haproxy` binary and the venv at .venv (fake_dc.py's AES), both installed by
# scripts/test-deps.sh (run here first: a no-op when everything is present), and a built
# target/debug/mtpx (cargo build).
# Env: MTPX_BIN, HAPROXY_BIN, CLIENTS, PYTHON (default python3, makes the venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$root/scripts/test-deps.sh" --quiet
cd "$root"
# Hard bound on top of the script's own 50 s limit (it cleans up its children on SIGTERM).
exec timeout -k 5 60 "$root/.venv/bin/python" tests/haproxy/haproxy_test.py "$@"
