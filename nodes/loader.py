"""DiffBFRModelLoader: a model file from models/diffbfr or the pack's weights/ -> a shared handle."""

from __future__ import annotations

import json

from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.host import folders
from comfy_diffbfr.host.model_cache import ModelHandle, load_cached
from comfy_diffbfr.vocabulary import PRECISIONS

from .common import CATEGORY, MODEL


class DiffBFRModelLoader:
    DESCRIPTION = (
        "Loads a DiffBFR stage model (native, SR3, guided/improved-diffusion, DifFace or diffusers "
        "checkpoints). The same file is loaded once and shared by every node that names it."
    )
    SEARCH_ALIASES = ["load face restoration model", "diffbfr model", "face restoration", "blind face"]
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (folders.list_models("diffbfr"), {"tooltip": "A file in models/diffbfr or the pack's weights/."}),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": (
                    "auto: half precision on capable GPUs; on a CPU, bf16 where it has bf16 units (AMX) "
                    "and a short measurement says it is faster for this model, else float32.")}),
            },
            "optional": {
                "hints": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": 'JSON of what the weights cannot tell, e.g. {"num_heads": 4, "role": "irm64"}.',
                }),
            },
        }

    def load(self, model_name: str, precision: str, hints: str = "") -> tuple[ModelHandle]:
        parsed = parse_hints(hints)
        path = folders.resolve_model("diffbfr", model_name)
        return (load_cached(path, model_name, hints=parsed, precision=precision),)


def parse_hints(text: str) -> dict:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"hints must be a JSON object like {{\"num_heads\": 4}}: {exc}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"hints must be a JSON object like {{\"num_heads\": 4}}, got {text!r}")
    return value
