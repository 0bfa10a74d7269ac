"""Noise schedules and the continuous cumulative signal level abar(tau).

Time axis. A schedule of T betas defines the discrete states x_1..x_T of the forward process. We
use a continuous time tau in [0, T] with abar(0) = 1 (clean data) and abar(n) = prod_{i<=n} alpha_i
for integer n, so abar(n) equals the reference implementations' ``alphas_cumprod[n - 1]`` and
their discrete step index ``t`` is ``tau = t + 1`` (SR3's ``sqrt_alphas_cumprod_prev`` is exactly
sqrt(abar) on this axis). Between integers, abar interpolates geometrically: a fractional part f of
step n+1 applies alpha_{n+1}^f, i.e. log(abar) is piecewise linear. That is continuous, strictly
monotone and exact at the integers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCHEDULE_KINDS = ("linear", "linear_range", "quad", "cosine")


def make_betas(kind: str, num_timesteps: int, *, start: float | None = None, end: float | None = None) -> torch.Tensor:
    """Betas in float64.

    - ``linear``: guided/improved-diffusion's, 1e-4..0.02 scaled by 1000/T.
    - ``linear_range``: ``np.linspace(start, end, T)`` (SR3's ``linear``, ermongroup/ddim's).
    - ``quad``: SR3's ``linspace(sqrt(start), sqrt(end)) ** 2``.
    - ``cosine``: Nichol & Dhariwal's, s = 0.008, betas clipped at 0.999.
    """
    T = num_timesteps
    if kind == "linear":
        scale = 1000.0 / T
        betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    elif kind == "linear_range":
        betas = np.linspace(start, end, T, dtype=np.float64)
    elif kind == "quad":
        betas = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    elif kind == "cosine":
        f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=np.float64)
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULE_KINDS}")
    return torch.from_numpy(betas)


class Schedule:
    """A discrete schedule of T betas with abar defined for every real tau in [0, T]."""

    def __init__(self, betas: torch.Tensor, name: str = "custom", **args: float) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty sequence in (0, 1)")
        self.betas = betas
        self.name = name
        self.args = dict(args)
        self.num_timesteps = betas.numel()
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # log abar at tau = 0..T; interpolated linearly in between.
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alphas_cumprod)])

    @classmethod
    def from_name(cls, kind: str, num_timesteps: int, **args: float) -> "Schedule":
        return cls(make_betas(kind, num_timesteps, **args), name=kind, **args)

    def abar(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Cumulative signal level at real time tau in [0, T] (float64)."""
        tau = torch.as_tensor(tau, dtype=torch.float64)
        if bool(((tau < 0) | (tau > self.num_timesteps)).any()):
            raise ValueError(f"tau must lie in [0, {self.num_timesteps}], got {tau.tolist()}")
        lo = tau.floor().clamp(max=self.num_timesteps - 1)
        frac = tau - lo
        i = lo.long()
        log_abar = self._log_abar[i] + frac * (self._log_abar[i + 1] - self._log_abar[i])
        return log_abar.exp()

    def net_time(self, tau: torch.Tensor) -> torch.Tensor:
        """The reference networks' timestep for tau: t = tau - 1, floored at 0, since no network
        was trained below the noise level of its first step."""
        return (torch.as_tensor(tau, dtype=torch.float64) - 1.0).clamp(min=0.0)
