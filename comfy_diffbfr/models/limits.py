"""Bounds on what a model file can make the loader do, checked before anything is allocated.

A model file is untrusted input: its metadata, a diffusers ``config.json``, the hints and the
tensor shapes all state sizes, and a 1.5 kB file saying ``model_channels: 2048`` or
``num_timesteps: 1e9`` must cost a clear ``CheckpointError``, not the machine's memory. So:

- every whole number of a config is bounded by what its name says it is (``check_config``):
  channel counts and widths by ``MAX_CHANNELS``, image sizes by ``MAX_RESOLUTION``, res blocks per
  level by ``MAX_BLOCKS``, per-level lists by ``MAX_LEVELS`` entries, anything else by
  ``MAX_NUMBER``; floats must be finite. T is bounded by ``schedules.MAX_TIMESTEPS``;
- the tensors of a file may not claim more bytes than the file holds (``check_tensor_bytes``:
  a pickle can hold a stride-0 "expanded" tensor of 10^12 elements in 4 bytes);
- the network is first built on the meta device (no memory) and must have exactly the file's
  keys and shapes before the real one is built (``loader.load_model``), so the network is never
  larger than the weights that were read;
- weights must be finite (``check_finite``): NaN weights would give a black face, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..diffusion.schedules import MAX_TIMESTEPS
from ..errors import CheckpointError

MAX_CHANNELS = 4096  # channels, widths, embedding and head sizes (the public models use at most 1024)
MAX_RESOLUTION = 4096  # the image size a model is made for
MAX_LEVELS = 16  # entries of a per-level list (channel multipliers, attention flags, ...)
MAX_BLOCKS = 32  # res blocks per level
MAX_NUMBER = 65536  # any other number in a config (head counts, group counts, classes, ...)
MAX_TEXT = 256
#: The tensors may claim at most this many times the file's bytes (tied weights share storage) ...
TENSOR_BYTES_FACTOR = 2
#: ... plus this (tiny files of small tensors: pickle overhead is not counted in the tensors).
TENSOR_BYTES_SLACK = 1 << 20

__all__ = ["MAX_BLOCKS", "MAX_CHANNELS", "MAX_LEVELS", "MAX_NUMBER", "MAX_RESOLUTION", "MAX_TIMESTEPS",
           "check_config", "check_finite", "check_resolution", "check_tensor_bytes"]


def _limit(key: str) -> tuple[int, str]:
    name = key.lower()
    if "channel" in name or name.endswith("_dim"):
        return MAX_CHANNELS, "channels"
    if "size" in name or "resolution" in name:
        return MAX_RESOLUTION, "pixels"
    if "blocks" in name or "layers" in name:
        return MAX_BLOCKS, "blocks per level"
    return MAX_NUMBER, ""


def check_config(config: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse a network config (from a file's metadata, a config.json, hints or the weights) with
    a number beyond its bound, a non-finite float, a list longer than ``MAX_LEVELS`` or a value
    that is not plain JSON data."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: the model config must be a JSON object, got {type(config).__name__}")
    for key, value in config.items():
        _check_value(str(key), value, where, nested=False)


def _check_value(key: str, value: Any, where: Path | str | None, *, nested: bool) -> None:
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{where}: config entry {key}={_short(value)} {problem}; the file is damaged or not a model this "
            "loader supports"
        )

    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise refuse(f"is longer than {MAX_TEXT} characters")
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise refuse("is not a finite number")
        limit, unit = _limit(key)
        if abs(value) > limit:
            raise refuse(f"is out of bounds (at most {limit}{' ' + unit if unit else ''})")
        return
    if isinstance(value, (list, tuple)) and not nested:
        if len(value) > MAX_LEVELS:
            raise refuse(f"has {len(value)} entries (at most {MAX_LEVELS} levels)")
        for item in value:
            _check_value(key, item, where, nested=True)
        return
    raise refuse("is not a number, text, or a flat list of them")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resolution(value: Any, where: Path | str | None) -> int | None:
    """A model's image size from a hint, the file or a config: whole pixels in [1, MAX_RESOLUTION], or None."""
    if value is None:
        return None
    try:
        number = float(value)
        whole = math.isfinite(number) and number.is_integer() and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or not 1 <= number <= MAX_RESOLUTION:
        raise CheckpointError(
            f"{where}: resolution must be a whole number of pixels in [1, {MAX_RESOLUTION}] such as 64 or 256, got {value!r}"
        )
    return int(number)


def check_tensor_bytes(tensors: Mapping[str, torch.Tensor], file_bytes: int, where: Path) -> None:
    """Refuse tensors that claim far more bytes than the file they came from holds (stride-0 or
    overlapping views in a pickle): building a network for them would allocate that much."""
    claimed = sum(t.numel() * t.element_size() for t in tensors.values() if not t.is_meta)
    allowed = TENSOR_BYTES_FACTOR * file_bytes + TENSOR_BYTES_SLACK
    if claimed > allowed:
        raise CheckpointError(
            f"{where}: its tensors claim {claimed / 1e6:,.0f} MB but the file holds {file_bytes / 1e6:,.1f} MB (expanded "
            "or overlapping tensor views); it is not a plain checkpoint and is refused"
        )


def check_finite(state_dict: Mapping[str, torch.Tensor], where: Path | None) -> None:
    """Refuse weights holding NaN or infinities (a diverged training run, a damaged file)."""
    bad = [k for k, t in state_dict.items() if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} tensors)" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{where}: weights hold NaN or infinite values ({shown}); the file is damaged or comes from a "
            "diverged training run. Use another copy or an earlier checkpoint."
        )
