#!/usr/bin/env python3
"""Dependency audit for the mtpx binary (`make audit`).

Lists every crate in the binary's dependency tree (normal dependencies reachable from mtpx, for
each shipped target: x86_64/aarch64 linux-musl) with version, license and source, from
`cargo metadata --locked` (offline first, so it works without a network once the registry cache
is warm). Fails (exit 1) when:

* a direct dependency of mtpx is not listed in audit/allowed-crates.txt,
* the tree holds more crates than `tree-size` recorded there (mtpx itself not counted),
* a crate comes from anywhere but crates.io (git or path dependencies; the crates of this
  repository's own workspace, crates/*, are mtpx's own code and are walked through),
* a crate in the tree has no license, or mtpx gains build-dependencies or proc-macros.

Usage: scripts/audit.py [--count] [--allowed FILE]
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"]
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def metadata(target):
    base = ["cargo", "metadata", "--format-version", "1", "--locked",
            "--filter-platform", target, "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    for extra in (["--offline"], []):
        r = subprocess.run(base + extra, capture_output=True, text=True)
        if r.returncode == 0:
            return json.loads(r.stdout)
    sys.exit("audit: cargo metadata failed:\n" + r.stderr)


def read_allowed(path):
    allowed, tree_size = set(), None
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("tree-size"):
                tree_size = int(line.split("=", 1)[1])
            else:
                allowed.add(line)
    if tree_size is None:
        sys.exit("audit: %s has no `tree-size = N` line" % path)
    return allowed, tree_size


def tree(meta):
    """(root package, {id: package}, direct dep names, reachable ids, build-time-only deps)."""
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    # Crates of this repository's workspace (crates/*) are mtpx's own code: not counted, their
    # dependencies are mtpx's direct dependencies.
    own = set(meta.get("workspace_members", [])) | {root}
    direct, build_only = set(), set()
    seen, todo, walked = set(), [root], {root}
    while todo:
        nid = todo.pop()
        for d in nodes[nid]["deps"]:
            kinds = {k["kind"] for k in d["dep_kinds"]}
            if None in kinds:
                if d["pkg"] in own:
                    if d["pkg"] not in walked:
                        walked.add(d["pkg"])
                        todo.append(d["pkg"])
                    continue
                if nid in own:
                    direct.add(pkgs[d["pkg"]]["name"])
                if d["pkg"] not in seen:
                    seen.add(d["pkg"])
                    todo.append(d["pkg"])
            elif "build" in kinds:
                build_only.add(d["pkg"])
    return pkgs[root], pkgs, direct, seen, build_only - seen


def main():
    ap = argparse.ArgumentParser(description="dependency audit of the mtpx binary")
    ap.add_argument("--count", action="store_true", help="print only the crate count")
    ap.add_argument("--allowed", default=os.path.join(ROOT, "audit", "allowed-crates.txt"))
    args = ap.parse_args()
    allowed, recorded = read_allowed(args.allowed)

    crates, in_targets, direct, build_only, problems = {}, {}, set(), {}, []
    root_pkg = None
    for t in TARGETS:
        root_pkg, pkgs, d, ids, b = tree(metadata(t))
        direct |= d
        for i in ids:
            crates[i] = pkgs[i]
            in_targets.setdefault(i, []).append(t.split("-")[0])
        for i in b:
            build_only[i] = pkgs[i]

    if args.count:
        print(len(crates))
        return 0

    print("%-16s %-9s %-26s %-6s %s" % ("crate", "version", "license", "kind", "targets"))
    for p in sorted(crates.values(), key=lambda p: (p["name"], p["version"])):
        kind = "direct" if p["name"] in direct else "trans."
        targets = ",".join(in_targets[p["id"]]) if len(in_targets[p["id"]]) < len(TARGETS) else "all"
        print("%-16s %-9s %-26s %-6s %s" % (p["name"], p["version"], p.get("license") or "-",
                                            kind, targets))
        if p.get("source") != CRATES_IO:
            problems.append("%s %s does not come from crates.io (%s)"
                            % (p["name"], p["version"], p.get("source")))
        if not (p.get("license") or p.get("license_file")):
            problems.append("%s %s declares no license" % (p["name"], p["version"]))
    for p in build_only.values():
        print("build-time only: %s %s (%s)" % (p["name"], p["version"], p.get("license")))

    for name in sorted(direct - allowed):
        problems.append("direct dependency `%s` is not in %s"
                        % (name, os.path.relpath(args.allowed, ROOT)))
    for dep in root_pkg["dependencies"]:
        if dep["kind"] == "build":
            problems.append("mtpx has a build-dependency: %s" % dep["name"])
    for t in root_pkg["targets"]:
        if "proc-macro" in t["kind"]:
            problems.append("mtpx must not be a proc-macro crate")

    n = len(crates)
    print("\n%d direct, %d crates in the tree (recorded limit %d), mtpx %s itself not counted"
          % (len(direct), n, recorded, root_pkg["version"]))
    if n > recorded:
        problems.append("the tree grew to %d crates; the recorded limit is %d "
                        "(review the new crates, then raise tree-size)" % (n, recorded))
    elif n < recorded:
        print("note: the tree shrank; lower tree-size to %d in %s"
              % (n, os.path.relpath(args.allowed, ROOT)))
    for p in problems:
        print("audit: FAIL: " + p, file=sys.stderr)
    if not problems:
        print("audit: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
