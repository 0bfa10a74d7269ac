"""`python -m comfy_diffbfr restore INPUT... -o OUTDIR [--stages none]`: restore every face of every photo.

A *stage list* turns aligned crops into restored crops. It is registered in ``STAGE_LISTS`` with
the crop size it wants; ``restore_images`` does the rest (detect, align, run the stages, paste
back), so new stage lists plug into the same library function and command. ``none`` pastes the
crops back unchanged: a round trip that shows what detection, alignment and paste-back alone do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import params
from ..batch import PhotoBatch
from ..errors import DiffBFRError
from ..faces import Selection, detect_faces, list_images, load_image, paste_back
from ..faces.color import METHODS
from ..faces.face_set import ImageBatch
from ..faces.image_io import image_writer
from ..files import OutputNames
from .argtypes import add_overwrite_argument, number, number_list, output_folder
from .faces import add_face_arguments, selection_from_args

HELP = "restore every face in photos or folders and write OUTDIR/<stem>.png"

# aligned crops IMAGE [N, S, S, 3] -> restored crops IMAGE [N, s, s, 3] (any s)
CropRestorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StageList:
    """``build(**options)`` returns the crop restorer; ``crop_size`` is the size of the crops it gets."""

    crop_size: int
    build: Callable[..., CropRestorer]
    help: str = ""


def _unchanged(**_options) -> CropRestorer:
    return lambda crops: crops


# The crops of `none` are 1024 so that the round trip keeps the detail of large faces.
STAGE_LISTS: dict[str, StageList] = {
    "none": StageList(1024, _unchanged, "no restoration: detect, align and paste the crops back unchanged"),
}


@dataclass
class RestoredImage:
    image: torch.Tensor  # [1, H, W, C]
    mask: torch.Tensor  # [1, H, W] paste weight; 0 = untouched pixel
    faces: int
    note: str = ""  # why nothing was restored, if so


def stage_list(name: str) -> StageList:
    if name not in STAGE_LISTS:
        raise DiffBFRError(f"unknown stage list {name!r}; available: {', '.join(STAGE_LISTS)}")
    return STAGE_LISTS[name]


def restore_images(
    images: ImageBatch,
    *,
    stages: str = "none",
    detector: str = "auto",
    selection: Selection = Selection(),
    aligned: bool = False,
    color_correction: str = "none",
    strength: float = 1.0,
    restorer: CropRestorer | None = None,
    **stage_options: Any,
) -> list[RestoredImage]:
    """Restore the faces of each photo with the stage list ``stages`` (or an explicit ``restorer``
    with that list's crop size). Photos without a face come back unchanged, with a note."""
    spec = stage_list(stages)
    restorer = restorer or spec.build(**stage_options)
    face_set = detect_faces(images, detector=detector, selection=selection, crop_size=spec.crop_size, aligned=aligned)
    restored = restorer(face_set.crops) if len(face_set) else face_set.crops
    pasted, masks = paste_back(list(_as_list(images)), face_set, restored, color_correction=color_correction, strength=strength)
    return [
        RestoredImage(image, mask, len(face_set.indices_of(i)), face_set.notes.get(i, ""))
        for i, (image, mask) in enumerate(zip(pasted, masks))
    ]


def _as_list(images: ImageBatch):
    if isinstance(images, torch.Tensor):
        return [images[None]] if images.ndim == 3 else [im[None] for im in images]
    return images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_face_arguments(parser)
    parser.add_argument("-o", "--output", type=output_folder, required=True, metavar="OUTDIR", help="folder for OUTDIR/<stem>.png")
    add_overwrite_argument(parser)
    parser.add_argument("--stages", default="irm64,irm256,tem",
                        help="diffusion stages as a comma list of irm64,irm256,tem (default: all three, run through "
                             f"workflows/diffbfr_full.json with the starter weights), or a stage list: {', '.join(STAGE_LISTS)}")
    parser.add_argument("--color-correction", choices=METHODS, default=None,
                        help="pull restored faces towards the original colours (default: the workflow's wavelet "
                             "for the diffusion stages, none for --stages none)")
    parser.add_argument("--color-strength", type=number(params.BLEND), default=1.0,
                        help=f"colour-correction strength, {params.BLEND}")
    parser.add_argument("--strength", type=number_list(params.STRENGTH), default=None, metavar="S[,S...]",
                        help=f"diffusion stages: truncation point t0 as a fraction of T, {params.STRENGTH}, one for all "
                             "stages or one per stage")
    parser.add_argument("--steps", type=number_list(params.STEPS), default=None, metavar="N[,N...]",
                        help=f"diffusion stages: reverse steps, {params.STEPS}, one or one per stage")
    parser.add_argument("--seed", type=number(params.SEED), default=None,
                        help=f"diffusion stages: random seed {params.SEED} (face i uses seed + i)")


def run(args: argparse.Namespace) -> int:
    selection = selection_from_args(args)
    if args.stages not in STAGE_LISTS:
        return _run_diffusion_stages(args, selection)
    restorer = stage_list(args.stages).build()
    batch = PhotoBatch(args.inputs)
    names = OutputNames(args.output, batch.paths, overwrite=args.overwrite)

    def process(path: Path) -> None:
        (result,) = restore_images(load_image(path), stages=args.stages, detector=args.detector, selection=selection,
                                   aligned=args.aligned, color_correction=args.color_correction or "none",
                                   strength=args.color_strength, restorer=restorer)
        target = names.write(path.stem, ".png", image_writer(result.image, ".png"))
        if result.faces == 0:
            print(f"note: {path}: no face found, written unchanged to {target}", file=sys.stderr)
        else:
            print(f"{path}: {result.faces} face(s) -> {target}")

    return batch.run(process)


def _run_diffusion_stages(args: argparse.Namespace, selection: Selection) -> int:
    """The diffusion stages run as the default workflow through the headless runner."""
    from ..workflow import restore_workflow as rw

    stages = rw.parse_stages(args.stages)
    strength = rw.per_stage(args.strength, stages, "--strength") if args.strength else None
    steps = rw.per_stage(args.steps, stages, "--steps") if args.steps else None
    prompt, load_id, paste_id = rw.restore_prompt(stages, strength=strength, steps=steps, seed=args.seed,
                                                  aligned=args.aligned, detector=args.detector)
    detect = next(k for k, v in prompt.items() if v["class_type"] == "DiffBFRFaceDetect")
    prompt[detect]["inputs"].update(
        selection=selection.mode, indices=",".join(map(str, selection.indices)), min_size=selection.min_size,
        score_threshold=-1.0 if selection.score_threshold is None else selection.score_threshold,
        max_faces=selection.max_count or 0)
    paste = prompt[paste_id]["inputs"]
    if args.color_correction is not None:  # else the workflow's own choice
        paste["color_correction"] = args.color_correction
    paste["strength"] = args.color_strength
    return rw.restore_paths(list_images(args.inputs), args.output, prompt, load_id, paste_id, overwrite=args.overwrite)
