#!/usr/bin/env bash
# Telethon interop: runs telethon_interop.py in the venv at .venv (repo root), which
# scripts/test-deps.sh makes from tests/interop/requirements.txt (run here first: a no-op when
# everything is present). Env: MTPX_BIN (default target/debug/mtpx), PYTHON (default python3,
# makes the venv). Args are passed through (e.g. --reference to check the harness against the
# pure-Python reference proxy).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$root/scripts/test-deps.sh" --quiet
cd "$root"
exec "$root/.venv/bin/python" tests/interop/telethon_interop.py "$@"
