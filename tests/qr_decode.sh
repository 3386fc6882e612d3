#!/bin/sh
# Cross-checks the QR encoder against a real decoder: renders codes as PBM images and reads
# them back with zbarimg (Debian package zbar-tools). Skips (exit 0) when zbarimg is missing.
set -eu
cd "$(dirname "$0")/.."
if ! command -v zbarimg >/dev/null 2>&1; then
    echo "qr_decode: zbarimg not found (apt-get install zbar-tools); skipped"
    exit 0
fi
exec cargo test --lib proto::qr::tests::zbarimg_decodes_our_codes -- --ignored --exact
