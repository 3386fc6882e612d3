#!/usr/bin/env bash
# Reproducible-build check: exports one commit (default HEAD) into two fresh directories with
# different paths, runs `make -f mk/release.mk dist` in each (own target dirs, nothing shared
# but the cargo registry cache), and compares the binaries and the archives byte for byte.
# Prints the sha256 of each binary; exit 1 if anything differs.
#
# Usage: scripts/repro-check.sh [commit]      (KEEP=1 keeps the build directories)
set -euo pipefail

root=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$root" rev-parse "${1:-HEAD}")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mtpx-repro.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT

# Same commit time for both, taken from git (the exported trees have no .git).
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct "$commit")
unset CARGO_TARGET_DIR RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS

dirs=("$tmp/a" "$tmp/second/build-with-a-longer-path")
for d in "${dirs[@]}"; do
    mkdir -p "$d"
    git -C "$root" archive "$commit" | tar -x -C "$d"
    echo "repro: building $commit in $d" >&2
    (cd "$d" && make -s -f mk/release.mk dist TARGET_DIR=target >"$d.log" 2>&1) || {
        echo "repro: build failed in $d:" >&2; tail -n 30 "$d.log" >&2; exit 1; }
done

status=0
targets=$(sed -n 's/^STATIC_TARGETS *?= *//p' "$root/mk/release.mk")
for t in $targets; do
    a="${dirs[0]}/target/$t/release/mtpx"
    b="${dirs[1]}/target/$t/release/mtpx"
    sa=$(sha256sum <"$a" | cut -d' ' -f1)
    sb=$(sha256sum <"$b" | cut -d' ' -f1)
    if [ "$sa" = "$sb" ]; then
        echo "repro: $t identical  sha256 $sa  ($(wc -c <"$a") bytes)"
    else
        echo "repro: $t DIFFERS    $sa vs $sb"
        cmp "$a" "$b" | head -n 3 || true
        status=1
    fi
done
if cmp -s "${dirs[0]}/dist/SHA256SUMS" "${dirs[1]}/dist/SHA256SUMS"; then
    echo "repro: dist archives identical:"
    sed 's/^/  /' "${dirs[0]}/dist/SHA256SUMS"
else
    echo "repro: dist archives DIFFER"
    diff "${dirs[0]}/dist/SHA256SUMS" "${dirs[1]}/dist/SHA256SUMS" || true
    status=1
fi
exit $status
