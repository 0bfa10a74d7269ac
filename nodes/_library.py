"""Make the ``comfy_diffbfr`` library importable however this pack was imported.

ComfyUI imports the pack under a path-shaped module name, so ``comfy_diffbfr`` is not importable
as a top-level package unless it was pip-installed; then the pack's own folder is put on the path.
One copy of the library is used either way, so its model cache and interrupt flag are shared.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("comfy_diffbfr") is None:
    sys.path.insert(0, str(PACK_ROOT))
