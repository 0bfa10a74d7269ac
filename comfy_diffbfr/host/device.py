"""Compute device and precision: ComfyUI's choices inside ComfyUI on GPUs, plain ones elsewhere.

Precision names are ``auto``, ``fp32``, ``fp16`` and ``bf16``. Weights stay float32; a reduced
precision runs the forward passes under autocast, so a stage can fall back to float32 without
reloading anything when the reduced precision produces non-finite values. bf16 on the CPU also
runs the network in the channels_last memory format (oneDNN's fast layout for bf16 convolutions).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..vocabulary import PRECISIONS

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ComputeMode:
    """How a network runs: the autocast dtype (float32 = no autocast) and the memory format."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = False


FP32 = ComputeMode()
CPU_BF16 = ComputeMode(torch.bfloat16, channels_last=True)


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


def resolve_mode(precision: str, device: torch.device, *, cpu_prefers_bf16: Callable[[], bool] | None = None) -> ComputeMode:
    """How to run a network for ``precision`` on ``device``.

    ``auto`` on the CPU (inside ComfyUI too) is bf16 + channels_last when ``cpu_prefers_bf16()``
    says so (``cpu_precision.CpuPrecisionChooser``: the CPU has bf16 units and it measured faster
    for that network), else float32. ``auto`` on a GPU follows ComfyUI's choice when it runs, else
    bf16 or fp16. An explicit choice the device cannot run is float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        dtype = _DTYPES[precision]
        if not supports_dtype(device, dtype):
            return FP32
        return CPU_BF16 if device.type == "cpu" and dtype == torch.bfloat16 else ComputeMode(dtype)
    if device.type == "cpu":
        return CPU_BF16 if cpu_prefers_bf16 is not None and cpu_prefers_bf16() else FP32
    mm = _comfy_mm()
    if mm is not None:
        if mm.should_use_bf16(device):
            return ComputeMode(torch.bfloat16)
        if mm.should_use_fp16(device):
            return ComputeMode(torch.float16)
        return FP32
    if device.type == "cuda":
        return ComputeMode(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if device.type == "mps":
        return ComputeMode(torch.float16)
    return FP32


def set_memory_format(net: torch.nn.Module, channels_last: bool) -> None:
    """Convert the network's 4-D weights in place (a no-op when they already have that format)."""
    # A kernel wider than 1x1: a 1x1 kernel's strides fit both formats.
    weight = next((p for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if weight is not None and not weight.is_contiguous(memory_format=fmt):
        net.to(memory_format=fmt)


def in_mode(x: torch.Tensor, mode: ComputeMode) -> torch.Tensor:
    """An image batch ``[B,C,H,W]`` in the mode's memory format."""
    return x.contiguous(memory_format=torch.channels_last) if mode.channels_last else x


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
