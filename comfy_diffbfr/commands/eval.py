"""`python -m comfy_diffbfr eval --hq DIR`: degrade aligned HQ faces, restore them, print the metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import params
from .argtypes import number

HELP = "degrade aligned HQ faces with a seeded degradation, restore them and print PSNR, SSIM, identity and texture"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hq", required=True, help="folder of aligned high-quality faces (FFHQ alignment)")
    parser.add_argument("--stages", default="irm64,irm256,tem", help="stages to run, in pipeline order (default all three)")
    parser.add_argument("--model", action="append", default=[], metavar="STAGE=PATH",
                        help="use this model file for a stage instead of the default workflow's (repeatable)")
    parser.add_argument("--strength", type=number(params.STRENGTH), nargs="+",
                        help=f"{params.STRENGTH}, one for all stages or one per stage (default: the workflow's)")
    parser.add_argument("--steps", type=number(params.STEPS), nargs="+",
                        help=f"{params.STEPS}, one for all stages or one per stage (default: the workflow's)")
    parser.add_argument("--seed", type=number(params.SEED), default=0, help="sampling seed")
    parser.add_argument("--degradation", default="moderate",
                        help="'moderate', 'severe' or a JSON object of DegradationConfig fields")
    parser.add_argument("--degradation-seed", type=int, default=1234, help="face i is degraded with this seed + i")
    parser.add_argument("--limit", type=int, help="evaluate only the first N faces (sorted by name)")
    parser.add_argument("--batch", type=int, default=8, help="faces restored together")
    parser.add_argument("--save", help="write input | output | HQ strips here")
    parser.add_argument("--json", help="write the averages and per-face numbers here")
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


def build_restorer(args: argparse.Namespace):
    """The stages of the default workflow (its models and settings unless overridden)."""
    from .. import stages as stage_fns
    from ..errors import DiffBFRError
    from ..host import folders
    from ..models import load_model
    from ..workflow.restore_workflow import (
        STAGE_NODES,
        parse_stages,
        per_stage,
        restore_prompt,
    )

    names = parse_stages(args.stages)
    overrides = {}
    for item in args.model:
        stage, _, path = item.partition("=")
        if stage not in STAGE_NODES or not path:
            raise DiffBFRError(f"--model takes STAGE=PATH with STAGE one of {list(STAGE_NODES)}, got {item!r}")
        overrides[stage] = Path(path)
    prompt, _, _ = restore_prompt(names) if not overrides.keys() >= set(names) else (None, None, None)
    strength = per_stage(args.strength, names, "strength") if args.strength else {}
    steps = per_stage(args.steps, names, "steps") if args.steps else {}
    plan = []
    for stage in names:
        settings = {"strength": 0.5, "steps": 20, "sampler": "ddim", "eta": 0.0, "seed_mode": "per_face"}
        path = overrides.get(stage)
        if prompt is not None:
            node = next(v for v in prompt.values() if v["class_type"] == STAGE_NODES[stage])
            settings.update({k: node["inputs"][k] for k in settings if k in node["inputs"]})
            if path is None:
                path = folders.resolve_model("diffbfr", prompt[node["inputs"]["model"][0]]["inputs"]["model_name"])
        settings["strength"] = strength.get(stage, settings["strength"])
        settings["steps"] = steps.get(stage, settings["steps"])
        settings["seed"] = args.seed
        plan.append((stage, load_model(path), settings))
    run = {"irm64": stage_fns.run_irm64, "irm256": stage_fns.run_irm256, "tem": stage_fns.run_tem}

    def restore(lq):
        x = lq
        for stage, model, settings in plan:
            x = run[stage](model, x, lq=lq, **settings) if stage == "irm256" else run[stage](model, x, **settings)
        return x

    described = ", ".join(f"{s} ({Path(m.path).name}: strength {c['strength']}, {c['steps']} steps)" for s, m, c in plan)
    return restore, described


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.data import load_face_folder
    from ..training.evaluate import IdentityModel, evaluate, format_table

    from ..faces.image_io import list_images
    from ..files import OutputNames

    faces = load_face_folder(args.hq, 256)
    inputs = list_images([args.hq])
    if args.limit:
        faces = faces[: args.limit]
    hq = faces.float().div(255).movedim(1, -1)
    restore, described = build_restorer(args)
    identity = None if args.no_identity else IdentityModel()
    on_batch = None
    if args.save:
        from ..faces.image_io import image_writer

        strips = OutputNames(args.save, inputs, overwrite=True)  # a rerun replaces its strips, never an input

        def on_batch(start: int, lq: torch.Tensor, out: torch.Tensor) -> None:
            for i in range(lq.shape[0]):
                strip = torch.cat([lq[i], out[i], hq[start + i]], dim=1)
                strips.write(f"face_{start + i:04d}", ".png", image_writer(strip, ".png"))

    print(f"restoring with {described}; degradation {args.degradation!r}, seed {args.degradation_seed}")
    result = evaluate(
        hq, restore, degradation=_degradation(args.degradation), seed=args.degradation_seed,
        identity=identity, batch=args.batch, on_batch=on_batch,
    )
    print(format_table(result))
    if args.json:
        report = {"stages": described, "degradation": args.degradation, "input": result.input, "output": result.output,
                  "goals": result.goals(), "per_face": result.per_face}
        text = json.dumps(report, indent=1)
        target = Path(args.json)
        OutputNames(target.parent, inputs, overwrite=True).write(target.stem, target.suffix,
                                                                 lambda fh: fh.write(text.encode("utf-8")))
    return 0
