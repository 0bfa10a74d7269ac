"""`python -m comfy_diffbfr faces INPUT...`: detect faces, print them (or JSON), write aligned crops."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import ImageReadError
from ..faces import DETECTORS, Selection, detect_faces, list_images, load_image, save_image
from ..faces.selection import MODES, parse_indices

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
    parser.add_argument("--min-size", type=float, default=0.0, metavar="PX", help="ignore faces whose box is smaller")
    parser.add_argument("--score-threshold", type=float, default=None, metavar="S",
                        help="detector score threshold (RetinaFace: probability, default 0.9; dlib: margin, default 0)")
    parser.add_argument("--max-faces", type=int, default=None, metavar="N", help="keep at most N faces per photo (the largest)")
    parser.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops: skip detection")


def selection_from_args(args: argparse.Namespace) -> Selection:
    indices = parse_indices(args.index, "--index")
    mode = args.select or ("index" if indices else "all")
    return Selection(mode=mode, indices=indices, min_size=args.min_size,
                     score_threshold=args.score_threshold, max_count=args.max_faces)


class ReadableImages:
    """The images of the command's INPUTs, read one at a time (shared with `restore`); an
    unreadable one is reported on stderr, counted in ``failed`` and skipped."""

    def __init__(self, inputs: list[str]) -> None:
        self.paths = list_images(inputs)
        self.failed = 0

    def __iter__(self) -> Iterator[tuple[Path, torch.Tensor]]:
        for path in self.paths:
            try:
                image = load_image(path)
            except ImageReadError as exc:
                print(f"error: {exc}", file=sys.stderr)
                self.failed += 1
                continue
            yield path, image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_face_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {image, faces: [{box, landmarks, score}]}")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="write aligned crops as DIR/<stem>_<n>.png")
    parser.add_argument("--size", type=int, default=512, metavar="N", help="crop size for --out (default 512)")


def run(args: argparse.Namespace) -> int:
    selection = selection_from_args(args)
    report, images = [], ReadableImages(args.inputs)
    for path, image in images:
        face_set = detect_faces(image, detector=args.detector, selection=selection, crop_size=args.size, aligned=args.aligned)
        report.append({"image": str(path), "faces": [f.to_json() for f in face_set.faces]})
        if args.out is not None:
            for n, crop in enumerate(face_set.crops):
                save_image(crop, args.out / f"{path.stem}_{n}.png")
        if not args.json:
            boxes = "  ".join("[" + ",".join(f"{v:.0f}" for v in f.box) + "]" for f in face_set.faces)
            print(f"{path}: {len(face_set)} face(s) ({face_set.detector}) {boxes}".rstrip())
    if args.json:
        print(json.dumps(report))
    return 2 if images.failed else 0
