"""`python -m comfy_diffbfr restore INPUT... -o OUTDIR`: restore every face of every photo.

The photos go through ``pipeline.restore_images`` in groups of up to PHOTO_GROUP_PIXELS, so the
faces of a group share the stage batches while memory stays bounded on folders of large photos.
``--stages none`` only detects, aligns and pastes the crops back: a round trip that shows what
detection, alignment and paste-back alone do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import params
from ..batch import PER_PHOTO_ERRORS, PhotoBatch
from ..faces import load_image
from ..faces.image_io import image_writer
from ..files import OutputNames
from ..pipeline import DetectOptions, PasteOptions, identity_model, load_stages, parse_stage_names, restore_images
from ..vocabulary import COLOR_CORRECTIONS
from .argtypes import add_overwrite_argument, number, output_folder
from .faces import add_face_arguments, selection_from_args
from .stage_options import add_stage_arguments, describe, stage_models, stage_settings, summary

HELP = "restore every face in photos or folders and write OUTDIR/<stem>.png"
PHOTO_GROUP_PIXELS = 48_000_000  # photos restored together, at most (one larger photo goes alone)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_face_arguments(parser)
    parser.add_argument("-o", "--output", type=output_folder, required=True, metavar="OUTDIR", help="folder for OUTDIR/<stem>.png")
    add_overwrite_argument(parser)
    parser.add_argument("--stages", default="irm64,irm256,tem",
                        help="diffusion stages as a comma list of irm64,irm256,tem (default: all three, with the "
                             "starter weights), or 'none': detect, align and paste back only")
    add_stage_arguments(parser)
    parser.add_argument("--color-correction", choices=COLOR_CORRECTIONS, default=None,
                        help="pull restored faces towards the photo's colours (default: wavelet with stages, none "
                             "with --stages none)")
    parser.add_argument("--color-strength", type=number(params.BLEND), default=1.0,
                        help=f"how far the colour correction goes, {params.BLEND}: 0 = the restored colours, 1 = fully corrected")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {image, output, note, faces: [{box, score, detector, identity_distance}]}")
    parser.add_argument("--no-identity", action="store_true",
                        help="do not measure each face's identity distance (LQ crop vs restored crop; needs dlib)")


def photo_groups(batch: PhotoBatch) -> Iterator[list[tuple[Path, torch.Tensor]]]:
    """The readable photos in groups of at most PHOTO_GROUP_PIXELS (a larger photo alone); a photo
    that cannot be read is reported as failed and left out."""
    group: list[tuple[Path, torch.Tensor]] = []
    pixels = 0
    for path in batch.paths:
        try:
            image = load_image(path)
        except PER_PHOTO_ERRORS as exc:
            batch.fail(path, exc)
            continue
        if group and pixels + image.shape[1] * image.shape[2] > PHOTO_GROUP_PIXELS:
            yield group
            group, pixels = [], 0
        group.append((path, image))
        pixels += image.shape[1] * image.shape[2]
    if group:
        yield group


def run(args: argparse.Namespace) -> int:
    names = parse_stage_names(args.stages)
    stages = load_stages(names, settings=stage_settings(args, names), models=stage_models(args), precision=args.precision)
    detect = DetectOptions(detector=args.detector, selection=selection_from_args(args), aligned=args.aligned)
    paste = PasteOptions(color_correction=args.color_correction, color_strength=args.color_strength)
    identity = None if args.no_identity or not stages else identity_model()
    if stages and not args.json:
        print(f"stages: {summary(stages)}", file=sys.stderr)
    batch = PhotoBatch(args.inputs)
    outputs = OutputNames(args.output, batch.paths, overwrite=args.overwrite)
    report = []

    def restore(group: list[tuple[Path, torch.Tensor]]) -> None:
        results = restore_images([image for _, image in group], stages, detect=detect, paste=paste, identity=identity)
        for (path, _), result in zip(group, results):
            try:
                target = outputs.write(path.stem, ".png", image_writer(result.image, ".png"))
            except PER_PHOTO_ERRORS as exc:
                batch.fail(path, exc)
                continue
            report.append({"image": str(path), "output": str(target), "note": result.note,
                           "faces": [f.to_json() for f in result.faces]})
            if not result.faces:
                print(f"note: {path}: no face found, written unchanged to {target}", file=sys.stderr)
            elif not args.json:
                print(f"{path}: {len(result.faces)} face(s) -> {target}")
                for k, face in enumerate(result.faces):
                    print(f"  face {k}: {face.describe()}")

    for group in photo_groups(batch):
        try:
            restore(group)
        except PER_PHOTO_ERRORS as exc:  # e.g. out of memory: each photo alone, so only the culprit fails
            if len(group) == 1:
                batch.fail(group[0][0], exc)
                continue
            for one in group:
                try:
                    restore([one])
                except PER_PHOTO_ERRORS as exc_one:
                    batch.fail(one[0], exc_one)
    if args.json:
        print(json.dumps({"stages": describe(stages), "photos": report}))
    return batch.exit_status()
