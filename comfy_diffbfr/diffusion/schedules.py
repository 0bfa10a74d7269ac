"""Noise schedules and the continuous cumulative signal level abar(tau).

Time axis. A schedule of T betas defines the discrete states x_1..x_T of the forward process. We
use a continuous time tau in [0, T] with abar(0) = 1 (clean data) and abar(n) = prod_{i<=n} alpha_i
for integer n, so abar(n) equals the reference implementations' ``alphas_cumprod[n - 1]`` and
their discrete step index ``t`` is ``tau = t + 1`` (SR3's ``sqrt_alphas_cumprod_prev`` is exactly
sqrt(abar) on this axis). Between integers, abar interpolates geometrically: a fractional part f of
step n+1 applies alpha_{n+1}^f, i.e. log(abar) is piecewise linear. That is continuous, strictly
monotone and exact at the integers (there abar returns the stored cumulative product bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InvalidParameterError

SCHEDULE_KINDS = ("linear", "linear_range", "quad", "cosine")
#: Far beyond any published model (1000-4000), small enough that a schedule costs at most a few MB:
#: a model file that says 1e9 gets an error, not 22 GB of betas.
MAX_TIMESTEPS = 100_000
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def checked_timesteps(num_timesteps: object) -> int:
    """T as an int, refused (before anything is allocated) unless a whole number in [1, MAX_TIMESTEPS]."""
    whole = (isinstance(num_timesteps, int) and not isinstance(num_timesteps, bool)) or (
        isinstance(num_timesteps, float) and num_timesteps.is_integer())
    if not whole or not 1 <= num_timesteps <= MAX_TIMESTEPS:
        raise InvalidParameterError(f"num_timesteps must be a whole number in [1, {MAX_TIMESTEPS}], got {num_timesteps!r}")
    return int(num_timesteps)


def make_betas(kind: str, num_timesteps: int, *, start: float | None = None, end: float | None = None) -> torch.Tensor:
    """Betas in float64.

    - ``linear``: guided/improved-diffusion's, 1e-4..0.02 scaled by 1000/T.
    - ``linear_range``: ``np.linspace(start, end, T)`` (SR3's ``linear``, ermongroup/ddim's).
    - ``quad``: SR3's ``linspace(sqrt(start), sqrt(end)) ** 2``.
    - ``cosine``: Nichol & Dhariwal's, s = 0.008, betas clipped at 0.999.
    """
    T = checked_timesteps(num_timesteps)
    if kind in ("linear_range", "quad") and (start is None or end is None):
        raise InvalidParameterError(f"schedule {kind!r} needs start= and end= (the first and last beta)")
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
        raise InvalidParameterError(f"unknown schedule {kind!r}; choose one of {SCHEDULE_KINDS}")
    return torch.from_numpy(betas)


class Schedule:
    """A discrete schedule of T betas with abar defined for every real tau in [0, T].

    ``betas`` and ``alphas_cumprod`` are float64 tensors of length T. Build one from betas
    (``Schedule(betas)``, ``from_name``) or from a cumulative product computed elsewhere
    (``from_alphas_cumprod``, e.g. diffusers' float32 one, so that its values are reproduced
    exactly).
    """

    def __init__(self, betas: torch.Tensor, name: str = "custom", **args: float) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise InvalidParameterError("betas must be a non-empty sequence in (0, 1)")
        self.betas = betas
        self.name = name
        self.args = dict(args)
        self.num_timesteps = betas.numel()
        self._set_alphas_cumprod(torch.cumprod(1.0 - betas, dim=0))

    def _set_alphas_cumprod(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod
        # abar and log abar at tau = 0..T, and the log of each step's alpha (padded for tau = T).
        self._abar_table = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod])
        self._log_abar = torch.log(self._abar_table)
        self._log_alpha = torch.cat([self._log_abar[1:] - self._log_abar[:-1], torch.zeros(1, dtype=torch.float64)])

    @classmethod
    def from_name(cls, kind: str, num_timesteps: int, **args: float) -> "Schedule":
        return cls(make_betas(kind, num_timesteps, **args), name=kind, **args)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, name: str = "custom", **args: float) -> "Schedule":
        """A schedule whose ``alphas_cumprod`` are exactly the given values (cast to float64); its
        betas are derived as 1 - abar(n) / abar(n-1)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() == 0 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise InvalidParameterError("alphas_cumprod must be strictly decreasing values in (0, 1)")
        betas = 1.0 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        schedule = cls(betas, name=name, **args)
        schedule._set_alphas_cumprod(ac)
        return schedule

    def abar(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Cumulative signal level at real time tau in [0, T] (float64, same shape as tau)."""
        tau = torch.as_tensor(tau, dtype=torch.float64)
        if bool(((tau < 0) | (tau > self.num_timesteps)).any()):
            raise InvalidParameterError(f"tau must lie in [0, {self.num_timesteps}], got {tau.tolist()}")
        i = tau.floor().long()
        # table value times the fractional power of the next alpha: exactly the table at integers
        return self._abar_table[i] * torch.exp((tau - i) * self._log_alpha[i])

    def tau_at(self, abar: torch.Tensor | float) -> torch.Tensor:
        """Inverse of ``abar``: the real time at which the signal level is ``abar`` (float64).

        Used for references that are driven by a noise level instead of a step (SR3's gamma =
        sqrt(abar)). Values must lie in [abar(T), 1].
        """
        abar = torch.as_tensor(abar, dtype=torch.float64)
        y = -torch.log(abar)
        neg = -self._log_abar  # increasing from 0 at tau = 0
        tol = 1e-12 * max(1.0, float(neg[-1]))
        if bool(((y < -tol) | (y > neg[-1] + tol)).any()):
            raise InvalidParameterError(
                f"abar must lie in [{self.alphas_cumprod[-1].item():.3g}, 1] for this schedule, got {abar.tolist()}"
            )
        y = y.clamp(0.0, float(neg[-1]))
        i = (torch.searchsorted(neg, y, right=True) - 1).clamp(0, self.num_timesteps - 1)
        return i.to(torch.float64) + (y - neg[i]) / (neg[i + 1] - neg[i])

    def net_time(self, tau: torch.Tensor, *, rescale_timesteps: bool = False) -> torch.Tensor:
        """The reference networks' timestep for tau: t = tau - 1, floored at 0, since no network
        was trained below the noise level of its first step. With ``rescale_timesteps``
        (improved-diffusion's default) the network sees t * 1000 / T instead."""
        t = (torch.as_tensor(tau, dtype=torch.float64) - 1.0).clamp(min=0.0)
        return t * (1000.0 / self.num_timesteps) if rescale_timesteps else t


def diffusers_schedule(config: Mapping[str, Any]) -> Schedule:
    """The schedule of a diffusers ``DDPMScheduler``/``DDIMScheduler`` config, with the betas and
    the cumulative product computed in float32 exactly as diffusers does (so its scheduler
    steps are reproduced), then held in float64.

    Reads ``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end`` and
    ``trained_betas`` with diffusers' defaults.
    """
    T = checked_timesteps(config.get("num_train_timesteps", 1000))
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("rescale_betas_zero_snr"):
        raise InvalidParameterError("diffusers schedules with rescale_betas_zero_snr=true are not supported")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        kind = "trained"
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = make_betas("cosine", T).to(torch.float32)
    else:
        raise InvalidParameterError(
            f"unsupported diffusers beta_schedule {kind!r}; supported: {DIFFUSERS_BETA_SCHEDULES} or trained_betas"
        )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return Schedule.from_alphas_cumprod(alphas_cumprod, name=f"diffusers_{kind}")
