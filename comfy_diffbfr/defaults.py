"""The one table of default settings: the stage nodes, the shipped workflows, ``restore`` and
``eval`` all take their defaults from here (a test checks that the workflow files carry them).

``fidelity`` is the low-band lock of each stage (``diffusion/lowband.py``): the size in pixels,
at the stage's working size, of the low-resolution copy of the reference that the result must
match. 0 = off (the model alone decides); larger = closer to the input, less room for the model to
change the face. ``fidelity_weight`` is the share of the low band that is replaced (1 = all of it),
``fidelity_stop`` the time, as a fraction of T like ``strength``, below which the lock is released.
How these values were chosen: README, "Fidelity".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .vocabulary import Sampler, SeedMode


@dataclass(frozen=True)
class StageSettings:
    """How one diffusion stage samples (see ``stages.run_stage``)."""

    strength: float  # truncation point t0 as a fraction of T
    steps: int
    sampler: Sampler = "ddim"
    eta: float = 0.0
    seed: int = 0
    seed_mode: SeedMode = "per_face"
    fidelity: int = 0
    fidelity_weight: float = 1.0
    fidelity_stop: float = 0.0

    def updated(self, **changes: Any) -> StageSettings:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_kwargs(self) -> dict[str, Any]:
        return dict(self.__dict__)


STAGE_DEFAULTS: dict[str, StageSettings] = {
    "irm64": StageSettings(strength=0.6, steps=10, fidelity=32),
    "irm256": StageSettings(strength=0.5, steps=4, fidelity=128),
    "tem": StageSettings(strength=0.1, steps=2, fidelity=128),
}
