"""Widgets and socket types shared by the node classes."""

from __future__ import annotations

from comfy_diffbfr import params
from comfy_diffbfr.defaults import StageSettings
from comfy_diffbfr.vocabulary import SAMPLERS, SEED_MODES

CATEGORY = "DiffBFR"
MODEL = "DIFFBFR_MODEL"
FACES = "DIFFBFR_FACES"
MAX_SEED = params.SEED.high


def sampling_widgets(defaults: StageSettings) -> dict:
    """The widgets of the three stage nodes, in their saved order (append new ones at the end)."""
    return {
        "strength": ("FLOAT", {
            "default": defaults.strength, "min": params.STRENGTH.low, "max": params.STRENGTH.high, "step": 0.01,
            "tooltip": "Truncation point t0 as a fraction of the diffusion length T: how much noise is added "
                       "to the input before it is denoised. Higher = stronger restoration, less faithful.",
        }),
        "steps": ("INT", {"default": defaults.steps, "min": params.STEPS.low, "max": params.STEPS.high,
                          "tooltip": "Reverse steps from t0 to 0."}),
        "sampler": (list(SAMPLERS), {
            "default": "ddim",
            "tooltip": "ddim: deterministic steps (with eta 0), good at few steps; ddpm: the original stochastic "
                       "sampler, which needs more steps.",
        }),
        "eta": ("FLOAT", {"default": 0.0, "min": params.ETA.low, "max": params.ETA.high, "step": 0.01,
                          "tooltip": "DDIM noise (0 = deterministic after the start noise)."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "Seed of the start noise; see seed_mode for how each face gets its own."}),
        "seed_mode": (list(SEED_MODES), {
            "default": "per_face",
            "tooltip": "per_face: face i of the batch uses seed + i; same: every face uses the seed; per_track: "
                       "each person uses seed + their track id, the same in every frame of a video batch "
                       "(connect the 'faces' input).",
        }),
    }


def fidelity_widget(defaults: StageSettings) -> dict:
    """The stage nodes' optional ``fidelity`` widget (optional, so prompts saved before it existed
    still validate; the nodes then use the table's default)."""
    return {"fidelity": fidelity_input(defaults.fidelity, "the stage's working size")}


def fidelity_input(default: int, working_size: str) -> tuple:
    """An INT input for a low-band lock, in pixels at ``working_size``."""
    return ("INT", {
        "default": default, "min": params.FIDELITY.low, "max": params.FIDELITY.high, "step": 8,
        "tooltip": "Keeps the face's identity: at every step the result's coarse content (what a copy "
                   f"this many pixels wide, at {working_size}, shows) is taken from the "
                   "low-quality face. 0 = off (the model alone decides); larger = closer to the input, "
                   "less change; at the working size itself the input is returned.",
    })
