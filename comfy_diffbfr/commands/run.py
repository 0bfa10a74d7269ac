"""`python -m comfy_diffbfr run WORKFLOW.json -o OUTDIR`: run a ComfyUI workflow headless."""

from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import output_folder
from ..vocabulary import PRECISIONS

HELP = "run a ComfyUI workflow (UI or API format) headless"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", type=Path, help="workflow JSON (saved from ComfyUI, or its API format)")
    parser.add_argument("-o", "--output", type=output_folder, required=True,
                        help="folder for the saved images (<prefix>_00001_.png ..., never replacing a file)")
    parser.add_argument("--input", type=Path, action="append", default=[], metavar="FILE",
                        help="image for the LoadImage nodes (repeat: one per LoadImage node, in id order)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override an input, e.g. --set 5.seed=7 (VALUE is JSON or a string)")
    parser.add_argument("--input-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="folder where LoadImage looks for its image names (the pack's assets/ always)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision of every DiffBFR Model Loader, overriding the workflow's (auto: bf16 on "
                             "GPUs that have it, and on CPUs with bf16 units where measured faster; else fp32)")


def run(args: argparse.Namespace) -> int:
    from ..workflow import load_workflow, run_workflow

    workflow = load_workflow(args.workflow)
    input_dirs = [*args.input_dir, args.workflow.resolve().parent]
    ctx = run_workflow(workflow, args.output, images=args.input, assignments=args.set, input_dirs=input_dirs,
                       precision=args.precision)
    for path in ctx.saved:
        print(path)
    return 0
