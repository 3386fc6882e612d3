#!/usr/bin/env bash
# The end of `make test`: one line per suite (passed with its time, FAILED, or not run) from
# the markers the Makefile's suite targets leave in DIR (SUITE.begin when a suite starts,
# SUITE.end when all its steps succeeded), then a closing "N passed, N failed" line.
# Usage: scripts/test-summary.sh DIR SUITE...   Prints only; the caller keeps make's exit code.
set -uo pipefail
dir=$1
shift
pass=0 fail=0 notrun=0
echo
echo "== make test: summary"
for s in "$@"; do
    if [ -f "$dir/$s.end" ]; then
        pass=$((pass + 1))
        printf '  %-16s passed   %5d s\n' "$s" $(($(cat "$dir/$s.end") - $(cat "$dir/$s.begin")))
    elif [ -f "$dir/$s.begin" ]; then
        fail=$((fail + 1))
        printf '  %-16s FAILED   (its output is above)\n' "$s"
    else
        notrun=$((notrun + 1))
        printf '  %-16s not run (an earlier suite failed; `make -k test` runs the rest anyway)\n' "$s"
    fi
done
# Suites that did not run count as failed: `make test` did not pass them.
echo "suites: $pass passed, $((fail + notrun)) failed"
