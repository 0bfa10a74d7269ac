"""Building blocks shared by the networks."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float = 0.0, max_period: float = 10000.0
) -> torch.Tensor:
    """[sin, cos] (or [cos, sin] when flipped) of ``t * exp(-ln(max_period) * k / (dim/2 - freq_shift))``.

    Covers every public variant: guided/improved/DifFace = flip, shift 0; ermongroup/ddim and
    ddpm-celebahq = no flip, shift 1; SR3 = no flip, shift 0 applied to the noise level gamma.
    Computed in float32 whatever the autocast dtype, as the references do; real-valued t is fine.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float().reshape(-1, 1) * torch.exp(exponent)[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention over pixels. q, k, v: [B, C, N]; returns [B, C, N].

    Each head takes a contiguous slice of C // heads channels, scale (C // heads) ** -0.5.
    On the CPU, half-precision attention runs in float32: there torch's math kernel sums half
    precision products in an order set by a process-wide switch (ComfyUI turns
    ``allow_fp16_bf16_reduction_math_sdp`` on at start-up), so the same graph would give other
    bits inside ComfyUI than outside it; in float32 it does not depend on the switch.
    """
    q, k, v = (rearrange(x, "b (heads d) n -> b heads n d", heads=heads) for x in (q, k, v))
    autocast = torch.is_autocast_enabled("cpu")
    if q.device.type == "cpu" and (autocast or q.dtype in (torch.float16, torch.bfloat16)):
        dtype = torch.get_autocast_dtype("cpu") if autocast else q.dtype
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b heads n d -> b (heads d) n")


def largest_dividing_group_count(channel_counts: Iterable[int], preferred: int = 32) -> int:
    """The largest of ``preferred``, preferred/2, ..., 1 that divides every count.

    Used where a checkpoint does not store its GroupNorm group count: the common presets
    (32, then 16, ...) are tried in order, so a network of 32-divisible widths gets 32.
    """
    counts = list(channel_counts)
    groups = preferred
    while groups > 1 and any(c % groups for c in counts):
        groups //= 2
    return groups
