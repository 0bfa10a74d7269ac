"""DiffBFRRestore (extra): the whole pipeline in one node, over ``comfy_diffbfr.pipeline``."""

from __future__ import annotations

import torch

from comfy_diffbfr.defaults import STAGE_DEFAULTS
from comfy_diffbfr.errors import DiffBFRError
from comfy_diffbfr.host.model_cache import ModelHandle
from comfy_diffbfr.pipeline import DetectOptions, PasteOptions, Stage, format_report, identity_model, restore_images
from comfy_diffbfr.vocabulary import STAGE_NAMES

from .common import CATEGORY, MAX_SEED, MODEL, fidelity_input
from .face_nodes import color_correction_widget, detector_widget

_WORKING_SIZES = {"irm64": "IRM 64's 64x64", "irm256": "IRM 256's 256x256", "tem": "TEM's working size"}


class DiffBFRRestore:
    DESCRIPTION = (
        "Detect, restore and paste back every face in one node. Connect any of the three stage models "
        "(they run in the order IRM 64, IRM 256, TEM) at the stage nodes' default strength and steps. "
        "'report' lists every face with its identity distance (low-quality vs restored face; needs dlib)."
    )
    SEARCH_ALIASES = ["face restoration", "restore face", "blind face restoration", "face restore", "identity", "texture"]
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("image", "mask", "report")
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        # One fidelity per stage, as on the stage nodes: each is in pixels of its own working size
        # (32 of 64 is not 32 of 256), so a single number could not mean the same at every stage.
        fidelity = {f"{name}_fidelity": fidelity_input(STAGE_DEFAULTS[name].fidelity, _WORKING_SIZES[name])
                    for name in STAGE_NAMES}
        return {
            "required": {
                "image": ("IMAGE",),
                "detector": detector_widget(),
                "color_correction": color_correction_widget(),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the start noise of every stage (face i uses seed + i)."}),
            },
            "optional": {**{name: (MODEL,) for name in STAGE_NAMES}, **fidelity},
        }

    def restore(self, image: torch.Tensor, detector: str, color_correction: str, seed: int,
                **inputs: ModelHandle | int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
        stages = [
            Stage(name, inputs[name], STAGE_DEFAULTS[name].updated(seed=seed, fidelity=inputs.get(f"{name}_fidelity")))
            for name in STAGE_NAMES if inputs.get(name) is not None
        ]
        if not stages:
            raise DiffBFRError("DiffBFR Restore: connect at least one model (irm64, irm256 or tem) from a DiffBFR Model Loader.")
        results = restore_images(image, stages, detect=DetectOptions(detector=detector),
                                 paste=PasteOptions(color_correction=color_correction), identity=identity_model())
        return (torch.cat([r.image for r in results]), torch.cat([r.mask for r in results]), format_report(results))
