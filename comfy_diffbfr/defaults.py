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


# Measured with the starter weights on 36 held-out faces (moderate) and 14 faces not in ../shared
# (severe): README, "Fidelity". x0/v-predicting stages need few steps: 5 / 2 / 1 gave the same
# PSNR and identity as 10 / 4 / 2 at half the time; TEM at 0.2 restores texture the 0.1 did not.
STAGE_DEFAULTS: dict[str, StageSettings] = {
    "irm64": StageSettings(strength=0.6, steps=5, fidelity=32),
    "irm256": StageSettings(strength=0.5, steps=2, fidelity=64),
    "tem": StageSettings(strength=0.2, steps=1, fidelity=64),
}
