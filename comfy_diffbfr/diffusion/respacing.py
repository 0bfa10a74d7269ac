"""The time grid of our sampling: which times tau the sampler visits, from high to low.

A grid is a descending float64 tensor ``[tau_0, tau_1, ..., 0]``; step k goes from ``tau_k`` to
``tau_{k+1}`` and the last one ends at clean data (tau = 0). The reference implementations'
integer respacings, used only to replay their fixtures, are in ``reference_respacing.py``.
"""

from __future__ import annotations

import torch

from ..errors import InvalidParameterError


def even_grid(t0: float, steps: int) -> torch.Tensor:
    """``steps`` reverse steps evenly spaced in tau from the real time ``t0`` down to 0.

    With an integer t0 and ``steps == t0`` this visits every integer, i.e. the reference's own
    step-by-step ancestral chain started at step t0 - 1.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidParameterError(f"steps must be a positive integer, got {steps!r}")
    if not t0 > 0:
        raise InvalidParameterError(f"the start time t0 must be positive, got {t0!r}")
    return torch.linspace(float(t0), 0.0, steps + 1, dtype=torch.float64)
