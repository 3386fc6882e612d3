#!/usr/bin/env bash
# CI entry point for the static binaries: builds them (`make -f mk/release.mk static`), then
# runs scripts/smoke.py against each: x86_64-unknown-linux-musl natively and
# aarch64-unknown-linux-musl under qemu-aarch64 user emulation (or the other way round on an
# aarch64 host). Installs what is missing: the rustup targets, Debian's qemu-user-static, and
# python3-cryptography for tests/interop/fake_dc.py. Everything stays on 127.0.0.1.
#
# Env: SKIP_BUILD=1 tests the binaries already in $TARGET_DIR (default $CARGO_TARGET_DIR or
# target); PYTHON picks the interpreter.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
python=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "static-smoke: need root to run: $*" >&2; return 1; fi
}
apt_install() {
    command -v apt-get >/dev/null || { echo "static-smoke: please install $* (no apt-get)" >&2; return 1; }
    echo "static-smoke: installing $* with apt-get" >&2
    as_root apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

# Python with an AES implementation for the fake DC.
has_aes() { "$1" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("cryptography") or u.find_spec("pyaes")))' 2>/dev/null; }
if ! has_aes "$python"; then
    command -v "$python" >/dev/null || apt_install python3
    has_aes "$python" || apt_install python3-cryptography
    if ! has_aes "$python" && has_aes /usr/bin/python3; then python=/usr/bin/python3; fi
    has_aes "$python" || { echo "static-smoke: $python cannot import cryptography or pyaes" >&2; exit 1; }
fi

host=$(uname -m)
runner_for() { # $1 = arch; prints the command prefix to run a binary of that arch
    if [ "$1" = "$host" ]; then return 0; fi
    local q
    for q in "qemu-$1-static" "qemu-$1"; do
        if command -v "$q" >/dev/null; then echo "$q"; return 0; fi
    done
    apt_install qemu-user-static >&2 || return 1
    for q in "qemu-$1-static" "qemu-$1"; do
        if command -v "$q" >/dev/null; then echo "$q"; return 0; fi
    done
    echo "static-smoke: no qemu-$1 after installing qemu-user-static" >&2
    return 1
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v rustup >/dev/null || { echo "static-smoke: rustup is required" >&2; exit 1; }
    make -f mk/release.mk static TARGET_DIR="$target_dir"
fi

failed=0
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    arch=${t%%-*}
    runner=$(runner_for "$arch")
    echo "=== $t ${runner:+(under $runner)}"
    if ! "$python" scripts/smoke.py --bin "$target_dir/$t/release/mtpx" --arch "$arch" --runner "$runner"; then
        failed=1
    fi
done
[ $failed = 0 ] && echo "static-smoke: all passed" || echo "static-smoke: FAILED" >&2
exit $failed
