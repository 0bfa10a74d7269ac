#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch and the project installed editable.
# VENV=path overrides the location (CI uses a fresh one).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    "$PY" -m pip install -q --upgrade pip
    # torch first and pinned: a bare "torch" requirement would pull a multi-GB build from the registry.
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
# Already installed from this checkout: nothing to do (so the set-up also passes offline).
if ! "$PY" -I - <<'PY' 2>/dev/null
import pathlib, comfy_diffbfr, dlib, facexlib, pytest  # noqa: F401
assert pathlib.Path(comfy_diffbfr.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve()
PY
then
    "$PY" -m pip install -q -e ".[dev]"
fi
