"""The three diffusion stages on ComfyUI IMAGE tensors (``[B,H,W,3]`` float32 in [0,1]).

- IRM 64: a conditional model restores the low-quality crops at 64x64.
- IRM 256: a conditional model takes the 64x64 result to 256x256 (conditions ``prev`` and/or ``lq``).
- TEM: an unconditional face prior polishes any image at its native size.

Each stage starts from its input noised to ``t0 = strength * T`` and samples back to 0
(truncated sampling). Every face has its own random generator (face i of a run uses seed + i), so
its noise does not depend on the other faces nor on how they are batched; the faces go through the
network in batches sized from a memory estimate (``batch_size``). With ``fidelity`` > 0 every step
keeps the low band of the result on a reference (``diffusion/lowband.py``): IRM 64 on its input
(the low-quality crops), IRM 256 on ``lq``, TEM on ``reference``; each falls back to the stage's
own input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from . import params
from .errors import DiffBFRError, InvalidParameterError, NoFaceError, NotEnoughMemoryError, WrongModelKindError
from .faces.image_forms import as_image_batch
from .host import interrupt
from .host.device import FP32, ComputeMode, autocast, in_mode, intermediate_device, set_memory_format
from .host.memory import free_memory, is_out_of_memory, release_cached_memory
from .host.model_cache import ModelHandle
from .host.progress import PreviewCallback, StageProgress
from .vocabulary import SEED_MODES


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


def requires_lq(stage: StageSpec, loaded: Any) -> bool:
    """IRM 256 needs the low-quality crops when its model is conditioned on them (IRM 64 uses its input)."""
    return stage is IRM256 and "lq" in loaded.conditions


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B,3,H,W]`` to ``size`` (square, or (H, W)): bicubic, antialiased when shrinking."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrinking).clamp(0, 1)


def _to_nchw(images: torch.Tensor, what: str) -> torch.Tensor:
    return as_image_batch(images, what)[..., :3].movedim(-1, 1)


def generators(batch: int, seed: int, seed_mode: str, device: torch.device, first: int = 0,
               offsets: Optional[Sequence[int]] = None) -> list[torch.Generator]:
    """One generator per face, for faces ``first .. first + batch - 1`` of the run: ``per_face``
    seeds face i with ``seed + i``, ``same`` every face with ``seed``, ``per_track`` row k with
    ``seed + offsets[k]`` (its track id, ``faces.tracking.track_offsets``). A face's noise therefore
    depends on its place in the run or its track, never on how the run is cut into batches."""
    if seed_mode not in SEED_MODES:
        raise InvalidParameterError(f"seed_mode must be one of {SEED_MODES}, got {seed_mode!r}")
    if seed_mode == "per_track" and (offsets is None or len(offsets) != batch):
        raise InvalidParameterError(
            "seed_mode 'per_track' needs the track of every face: connect the 'faces' output of DiffBFR Face "
            "Detect to the stage's 'faces' input (the face set these crops came from)"
        )
    per_face = {"per_face": range(first, first + batch), "same": [0] * batch, "per_track": offsets}[seed_mode]
    gens = []
    for offset in per_face:
        g = torch.Generator(device=device)
        g.manual_seed((seed + int(offset)) % 2**64)
        gens.append(g)
    return gens


# Memory of one face in one forward, in units of the network's first feature map (its width x the
# working size): the skip connections a UNet keeps and each block's temporaries. Measured on the
# starter networks (peak RSS growth per extra face on a CPU): 15 (TEM), 17 (IRM 256), 26 (IRM 64);
# 32 leaves a margin. Batches use at most half of the free memory, and at most MAX_BATCH faces.
ACTIVATION_MAPS = 32
MAX_BATCH = 16
# On a CPU, a face costs more in a large batch once the batch's feature maps outgrow the caches.
# Measured on the starter networks (Xeon with AMX, 2 threads; benchmarks/cpu_precision.py), ms per
# face at batch 1 / 2 / 4 / 8, bf16: IRM 256 219 / 215 / 262 / 326, TEM 226 / 183 / 246 / 359;
# fp32: IRM 256 468 / 440 / 576 / 692, TEM 458 / 394 / 508 / 698; while IRM 64 (64 px) keeps
# gaining up to 8 (bf16 86 / 57 / 41 / 39). So a CPU batch holds at most this many pixels per
# thread (2 faces of 256 px on 2 threads, the 16-face cap at 64 px).
CPU_PIXELS_PER_THREAD = 256 * 256


def batch_size(net: torch.nn.Module, size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> int:
    """How many faces of ``size`` one forward of ``net`` may take on ``device`` (see ACTIVATION_MAPS
    and, on a CPU, CPU_PIXELS_PER_THREAD)."""
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    width = first.out_channels if first is not None else 64
    per_face = ACTIVATION_MAPS * width * size[0] * size[1] * torch.empty((), dtype=dtype).element_size()
    batch = min(MAX_BATCH, free_memory(device) // 2 // per_face)
    if device.type == "cpu":
        batch = min(batch, torch.get_num_threads() * CPU_PIXELS_PER_THREAD // (size[0] * size[1]))
    return max(1, batch)


@dataclass
class _StageInputs:
    """A stage's inputs at its working size, in the sampler's [-1, 1] (CPU until a batch runs)."""

    start: torch.Tensor
    cond: Optional[torch.Tensor]
    reference: Optional[torch.Tensor]  # of the low-band lock; None = lock off


def _inputs(stage: StageSpec, model: ModelHandle, x: torch.Tensor, lq: Optional[torch.Tensor],
            reference: Optional[torch.Tensor], size: int | tuple[int, int], fidelity: int) -> _StageInputs:
    conds = []
    for source in model.loaded.conditions:
        if source == "prev":
            conds.append(resize(x, size))
        elif source == "lq":
            if lq is None and requires_lq(stage, model.loaded):
                raise DiffBFRError(
                    f"{model.name!r} is conditioned on the low-quality face crops: connect the crops "
                    f"from DiffBFR Face Detect to the 'lq' input of the {stage.title} node."
                )
            conds.append(resize(x if lq is None else _matching(stage, x, lq, "lq"), size))
        else:
            raise WrongModelKindError(f"{model.name!r} needs an unknown condition {source!r}")
    start = resize(x, size)
    ref = None
    if fidelity:
        chosen = _reference(stage, x, lq, reference)
        ref = resize(chosen, tuple(start.shape[-2:])) * 2 - 1
    return _StageInputs(start * 2 - 1, torch.cat(conds, dim=1) * 2 - 1 if conds else None, ref)


def run_stage(
    stage: StageSpec,
    model: Any,
    images: torch.Tensor,
    *,
    lq: Optional[torch.Tensor] = None,
    reference: Optional[torch.Tensor] = None,
    strength: float,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    seed_mode: str = "per_face",
    fidelity: int = 0,
    fidelity_weight: float = 1.0,
    fidelity_stop: float = 0.0,
    seed_offsets: Optional[Sequence[int]] = None,
    callback: Optional[PreviewCallback] = None,
    first_face: int = 0,
    max_batch: Optional[int] = None,
) -> torch.Tensor:
    """Run one stage; ``images`` is the stage input, ``lq`` the low-quality crops (for ``lq``
    conditions), ``reference`` what the low-band lock keeps (default: ``lq``, else ``images``);
    ``fidelity`` the lock's band in pixels at the working size (0 = off); ``seed_offsets`` the
    per-face offsets of ``seed_mode="per_track"`` (one per row). ``first_face`` is the number of the
    first row in the whole run (for its seed). The faces go through the network in batches of
    ``max_batch`` (default: ``batch_size``), smaller ones after an out-of-memory error."""
    strength, steps, eta, seed, fidelity, fidelity_weight, fidelity_stop = (r.check(v, name) for r, v, name in (
        (params.STRENGTH, strength, "strength"), (params.STEPS, steps, "steps"), (params.ETA, eta, "eta"),
        (params.SEED, seed, "seed"), (params.FIDELITY, fidelity, "fidelity"),
        (params.FIDELITY_WEIGHT, fidelity_weight, "fidelity_weight"), (params.FIDELITY_STOP, fidelity_stop, "fidelity_stop")))
    model = as_handle(model)
    size = check_model(stage, model)
    x = _to_nchw(images, f"{stage.title} input")
    if x.shape[0] == 0:
        raise NoFaceError(
            f"{stage.title} got an empty batch: the face set has no faces. Check the DiffBFR Face "
            "Detect node (another detector, a lower threshold, or 'aligned' for pre-cropped faces)."
        )
    size = size or tuple(x.shape[-2:])  # a model without a native size runs at the input's size
    inputs = _inputs(stage, model, x, lq, reference, size, fidelity)
    device = model.prepare()
    mode = model.compute_mode(device, tuple(inputs.start.shape[-2:]))
    batch = max_batch or batch_size(model.net, tuple(inputs.start.shape[-2:]), mode.dtype, device)
    progress = StageProgress(steps, stage.title, callback)
    settings = dict(strength=strength, steps=steps, sampler=sampler, eta=eta, seed=seed, seed_mode=seed_mode,
                    fidelity=int(fidelity), fidelity_weight=float(fidelity_weight),
                    fidelity_stop=float(fidelity_stop) * model.loaded.schedule.num_timesteps)

    def rows(start: int, stop: int, chunk: int, chunks: int) -> torch.Tensor:
        def on_step(step: int, total: int, x0: torch.Tensor) -> None:
            progress.update(chunk * total + step, chunks * total, x0)
            interrupt.check_interrupt()

        offsets = None if seed_offsets is None else list(seed_offsets)[start:stop]
        return _sample(model, inputs, start, stop, device, mode, first_face + start, offsets, on_step, settings)

    try:
        out = _in_batches(x.shape[0], batch, rows, device, f"{stage.title} ({model.name})")
    finally:
        progress.close()
    out = ((out.to(intermediate_device()) + 1) / 2).clamp(0, 1)
    if stage.keeps_size and out.shape[-2:] != x.shape[-2:]:
        out = resize(out, x.shape[-2:])
    return out.movedim(1, -1).contiguous()


def _sample(model: ModelHandle, inputs: _StageInputs, start: int, stop: int, device: torch.device, mode: ComputeMode,
            first: int, offsets: Optional[list[int]], on_step: Any, settings: dict) -> torch.Tensor:
    """Faces ``start:stop`` of the stage (float32, [-1, 1], on ``device``); redone in float32 when a
    reduced precision overflows."""
    from .diffusion.lowband import LowBandLock
    from .diffusion.samplers import truncated_sample

    x = inputs.start[start:stop].to(device)
    cond = inputs.cond[start:stop].to(device) if inputs.cond is not None else None
    lock = None
    if inputs.reference is not None:
        lock = LowBandLock(inputs.reference[start:stop].to(device), settings["fidelity"],
                           settings["fidelity_weight"], settings["fidelity_stop"])

    def sample(mode: ComputeMode) -> torch.Tensor:
        net = model.loaded if mode.dtype == torch.float32 else _FiniteOutputs(model.loaded)
        set_memory_format(model.net, mode.channels_last)
        with torch.no_grad(), autocast(device, mode.dtype):
            return truncated_sample(
                net, in_mode(x, mode), cond=None if cond is None else in_mode(cond, mode), strength=settings["strength"],
                steps=settings["steps"], sampler=settings["sampler"], eta=settings["eta"],
                generators=generators(stop - start, settings["seed"], settings["seed_mode"], device, first, offsets),
                callback=on_step, lock=lock,
            ).float()

    try:
        return sample(mode)
    except _NonFinite:
        return sample(FP32)  # half precision overflowed: redo these faces in float32


def _in_batches(total: int, batch: int, rows: Any, device: torch.device, what: str) -> torch.Tensor:
    """``rows(start, stop, chunk, chunks)`` over ``[0, total)`` in batches of at most ``batch``; after
    an out-of-memory error the failed batch is retried at half its size (down to one face)."""
    outs: list[torch.Tensor] = []
    start = 0
    while start < total:
        stop = min(total, start + batch)
        chunks = len(outs) + -(-(total - start) // batch)
        try:
            outs.append(rows(start, stop, len(outs), chunks))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if stop - start == 1:
                raise NotEnoughMemoryError(
                    f"{what}: one face does not fit into the memory of {device} ({exc}). Close other programs, "
                    "choose precision bf16/fp16 on the model loader (--precision), or run on another device."
                ) from None
            release_cached_memory(device)
            batch = max(1, (stop - start) // 2)
            continue
        start = stop
    return torch.cat(outs)


def _matching(stage: StageSpec, x: torch.Tensor, images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` (NCHW) as a companion of the stage input ``x``: one row per face."""
    ref = _to_nchw(images, f"{stage.title} {name}")
    if ref.shape[0] != x.shape[0]:
        raise DiffBFRError(
            f"{stage.title}: the image batch has {x.shape[0]} faces but {name!r} has {ref.shape[0]}; "
            "connect the crops of the same face set to both inputs."
        )
    return ref


def _reference(stage: StageSpec, x: torch.Tensor, lq: Optional[torch.Tensor],
               reference: Optional[torch.Tensor]) -> torch.Tensor:
    """What the low-band lock keeps: ``reference``, else ``lq``, else the stage input (NCHW)."""
    if reference is not None:
        return _matching(stage, x, reference, "reference")
    return x if lq is None else _matching(stage, x, lq, "lq")


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


def run_tem(model: ModelHandle, images: torch.Tensor, *, reference: Optional[torch.Tensor] = None,
            **settings: Any) -> torch.Tensor:
    """Polish images with the unconditional face prior at its native size (input size if unknown);
    the result has the input's size. ``reference`` (e.g. the low-quality crops) is what the
    low-band lock keeps; default: the input itself."""
    return run_stage(TEM, model, images, reference=reference, **settings)
