"""Model folders: ComfyUI's ``models/<kind>`` when ComfyUI is present, else our own.

Outside ComfyUI the folder for a kind is ``$COMFY_DIFFBFR_MODELS/<kind>`` when that variable is
set, else ``~/.cache/comfy_diffbfr/<kind>``. The pack's own ``weights/`` folder is always searched
for ``diffbfr`` models, so the starter weights are found everywhere. Small per-machine records
(the CPU precision measurements) go to ``cache_dir()``, inside and outside ComfyUI.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_WEIGHTS = PACK_ROOT / "weights"
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def _comfy_folder_paths():
    try:
        import folder_paths  # ComfyUI's module; present only inside a running ComfyUI
    except ImportError:
        return None
    return folder_paths


def _user_cache() -> Path:
    return Path.home() / ".cache" / "comfy_diffbfr"


def cache_dir() -> Path:
    """``$COMFY_DIFFBFR_CACHE`` when set, else ``~/.cache/comfy_diffbfr``."""
    root = os.environ.get("COMFY_DIFFBFR_CACHE")
    return Path(root) if root else _user_cache()


def register_kind(kind: str) -> None:
    """Make ``models/<kind>`` known to ComfyUI (idempotent); a no-op outside ComfyUI."""
    fp = _comfy_folder_paths()
    if fp is None or kind in fp.folder_names_and_paths:
        return
    fp.folder_names_and_paths[kind] = ([os.path.join(fp.models_dir, kind)], set(MODEL_SUFFIXES))


def model_dirs(kind: str) -> list[Path]:
    """The folders searched for models of ``kind`` (``diffbfr``, ``facedetection``), first = default for downloads."""
    fp = _comfy_folder_paths()
    if fp is not None:
        register_kind(kind)
        dirs = [Path(p) for p in fp.get_folder_paths(kind)]
    else:
        root = os.environ.get("COMFY_DIFFBFR_MODELS")
        base = Path(root) if root else _user_cache()
        dirs = [base / kind]
    if kind == "diffbfr":
        dirs.append(PACK_WEIGHTS)
    return dirs


def list_models(kind: str) -> list[str]:
    """Names (relative paths) of the model files and diffusers folders found in ``model_dirs(kind)``."""
    names: list[str] = []
    for root in model_dirs(kind):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            is_diffusers = path.is_dir() and (path / "config.json").is_file()
            if (path.is_file() and path.suffix in MODEL_SUFFIXES or is_diffusers) and rel not in names:
                names.append(rel)
    return names


def resolve_model(kind: str, name: str) -> Path:
    """The file ``name`` inside one of the model folders of ``kind``.

    A name from a workflow file never escapes the folders: absolute paths and ``..`` are refused.
    """
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"model name {name!r} must be a path inside the {kind} model folders (no absolute path, no '..')")
    dirs = model_dirs(kind)
    for root in dirs:
        candidate = (root / name).resolve()
        if candidate.exists() and candidate.is_relative_to(root.resolve()):
            return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise CheckpointError(f"model {name!r} not found; put the file into one of: {searched}")
