"""Colour correction of restored crops towards the original crops (``[N, 3, H, W]`` in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import params
from ..errors import DiffBFRError
from ..vocabulary import COLOR_CORRECTIONS

_WAVELET_LEVELS = 5


def adain(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give every channel of ``x`` the mean and standard deviation of the same channel of ``ref``."""
    mu_x, sd_x = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    mu_r, sd_r = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return (x - mu_x) / (sd_x + eps) * sd_r + mu_r


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One à-trous step: the [1, 2, 1] / 4 binomial with holes of ``dilation``, along both axes
    (separable, by slicing: much faster than a dilated convolution), edges replicated."""
    d = dilation
    x = F.pad(x, (d, d, d, d), mode="replicate")
    x = (x[..., :, : -2 * d] + 2 * x[..., :, d:-d] + x[..., :, 2 * d :]) * 0.25
    return (x[..., : -2 * d, :] + 2 * x[..., d:-d, :] + x[..., 2 * d :, :]) * 0.25


def low_frequencies(x: torch.Tensor, levels: int = _WAVELET_LEVELS) -> torch.Tensor:
    """The residual after ``levels`` à-trous wavelet levels: colour and shading, no detail."""
    for level in range(levels):
        x = _blur(x, 2**level)
    return x


def wavelet(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Detail of ``x`` on the colour and shading (lowest wavelet band) of ``ref``."""
    return x - low_frequencies(x) + low_frequencies(ref)


def correct_colors(x: torch.Tensor, ref: torch.Tensor, method: str = "none", color_strength: float = 1.0) -> torch.Tensor:
    """``x`` moved towards ``method``'s correction by ``color_strength`` (0 = unchanged, 1 = fully corrected)."""
    if method not in COLOR_CORRECTIONS:
        raise DiffBFRError(f"unknown colour correction {method!r}; choose one of {', '.join(COLOR_CORRECTIONS)}")
    color_strength = params.BLEND.check(color_strength, "color_strength")
    if method == "none" or color_strength == 0:
        return x
    corrected = adain(x, ref) if method == "adain" else wavelet(x, ref)
    return (x + color_strength * (corrected - x)).clamp(0, 1)
