"""ComfyUI entry point of the DiffBFR node pack.

ComfyUI imports this folder under a path-shaped module name, so everything below is relative.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
