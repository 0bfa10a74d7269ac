"""Single steps of the forward and reverse processes between arbitrary real times.

Every function is pure: the Gaussian noise a step needs is passed in (so recorded reference noise
can be replayed), and times are real values on the continuous axis of ``schedules`` (reference
step t is tau = t + 1). Times are a float or a ``[B]`` tensor, one per batch row. The schedule
quantities are computed in float64 and cast to the dtype of ``x_t`` for the tensor arithmetic.

A reverse step from ``tau_from`` to ``tau_to < tau_from`` uses the forward process between those
two times: its single-step beta = 1 - abar(tau_to) / abar(tau_from), which for consecutive integers
is the schedule's own beta and for a respaced grid is the references' "spaced beta".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidParameterError, WrongModelKindError
from ..vocabulary import PREDICTIONS
from .schedules import Schedule
VARIANCES = ("small", "large")
_LOG_VARIANCE_FLOOR = 1e-20  # SR3 clips the posterior variance here before the log

X0Correction = Callable[[torch.Tensor], torch.Tensor]
"""Applied to the (clipped) predicted x0 before a step uses it, e.g. ``lowband.LowBandLock``."""


def _rows(value: torch.Tensor | float) -> torch.Tensor:
    """A float64 CPU tensor of shape [] or [B]."""
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu()


def _per_row(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 scalar or [B] coefficient shaped to broadcast over ``like`` [B, C, H, W]."""
    return coef.reshape(-1, *([1] * (like.dim() - 1))).to(device=like.device, dtype=like.dtype)


def q_sample(x0: torch.Tensor, tau: torch.Tensor | float, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Sample the forward process at real time tau: sqrt(abar(tau)) * x0 + sqrt(1 - abar(tau)) * noise.

    With ``x0`` the low-quality image and tau = t0 this is the truncated start of DiffBFR's
    sampling, ``x_t0 = sqrt(abar(t0)) * y + sqrt(1 - abar(t0)) * eps``.
    """
    abar = schedule.abar(_rows(tau))
    return _per_row(abar.sqrt(), x0) * x0 + _per_row((1.0 - abar).sqrt(), x0) * noise.to(x0.dtype)


def split_output(output: torch.Tensor, channels: int, learned_sigma: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a network output into its prediction and, with a learned sigma, the variance values
    v in [-1, 1] (guided-diffusion's layout: the second half of the channels)."""
    expected = 2 * channels if learned_sigma else channels
    if output.dim() != 4 or output.shape[1] != expected:
        raise WrongModelKindError(
            f"the model returned shape {tuple(output.shape)} for an image of {channels} channels; expected "
            f"{expected} channels{' (prediction + learned variance)' if learned_sigma else ''}. "
            "The model's learned_sigma setting or its output layout does not match the network."
        )
    if learned_sigma:
        return output[:, :channels], output[:, channels:]
    return output, None


def to_eps_x0(prediction: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model prediction of kind ``eps``, ``x0`` or ``v`` at signal level ``abar``
    (float64, scalar or [B]) into (eps, x0), using x_t = sqrt(abar) x0 + sqrt(1 - abar) eps and
    v = sqrt(abar) eps - sqrt(1 - abar) x0. Nothing is clipped here."""
    a, s = abar.sqrt(), (1.0 - abar).sqrt()
    prediction = prediction.to(x_t.dtype)
    if kind == "eps":
        eps = prediction
        x0 = _per_row(1.0 / a, x_t) * x_t - _per_row(s / a, x_t) * eps
    elif kind == "x0":
        x0 = prediction
        eps = (x_t - _per_row(a, x_t) * x0) / _per_row(s, x_t)
    elif kind == "v":
        x0 = _per_row(a, x_t) * x_t - _per_row(s, x_t) * prediction
        eps = _per_row(s, x_t) * x_t + _per_row(a, x_t) * prediction
    else:
        raise InvalidParameterError(f"unknown prediction type {kind!r}; choose one of {PREDICTIONS}")
    return eps, x0


def _eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The noise that takes x0 to x_t at signal level abar."""
    return (x_t - _per_row(abar.sqrt(), x_t) * x0) / _per_row((1.0 - abar).sqrt(), x_t)


def clip_x0(x0: torch.Tensor) -> torch.Tensor:
    """Clip a predicted clean image to the data range [-1, 1] (the references' clip_denoised)."""
    return x0.clamp(-1.0, 1.0)


@dataclass(frozen=True)
class Transition:
    """Forward-process quantities of a reverse step tau_from -> tau_to (float64, scalar or [B]).

    ``posterior_*`` describe q(x_to | x_from, x0): mean = coef_x0 * x0 + coef_xt * x_from.
    ``posterior_log_variance`` is clipped as the references do, since the variance is 0 on the
    step to tau = 0: there it is the log variance of the step above (tau_above -> tau_from),
    guided-diffusion's rule, or log(1e-20), SR3's, when no step above is given.
    """

    abar_from: torch.Tensor
    abar_to: torch.Tensor
    beta: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    final: torch.Tensor  # bool: the step ends at clean data (tau_to == 0) and adds no noise


def _posterior_variance(abar_from: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    beta = 1.0 - abar_from / abar_to
    return beta * (1.0 - abar_to) / (1.0 - abar_from)


def transition(
    schedule: Schedule, tau_from: torch.Tensor | float, tau_to: torch.Tensor | float, *, tau_above: torch.Tensor | float | None = None
) -> Transition:
    """The quantities of the reverse step tau_from -> tau_to (see ``Transition``)."""
    tau_from, tau_to = torch.broadcast_tensors(_rows(tau_from), _rows(tau_to))
    if not bool((tau_from > tau_to).all()) or bool((tau_to < 0).any()):
        raise InvalidParameterError(
            f"a reverse step needs tau_from > tau_to >= 0, got {tau_from.tolist()} -> {tau_to.tolist()}"
        )
    abar_from, abar_to = schedule.abar(tau_from), schedule.abar(tau_to)
    beta = 1.0 - abar_from / abar_to
    variance = _posterior_variance(abar_from, abar_to)
    log_variance = variance.clamp(min=_LOG_VARIANCE_FLOOR).log()
    final = tau_to == 0
    if tau_above is not None and bool(final.any()):
        tau_above = torch.broadcast_to(_rows(tau_above), tau_from.shape)
        if not bool((tau_above[final] > tau_from[final]).all()):
            raise InvalidParameterError(f"tau_above must exceed tau_from, got {tau_above.tolist()}")
        # Final rows take the variance of the step above; the others recompute their own.
        above = _posterior_variance(schedule.abar(torch.where(final, tau_above, tau_from)),
                                    torch.where(final, abar_from, abar_to))
        log_variance = torch.where(final, above.log(), log_variance)
    return Transition(
        abar_from=abar_from,
        abar_to=abar_to,
        beta=beta,
        posterior_variance=variance,
        posterior_log_variance=log_variance,
        coef_x0=abar_to.sqrt() * beta / (1.0 - abar_from),
        coef_xt=(1.0 - beta).sqrt() * (1.0 - abar_to) / (1.0 - abar_from),
        final=final,
    )


@dataclass(frozen=True)
class StepResult:
    """One reverse step: the new state ``sample`` and the step's predictions. ``mean`` and
    ``log_variance`` are the reverse Gaussian's (DDIM: log_variance is log sigma^2, -inf at eta 0)."""

    sample: torch.Tensor
    pred_x0: torch.Tensor
    eps: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor


def _noise_term(scale: torch.Tensor, noise: torch.Tensor | None, x_t: torch.Tensor) -> torch.Tensor:
    """scale [B,1,1,1] * noise, where rows with scale 0 (no noise at that step) need none."""
    if noise is None:
        if bool((scale != 0).any()):
            raise InvalidParameterError("this step adds noise: pass a noise tensor of the sample's shape")
        return torch.zeros_like(x_t)
    if noise.shape != x_t.shape:
        raise InvalidParameterError(f"noise has shape {tuple(noise.shape)}, the sample {tuple(x_t.shape)}")
    return scale * noise.to(x_t.dtype)


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    schedule: Schedule,
    tau_from: torch.Tensor | float,
    tau_to: torch.Tensor | float,
    noise: torch.Tensor | None,
    *,
    prediction: str = "eps",
    learned_sigma: bool = False,
    variance: str = "small",
    clip: bool = True,
    tau_above: torch.Tensor | float | None = None,
    correct_x0: X0Correction | None = None,
) -> StepResult:
    """Ancestral (DDPM) step from x_t at tau_from to tau_to: the posterior of the forward process
    between the two times given the (clipped) predicted x0, plus noise * exp(log_variance / 2),
    except on the final step to tau = 0, which adds none (``noise`` may then be None).

    Variance: with ``learned_sigma`` (6-channel guided/improved/DifFace outputs), LEARNED_RANGE:
    frac = (v + 1) / 2, log var = frac * log(beta) + (1 - frac) * posterior log variance, where
    beta is the step's own (spaced) beta. Otherwise ``"small"`` = the posterior variance (SR3,
    diffusers' fixed_small) or ``"large"`` = beta (guided's FIXED_LARGE), each with the clipped
    value of ``Transition`` on the final step. ``tau_above`` is the grid point before tau_from.
    ``correct_x0`` (e.g. the low-band lock) changes the clipped x0 before the posterior uses it.
    """
    if variance not in VARIANCES:
        raise InvalidParameterError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    tr = transition(schedule, tau_from, tau_to, tau_above=tau_above)
    main, var_values = split_output(model_output, x_t.shape[1], learned_sigma)
    eps, x0 = to_eps_x0(main, x_t, tr.abar_from, prediction)
    if clip:
        x0 = clip_x0(x0)
    if correct_x0 is not None:
        x0 = correct_x0(x0)
        eps = _eps_from_x0(x_t, x0, tr.abar_from)
    mean = _per_row(tr.coef_x0, x_t) * x0 + _per_row(tr.coef_xt, x_t) * x_t
    if var_values is not None:
        frac = (var_values.to(x_t.dtype) + 1) / 2
        log_variance = frac * _per_row(tr.beta.log(), x_t) + (1 - frac) * _per_row(tr.posterior_log_variance, x_t)
    else:
        if variance == "large":
            chosen = torch.where(tr.final, tr.posterior_log_variance, tr.beta.log())
        else:
            chosen = tr.posterior_log_variance
        log_variance = _per_row(chosen, x_t).expand_as(x_t)
    nonzero = _per_row((~tr.final).to(torch.float64), x_t)
    sample = mean + _noise_term(nonzero * torch.exp(0.5 * log_variance), noise, x_t)
    return StepResult(sample=sample, pred_x0=x0, eps=eps, mean=mean, log_variance=log_variance)


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    schedule: Schedule,
    tau_from: torch.Tensor | float,
    tau_to: torch.Tensor | float,
    noise: torch.Tensor | None,
    *,
    eta: float = 0.0,
    prediction: str = "eps",
    learned_sigma: bool = False,
    clip: bool = True,
    rederive_eps: bool = True,
    correct_x0: X0Correction | None = None,
) -> StepResult:
    """DDIM step from tau_from to tau_to:
    x_to = sqrt(abar_to) x0 + sqrt(1 - abar_to - sigma^2) eps + sigma * noise, with
    sigma = eta * sqrt((1 - abar_to) / (1 - abar_from)) * sqrt(1 - abar_from / abar_to).

    eta = 0 is deterministic (``noise`` may be None); the final step to tau = 0 returns the
    predicted x0. With ``clip``, x0 is clipped and, with ``rederive_eps`` (guided-diffusion), eps
    is recomputed from the clipped x0; diffusers' DDIMScheduler keeps the model's eps
    (``rederive_eps=False``). Learned variance values, if any, are ignored. ``correct_x0`` (e.g.
    the low-band lock) changes the clipped x0 before the step, and eps is re-derived from it so
    the step lands on the corrected image.
    """
    if eta < 0:
        raise InvalidParameterError(f"eta must be >= 0, got {eta}")
    tr = transition(schedule, tau_from, tau_to)
    abar_from, abar_to = tr.abar_from, tr.abar_to
    main, _ = split_output(model_output, x_t.shape[1], learned_sigma)
    eps, x0 = to_eps_x0(main, x_t, abar_from, prediction)
    if clip:
        x0 = clip_x0(x0)
    if correct_x0 is not None:
        x0 = correct_x0(x0)
    if (clip and rederive_eps) or correct_x0 is not None:
        eps = _eps_from_x0(x_t, x0, abar_from)
    sigma = eta * ((1 - abar_to) / (1 - abar_from)).sqrt() * (1 - abar_from / abar_to).sqrt()
    direction = (1.0 - abar_to - sigma**2).clamp(min=0.0).sqrt()
    mean = _per_row(abar_to.sqrt(), x_t) * x0 + _per_row(direction, x_t) * eps
    sample = mean + _noise_term(_per_row(sigma, x_t), noise, x_t)
    log_variance = _per_row((sigma**2).log(), x_t).expand_as(x_t)
    return StepResult(sample=sample, pred_x0=x0, eps=eps, mean=mean, log_variance=log_variance)
