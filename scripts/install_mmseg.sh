#!/usr/bin/env bash
# Install the mmsegmentation backend (train_segmenter.segmenter.backend: mmseg) into .venv:
#
#     bash scripts/install_mmseg.sh          # first run 15-20 min on 2 cores (builds mmcv), then seconds
#
# mmsegmentation 1.2 needs the *compiled* mmcv < 2.2 (mmcv-lite lacks mmcv.ops), and the registry
# only has mmcv 2.1.0 as source for this torch. This script:
#   1. builds an mmcv 2.1.0 wheel once, from the registry's sdist (sha256 checked) with one edit to its
#      setup.py (`-std=c++17` -> `-std=c++20` in its 3 compiler flag lists: torch 2.14's headers need
#      C++20), using setuptools
#      80.9 (84 dropped the pkg_resources that mmcv's setup.py imports), ninja and wheel from a
#      private tools folder, so .venv is not touched while it builds;
#   2. keeps the wheel in $GROUNDIFF_WHEELS (default ~/.cache/groundiff/wheels), outside the repo;
#   3. runs scripts/setup.sh with GROUNDIFF_EXTRAS=mmseg, which installs the lock plus pyproject's
#      pinned `mmseg` extra (mmsegmentation, mmengine, mmdet, ftfy, mmcv) constrained by the lock,
#      taking mmcv from that wheel.
# A failed build leaves .venv as it was and prints the end of its log. GROUNDIFF_BUILD_JOBS sets the
# compiler jobs (default: the number of CPUs). GROUNDIFF_EXTRAS adds more extras (e.g. "s3").
set -euo pipefail
cd "$(dirname "$0")/.."

MMCV_VERSION=2.1.0
MMCV_URL=https://files.pythonhosted.org/packages/a7/19/f97f0fd4d432113a232e75f965335be6b7bb6557ae9faf8051e9a012cadd/mmcv-2.1.0.tar.gz
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
WHEELS=${GROUNDIFF_WHEELS:-$HOME/.cache/groundiff/wheels}
JOBS=${GROUNDIFF_BUILD_JOBS:-$(nproc)}

say() { echo "install_mmseg: $*"; }

PY=.venv/bin/python
# The build compiles against .venv's torch: set up the base environment first if there is none.
$PY -c 'import torch' 2>/dev/null || bash scripts/setup.sh
torch_tag=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')

wheel=$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ] && [ -f "$wheel.torch" ] && [ "$(cat "$wheel.torch")" != "$torch_tag" ]; then
    say "cached $wheel was built against torch $(cat "$wheel.torch"), .venv has $torch_tag: rebuilding"
    rm -f "$wheel" "$wheel.torch"
    wheel=""
fi
if [ -z "$wheel" ]; then
    build=$(mktemp -d "${TMPDIR:-/tmp}/groundiff-mmcv-build.XXXXXX")
    log="$build/build.log"
    trap 'rm -rf "$build"' EXIT
    fail() { say "FAILED: $*"; say "the last lines of $log:"; tail -n 40 "$log" >&2 || true
             cp "$log" "${TMPDIR:-/tmp}/groundiff-mmcv-build.log" 2>/dev/null && say "full log kept at ${TMPDIR:-/tmp}/groundiff-mmcv-build.log"
             say ".venv is unchanged"; exit 1; }
    : > "$log"
    say "no cached mmcv $MMCV_VERSION wheel in $WHEELS: building it (15-20 min on 2 cores, $JOBS jobs)"
    $PY - "$MMCV_URL" "$MMCV_SHA256" "$build/mmcv.tar.gz" <<'PY' >>"$log" 2>&1 || fail "downloading $MMCV_URL"
import hashlib, sys, urllib.request
url, sha, out = sys.argv[1:]
data = urllib.request.urlopen(url, timeout=180).read()
got = hashlib.sha256(data).hexdigest()
assert got == sha, f"sha256 of {url} is {got}, expected {sha}"
open(out, "wb").write(data)
PY
    tar -xzf "$build/mmcv.tar.gz" -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    n=$(grep -c "'-std=c++17'" "$src/setup.py" || true)
    [ "$n" = 3 ] || fail "expected 3 occurrences of -std=c++17 in mmcv's setup.py, found $n"
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
    # Build tools in a private folder, found first on PYTHONPATH/PATH: .venv keeps its setuptools.
    $PY -m pip install --quiet --disable-pip-version-check --target "$build/tools" \
        setuptools==80.9.0 wheel ninja >>"$log" 2>&1 || fail "installing the build tools"
    say "compiling mmcv's C++ ops (progress: ninja's [done/total] steps; full log: $log)"
    (cd "$src" && PYTHONPATH="$build/tools" PATH="$build/tools/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS="$JOBS" \
        "$OLDPWD/$PY" -m pip wheel --no-build-isolation --no-deps --verbose -w "$build/dist" . ) 2>&1 \
        | tee -a "$log" | grep --line-buffered -oE '^ *\[[0-9]+/[0-9]+\]' \
        | sed -u 's/^ */install_mmseg:   ninja step /' || true
    built=$(ls "$build"/dist/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$built" ] || fail "the mmcv wheel was not built"
    mkdir -p "$WHEELS"
    cp "$built" "$WHEELS/"
    wheel="$WHEELS/$(basename "$built")"
    echo "$torch_tag" > "$wheel.torch"
    say "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1)), cached in $WHEELS"
else
    say "using the cached $wheel"
fi

# The lock + the pinned mmseg extra; pip takes mmcv from the cached wheel, never from the sdist.
extras=mmseg${GROUNDIFF_EXTRAS:+,$GROUNDIFF_EXTRAS}
GROUNDIFF_EXTRAS=$extras PIP_FIND_LINKS="$WHEELS ${PIP_FIND_LINKS:-}" PIP_ONLY_BINARY=mmcv bash scripts/setup.sh
$PY -c 'import mmseg, mmcv, mmdet, mmengine; from mmcv.ops import point_sample; print(f"install_mmseg: ready: mmsegmentation {mmseg.__version__}, mmcv {mmcv.__version__} (compiled ops), mmdet {mmdet.__version__}, mmengine {mmengine.__version__}")'
