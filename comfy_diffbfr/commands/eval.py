"""`python -m comfy_diffbfr eval --hq DIR`: degrade aligned HQ faces, restore them, print the metrics.

The faces are restored by ``pipeline.restore_crops`` (the stages of ``restore``, at the same
defaults); face i of the run uses seed + i, whatever ``--batch`` is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .stage_options import add_stage_arguments, describe, stage_models, stage_settings, summary

HELP = "degrade aligned HQ faces with a seeded degradation, restore them and print PSNR, SSIM, identity and texture"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hq", required=True, help="folder of aligned high-quality faces (FFHQ alignment)")
    parser.add_argument("--stages", default="irm64,irm256,tem", help="stages to run, comma list (default all three)")
    add_stage_arguments(parser)
    parser.add_argument("--degradation", default="moderate",
                        help="'moderate', 'severe' or a JSON object of DegradationConfig fields")
    parser.add_argument("--degradation-seed", type=int, default=1234, help="face i is degraded with this seed + i")
    parser.add_argument("--limit", type=int, help="evaluate only the first N faces (sorted by name)")
    parser.add_argument("--batch", type=int, default=8, help="faces per restore call (the results do not depend on it)")
    parser.add_argument("--save", help="write input | output | HQ strips here")
    parser.add_argument("--sheet", type=Path, metavar="PATH",
                        help="write one contact sheet PNG: a row per face, LQ | output | HQ, labelled with its numbers")
    parser.add_argument("--json", help="write the settings, the averages and the per-face numbers here")
    parser.add_argument("--no-identity", action="store_true", help="skip the identity metric (no dlib needed)")


def _degradation(text: str):
    from ..errors import DiffBFRError
    from ..training.degradation import DegradationConfig
    from ..training.evaluate import EVAL_DEGRADATIONS

    if text in EVAL_DEGRADATIONS:
        return EVAL_DEGRADATIONS[text]
    try:
        return DegradationConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise DiffBFRError(
            f"--degradation must be one of {list(EVAL_DEGRADATIONS)} or a JSON object of degradation settings: {exc}"
        ) from exc


def _label(i: int, face: dict) -> str:
    parts = [f"face {i}"]
    for key, unit in (("psnr", " dB"), ("identity", ""), ("texture", "")):
        if f"input_{key}" in face:
            parts.append(f"{key} {face[f'input_{key}']:.2f} -> {face[f'output_{key}']:.2f}{unit}")
    return "  |  ".join(parts) + "   (LQ | output | HQ)"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..faces import save_image
    from ..pipeline import load_stages, parse_stage_names, restore_crops
    from ..training.data import load_face_folder
    from ..training.evaluate import IdentityModel, contact_sheet, evaluate, format_table

    from ..faces.image_io import image_writer, list_images
    from ..files import OutputNames

    degradation = _degradation(args.degradation)
    names = parse_stage_names(args.stages)
    stages = load_stages(names, settings=stage_settings(args, names), models=stage_models(args), precision=args.precision)
    faces = load_face_folder(args.hq, 256)
    hq_files = list_images([args.hq])
    if args.limit:
        faces = faces[: args.limit]
    hq = faces.float().div(255).movedim(1, -1)
    identity = None if args.no_identity else IdentityModel()
    strips = OutputNames(args.save, hq_files, overwrite=True) if args.save else None  # a rerun replaces its strips, never an input
    done, inputs, outputs = 0, [], []

    def restore(lq: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = restore_crops(lq, stages, first_face=done)
        done += lq.shape[0]
        return out

    def on_batch(start: int, lq: torch.Tensor, out: torch.Tensor) -> None:
        inputs.append(lq)
        outputs.append(out)
        if strips is not None:
            for i in range(lq.shape[0]):
                strip = torch.cat([lq[i], out[i], hq[start + i]], dim=1)
                strips.write(f"face_{start + i:04d}", ".png", image_writer(strip, ".png"))

    print(f"restoring with {summary(stages)}; degradation {args.degradation!r}, seed {args.degradation_seed}")
    result = evaluate(hq, restore, degradation=degradation, seed=args.degradation_seed, identity=identity,
                      batch=args.batch, on_batch=on_batch)
    print(format_table(result))
    if args.sheet:
        labels = [_label(i, face) for i, face in enumerate(result.per_face)]
        target = save_image(contact_sheet(torch.cat(inputs), torch.cat(outputs), hq, labels), args.sheet)
        print(f"contact sheet: {target}")
    if args.json:
        text = json.dumps(_report(args, stages, result), indent=1)
        target = Path(args.json)
        OutputNames(target.parent, hq_files, overwrite=True).write(target.stem, target.suffix,
                                                                   lambda fh: fh.write(text.encode("utf-8")))
    return 0


def _report(args: argparse.Namespace, stages: list, result) -> dict:
    """What --json writes: the settings used, the averages (input, unsharp baseline, output) and every face."""
    settings = {"stages": describe(stages), "degradation": args.degradation, "degradation_seed": args.degradation_seed,
                "faces": result.count, "hq": str(args.hq)}
    return {"settings": settings, "input": result.input, "unsharp": result.unsharp, "output": result.output,
            "goals": result.goals(), "per_face": result.per_face}
