"""Compute device and precision: ComfyUI's choices inside ComfyUI, plain ones outside.

Precision names are ``auto``, ``fp32``, ``fp16`` and ``bf16``. Weights stay float32; a reduced
precision runs the forward passes under autocast, so a stage can fall back to float32 without
reloading anything when the reduced precision produces non-finite values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..vocabulary import PRECISIONS

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _comfy_mm():
    try:
        import comfy.model_management as mm  # ComfyUI's module; present only inside ComfyUI
    except ImportError:
        return None
    return mm


def compute_device() -> torch.device:
    """Where the networks run: ComfyUI's torch device, else CUDA, else MPS, else the CPU."""
    mm = _comfy_mm()
    if mm is not None:
        return torch.device(mm.get_torch_device())
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def supports_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return dtype == torch.float16
    return dtype == torch.bfloat16  # CPU autocast supports bf16 only


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``.

    ``auto`` follows ComfyUI's own choice when it runs (float32 on its CPU, half precision on
    capable GPUs); outside it, bf16 or fp16 on GPUs and float32 on the CPU, so CPU results are
    the same inside and outside ComfyUI. An explicit choice the device cannot run is float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        dtype = _DTYPES[precision]
        return dtype if supports_dtype(device, dtype) else torch.float32
    mm = _comfy_mm()
    if mm is not None:
        if mm.should_use_bf16(device):
            return torch.bfloat16
        if mm.should_use_fp16(device):
            return torch.float16
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; nothing for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def intermediate_device() -> torch.device:
    """Where node outputs live (the CPU unless ComfyUI says otherwise)."""
    mm = _comfy_mm()
    return torch.device(mm.intermediate_device()) if mm is not None else torch.device("cpu")
