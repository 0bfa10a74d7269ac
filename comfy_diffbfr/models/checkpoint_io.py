"""Reading model files safely and unwrapping them down to one network state dict.

Only two readers are ever used: safetensors, and ``torch.load(weights_only=True)`` for pickled
files (``.pth/.pt/.ckpt/.bin``), which refuses anything but tensors and plain containers, so a
malicious pickle is rejected before any of its code runs. A diffusers folder (``config.json`` +
``diffusion_pytorch_model.*``, or its parent holding ``unet/`` and ``scheduler/``) is read too.

Unwrapping follows the conventions of the public trainers: wrapper dicts (EMA preferred),
ermongroup's 5-element list (EMA last), DDP/Lightning/SR3 key prefixes, and SR3's top-level
schedule buffers, which are split off because they carry T and the betas.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from .limits import check_tensor_bytes

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

#: Wrapper-dict entries that hold the network, best first (EMA weights are what samplers use).
WRAPPER_KEYS = ("params_ema", "ema", "state_dict", "model")
#: Key prefixes added by DDP/DataParallel, Lightning-style wrappers and SR3's GaussianDiffusion.
STRIPPED_PREFIXES = ("module.", "model.", "denoise_fn.")
#: Native diffbfr files: the metadata entry that marks them, and the prefix of non-network tensors.
NATIVE_VERSION_KEY = "diffbfr_format_version"
NATIVE_BUFFER_PREFIX = "__schedule__."
#: The 1-D buffers SR3's GaussianDiffusion saves next to its UNet.
SR3_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
})


@dataclass
class Checkpoint:
    """One model file, unwrapped."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    #: SR3 schedule buffers found beside the network (``betas`` ...), else empty.
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    #: safetensors ``__metadata__`` (native files keep their config there).
    metadata: dict[str, str] = field(default_factory=dict)
    #: diffusers ``config.json`` and ``scheduler_config.json`` when read from a diffusers folder.
    diffusers_config: dict[str, Any] | None = None
    scheduler_config: dict[str, Any] | None = None
    #: What was unwrapped, for messages and ``inspect``.
    wrapping: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and unwrap a model file or diffusers folder; ``CheckpointError`` says what was wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.name in DIFFUSERS_WEIGHTS and (path.parent / "config.json").is_file():
        return _read_diffusers_folder(path.parent)
    tensors, metadata = read_file(path)
    ckpt = Checkpoint(path=path, state_dict={}, metadata=metadata)
    if NATIVE_VERSION_KEY in metadata:
        # Our own files hold the network's keys as they are; only the stored betas are set aside.
        ckpt.buffers = {k[len(NATIVE_BUFFER_PREFIX):]: v for k, v in tensors.items() if k.startswith(NATIVE_BUFFER_PREFIX)}
        ckpt.state_dict = {k: v for k, v in tensors.items() if not k.startswith(NATIVE_BUFFER_PREFIX)}
    else:
        ckpt.state_dict, ckpt.buffers = unwrap(tensors, path, ckpt.wrapping)
    check_tensor_bytes({**ckpt.state_dict, **ckpt.buffers}, path.stat().st_size, path)
    return ckpt


def read_file(path: Path) -> tuple[Any, dict[str, str]]:
    """The raw object stored in one file, and its safetensors metadata (empty for pickles)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    raise CheckpointError(
        f"{path}: unknown model file type {suffix or '(no extension)'!r}; supported are .safetensors, "
        f"{', '.join(PICKLE_SUFFIXES)} and diffusers folders (config.json + diffusion_pytorch_model.*)"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt: {exc}); download it again"
        ) from exc
    return tensors, metadata


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"{path} was refused: it is a pickle holding more than tensors (objects or code), and it was "
                "not executed. Such files can run arbitrary code when opened. Use a safetensors copy from a "
                "source you trust, or convert it to safetensors yourself only if you trust its origin."
            ) from exc
        raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or not a checkpoint: {exc})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        # KeyError, IndexError: what the legacy (non-zip) reader raises on bytes that are not a pickle
        raise CheckpointError(
            f"{path} is not a readable PyTorch file (truncated or corrupt: {exc}); download it again"
        ) from exc


def _read_diffusers_folder(folder: Path) -> Checkpoint:
    """A diffusers UNet folder, or a pipeline folder holding ``unet/`` (and ``scheduler/``)."""
    unet = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    config_path = unet / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} is a folder but not a diffusers model: it has no config.json (nor unet/config.json). "
            "Point to a model file, or to a diffusers folder holding config.json and diffusion_pytorch_model.*"
        )
    weights = next((unet / name for name in DIFFUSERS_WEIGHTS if (unet / name).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"{unet} has a config.json but no weights: expected one of {', '.join(DIFFUSERS_WEIGHTS)}"
        )
    tensors, metadata = read_file(weights)
    scheduler_path = next(
        (p for p in (unet / "scheduler" / "scheduler_config.json", unet.parent / "scheduler" / "scheduler_config.json")
         if p.is_file()),
        None,
    )
    ckpt = Checkpoint(
        path=folder,
        state_dict={},
        metadata=metadata,
        diffusers_config=_read_json(config_path),
        scheduler_config=_read_json(scheduler_path) if scheduler_path else None,
        wrapping=[f"diffusers folder ({weights.name})"],
    )
    ckpt.state_dict, ckpt.buffers = unwrap(tensors, weights, ckpt.wrapping)
    check_tensor_bytes({**ckpt.state_dict, **ckpt.buffers}, weights.stat().st_size, weights)
    return ckpt


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({type(exc).__name__}: {exc})") from None


def unwrap(obj: Any, path: Path, notes: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(network state dict, SR3 schedule buffers) from what a trainer saved; ``notes`` collects the steps."""
    notes = [] if notes is None else notes
    obj = _unwrap_container(obj, path, notes)
    buffers = {k: v for k, v in obj.items() if k in SR3_SCHEDULE_BUFFERS}
    if buffers and len(buffers) < len(obj):
        notes.append(f"split off {len(buffers)} schedule buffers")
        obj = {k: v for k, v in obj.items() if k not in buffers}
    else:
        buffers = {}
    obj = _strip_prefixes(obj, notes)
    if not obj:
        raise CheckpointError(f"{path} holds no tensors: it is not a model checkpoint")
    return obj, buffers


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_container(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    for _ in range(4):  # wrappers nest at most a few levels (e.g. {"state_dict": {"model": ...}})
        if _is_tensor_dict(obj):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and len(obj) == 5:
            # ermongroup/ddim ckpt.pth = [model, optimizer, epoch, step, ema]
            pick = 4 if _is_tensor_dict(obj[4]) else 0
            notes.append(f"ermongroup checkpoint list, took element {pick} ({'EMA' if pick == 4 else 'model'})")
            obj = obj[pick]
            continue
        if isinstance(obj, dict):
            entry = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], (dict, list, tuple))), None)
            if entry is not None:
                notes.append(f"took the {entry!r} entry of a wrapper dict")
                obj = obj[entry]
                continue
            if obj and all(isinstance(k, str) for k in obj):
                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if tensors:  # a state dict with a few non-tensor extras (e.g. step counters)
                    notes.append(f"ignored {len(obj) - len(tensors)} non-tensor entries")
                    return tensors
        break
    raise CheckpointError(f"{path} does not hold a state dict; found {_describe(obj)}")


def _strip_prefixes(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                notes.append(f"stripped key prefix {prefix!r}")
                stripped = True
    return sd


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:8]
        return f"a dict with keys {keys}{' ...' if len(obj) > 8 else ''}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def key_sample(state_dict: dict[str, torch.Tensor], n: int = 6) -> str:
    """A few keys with shapes, for error messages about state dicts nobody recognises."""
    items = [f"{k} {list(v.shape)}" for k, v in list(state_dict.items())[:n]]
    more = f", ... ({len(state_dict)} keys)" if len(state_dict) > n else ""
    return ", ".join(items) + more
