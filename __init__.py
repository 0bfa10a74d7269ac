"""ComfyUI entry point of the DiffBFR node pack.

ComfyUI imports this folder under a path-shaped module name, so the pack's own modules are imported
relatively. The library ``comfy_diffbfr`` is imported by its name: pip-installed, or else from this
folder, which is put on the path here, before any node module is imported. One copy of the library
is used either way, so its model cache and interrupt flag are shared.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("comfy_diffbfr") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402  (needs the path above)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
