"""``load_model``: any supported checkpoint -> a ready network plus what it needs to be sampled.

The work is split in two so that ``inspect`` can describe a file (even a meta-device state dict)
without building a network: ``describe`` works out the format, config, diffusion settings and the
stage the model can serve; ``load_model`` then builds the network and loads the weights.

Precedence of what we know about a model, weakest first: the format's defaults, the public
checkpoint it is recognised as, what the file itself stores (SR3 schedule buffers, diffusers
``config.json`` / ``scheduler_config.json``), the user's hints.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..diffusion.schedules import SCHEDULE_KINDS, Schedule, diffusers_schedule, make_betas
from ..errors import CheckpointError, InvalidParameterError
from ..vocabulary import PREDICTIONS, STAGE_NAMES
from . import limits, native, signatures
from .native import CONDITION_SOURCES
from .checkpoint_io import Checkpoint, key_sample, read_checkpoint
from .formats.base import FormatSpec, StateDict, shape_problems

FORMAT_NAMES = native.ARCHS
#: Hints about the diffusion process and the model's use; every other hint goes to the format spec.
DIFFUSION_HINTS = ("num_timesteps", "noise_schedule", "beta_start", "beta_end", "rescale_timesteps", "prediction")
#: Hints of other tools that mean nothing here, with what to do instead.
REFUSED_HINTS = {
    "timestep_respacing": "the steps are chosen per stage (the 'steps' setting, any count on any model), "
                          "not by the model; remove the hint",
}
USE_HINTS = ("role", "conditions", "resolution")
#: Largest image size served by the first IRM stage (which restores at 64x64).
IRM64_MAX_RESOLUTION = 128

#: What each format assumes when neither the file, recognition nor a hint says otherwise. SR3 has
#: no default: its files carry their schedule, and a file without it must be described by hints.
FORMAT_DIFFUSION_DEFAULTS: dict[str, dict[str, Any]] = {
    "adm": {"num_timesteps": 1000, "noise_schedule": "linear"},  # guided-diffusion's diffusion_defaults
    "ddpm": {"num_timesteps": 1000, "noise_schedule": "linear_range", "beta_start": 1e-4, "beta_end": 0.02},
    "sr3": {},
}


@lru_cache(maxsize=1)
def format_specs() -> dict[str, FormatSpec]:
    """Each format module's ``SPEC``, imported on first use."""
    return {name: importlib.import_module(f"{__package__}.formats.{name}").SPEC for name in FORMAT_NAMES}


@dataclass
class ModelInfo:
    """Everything known about a checkpoint except the built network (what ``inspect`` shows)."""

    format: str
    arch: str
    config: dict[str, Any]
    schedule: Schedule
    diffusion: dict[str, Any]
    role: str | None
    conditions: list[str]
    cond_channels: int
    in_channels: int
    out_channels: int
    resolution: int | None
    public_name: str | None
    path: Path | None
    num_params: int
    wrapping: list[str] = field(default_factory=list)
    spec: FormatSpec | None = field(default=None, repr=False, compare=False)


@dataclass
class LoadedModel(ModelInfo):
    net: nn.Module | None = field(default=None, repr=False, compare=False)

    def predict(self, x_t: torch.Tensor, tau: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass at continuous time ``tau`` (the reference step t is tau = t + 1).

        The network receives SR3's noise level gamma = sqrt(abar(tau)), or the reference
        timestep ``schedule.net_time(tau)`` (scaled by 1000/T when ``rescale_timesteps``).
        """
        tau = torch.as_tensor(tau, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
        if self.diffusion["noise_conditioning"] == "gamma":
            t_net = self.schedule.abar(tau).sqrt()
        else:
            t_net = self.schedule.net_time(tau)
            if self.diffusion["rescale_timesteps"]:
                t_net = t_net * (1000.0 / self.schedule.num_timesteps)
        return self.spec.call(self.net, x_t, t_net.to(device=x_t.device, dtype=torch.float32), cond)


def load_model(path: str | Path, hints: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load any supported checkpoint (see ``docs/ARCHITECTURE.md``, "load_model")."""
    ckpt = read_checkpoint(path)
    info = describe(ckpt, hints)
    state_dict = ckpt.state_dict if info.format == "diffbfr" else info.spec.prepare_state_dict(ckpt.state_dict)
    # The network on the meta device (no memory): it must have exactly the file's keys and shapes,
    # so once it takes the file's tensors it is never larger than the weights read (``limits``).
    net = _build_on_meta(info, ckpt.path)
    problems = shape_problems(net, state_dict)
    if problems:
        raise CheckpointError(
            f"{ckpt.path}: the weights do not fit the {info.arch} network of its config ({len(problems)} problems, "
            f"e.g. {problems[:3]}). If you passed hints, check them; otherwise the file is damaged or not a supported layout."
        )
    limits.check_finite(state_dict, ckpt.path)
    try:
        # The weights read become the network's tensors: no random initialisation to overwrite
        # (a third of the load time of the starter networks) and no second copy in memory.
        net.load_state_dict(_owned(state_dict), strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{ckpt.path}: the weights do not fit the {info.arch} network inferred from them ({exc}). "
            "If you passed hints, check them; otherwise the file is not a supported layout."
        ) from exc
    fields = {name: getattr(info, name) for name in info.__dataclass_fields__}
    return LoadedModel(**fields, net=net.float().eval())


def _owned(state_dict: StateDict) -> StateDict:
    """Each tensor alone in a storage of its own size, so that the network's parameters never share
    memory: a pickle may hold views of one storage (or one tensor under two keys)."""
    owned, seen = {}, set()
    for key, tensor in state_dict.items():
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and storage.nbytes() == tensor.numel() * tensor.element_size()
        if not whole or storage.data_ptr() in seen:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        owned[key] = tensor
    return owned


def _build_on_meta(info: ModelInfo, path: Path | None) -> nn.Module:
    try:
        with torch.device("meta"):
            return info.spec.build(info.config)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:  # a stored config the network refuses
        raise CheckpointError(f"{path}: its config cannot build a {info.arch} network ({type(exc).__name__}: {exc})") from exc


def describe(ckpt: Checkpoint, hints: Mapping[str, Any] | None = None) -> ModelInfo:
    """Format, config, diffusion settings and role of an unwrapped checkpoint; nothing is built."""
    hints = dict(hints or {})
    for name, instead in REFUSED_HINTS.items():
        if name in hints:
            raise CheckpointError(f"hint {name}={hints[name]!r} is not used: {instead}")
    if native.is_native(ckpt.metadata):
        return _describe_native(ckpt, hints)
    fmt, spec = _detect_format(ckpt)
    public = signatures.recognise(ckpt.state_dict)
    spec_hints = {k: v for k, v in hints.items() if k not in DIFFUSION_HINTS + USE_HINTS}
    base_hints = dict(public.hints) if public else {}
    if ckpt.diffusers_config is not None:
        base_hints.update({k: v for k, v in ckpt.diffusers_config.items() if not k.startswith("_")})
    config = spec.infer_config(ckpt.state_dict, {**base_hints, **spec_hints})
    limits.check_config(config, ckpt.path)
    io = spec.io(config)
    schedule, diffusion = _diffusion_settings(fmt, ckpt, public, hints, io)
    resolution = limits.check_resolution(hints.get("resolution", public.resolution if public else io.get("resolution")), ckpt.path)
    cond_channels = int(io["cond_channels"])
    return ModelInfo(
        format=fmt,
        arch=spec.name,
        config=config,
        schedule=schedule,
        diffusion=diffusion,
        role=_role(hints, public, cond_channels, resolution),
        conditions=_conditions(hints, public, cond_channels, ckpt.path),
        cond_channels=cond_channels,
        in_channels=int(io["in_channels"]),
        out_channels=int(io["out_channels"]),
        resolution=resolution,
        public_name=public.name if public else None,
        path=ckpt.path,
        num_params=_num_params(ckpt.state_dict),
        wrapping=ckpt.wrapping,
        spec=spec,
    )


def _detect_format(ckpt: Checkpoint) -> tuple[str, FormatSpec]:
    found = [(name, spec) for name, spec in format_specs().items() if spec.matches(ckpt.state_dict)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(
            f"{ckpt.path} is not a diffusion checkpoint of a supported format (SR3, guided/improved "
            f"diffusion, DifFace, ermongroup/ddim, diffusers UNet2DModel, or a diffbfr file). Keys found: "
            f"{key_sample(ckpt.state_dict)}"
        )
    raise CheckpointError(f"{ckpt.path}: the keys match several formats ({[n for n, _ in found]}); please report this file")


def _describe_native(ckpt: Checkpoint, hints: dict[str, Any]) -> ModelInfo:
    stored = native.read_metadata(ckpt)
    spec_hints = sorted(k for k in hints if k not in USE_HINTS)
    if spec_hints:
        raise CheckpointError(
            f"{ckpt.path} is a diffbfr file: its config and schedule are stored in it, so the hints "
            f"{spec_hints} do not apply; only {list(USE_HINTS)} may be overridden"
        )
    spec = format_specs()[stored.arch]
    limits.check_config(stored.config, ckpt.path)
    try:
        io = spec.io(stored.config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: damaged diffbfr metadata: the {stored.arch} config lacks or misstates "
                              f"{exc}") from exc
    resolution = limits.check_resolution(hints.get("resolution", stored.resolution), ckpt.path)
    cond_channels = int(io["cond_channels"])
    conditions = _condition_list(hints["conditions"]) if "conditions" in hints else list(stored.conditions)
    return ModelInfo(
        format="diffbfr",
        arch=stored.arch,
        config=stored.config,
        schedule=stored.schedule,
        diffusion=_diffusion_dict(stored.arch, stored.schedule, io, stored.prediction, stored.rescale_timesteps),
        role=_checked_role(hints.get("role", stored.role)),
        conditions=conditions,
        cond_channels=cond_channels,
        in_channels=int(io["in_channels"]),
        out_channels=int(io["out_channels"]),
        resolution=resolution,
        public_name=None,
        path=ckpt.path,
        num_params=_num_params(ckpt.state_dict),
        wrapping=["diffbfr native file"],
        spec=spec,
    )


def _diffusion_settings(
    fmt: str, ckpt: Checkpoint, public: signatures.PublicCheckpoint | None, hints: Mapping[str, Any], io: Mapping[str, Any]
) -> tuple[Schedule, dict[str, Any]]:
    settings: dict[str, Any] = dict(FORMAT_DIFFUSION_DEFAULTS[fmt])
    if public is not None:
        settings.update(public.diffusion)
    scheduler = _from_scheduler_config(ckpt.scheduler_config, ckpt.path) if ckpt.scheduler_config is not None else None
    if scheduler is not None:
        settings["prediction"] = scheduler[1]
    given = {k: hints[k] for k in DIFFUSION_HINTS if k in hints}
    settings.update(given)
    schedule_hinted = any(k in given for k in ("num_timesteps", "noise_schedule", "beta_start", "beta_end"))
    stored_betas = ckpt.buffers.get("betas")
    if stored_betas is not None and not stored_betas.is_meta and not schedule_hinted:  # meta: shapes only
        schedule = schedule_from_betas(stored_betas)
    elif scheduler is not None and not schedule_hinted:
        schedule = scheduler[0]
    elif "noise_schedule" in settings and "num_timesteps" in settings:
        schedule = _named_schedule(settings, ckpt.path)
    else:
        raise CheckpointError(
            f"{ckpt.path}: the file does not store its noise schedule and is not a known public checkpoint; "
            "pass hints, e.g. noise_schedule=linear_range num_timesteps=2000 beta_start=1e-6 beta_end=0.01 "
            "(SR3's published schedule)"
        )
    prediction = str(settings.get("prediction", "eps"))
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"hint prediction={prediction!r} is not one of {PREDICTIONS}")
    diffusion = _diffusion_dict(fmt, schedule, io, prediction, _as_bool(settings.get("rescale_timesteps", False)))
    return schedule, diffusion


def _diffusion_dict(arch: str, schedule: Schedule, io: Mapping[str, Any], prediction: str, rescale: bool) -> dict[str, Any]:
    return {
        "num_timesteps": schedule.num_timesteps,
        "schedule": schedule.name,
        "prediction": prediction,
        "learned_sigma": bool(io["learned_sigma"]),
        "rescale_timesteps": rescale,
        "noise_conditioning": "gamma" if arch == "sr3" else "timestep",
    }


def _named_schedule(settings: Mapping[str, Any], path: Path | None) -> Schedule:
    kind = str(settings["noise_schedule"])
    if kind not in SCHEDULE_KINDS:
        raise CheckpointError(f"{path}: noise_schedule {kind!r} is not one of {SCHEDULE_KINDS}")
    if kind in ("linear_range", "quad") and not {"beta_start", "beta_end"} <= set(settings):
        raise CheckpointError(f"{path}: noise_schedule {kind!r} needs hints beta_start and beta_end")
    try:
        args = {k: float(settings[k]) for k in ("beta_start", "beta_end") if k in settings and kind in ("linear_range", "quad")}
        return Schedule.from_name(kind, int(settings["num_timesteps"]),
                                  **{{"beta_start": "start", "beta_end": "end"}[k]: v for k, v in args.items()})
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:  # not numbers, T = 0 or too large
        raise CheckpointError(f"{path}: invalid schedule {dict(settings)}: {exc}") from exc


def schedule_from_betas(betas: torch.Tensor) -> Schedule:
    """The schedule a stored betas buffer came from: the named one (exact float64 betas) when the
    buffer is its float32 cast, as SR3's are, else the stored values themselves."""
    betas = betas.detach().to("cpu", torch.float64).flatten()
    if not 1 <= betas.numel() <= limits.MAX_TIMESTEPS or not bool(torch.isfinite(betas).all()):
        raise CheckpointError(f"the stored betas ({betas.numel()} values) are not a schedule of 1 to "
                              f"{limits.MAX_TIMESTEPS} finite steps; the file is damaged")
    T, first, last = betas.numel(), float(betas[0]), float(betas[-1])
    start, end = float(f"{first:.6g}"), float(f"{last:.6g}")
    # guided's "linear" first: it is a linear_range too, and the shorter description
    candidates = [("linear", {}), ("linear_range", {"start": start, "end": end}), ("cosine", {}),
                  ("quad", {"start": start, "end": end})]
    for kind, args in candidates:
        named = make_betas(kind, T, **args)
        if torch.allclose(named.float().double(), betas, rtol=1e-6, atol=0.0):
            return Schedule(named, name=kind, **args)
    return Schedule(betas, name="custom")


def _from_scheduler_config(cfg: Mapping[str, Any], path: Path | None) -> tuple[Schedule, str]:
    """diffusers ``scheduler_config.json`` -> (its schedule, computed as diffusers does, and the prediction)."""
    try:
        schedule = diffusers_schedule(cfg)
    except InvalidParameterError as exc:
        raise CheckpointError(f"{path}: scheduler_config.json: {exc}") from None
    predictions = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
    return schedule, predictions.get(cfg.get("prediction_type", "epsilon"), "eps")


def _role(hints: Mapping[str, Any], public: signatures.PublicCheckpoint | None, cond_channels: int, resolution: int | None) -> str | None:
    if "role" in hints:
        return _checked_role(hints["role"])
    if public is not None:
        return public.role
    if cond_channels == 0:
        return "tem"  # any unconditional image prior can polish texture
    if resolution is None:
        return None
    return "irm64" if resolution <= IRM64_MAX_RESOLUTION else "irm256"


def _checked_role(role: Any) -> str | None:
    if role in (None, "", "none", "None"):
        return None
    if role not in STAGE_NAMES:
        raise CheckpointError(f"role {role!r} is not one of {STAGE_NAMES}")
    return str(role)


def _conditions(hints: Mapping[str, Any], public: signatures.PublicCheckpoint | None, cond_channels: int, path: Path | None) -> list[str]:
    if "conditions" in hints:
        return _condition_list(hints["conditions"])
    if public is not None:
        return list(public.conditions)
    by_channels = {0: [], 3: ["lq"], 6: ["lq", "prev"]}
    if cond_channels not in by_channels:
        raise CheckpointError(
            f"{path}: the network takes {cond_channels} condition channels; say what they are with the hint "
            f"conditions=... (comma-separated, from {CONDITION_SOURCES})"
        )
    return by_channels[cond_channels]


def _condition_list(value: Any) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
    bad = [s for s in items if s not in CONDITION_SOURCES]
    if bad:
        raise CheckpointError(f"unknown condition source(s) {bad}; use {CONDITION_SOURCES}")
    return items


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise CheckpointError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _num_params(state_dict: StateDict) -> int:
    return sum(t.numel() for t in state_dict.values())
