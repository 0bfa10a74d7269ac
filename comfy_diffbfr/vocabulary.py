"""The words the library, the command line and the nodes share, each defined once.

Each is a ``Literal`` type for annotations and a tuple of its values (``get_args``) for choices,
checks and messages, in the order a menu shows them.
"""

from __future__ import annotations

from typing import Literal, get_args

StageName = Literal["irm64", "irm256", "tem"]  # in pipeline order; also the models' roles
Prediction = Literal["eps", "x0", "v"]  # what a network outputs
Sampler = Literal["ddim", "ddpm"]
SeedMode = Literal["per_face", "same", "per_track"]  # per_track: seed + the face's track id (the same person in every frame)
ColorCorrection = Literal["none", "wavelet", "adain"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]

STAGE_NAMES: tuple[StageName, ...] = get_args(StageName)
PREDICTIONS: tuple[Prediction, ...] = get_args(Prediction)
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
SEED_MODES: tuple[SeedMode, ...] = get_args(SeedMode)
COLOR_CORRECTIONS: tuple[ColorCorrection, ...] = get_args(ColorCorrection)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
