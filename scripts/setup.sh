#!/usr/bin/env bash
# Create .venv (Python 3.11) and install groundiff with its test extras. Idempotent: a second run
# only checks that everything is installed. torch 2.14.1 / torchvision 0.29.1 are pinned in
# pyproject.toml; pip takes them from this machine's local wheel cache where there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# Editable install: `python -m groundiff.stages.<name>` (what dvc.yaml runs) imports the checkout.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/python - <<'PY'
import torch, torchvision
assert torch.__version__.startswith("2.14.1"), f"torch {torch.__version__} installed; groundiff pins 2.14.1"
print(f"groundiff environment ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
