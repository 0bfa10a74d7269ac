"""Model folders: ComfyUI's ``models/<kind>`` when ComfyUI is present, else our own.

Outside ComfyUI the folder for a kind is ``$COMFY_DIFFBFR_MODELS/<kind>`` when that variable is
set, else ``~/.cache/comfy_diffbfr/<kind>``. ``diffbfr`` models are then looked up, in this order:

1. that folder (ComfyUI's ``models/diffbfr``, or ours);
2. the pack's ``weights/`` folder, when the library runs from a checkout of the pack (or the pack
   inside ``ComfyUI/custom_nodes``);
3. the starter weights a ``pip install`` put beside the environment (``<prefix>/share/comfy-diffbfr/
   weights``, pyproject's ``data-files``; a ``--user`` install's prefix is the user base).

So the starter weights are found however the pack or the library was installed.

Small per-machine records (the CPU precision measurements) go to ``cache_dir()``, inside and
outside ComfyUI.
"""

from __future__ import annotations

import os
import site
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import CheckpointError

PACK_ROOT = Path(__file__).resolve().parents[2]
INSTALLED_WEIGHTS = Path("share") / "comfy-diffbfr" / "weights"  # below an installation prefix
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def _starter_weights() -> Path | None:
    """The folder that holds the starter weights: the checkout's ``weights/``, else the installed copy."""
    if (PACK_ROOT / "pyproject.toml").is_file() and (PACK_ROOT / "weights").is_dir():
        return PACK_ROOT / "weights"
    for prefix in (sys.prefix, site.getuserbase()):
        if (Path(prefix) / INSTALLED_WEIGHTS).is_dir():
            return Path(prefix) / INSTALLED_WEIGHTS
    return None


PACK_WEIGHTS = _starter_weights()


def _comfy_folder_paths():
    try:
        import folder_paths  # ComfyUI's module; present only inside a running ComfyUI
    except ImportError:
        return None
    return folder_paths


def inside_comfyui() -> bool:
    """True in a running ComfyUI (messages then name node inputs and ComfyUI's folders, not CLI flags)."""
    return _comfy_folder_paths() is not None


def _user_cache() -> Path:
    return Path.home() / ".cache" / "comfy_diffbfr"


def cache_dir() -> Path:
    """``$COMFY_DIFFBFR_CACHE`` when set, else ``~/.cache/comfy_diffbfr``."""
    root = os.environ.get("COMFY_DIFFBFR_CACHE")
    return Path(root) if root else _user_cache()


def write_cache_file(path: Path, write: Callable[[Path], None], *, failures: tuple[type[Exception], ...] = (OSError,)) -> None:
    """Put a record of the cache folder in place: ``write(temporary_path)`` fills a temporary file in
    ``path``'s folder, which then replaces ``path`` in one step (``os.replace``). A record that cannot
    be written (read-only home; ``failures`` are the errors that say so) is not an error: the caller
    keeps what it has in memory and a later run makes the record again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except failures:
        pass


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
    if kind == "diffbfr" and PACK_WEIGHTS is not None:
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

    A name from a workflow file never escapes the folders: absolute paths, ``..`` and NUL bytes are
    refused. Links the user put into a model folder are followed (as ``list_models`` lists them),
    wherever they point: the user placed them there, a workflow cannot.
    """
    if "\x00" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"model name {name!r} must be a path inside the {kind} model folders (no absolute path, no '..')")
    dirs = model_dirs(kind)
    for root in dirs:
        candidate = root / name
        if candidate.exists():
            return candidate.resolve()
    searched = ", ".join(str(d) for d in dirs)
    raise CheckpointError(f"model {name!r} not found; put the file into one of: {searched}")
