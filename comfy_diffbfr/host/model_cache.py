"""One loaded module per model file, shared by every node and stage that names it.

Inside ComfyUI each network is wrapped in ComfyUI's ``ModelPatcher`` so its memory manager loads
and offloads it together with its other models (LRU over all of them); we only call
``load_models_gpu`` right before each use. Outside ComfyUI a small LRU of loaded files keeps the
most recent ones, and the one in use is moved to the compute device. The face detector and the
face-parsing network go through the same cache (``load_module``), so inside ComfyUI they are
under its memory management too.

A file enters the cache only after it is completely loaded, so an error or a Cancel during loading
leaves nothing half-loaded behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import cpu_precision
from . import device as devices

# three stage models, the face detector and the face parser, plus one
DEFAULT_CAPACITY = int(os.environ.get("COMFY_DIFFBFR_CACHE_SIZE", "6"))


@dataclass(eq=False)
class ModelHandle:
    """What a loader node outputs: the loaded model, its file name and the chosen precision."""

    loaded: Any  # comfy_diffbfr.models.LoadedModel
    name: str
    precision: str = "auto"
    patcher: Any = field(default=None, repr=False)  # ComfyUI's ModelPatcher, inside ComfyUI only

    @property
    def net(self) -> torch.nn.Module:
        return self.loaded.net

    def prepare(self) -> torch.device:
        """Make the network resident on the compute device; returns that device."""
        return make_resident(self.net, self.patcher)

    def compute_mode(self, device: torch.device, size: tuple[int, int]) -> devices.ComputeMode:
        """How to run the network at ``size`` (H, W) on ``device`` for this handle's precision; on
        the CPU ``auto`` may time a few forwards the first time this machine sees the network."""
        def prefers_bf16() -> bool:
            return cpu_precision.CHOOSER.prefers_bf16(self.network_key(size), self._probe(device, size))

        return devices.resolve_mode(self.precision, device, cpu_prefers_bf16=prefers_bf16)

    def network_key(self, size: tuple[int, int]) -> str:
        """Identifies the network's structure (not its weights) and the input size."""
        text = json.dumps({"arch": self.loaded.arch, "config": self.loaded.config, "size": list(size)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _probe(self, device: torch.device, size: tuple[int, int]) -> cpu_precision.Forward:
        """One forward on a dummy batch of one at ``size``, in bf16 + channels_last or float32."""
        loaded = self.loaded
        x = torch.zeros(1, loaded.in_channels - loaded.cond_channels, *size, device=device)
        cond = torch.zeros(1, loaded.cond_channels, *size, device=device) if loaded.cond_channels else None
        tau = torch.full((1,), loaded.schedule.num_timesteps / 2, dtype=torch.float64)

        def forward(bf16: bool) -> None:
            mode = devices.CPU_BF16 if bf16 else devices.FP32
            devices.set_memory_format(self.net, mode.channels_last)
            with torch.no_grad(), devices.autocast(device, mode.dtype):
                loaded.predict(devices.in_mode(x, mode), tau, None if cond is None else devices.in_mode(cond, mode))

        return forward


@dataclass(eq=False)
class ModuleHandle:
    """An auxiliary network from the cache (face detector, face parser)."""

    module: torch.nn.Module
    patcher: Any = field(default=None, repr=False)

    def prepare(self, device: torch.device | str | None = None) -> torch.device:
        """Make the module resident on ``device`` (default: the compute device); returns it."""
        return make_resident(self.module, self.patcher, device)


def make_resident(net: torch.nn.Module, patcher: Any, device: torch.device | str | None = None) -> torch.device:
    """Inside ComfyUI its memory manager loads the patcher (offloading others if needed); outside,
    the module is moved to ``device`` (default: the compute device). Returns where it now is."""
    if patcher is not None and device is None:
        import comfy.model_management as mm

        mm.load_models_gpu([patcher], force_full_load=True)
        return torch.device(patcher.load_device)
    target = torch.device(device) if device is not None else devices.compute_device()
    if _module_device(net) != target:
        net.to(target)
    return target


def _module_device(net: torch.nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _wrap_for_comfy(net: torch.nn.Module) -> Any:
    try:
        import comfy.model_management as mm
        from comfy.model_patcher import ModelPatcher
    except ImportError:
        return None
    return ModelPatcher(net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


class ModelCache:
    """LRU of loaded model files keyed by (path, size, mtime, hints)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, hints: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        """``(LoadedModel, patcher or None)`` for the diffusion model ``path``, loading it on first use."""
        from ..models import load_model  # heavy; imported on first use

        tag = json.dumps(dict(hints or {}), sort_keys=True)
        return self.load(path, lambda p: load_model(p, hints=dict(hints) if hints else None), tag, lambda m: m.net)

    def load(self, path: Path, build: Callable[[Path], Any], tag: str,
             module_of: Callable[[Any], torch.nn.Module] = lambda m: m) -> tuple[Any, Any]:
        """``(build(path), patcher or None)``, built once per file and ``tag`` (what else decides
        the result, e.g. the hints); ``module_of`` picks the network ComfyUI is to manage."""
        path = Path(path).resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, tag)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            built = build(path)
            entry = (built, _wrap_for_comfy(module_of(built)))
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


CACHE = ModelCache()


def load_cached(path: Path, name: str, *, hints: Mapping[str, Any] | None = None, precision: str = "auto") -> ModelHandle:
    """Load a model with a precision (one of ``device.PRECISIONS``): a handle on the shared module
    for ``path`` (the same file twice gives the same module). The precision is applied where the
    stages run the network (``ModelHandle.compute_mode``)."""
    if precision not in devices.PRECISIONS:
        raise ValueError(f"precision must be one of {devices.PRECISIONS}, got {precision!r}")
    loaded, patcher = CACHE.get(path, hints)
    return ModelHandle(loaded=loaded, name=name, precision=precision, patcher=patcher)


def load_module(path: Path, build: Callable[[Path], torch.nn.Module], *, tag: str) -> ModuleHandle:
    """A handle on the shared auxiliary network ``build(path)`` (``tag`` names what it is)."""
    module, patcher = CACHE.load(path, build, tag)
    return ModuleHandle(module=module, patcher=patcher)
