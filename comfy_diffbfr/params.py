"""Numbers that come from users (command line, node inputs, workflows, library calls), checked once.

NaN passes every comparison (``nan < 0`` and ``nan > 1`` are both false), so a plain range check
lets it through and it ends as a black face. ``Range.check`` refuses NaN, infinities, booleans and
non-numbers as well as values outside the range, with a message naming the parameter and the
allowed range. The ranges below are the one definition used by the library, the nodes' widgets
and the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameterError


@dataclass(frozen=True)
class Range:
    """``[low, high]`` (``(low, high]`` when ``open_low``); ``whole``: only whole numbers."""

    low: float
    high: float
    whole: bool = False
    open_low: bool = False

    def __str__(self) -> str:
        fmt = (lambda v: str(int(v))) if self.whole else (lambda v: f"{v:g}")
        return f"{'(' if self.open_low else '['}{fmt(self.low)}, {fmt(self.high)}]"

    def problem(self, value: Any) -> tuple[Any, str | None]:
        """(the value as a number, None) or (None, what is wrong, without the parameter's name)."""
        wanted = "a whole number" if self.whole else "a finite number"
        if math.isfinite(self.low) or math.isfinite(self.high):
            wanted += f" in {self}"
        number = _as_number(value, self.whole)
        too_low = number is not None and (number <= self.low if self.open_low else number < self.low)
        if number is None or too_low or number > self.high:
            return None, f"must be {wanted}, got {value!r}"
        return number, None

    def check(self, value: Any, name: str) -> Any:
        """``value`` as an int (``whole``) or float; ``InvalidParameterError`` naming ``name`` otherwise."""
        number, problem = self.problem(value)
        if problem is not None:
            raise InvalidParameterError(f"{name} {problem}")
        return number


def _as_number(value: Any, whole: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    if whole:
        if isinstance(value, int):
            return value
        return int(number) if number.is_integer() else None
    return number


def finite(value: Any, name: str) -> float:
    """Any finite number (for parameters without a natural range)."""
    return Range(-math.inf, math.inf).check(value, name)


# Diffusion stages (the stage nodes' widgets, `restore`, `eval`, `run_stage`).
STRENGTH = Range(0.01, 1.0)  # truncation point t0 as a fraction of T
STEPS = Range(1, 1000, whole=True)
ETA = Range(0.0, 1.0)
SEED = Range(0, 2**64 - 1, whole=True)
FIDELITY = Range(0, 4096, whole=True)  # the low-band lock's band, px at the stage's working size; 0 = off
FIDELITY_WEIGHT = Range(0.0, 1.0)
FIDELITY_STOP = Range(0.0, 1.0)  # a fraction of T, like strength
# Paste-back colour correction and blending.
BLEND = Range(0.0, 1.0)
# Faces: crop size, face filters and how many faces one photo may give.
CROP_SIZE = Range(8, 2048, whole=True)
MIN_FACE_SIZE = Range(0.0, 16384.0)  # px of the photo
SCORE_THRESHOLD = Range(-1.0, 10.0)  # RetinaFace: a probability in [0, 1]; dlib: a margin, around 0
MAX_FACES = Range(1, 1000, whole=True)  # per photo; also the cap when no maximum is given
