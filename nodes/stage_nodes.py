"""DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM: one diffusion stage each, over ``comfy_diffbfr.stages``."""

from __future__ import annotations

from typing import Any

from .common import CATEGORY, FACES, MODEL, sampling_widgets
from .preflight import check_stage_nodes

import torch

from comfy_diffbfr import stages
from comfy_diffbfr.faces.face_set import FaceSet
from comfy_diffbfr.faces.tracking import track_offsets
from comfy_diffbfr.host.model_cache import ModelHandle


def _offsets(faces: FaceSet | None) -> list[int] | None:
    return None if faces is None else track_offsets(faces)


class _StageNode:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    STAGE: stages.StageSpec
    DEFAULTS: tuple[float, int]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"model": (MODEL,), "image": ("IMAGE",), **sampling_widgets(*cls.DEFAULTS)},
            "optional": {"faces": (FACES, {"tooltip": "The face set of these crops (from DiffBFR Face Detect); "
                                                      "seed_mode per_track reads each face's track from it."})},
            "hidden": {"prompt": "PROMPT"},  # the whole graph, for the check before any stage samples
        }

    def run(self, model: ModelHandle, image: torch.Tensor, faces: FaceSet | None = None, prompt: dict | None = None,
            **settings: Any) -> tuple[torch.Tensor]:
        check_stage_nodes(prompt or {}, STAGE_OF)
        return (stages.run_stage(self.STAGE, model, image, seed_offsets=_offsets(faces), **settings),)


class DiffBFRIRM64(_StageNode):
    DESCRIPTION = "Identity Restoration, stage 1: restores low-quality face crops at 64x64 with a conditional model."
    RETURN_NAMES = ("faces_64",)
    SEARCH_ALIASES = ["identity", "identity restoration", "face restoration", "restore face", "blind face", "diffusion"]
    STAGE = stages.IRM64
    DEFAULTS = (0.6, 20)


class DiffBFRIRM256(_StageNode):
    DESCRIPTION = (
        "Identity Restoration, stage 2: takes the 64x64 faces to 256x256. Connect the low-quality crops "
        "to 'lq' when the model is conditioned on them."
    )
    RETURN_NAMES = ("faces_256",)
    SEARCH_ALIASES = ["identity", "identity restoration", "face restoration", "restore face", "blind face", "upscale face"]
    STAGE = stages.IRM256
    DEFAULTS = (0.5, 20)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        schema = super().INPUT_TYPES()
        schema["optional"] = {"lq": ("IMAGE", {"tooltip": "The low-quality face crops (from DiffBFR Face Detect)."}),
                              **schema["optional"]}
        return schema

    def run(self, model: ModelHandle, image: torch.Tensor, lq: torch.Tensor | None = None, faces: FaceSet | None = None,
            prompt: dict | None = None, **settings: Any) -> tuple[torch.Tensor]:
        check_stage_nodes(prompt or {}, STAGE_OF)
        return (stages.run_stage(self.STAGE, model, image, lq=lq, seed_offsets=_offsets(faces), **settings),)


class DiffBFRTEM(_StageNode):
    DESCRIPTION = "Texture Enhancement: polishes faces (or any image) with an unconditional face prior from a small t0."
    RETURN_NAMES = ("image",)
    SEARCH_ALIASES = ["texture", "texture enhancement", "face detail", "face restoration", "restore face", "blind face"]
    STAGE = stages.TEM
    DEFAULTS = (0.1, 10)


STAGE_OF = {node.__name__: node.STAGE for node in (DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM)}  # node id -> stage
