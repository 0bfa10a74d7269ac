"""Our own model files: safetensors whose metadata says everything needed to rebuild the model.

``__metadata__`` holds JSON strings: ``diffbfr_format_version``, ``arch``, ``config``, ``role``,
``conditions``, ``schedule`` (``{"name", "num_timesteps", "args"}`` for a named schedule, or
``{"betas": "__schedule__.betas"}`` with the betas stored as that float64 tensor), ``prediction``,
``resolution`` and ``training`` (free-form, e.g. steps and data). Network keys are stored as the
network names them, so no format spec has to translate them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..diffusion.schedules import SCHEDULE_KINDS, Schedule
from ..errors import CheckpointError
from ..files import write_atomic
from ..vocabulary import PREDICTIONS, STAGE_NAMES
from .checkpoint_io import NATIVE_BUFFER_PREFIX, NATIVE_VERSION_KEY, Checkpoint

FORMAT_VERSION = 1
ARCHS = ("sr3", "adm", "ddpm")
CONDITION_SOURCES = ("lq", "prev")
_BETAS_KEY = NATIVE_BUFFER_PREFIX + "betas"


@dataclass
class NativeMetadata:
    arch: str
    config: dict[str, Any]
    role: str | None
    conditions: list[str]
    schedule: Schedule
    prediction: str
    resolution: int | None
    training: Any
    rescale_timesteps: bool = False  # our networks take the timestep unscaled (read by the loader)


def is_native(metadata: Mapping[str, str]) -> bool:
    return NATIVE_VERSION_KEY in metadata


def save_model(
    path: str | Path,
    net: nn.Module,
    *,
    arch: str,
    config: Mapping[str, Any],
    role: str | None,
    conditions: list[str],
    schedule: Schedule,
    prediction: str,
    resolution: int | None = None,
    training: Any = None,
) -> Path:
    """Write ``net`` and its description so that ``load_model(path)`` rebuilds it (format "diffbfr")."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if role is not None and role not in STAGE_NAMES:
        raise ValueError(f"role must be one of {STAGE_NAMES} or None, got {role!r}")
    if any(c not in CONDITION_SOURCES for c in conditions):
        raise ValueError(f"conditions must come from {CONDITION_SOURCES}, got {conditions}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    schedule_meta: dict[str, Any]
    if _is_reproducible(schedule):
        schedule_meta = {"name": schedule.name, "num_timesteps": schedule.num_timesteps, "args": schedule.args}
    else:
        schedule_meta = {"betas": _BETAS_KEY}
        tensors[_BETAS_KEY] = schedule.betas.to(torch.float64).contiguous()
    metadata = {
        NATIVE_VERSION_KEY: json.dumps(FORMAT_VERSION),
        "arch": json.dumps(arch),
        "config": json.dumps(dict(config)),
        "role": json.dumps(role),
        "conditions": json.dumps(list(conditions)),
        "schedule": json.dumps(schedule_meta),
        "prediction": json.dumps(prediction),
        "resolution": json.dumps(resolution),
        "training": json.dumps(training),
    }
    data = safetensors_bytes(tensors, metadata=metadata)
    return write_atomic(Path(path), lambda fh: fh.write(data))  # never a truncated model under the real name


def _is_reproducible(schedule: Schedule) -> bool:
    if schedule.name not in SCHEDULE_KINDS:
        return False
    rebuilt = Schedule.from_name(schedule.name, schedule.num_timesteps, **schedule.args)
    return torch.equal(rebuilt.betas, schedule.betas)


def read_metadata(ckpt: Checkpoint) -> NativeMetadata:
    """The stored description of a native file; ``CheckpointError`` if it is damaged or too new."""
    meta = ckpt.metadata
    try:
        version = json.loads(meta[NATIVE_VERSION_KEY])
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{ckpt.path} was written by a newer comfy-diffbfr (file format {version}, this one reads up "
                f"to {FORMAT_VERSION}); update the node pack"
            )
        fields = {name: json.loads(meta[name]) for name in
                  ("arch", "config", "role", "conditions", "schedule", "prediction", "resolution")}
        training = json.loads(meta.get("training", "null"))
        schedule_meta = fields.pop("schedule")
        if "betas" in schedule_meta:
            schedule = Schedule(ckpt.buffers["betas"], name="custom")
        else:
            schedule = Schedule.from_name(schedule_meta["name"], schedule_meta["num_timesteps"], **schedule_meta["args"])
    except (KeyError, ValueError, TypeError, OverflowError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{ckpt.path}: damaged diffbfr metadata ({type(exc).__name__}: {exc})") from None
    if fields["arch"] not in ARCHS:
        raise CheckpointError(f"{ckpt.path}: unknown arch {fields['arch']!r} in diffbfr metadata")
    conditions = fields["conditions"]
    if not isinstance(conditions, list) or any(c not in CONDITION_SOURCES for c in conditions):
        raise CheckpointError(f"{ckpt.path}: damaged diffbfr metadata: conditions {conditions!r} are not a list from {CONDITION_SOURCES}")
    if fields["prediction"] not in PREDICTIONS:
        raise CheckpointError(f"{ckpt.path}: damaged diffbfr metadata: prediction {fields['prediction']!r} is not one of {PREDICTIONS}")
    return NativeMetadata(schedule=schedule, training=training, **fields)
