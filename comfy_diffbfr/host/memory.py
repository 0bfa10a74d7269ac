"""Memory on the compute device: how much is free, and how an out-of-memory error looks.

Inside ComfyUI the free memory is ComfyUI's own figure (``get_free_memory``), which counts what its
memory manager could still release; outside it, CUDA's ``mem_get_info``, and on the CPU the
kernel's ``MemAvailable``. The stages size their batches from it (``stages.batch_size``) and retry
with a smaller batch when a run still runs out of memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .device import _comfy_mm

FALLBACK_FREE = 4 << 30  # bytes assumed free where the device cannot say (MPS, no /proc)


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory(device: torch.device) -> int:
    """Bytes that a computation on ``device`` may still allocate."""
    mm = _comfy_mm()
    if mm is not None:
        return int(mm.get_free_memory(device))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return _mem_available() or FALLBACK_FREE
    return FALLBACK_FREE


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: torch's ``OutOfMemoryError`` (CUDA, MPS) or the CPU
    allocator's ``RuntimeError`` "... not enough memory ..."."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "not enough memory" in str(exc)
    )


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back before a retry."""
    mm = _comfy_mm()
    if mm is not None:
        mm.soft_empty_cache()
    elif device.type == "cuda":
        torch.cuda.empty_cache()
