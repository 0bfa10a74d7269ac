"""`python -m comfy_diffbfr faces INPUT...`: detect faces, print them (or JSON), write aligned crops."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import params
from ..batch import PhotoBatch
from ..faces import DETECTORS, Selection, detect_faces, load_image
from ..faces.image_io import image_writer
from ..faces.selection import MODES, parse_indices
from ..files import OutputNames
from .argtypes import add_overwrite_argument, number, output_folder

HELP = "detect faces in photos or folders; --json prints them, --out writes aligned crops"


def add_face_arguments(parser: argparse.ArgumentParser) -> None:
    """Detector and face-selection options, shared with the `restore` command."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="auto = RetinaFace-ResNet50 when its weights are in the facedetection folder, else dlib")
    parser.add_argument("--select", choices=MODES, default=None,
                        help="which faces: all (default), largest, center (closest to the centre), index (see --index)")
    parser.add_argument("--index", default="", metavar="I,J,...",
                        help="face numbers to keep, 0 = leftmost face (implies --select index)")
    parser.add_argument("--min-size", type=number(params.MIN_FACE_SIZE), default=0.0, metavar="PX",
                        help=f"ignore faces whose box is smaller, {params.MIN_FACE_SIZE}")
    parser.add_argument("--score-threshold", type=number(params.SCORE_THRESHOLD), default=None, metavar="S",
                        help=f"detector score threshold {params.SCORE_THRESHOLD} (RetinaFace: probability, default 0.9; "
                             "dlib: margin, default 0)")
    parser.add_argument("--max-faces", type=number(params.MAX_FACES), default=None, metavar="N",
                        help=f"keep at most N faces per photo (the largest), {params.MAX_FACES}; default all, up to "
                             f"{params.MAX_FACES.high}")
    parser.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops: skip detection")


def selection_from_args(args: argparse.Namespace) -> Selection:
    indices = parse_indices(args.index, "--index")
    mode = args.select or ("index" if indices else "all")
    return Selection(mode=mode, indices=indices, min_size=args.min_size,
                     score_threshold=args.score_threshold, max_count=args.max_faces)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_face_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {image, faces: [{box, landmarks, score}]}")
    parser.add_argument("--out", type=output_folder, default=None, metavar="DIR", help="write aligned crops as DIR/<stem>_<n>.png")
    parser.add_argument("--size", type=number(params.CROP_SIZE), default=512, metavar="N",
                        help=f"crop size for --out, {params.CROP_SIZE} (default 512)")
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    selection = selection_from_args(args)
    report, batch = [], PhotoBatch(args.inputs)
    names = OutputNames(args.out, batch.paths, overwrite=args.overwrite) if args.out is not None else None

    def process(path: Path) -> None:
        face_set = detect_faces(load_image(path), detector=args.detector, selection=selection, crop_size=args.size,
                                aligned=args.aligned)
        if names is not None:
            for n, crop in enumerate(face_set.crops):
                names.write(f"{path.stem}_{n}", ".png", image_writer(crop, ".png"))
        report.append({"image": str(path), "faces": [f.to_json() for f in face_set.faces]})
        if not args.json:
            boxes = "  ".join("[" + ",".join(f"{v:.0f}" for v in f.box) + "]" for f in face_set.faces)
            print(f"{path}: {len(face_set)} face(s) ({face_set.detector}) {boxes}".rstrip())

    status = batch.run(process)
    if args.json:
        print(json.dumps(report))
    return status
