"""Low-band data consistency: keep who the person is, whatever the model's quality.

After each model call the sampler turns the output into a prediction of the clean image x0 and
replaces its low band by the reference's (DDNM's range-space projection; ILVR does the same on
x_t instead of x0):

    x0 <- x0 - weight * (L_k(x0) - L_k(reference))

``L_k`` keeps what a k x k copy of the image holds. It is the projection ``U (D U)^-1 D`` per
axis, with D the area downsampling to k and U the bilinear upsampling back: unlike plain
``U D`` it is idempotent, so with weight 1 the result's low band equals the reference's exactly
and its high band ``x0 - L_k(x0)`` is left untouched; and the correction it adds is as smooth as
a bilinear upsampling (the block-average pair of DDNM would add k-sized steps).

The sampler applies the lock only while the step's time tau is above ``stop`` (free denoising
below, so the last steps can settle fine detail). Everything here is pure.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidParameterError


@functools.lru_cache(maxsize=32)
def _axis_projection(n: int, k: int) -> torch.Tensor:
    """The n x n matrix of L_k along one axis (float64, CPU)."""
    if k >= n:
        return torch.eye(n, dtype=torch.float64)
    # Rows of D (k x n) and U (n x k): the interpolations applied to the unit vectors.
    down = F.interpolate(torch.eye(n, dtype=torch.float64)[None], size=k, mode="area")[0].T
    up = F.interpolate(torch.eye(k, dtype=torch.float64)[None], size=n, mode="linear", align_corners=False)[0].T
    return up @ torch.linalg.solve(down @ up, down)


def band_sizes(band: int, height: int, width: int) -> tuple[int, int]:
    """The low-resolution copy's size for ``band`` pixels on the short side (the long side in
    proportion), each at most the image's own size."""
    short = min(height, width)
    scale = min(band, short) / short
    return max(1, min(height, round(height * scale))), max(1, min(width, round(width * scale)))


def low_band(x: torch.Tensor, band: int) -> torch.Tensor:
    """L_k of ``x`` [..., H, W]: what a ``band``-pixel (short side) copy of it holds, at full size."""
    if band < 1:
        raise InvalidParameterError(f"the low band needs at least 1 pixel, got {band}")
    height, width = x.shape[-2:]
    kh, kw = band_sizes(band, height, width)
    rows = _axis_projection(height, kh).to(device=x.device, dtype=x.dtype)
    cols = _axis_projection(width, kw).to(device=x.device, dtype=x.dtype)
    return rows @ x @ cols.T


def project_low_band(x0: torch.Tensor, reference: torch.Tensor, band: int, weight: float = 1.0) -> torch.Tensor:
    """``x0 - weight * (L_k(x0) - L_k(reference))``: x0 with (a share ``weight`` of) its low band
    replaced by the reference's; x0 and reference have the same shape."""
    if reference.shape != x0.shape:
        raise InvalidParameterError(
            f"the fidelity reference has shape {tuple(reference.shape)}, the image {tuple(x0.shape)}"
        )
    return x0 - weight * low_band(x0 - reference.to(x0), band)


@dataclass(frozen=True)
class LowBandLock:
    """The lock a stage hands to the sampler: ``reference`` [B,C,H,W] in the sampler's space
    ([-1, 1], the working size), ``band`` pixels (0 = off), ``weight`` in (0, 1], and the time
    ``stop`` (on the schedule's tau axis) at and below which the lock is released."""

    reference: torch.Tensor
    band: int
    weight: float = 1.0
    stop: float = 0.0

    def __post_init__(self) -> None:
        if self.band < 0:
            raise InvalidParameterError(f"fidelity must be >= 0 pixels (0 = off), got {self.band}")
        if not 0.0 <= self.weight <= 1.0:
            raise InvalidParameterError(f"fidelity_weight must be in [0, 1], got {self.weight}")
        if not self.stop >= 0.0:
            raise InvalidParameterError(f"fidelity_stop must be >= 0, got {self.stop}")

    @property
    def active(self) -> bool:
        return self.band > 0 and self.weight > 0

    def applies_at(self, tau: float) -> bool:
        return self.active and float(tau) > self.stop

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return project_low_band(x0, self.reference, self.band, self.weight)
