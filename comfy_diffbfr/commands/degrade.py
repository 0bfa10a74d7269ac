"""`python -m comfy_diffbfr degrade INPUT... -o OUTDIR`: make low-quality test inputs with the
training degradation (blur, downsampling, Gaussian/Poisson noise, JPEG), every draw seeded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "degrade images with the seeded blind-face-restoration degradation (blur, downsample, noise, JPEG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (<stem>.png each)")
    parser.add_argument("--preset", default="training", help="'training' (the trainer's ranges), 'moderate' or 'severe' (eval's)")
    parser.add_argument("--set", default="{}", metavar="JSON",
                        help="overrides of the preset's ranges, e.g. '{\"scale\": [8, 8], \"jpeg_quality\": [30, 30]}'")
    parser.add_argument("--seed", type=int, default=0, help="image i (in sorted order) is degraded with seed + i")
    parser.add_argument("--small", action="store_true", help="keep the downsampled size instead of resizing back")
    parser.add_argument("--params", action="store_true", help="also write <stem>.json with the drawn parameters")


def run(args: argparse.Namespace) -> int:
    from ..errors import DiffBFRError
    from ..faces import list_images, load_image, save_image
    from ..training.degradation import DegradationConfig, degrade
    from ..training.evaluate import EVAL_DEGRADATIONS

    presets = {"training": DegradationConfig(), **EVAL_DEGRADATIONS}
    if args.preset not in presets:
        raise DiffBFRError(f"--preset must be one of {list(presets)}, got {args.preset!r}")
    try:
        overrides = json.loads(args.set)
        config = DegradationConfig.from_dict({**presets[args.preset].to_dict(), **overrides})
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise DiffBFRError(f"--set must be a JSON object of degradation settings: {exc}") from exc
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = list_images([Path(p) for p in args.inputs])
    for i, path in enumerate(paths):
        image = load_image(path)[..., :3]
        lq, params = degrade(image[0].movedim(-1, 0), config, args.seed + i, keep_size=not args.small)
        save_image(lq.movedim(0, -1)[None], out / f"{path.stem}.png")
        if args.params:
            (out / f"{path.stem}.json").write_text(json.dumps({"seed": args.seed + i, **params}, indent=1))
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0
