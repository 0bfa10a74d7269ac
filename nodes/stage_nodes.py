"""DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM: one diffusion stage each, over ``comfy_diffbfr.stages``."""

from __future__ import annotations

from typing import Any

import torch

from comfy_diffbfr import stages
from comfy_diffbfr.defaults import STAGE_DEFAULTS
from comfy_diffbfr.faces.face_set import FaceSet
from comfy_diffbfr.faces.tracking import track_offsets
from comfy_diffbfr.host.model_cache import ModelHandle

from .common import CATEGORY, FACES, MODEL, fidelity_widget, sampling_widgets
from .preflight import check_stage_nodes


def _offsets(faces: FaceSet | None) -> list[int] | None:
    return None if faces is None else track_offsets(faces)


class _StageNode:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    STAGE: stages.StageSpec

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        defaults = STAGE_DEFAULTS[cls.STAGE.key]
        return {
            "required": {"model": (MODEL,), "image": ("IMAGE",), **sampling_widgets(defaults)},
            "optional": {"faces": (FACES, {"tooltip": "The face set of these crops (from DiffBFR Face Detect); "
                                                      "seed_mode per_track reads each face's track from it."}),
                         **fidelity_widget(defaults)},
            "hidden": {"prompt": "PROMPT"},  # the whole graph, for the check before any stage samples
        }

    def _run(self, model: ModelHandle, image: torch.Tensor, faces: FaceSet | None, prompt: dict | None,
             **settings: Any) -> tuple[torch.Tensor]:
        check_stage_nodes(prompt or {}, STAGE_OF)
        table = STAGE_DEFAULTS[self.STAGE.key]
        for name in ("fidelity", "fidelity_weight", "fidelity_stop"):  # not widgets, or saved before they were
            settings.setdefault(name, getattr(table, name))
        return (stages.run_stage(self.STAGE, model, image, seed_offsets=_offsets(faces), **settings),)

    def run(self, model: ModelHandle, image: torch.Tensor, faces: FaceSet | None = None, prompt: dict | None = None,
            **settings: Any) -> tuple[torch.Tensor]:
        return self._run(model, image, faces, prompt, **settings)


class DiffBFRIRM64(_StageNode):
    DESCRIPTION = "Identity Restoration, stage 1: restores low-quality face crops at 64x64 with a conditional model."
    RETURN_NAMES = ("faces_64",)
    SEARCH_ALIASES = ["identity", "identity restoration", "face restoration", "restore face", "blind face", "diffusion"]
    STAGE = stages.IRM64


class DiffBFRIRM256(_StageNode):
    DESCRIPTION = (
        "Identity Restoration, stage 2: takes the 64x64 faces to 256x256. Connect the low-quality crops "
        "to 'lq' when the model is conditioned on them."
    )
    RETURN_NAMES = ("faces_256",)
    SEARCH_ALIASES = ["identity", "identity restoration", "face restoration", "restore face", "blind face", "upscale face"]
    STAGE = stages.IRM256

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        schema = super().INPUT_TYPES()
        schema["optional"] = {"lq": ("IMAGE", {"tooltip": "The low-quality face crops (from DiffBFR Face Detect)."}),
                              **schema["optional"]}
        return schema

    def run(self, model: ModelHandle, image: torch.Tensor, lq: torch.Tensor | None = None, faces: FaceSet | None = None,
            prompt: dict | None = None, **settings: Any) -> tuple[torch.Tensor]:
        return self._run(model, image, faces, prompt, lq=lq, **settings)


class DiffBFRTEM(_StageNode):
    DESCRIPTION = (
        "Texture Enhancement: polishes faces (or any image) with an unconditional face prior from a small t0. "
        "With a strong public prior (e.g. DifFace FFHQ-512) at a high strength and a fidelity lock on the "
        "low-quality crops, it restores blind faces on its own."
    )
    RETURN_NAMES = ("image",)
    SEARCH_ALIASES = ["texture", "texture enhancement", "face detail", "face restoration", "restore face", "blind face"]
    STAGE = stages.TEM

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        schema = super().INPUT_TYPES()
        schema["optional"] = {"reference": ("IMAGE", {
            "tooltip": "What the fidelity lock keeps (e.g. the low-quality crops from DiffBFR Face Detect); "
                       "default: this node's own input."}), **schema["optional"]}
        return schema

    def run(self, model: ModelHandle, image: torch.Tensor, reference: torch.Tensor | None = None,
            faces: FaceSet | None = None, prompt: dict | None = None, **settings: Any) -> tuple[torch.Tensor]:
        return self._run(model, image, faces, prompt, reference=reference, **settings)


STAGE_OF = {node.__name__: node.STAGE for node in (DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM)}  # node id -> stage
