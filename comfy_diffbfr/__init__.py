"""DiffBFR blind face restoration: library, command line and ComfyUI nodes.

Nothing here imports ComfyUI; the `host` subpackage finds it at run time when present.
"""

__version__ = "0.1.0"
