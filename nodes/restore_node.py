"""DiffBFRRestore (extra): the whole pipeline in one node, each stage at its node's default settings."""

from __future__ import annotations

import torch

from .common import CATEGORY, MAX_SEED, MODEL
from .face_nodes import DiffBFRFaceDetect, DiffBFRPasteBack, color_correction_widget, detector_widget
from .stage_nodes import DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM

from comfy_diffbfr import stages
from comfy_diffbfr.defaults import STAGE_DEFAULTS
from comfy_diffbfr.host.model_cache import ModelHandle
from comfy_diffbfr.errors import DiffBFRError

_STAGES = (("irm64", DiffBFRIRM64), ("irm256", DiffBFRIRM256), ("tem", DiffBFRTEM))


class DiffBFRRestore:
    DESCRIPTION = (
        "Detect, restore and paste back every face in one node. Connect any of the three stage models "
        "(they run in the order IRM 64, IRM 256, TEM) at the stage nodes' default strength and steps."
    )
    SEARCH_ALIASES = ["face restoration", "restore face", "blind face restoration", "face restore", "identity", "texture"]
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE",),
                "detector": detector_widget(),
                "color_correction": color_correction_widget(),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the start noise of every stage (face i uses seed + i)."}),
            },
            "optional": {name: (MODEL,) for name, _ in _STAGES},
        }

    def restore(self, image: torch.Tensor, detector: str, color_correction: str, seed: int,
                **models: ModelHandle | None) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [(models[name], node) for name, node in _STAGES if models.get(name) is not None]
        if not chosen:
            raise DiffBFRError("DiffBFR Restore: connect at least one model (irm64, irm256 or tem) from a DiffBFR Model Loader.")
        face_set, crops = DiffBFRFaceDetect().detect(image, detector, "all", 512, False)
        restored = crops
        for handle, node in chosen:
            settings = STAGE_DEFAULTS[node.STAGE.key].updated(seed=seed).as_kwargs()
            lq = crops if node.STAGE.conditional else None  # TEM locks to its own input, as in the workflows
            restored = stages.run_stage(node.STAGE, handle, restored, lq=lq, **settings)
        return DiffBFRPasteBack().paste(image, face_set, restored, color_correction, 1.0)
