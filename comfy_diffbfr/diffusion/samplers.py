"""Reverse sampling loops, and DiffBFR's truncated sampling from a degraded image.

``truncated_sample`` is the entry point of the stages: noise the start image to a real time t0,
then walk an evenly spaced grid of times down to 0 with DDIM or DDPM steps (``steps``). The
lower-level ``sample_grid`` runs any grid with an explicit noise source, which is how the
reference trajectories are replayed with their recorded noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from ..errors import InvalidParameterError
from ..vocabulary import SAMPLERS
from .lowband import LowBandLock
from .respacing import even_grid
from .schedules import Schedule
from .steps import StepResult, ddim_step, ddpm_step, q_sample

NoiseSource = Callable[[], torch.Tensor]
"""Returns the next standard-normal tensor of the sample's shape; called only when a step needs noise."""

StepCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step, total, x0_pred)`` after each step: step counts completed steps (1..total) and
x0_pred is the step's clipped prediction of the clean image, [B, C, H, W] in the input dtype.
It may raise (e.g. ``Interrupted``) to stop sampling right after that step."""


class DiffusionModel(Protocol):
    """What the samplers need of a ``LoadedModel``.

    ``predict(x_t, tau, cond)`` returns the network output in its native layout for a batch at
    times ``tau`` (a float64 CPU tensor [B] on the schedule's continuous axis). ``diffusion`` has
    ``prediction`` ("eps" | "x0" | "v") and ``learned_sigma`` (output = prediction + variance values).
    """

    schedule: Schedule
    diffusion: Mapping[str, Any]

    def predict(self, x_t: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Step arithmetic runs in float32 at least (float64 stays float64); only the network runs
    in reduced precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def generator_noise(generators: Sequence[torch.Generator], like: torch.Tensor) -> NoiseSource:
    """A noise source where row i of every draw comes from ``generators[i]`` alone, so a row's
    noise (hence its result) never depends on the other rows or on the batch size. Each row is
    drawn in float32 on its generator's device, then moved to ``like``'s device and dtype."""

    def draw() -> torch.Tensor:
        rows = [torch.randn(tuple(like.shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generators]
        return torch.stack([r.to(like.device) for r in rows]).to(like.dtype)

    return draw


@torch.no_grad()
def sample_grid(
    model: DiffusionModel,
    x: torch.Tensor,
    taus: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    sampler: str = "ddim",
    eta: float = 0.0,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    model_dtype: torch.dtype | None = None,
    lock: LowBandLock | None = None,
) -> torch.Tensor:
    """Run reverse steps from ``x`` (the state at ``taus[0]``) through the descending grid ``taus``.

    Each step calls ``model.predict`` once on the state cast to ``model_dtype`` (default: x's
    dtype), then takes a DDPM step
    (posterior "small" variance, or the model's learned range) or a DDIM step with ``eta``
    (eps re-derived from the clipped x0), x0 always clipped to [-1, 1]. ``noise()`` is called
    once for every step that adds noise (DDPM, or DDIM with eta > 0, except the step to 0).
    With a ``lock``, every step whose tau_from is above ``lock.stop`` replaces the low band of
    the clipped x0 by the reference's before stepping (``lowband``); without one, nothing changes.
    Runs without autograd. Returns the final state in ``model_dtype``.
    """
    if sampler not in SAMPLERS:
        raise InvalidParameterError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if eta < 0:
        raise InvalidParameterError(f"eta must be >= 0, got {eta}")
    taus = torch.as_tensor(taus, dtype=torch.float64).cpu()
    if taus.dim() != 1 or taus.numel() < 2 or not bool((taus[1:] < taus[:-1]).all()):
        raise InvalidParameterError(f"the time grid must be strictly decreasing with >= 2 points, got {taus.tolist()}")
    in_dtype, batch = model_dtype or x.dtype, x.shape[0]
    prediction = str(model.diffusion.get("prediction", "eps"))
    learned_sigma = bool(model.diffusion.get("learned_sigma", False))
    state = x.to(_work_dtype(in_dtype))
    total = taus.numel() - 1
    for k in range(total):
        tau_from, tau_to = taus[k], taus[k + 1]
        output = model.predict(state.to(in_dtype), tau_from.expand(batch).clone(), cond)
        needs_noise = tau_to > 0 and (sampler == "ddpm" or eta > 0)
        step_noise = noise().to(state) if needs_noise else None
        correct = lock if lock is not None and lock.applies_at(tau_from) else None
        result: StepResult
        if sampler == "ddpm":
            result = ddpm_step(output, state, model.schedule, tau_from, tau_to, step_noise, prediction=prediction,
                               learned_sigma=learned_sigma, tau_above=taus[k - 1] if k > 0 else None,
                               correct_x0=correct)
        else:
            result = ddim_step(output, state, model.schedule, tau_from, tau_to, step_noise, eta=eta,
                               prediction=prediction, learned_sigma=learned_sigma, correct_x0=correct)
        state = result.sample
        if callback is not None:
            callback(k + 1, total, result.pred_x0.to(in_dtype))
    return state.to(in_dtype)


@torch.no_grad()
def truncated_sample(
    model: DiffusionModel,
    start: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    strength: float | None = None,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    generators: Sequence[torch.Generator],
    callback: StepCallback | None = None,
    t0: float | None = None,
    lock: LowBandLock | None = None,
) -> torch.Tensor:
    """DiffBFR's truncated sampling: restore ``start`` by noising it part-way and denoising.

    ``start`` [B, C, H, W] in [-1, 1] is noised to the real time t0 = ``strength`` * T (or the
    explicit ``t0``; give exactly one) as x_t0 = sqrt(abar(t0)) * start + sqrt(1 - abar(t0)) * eps,
    then ``steps`` reverse steps run on a grid evenly spaced in tau from t0 to 0
    (``respacing.even_grid``; t0 need not be an integer). ``sampler`` "ddim" (with ``eta``) or
    "ddpm" (ancestral); see ``sample_grid``. ``cond`` is passed to every ``model.predict`` call.

    ``generators`` holds one ``torch.Generator`` per batch row; all noise of row i (eps, then the
    noise of each stochastic step) comes from ``generators[i]``, so a row's result does not depend
    on the other rows. ``callback(step, total, x0_pred)`` runs after each step and may raise
    (``Interrupted``) to stop. ``lock`` keeps the low band of every x0 prediction on a reference
    (see ``sample_grid``). The model runs in ``start``'s dtype; schedule quantities are
    float64, step arithmetic float32 or better. Returns the result [B, C, H, W] in ``start``'s dtype.
    """
    T = model.schedule.num_timesteps
    if (strength is None) == (t0 is None):
        raise InvalidParameterError("give exactly one of strength (t0 = strength * T) or t0")
    if t0 is None:
        if not 0.0 < float(strength) <= 1.0:
            raise InvalidParameterError(f"strength must be in (0, 1], got {strength}")
        t0 = float(strength) * T
    if not 0.0 < float(t0) <= T:
        raise InvalidParameterError(f"t0 must be in (0, {T}] for this {T}-step model, got {t0}")
    if start.dim() != 4:
        raise InvalidParameterError(f"start must be a [B, C, H, W] tensor, got shape {tuple(start.shape)}")
    if len(generators) != start.shape[0]:
        raise InvalidParameterError(
            f"pass one torch.Generator per batch row: {len(generators)} generators for {start.shape[0]} rows"
        )
    if cond is not None and cond.shape[0] != start.shape[0]:
        raise InvalidParameterError(f"cond has {cond.shape[0]} rows but start has {start.shape[0]}")
    taus = even_grid(float(t0), steps)
    work = start.to(_work_dtype(start.dtype))
    noise = generator_noise(generators, work)
    x_t0 = q_sample(work, taus[0], noise(), model.schedule)
    return sample_grid(model, x_t0, taus, cond=cond, sampler=sampler, eta=eta, noise=noise, callback=callback,
                       model_dtype=start.dtype, lock=lock)
