"""Checks shared by the network tests."""

from __future__ import annotations

import torch


def assert_bf16_autocast_close(net: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Under CPU bf16 autocast the network's output is bf16, finite and within 5% (of the largest
    float32 value) of its float32 output."""
    with torch.no_grad():
        reference = net(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(*inputs)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - reference).abs().max().item() < 0.05 * reference.abs().max().item()
