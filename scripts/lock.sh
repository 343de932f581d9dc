#!/usr/bin/env bash
# Regenerate requirements.lock: the exact version (name==version) of every package in groundiff's
# environment (CPython 3.11, Linux x86_64), pip/setuptools included, groundiff itself excluded.
# scripts/setup.sh (and so .ci/run) installs exactly that, then groundiff editable with --no-deps.
#
# Refresh commands:
#   bash scripts/lock.sh                          # after editing pyproject.toml's dependencies: keeps every pin
#                                                 # that pyproject still admits, resolves only what changed
#   bash scripts/lock.sh --upgrade transformers   # also move NAME (repeatable) to the newest version pyproject
#                                                 # admits (and whatever it then needs)
#   bash scripts/lock.sh --upgrade-all            # re-resolve everything from pyproject's ranges (newest of each)
#
# How: a throwaway venv (python3.11 in a temp dir, deleted afterwards) gets pyproject's [project]
# dependencies plus the "test" extra, installed by plain pip (which takes torch/torchvision from this
# machine's local disk; do not use uv/poetry here, they would fetch other torch builds), with the current
# lock as constraints (minus what --upgrade names and minus pins pyproject no longer admits). `pip check`
# must pass there, and `pip freeze --all` of it becomes the new lock. Takes a few minutes (downloads).
# The optional extras (s3, mmseg, mmdet) are not locked; setup.sh installs them constrained by the lock
# (GROUNDIFF_EXTRAS=s3 bash scripts/setup.sh).
#
# Afterwards: review `git diff requirements.lock`, apply it with `bash scripts/setup.sh`, and run
# `pytest tests/test_lockfile.py`. An upgrade of a package that saved models record is deliberate: the
# transformers version is written into every saved config.json ("transformers_version", e.g. the
# MaskFormer folders and worlds/*/diffusion/text_encoder) and diffusers writes "_diffusers_version", so
# those outputs change md5: re-run the stages that write them and commit dvc.lock together with the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
LOCK=requirements.lock
UPGRADE=()
UPGRADE_ALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --upgrade|-P) [ $# -ge 2 ] || { echo "lock.sh: --upgrade needs a package name" >&2; exit 2; }
                      UPGRADE+=("$2"); shift 2 ;;
        --upgrade-all|-U) UPGRADE_ALL=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "lock.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/groundiff-lock.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
# pip(): pip without this machine's noise about extra-index folders that lack a package.
pip() { "${PIP[@]}" "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }

# requirements.in (pyproject's dependencies + test extra) and constraints.txt (the current lock, filtered).
[ -f "$LOCK" ] || : > "$TMP/empty.lock"
"$VPY" - "$TMP" "$([ -f "$LOCK" ] && echo "$LOCK" || echo "$TMP/empty.lock")" "$UPGRADE_ALL" "${UPGRADE[@]}" <<'PY'
import sys, tomllib
from pathlib import Path
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

tmp, lock, upgrade_all, *upgrade = sys.argv[1:]
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("test", []))
Path(tmp, "requirements.in").write_text("\n".join(reqs) + "\n")

ranges = {}
for r in map(Requirement, reqs):
    ranges.setdefault(canonicalize_name(r.name), []).append(r.specifier)
upgrade = {canonicalize_name(n) for n in upgrade}
unknown = upgrade - {canonicalize_name(l.split("==")[0]) for l in Path(lock).read_text().splitlines()
                     if "==" in l and not l.startswith("#")}
if unknown:
    print(f"lock.sh: --upgrade {', '.join(sorted(unknown))}: not in {lock}; resolving it fresh anyway")
keep = []
for line in Path(lock).read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    key = canonicalize_name(name)
    if upgrade_all == "1" or key in upgrade:
        continue
    if not all(spec.contains(version, prereleases=True) for spec in ranges.get(key, [])):
        print(f"lock.sh: pyproject no longer admits {name}=={version}; re-resolving it")
        continue
    keep.append(f"{name}=={version}")
Path(tmp, "constraints.txt").write_text("\n".join(keep) + "\n")
PY

echo "lock.sh: resolving in a throwaway venv ($TMP/venv) ..."
# pip first (at its locked version unless upgraded), then everything else in one resolution.
pip install --quiet --upgrade -c "$TMP/constraints.txt" pip
if ! pip install --quiet -c "$TMP/constraints.txt" -r "$TMP/requirements.in"; then
    echo "lock.sh: the kept pins conflict with pyproject.toml; name the package(s) to move with --upgrade NAME" \
         "(or use --upgrade-all)" >&2
    exit 1
fi
pip check

TORCH=$("${PIP[@]}" freeze --all | grep -i '^torch==' || true)
if [ "$TORCH" != "torch==2.14.1" ]; then
    echo "lock.sh: resolved '$TORCH', but groundiff pins torch==2.14.1; refusing to write $LOCK" >&2
    exit 1
fi

{
    echo "# Exact versions of every package in groundiff's environment (CPython 3.11, Linux x86_64)."
    echo "# Generated by scripts/lock.sh from pyproject.toml's dependencies + the \"test\" extra; do not edit."
    echo "# Refresh: bash scripts/lock.sh [--upgrade NAME ... | --upgrade-all]; apply: bash scripts/setup.sh."
    echo "# setup.sh installs these with --no-deps, then groundiff itself (editable, --no-deps, not listed)."
    "${PIP[@]}" freeze --all --exclude-editable
} > "$TMP/lock.new"
mv "$TMP/lock.new" "$LOCK"
echo "lock.sh: wrote $LOCK ($(grep -vc '^#' "$LOCK") packages); now: git diff $LOCK && bash scripts/setup.sh"
