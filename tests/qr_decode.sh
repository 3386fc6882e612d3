#!/bin/sh
# Cross-checks the QR encoder against a real decoder: renders codes as PBM images and reads
# them back with zbarimg (Debian package zbar-tools; not part of `make test`). Fails when
# zbarimg is missing: a cross-check that did not run must not look like one that passed.
set -eu
cd "$(dirname "$0")/.."
if ! command -v zbarimg >/dev/null 2>&1; then
    echo "qr_decode: FAIL: zbarimg not found; install it as root: apt-get install -y zbar-tools" >&2
    exit 1
fi
exec cargo test --lib formats::qr::tests::zbarimg_decodes_our_codes -- --ignored --exact
