"""The three diffusion stages on ComfyUI IMAGE tensors (``[B,H,W,3]`` float32 in [0,1]).

- IRM 64: a conditional model restores the low-quality crops at 64x64.
- IRM 256: a conditional model takes the 64x64 result to 256x256 (conditions ``prev`` and/or ``lq``).
- TEM: an unconditional face prior polishes any image at its native size.

Each stage starts from its input noised to ``t0 = strength * T`` and samples back to 0
(truncated sampling). Every face has its own random generator, so a face's result does not
depend on the other faces in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .errors import DiffBFRError, InvalidParameterError, NoFaceError, WrongModelKindError
from .host import interrupt
from .host.device import FP32, ComputeMode, autocast, in_mode, intermediate_device, set_memory_format
from .host.model_cache import ModelHandle
from .host.progress import PreviewCallback, StageProgress

SAMPLERS = ("ddim", "ddpm")
SEED_MODES = ("per_face", "same")


@dataclass(frozen=True)
class StageSpec:
    key: str  # the role models of this stage carry
    title: str  # as the node is named in ComfyUI
    size: Optional[int]  # working size; None = the model's native size
    conditional: bool
    keeps_size: bool = False  # output at the input's size (a polish), not at the working size


IRM64 = StageSpec("irm64", "IRM 64", 64, True)
IRM256 = StageSpec("irm256", "IRM 256", 256, True)
TEM = StageSpec("tem", "TEM", None, False, keeps_size=True)
_BY_ROLE = {s.key: s for s in (IRM64, IRM256, TEM)}


def _describe(loaded: Any) -> str:
    if loaded.conditions:
        return "a conditional restoration model (IRM)"
    return "an unconditional face prior (TEM)"


def as_handle(model: Any) -> ModelHandle:
    """A ``ModelHandle`` for a handle or a bare ``LoadedModel`` (as the trainer passes)."""
    if isinstance(model, ModelHandle):
        return model
    name = Path(model.path).name if getattr(model, "path", None) else "the model"
    return ModelHandle(loaded=model, name=name)


def check_model(stage: StageSpec, handle: ModelHandle) -> int:
    """Raise ``WrongModelKindError`` unless the model can serve ``stage``; returns the working size."""
    loaded = handle.loaded
    name = handle.name
    if stage.conditional and not loaded.conditions:
        raise WrongModelKindError(
            f"{stage.title} needs a conditional model; {name!r} is {_describe(loaded)}. "
            "Load it in a DiffBFR TEM node instead."
        )
    if not stage.conditional and loaded.conditions:
        raise WrongModelKindError(
            f"TEM needs an unconditional face model; {name!r} is {_describe(loaded)} "
            f"conditioned on {loaded.conditions}. Load it in a DiffBFR IRM node instead."
        )
    role = loaded.role
    if role is not None and role != stage.key and role in _BY_ROLE:
        raise WrongModelKindError(
            f"{stage.title} got {name!r}, a model made for {_BY_ROLE[role].title}. "
            f"Load it in a DiffBFR {_BY_ROLE[role].title} node instead."
        )
    size = stage.size or loaded.resolution
    if loaded.resolution is not None and stage.size is not None and loaded.resolution != stage.size:
        raise WrongModelKindError(
            f"{stage.title} works at {stage.size}x{stage.size}, but {name!r} was made for "
            f"{loaded.resolution}x{loaded.resolution}. Choose a {stage.size}x{stage.size} model for this node."
        )
    return size


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B,3,H,W]`` to ``size`` (square, or (H, W)): bicubic, antialiased when shrinking."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrinking).clamp(0, 1)


def _to_nchw(images: torch.Tensor, what: str) -> torch.Tensor:
    if images.ndim != 4 or images.shape[-1] < 3:
        raise DiffBFRError(f"{what} must be an IMAGE batch [B,H,W,3], got shape {tuple(images.shape)}")
    return images[..., :3].movedim(-1, 1).float()


def generators(batch: int, seed: int, seed_mode: str, device: torch.device) -> list[torch.Generator]:
    """One generator per face: ``per_face`` seeds face i with ``seed + i``, ``same`` all with ``seed``."""
    if seed_mode not in SEED_MODES:
        raise InvalidParameterError(f"seed_mode must be one of {SEED_MODES}, got {seed_mode!r}")
    gens = []
    for i in range(batch):
        g = torch.Generator(device=device)
        g.manual_seed((seed + i if seed_mode == "per_face" else seed) % 2**64)
        gens.append(g)
    return gens


def run_stage(
    stage: StageSpec,
    model: Any,
    images: torch.Tensor,
    *,
    lq: Optional[torch.Tensor] = None,
    strength: float,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    seed_mode: str = "per_face",
    callback: Optional[PreviewCallback] = None,
) -> torch.Tensor:
    """Run one stage; ``images`` is the stage input, ``lq`` the low-quality crops (for ``lq`` conditions)."""
    from .diffusion.samplers import truncated_sample

    model = as_handle(model)
    size = check_model(stage, model)
    x = _to_nchw(images, f"{stage.title} input")
    if x.shape[0] == 0:
        raise NoFaceError(
            f"{stage.title} got an empty batch: the face set has no faces. Check the DiffBFR Face "
            "Detect node (another detector, a lower threshold, or 'aligned' for pre-cropped faces)."
        )
    size = size or tuple(x.shape[-2:])  # a model without a native size runs at the input's size
    conds = []
    for source in model.loaded.conditions:
        if source == "prev":
            conds.append(resize(x, size))
        elif source == "lq":
            if lq is None and stage is IRM256:
                raise DiffBFRError(
                    f"{model.name!r} is conditioned on the low-quality face crops: connect the crops "
                    f"from DiffBFR Face Detect to the 'lq' input of the {stage.title} node."
                )
            src = x if lq is None else _to_nchw(lq, f"{stage.title} lq")
            if src.shape[0] != x.shape[0]:
                raise DiffBFRError(
                    f"{stage.title}: the image batch has {x.shape[0]} faces but 'lq' has {src.shape[0]}; "
                    "connect the crops of the same face set to both inputs."
                )
            conds.append(resize(src, size))
        else:
            raise WrongModelKindError(f"{model.name!r} needs an unknown condition {source!r}")
    start = resize(x, size)
    device = model.prepare()
    mode = model.compute_mode(device, tuple(start.shape[-2:]))
    cond = torch.cat(conds, dim=1).to(device) * 2 - 1 if conds else None
    start = start.to(device) * 2 - 1

    def sample(mode: ComputeMode) -> torch.Tensor:
        progress = StageProgress(steps, stage.title, callback)

        def on_step(step: int, total: int, x0: torch.Tensor) -> None:
            progress.update(step, total, x0)
            interrupt.check_interrupt()

        net = model.loaded if mode.dtype == torch.float32 else _FiniteOutputs(model.loaded)
        set_memory_format(model.net, mode.channels_last)
        try:
            with torch.no_grad(), autocast(device, mode.dtype):
                return truncated_sample(
                    net, in_mode(start, mode), cond=None if cond is None else in_mode(cond, mode),
                    strength=strength, steps=steps, sampler=sampler, eta=eta,
                    generators=generators(start.shape[0], seed, seed_mode, device), callback=on_step,
                ).float()
        finally:
            progress.close()

    try:
        out = sample(mode)
    except _NonFinite:
        out = sample(FP32)  # half precision overflowed: redo this stage in float32
    out = ((out.to(intermediate_device()) + 1) / 2).clamp(0, 1)
    if stage.keeps_size and out.shape[-2:] != x.shape[-2:]:
        out = resize(out, x.shape[-2:])
    return out.movedim(1, -1).contiguous()


class _NonFinite(Exception):
    """A network output with inf/nan under reduced precision."""


class _FiniteOutputs:
    """The model, with every network output checked for inf/nan (which the x0 clipping would hide)."""

    def __init__(self, loaded: Any) -> None:
        self._loaded = loaded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loaded, name)

    def predict(self, x_t: torch.Tensor, tau: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self._loaded.predict(x_t, tau, cond)
        if not bool(torch.isfinite(out).all()):
            raise _NonFinite
        return out


def run_irm64(model: ModelHandle, lq_images: torch.Tensor, **settings: Any) -> torch.Tensor:
    """Restore low-quality face crops at 64x64."""
    return run_stage(IRM64, model, lq_images, **settings)


def run_irm256(model: ModelHandle, images: torch.Tensor, *, lq: Optional[torch.Tensor] = None, **settings: Any) -> torch.Tensor:
    """Take the IRM 64 output (any size, resized) to 256x256; ``lq`` = the low-quality crops."""
    return run_stage(IRM256, model, images, lq=lq, **settings)


def run_tem(model: ModelHandle, images: torch.Tensor, **settings: Any) -> torch.Tensor:
    """Polish images with the unconditional face prior at its native size (input size if unknown);
    the result has the input's size."""
    return run_stage(TEM, model, images, **settings)
