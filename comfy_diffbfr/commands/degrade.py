"""`python -m comfy_diffbfr degrade INPUT... -o OUTDIR`: make low-quality test inputs with the
training degradation (blur, downsampling, Gaussian/Poisson noise, JPEG), every draw seeded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .argtypes import add_overwrite_argument, output_folder

HELP = "degrade images with the seeded blind-face-restoration degradation (blur, downsample, noise, JPEG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", type=output_folder, required=True, help="output folder (<stem>.png each)")
    parser.add_argument("--preset", default="training", help="'training' (the trainer's ranges), 'moderate' or 'severe' (eval's)")
    parser.add_argument("--set", default="{}", metavar="JSON",
                        help="overrides of the preset's ranges, e.g. '{\"scale\": [8, 8], \"jpeg_quality\": [30, 30]}'")
    parser.add_argument("--seed", type=int, default=0, help="image i (in sorted order) is degraded with seed + i")
    parser.add_argument("--small", action="store_true", help="keep the downsampled size instead of resizing back")
    parser.add_argument("--params", action="store_true", help="also write <stem>.json with the drawn parameters")
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..batch import PhotoBatch
    from ..errors import DiffBFRError
    from ..faces import load_image
    from ..faces.image_io import image_writer
    from ..files import OutputNames
    from ..training.degradation import DegradationConfig, degrade
    from ..training.evaluate import EVAL_DEGRADATIONS

    presets = {"training": DegradationConfig(), **EVAL_DEGRADATIONS}
    if args.preset not in presets:
        raise DiffBFRError(f"--preset must be one of {list(presets)}, got {args.preset!r}")
    try:
        overrides = json.loads(args.set)
        config = DegradationConfig.from_dict({**presets[args.preset].to_dict(), **overrides})
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise DiffBFRError(f"--set must be a JSON object of degradation settings: {exc}") from exc
    batch = PhotoBatch(args.inputs)
    names = OutputNames(args.output, batch.paths, overwrite=args.overwrite)
    seeds = iter(range(args.seed, args.seed + len(batch.paths)))  # image i (in sorted order): seed + i

    def process(path: Path) -> None:
        seed = next(seeds)
        image = load_image(path)[..., :3]
        lq, params = degrade(image[0].movedim(-1, 0), config, seed, keep_size=not args.small)
        target = names.write(path.stem, ".png", image_writer(lq.movedim(0, -1)[None], ".png"),
                             companions=(".json",) if args.params else ())
        if args.params:
            text = json.dumps({"seed": seed, **params}, indent=1)
            names.companion(target, ".json", lambda fh: fh.write(text.encode("utf-8")))
        print(f"{path} -> {target}")

    return batch.run(process)
