#!/usr/bin/env bash
# Create .venv (Python 3.11) and install exactly requirements.lock, then groundiff itself (editable,
# --no-deps, so it adds nothing unpinned). The lock pins every package, torch 2.14.1 / torchvision
# 0.29.1 included (plain pip takes them from this machine's local disk where they are there).
# When it installs, it also removes the packages that the lock does not list (like pip-sync), so that
# .venv is the locked environment. Optional extras: GROUNDIFF_EXTRAS=s3 (or "s3,mmseg") installs them
# on top, constrained by the lock (they are not locked themselves).
# Idempotent and fast on a second run: nothing is installed while .venv/.lock-sha256 matches the lock,
# pyproject.toml and GROUNDIFF_EXTRAS and every locked package is at its locked version
# (GROUNDIFF_REINSTALL=1 forces the install).
# Refresh the lock (after changing pyproject.toml, or to upgrade a package): bash scripts/lock.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
LOCK=requirements.lock
EXTRAS=${GROUNDIFF_EXTRAS:-}
STAMP=.venv/.lock-sha256

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
# pip(): pip without this machine's noise about extra-index folders that lack a package.
pip() { "${PIP[@]}" "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }

# state: line 1 = locked packages missing or at another version, line 2 = installed packages the lock
# does not list (groundiff aside). Both empty: .venv is the locked environment.
state() {
    .venv/bin/python - "$LOCK" <<'PY'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = dict(l.strip().split("==") for l in open(sys.argv[1]) if "==" in l and not l.startswith("#"))
pins = {norm(n): v for n, v in pins.items()}
installed = {}
for d in md.distributions():
    meta = d.metadata
    if meta["Name"]:
        installed.setdefault(norm(meta["Name"]), (meta["Name"], meta["Version"]))
print(" ".join(n for n, v in sorted(pins.items()) if installed.get(n, (0, None))[1] != v))
print(" ".join(name for n, (name, v) in sorted(installed.items()) if n not in pins and n != "groundiff"))
PY
}

want=$( { cat "$LOCK" pyproject.toml; echo "extras=$EXTRAS"; .venv/bin/python -V; } | sha256sum | cut -d' ' -f1)
{ read -r wrong; read -r extra; } < <(state)
# Installed as locked (and lock, pyproject and extras unchanged since): nothing to do.
if [ "${GROUNDIFF_REINSTALL:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || [ -n "$wrong" ]; then
    rm -f "$STAMP"
    [ -z "$wrong" ] || echo "setup.sh: installing $LOCK: $(wc -w <<<"$wrong") package(s) missing or at another version"
    # pip at its locked version first, then the whole lock without resolving (it is complete: pip check
    # below proves it), then groundiff without its dependencies.
    pip install --quiet "$(grep -i '^pip==' "$LOCK")"
    pip install --quiet --no-deps -r "$LOCK"
    pip install --quiet --no-deps --no-build-isolation -e ".[test]"
    # Remove what the lock does not list (leftovers of an older lock, hand installs).
    { read -r wrong; read -r extra; } < <(state)
    [ -z "$wrong" ] || { echo "setup.sh: still not as locked after installing: $wrong" >&2; exit 1; }
    if [ -n "$extra" ]; then
        echo "setup.sh: removing packages that $LOCK does not list: $extra"
        # shellcheck disable=SC2086
        pip uninstall --quiet --yes $extra
    fi
    if [ -n "$EXTRAS" ]; then
        echo "setup.sh: optional extras [$EXTRAS], constrained by $LOCK"
        pip install --quiet -c "$LOCK" --no-build-isolation -e ".[test,$EXTRAS]"
    fi
    "${PIP[@]}" check
    echo "$want" > "$STAMP"
elif [ -n "$extra" ] && [ -z "$EXTRAS" ]; then
    echo "setup.sh: installed by hand, not in $LOCK: $extra (GROUNDIFF_REINSTALL=1 removes them)"
fi
.venv/bin/python - <<'PY'
import torch, torchvision
assert torch.__version__.startswith("2.14.1"), f"torch {torch.__version__} installed; groundiff pins 2.14.1"
print(f"groundiff environment ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
