"""Widgets and socket types shared by the node classes."""

from __future__ import annotations

from . import _library  # noqa: F401  (makes comfy_diffbfr importable)

from comfy_diffbfr import params
from comfy_diffbfr.stages import SAMPLERS, SEED_MODES

CATEGORY = "DiffBFR"
MODEL = "DIFFBFR_MODEL"
FACES = "DIFFBFR_FACES"
MAX_SEED = params.SEED.high


def sampling_widgets(strength: float, steps: int) -> dict:
    """The widgets of the three stage nodes, in their saved order (append new ones at the end)."""
    return {
        "strength": ("FLOAT", {
            "default": strength, "min": params.STRENGTH.low, "max": params.STRENGTH.high, "step": 0.01,
            "tooltip": "Truncation point t0 as a fraction of the diffusion length T: how much noise is added "
                       "to the input before it is denoised. Higher = stronger restoration, less faithful.",
        }),
        "steps": ("INT", {"default": steps, "min": params.STEPS.low, "max": params.STEPS.high,
                          "tooltip": "Reverse steps from t0 to 0."}),
        "sampler": (list(SAMPLERS), {"default": "ddim"}),
        "eta": ("FLOAT", {"default": 0.0, "min": params.ETA.low, "max": params.ETA.high, "step": 0.01,
                          "tooltip": "DDIM noise (0 = deterministic after the start noise)."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
        "seed_mode": (list(SEED_MODES), {
            "default": "per_face",
            "tooltip": "per_face: face i uses seed + i; same: every face uses the seed.",
        }),
    }
