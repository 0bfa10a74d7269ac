"""The reference implementations' integer respacings, on our time axis (their step t is tau = t + 1).

Only for replaying the references' trajectories in the parity tests: guided/improved-diffusion's
``timestep_respacing`` (``space_timesteps``, ``spaced_betas``) and diffusers' schedulers
(``diffusers_timesteps``). Our own sampling never uses them (it runs ``respacing.even_grid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InvalidParameterError
from .schedules import Schedule


def grid_from_steps(steps: Sequence[int]) -> torch.Tensor:
    """The grid visited by a reference sampler that runs its integer steps ``steps`` (any order)
    and ends at clean data: ``sorted(steps, descending) + 1`` followed by 0."""
    kept = sorted({int(s) for s in steps}, reverse=True)
    if not kept or kept[-1] < 0:
        raise InvalidParameterError(f"reference steps must be non-negative integers, got {list(steps)!r}")
    return torch.tensor([s + 1 for s in kept] + [0], dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """guided/improved-diffusion's ``timestep_respacing``: the kept original steps, ascending.

    ``section_counts`` is ``"ddimN"`` (a constant integer stride giving exactly N steps), or
    comma-separated counts (``"50"``, ``"10,15,20"``): the T steps are cut into that many equal
    sections, and each section keeps its count of steps at evenly rounded fractional strides.
    """
    T = num_timesteps
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim"):])
            for stride in range(1, T):
                if len(range(0, T, stride)) == wanted:
                    return list(range(0, T, stride))
            raise InvalidParameterError(f"no integer stride gives exactly {wanted} of {T} steps")
        section_counts = [int(c) for c in section_counts.split(",")]
    base, extra = divmod(T, len(section_counts))
    kept: set[int] = set()
    first = 0
    for i, count in enumerate(section_counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise InvalidParameterError(f"cannot keep {count} steps of a {size}-step section")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):  # accumulated like the reference, so the rounding matches
            kept.add(first + round(position))
            position += stride
        first += size
    return sorted(kept)


def spaced_betas(schedule: Schedule, kept_steps: Sequence[int]) -> torch.Tensor:
    """Betas of the process respaced to ``kept_steps`` (ascending reference steps): it keeps abar
    at those steps, so beta_k = 1 - abar(tau_k) / abar(tau_{k-1}) with abar before the first = 1."""
    taus = grid_from_steps(kept_steps).flip(0)  # 0, tau_1, ..., ascending
    abar = schedule.abar(taus)
    return 1.0 - abar[1:] / abar[:-1]


def diffusers_timesteps(
    num_train_timesteps: int, num_inference_steps: int, *, spacing: str = "leading", steps_offset: int = 0
) -> list[int]:
    """The descending ``timesteps`` a diffusers DDPM/DDIM scheduler runs after
    ``set_timesteps(num_inference_steps)`` for ``timestep_spacing`` leading/trailing/linspace.

    The step from each entry goes to the next entry (and from the last one to clean data), so
    ``grid_from_steps`` of this list is the tau grid. (DDIMScheduler always steps back by
    T // n, which is the same thing for leading spacing, the diffusers default.)
    """
    T, n = num_train_timesteps, num_inference_steps
    if not 1 <= n <= T:
        raise InvalidParameterError(f"num_inference_steps must be in [1, {T}], got {n}")
    if spacing == "leading":
        ratio = T // n
        steps = [i * ratio + steps_offset for i in range(n)]
    elif spacing == "trailing":  # numpy, as diffusers, so that ties round the same way
        steps = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1).tolist()
    elif spacing == "linspace":
        steps = np.linspace(0, T - 1, n).round().astype(np.int64).tolist()
    else:
        raise InvalidParameterError(f"unknown timestep_spacing {spacing!r}; use leading, trailing or linspace")
    return sorted(steps, reverse=True)
