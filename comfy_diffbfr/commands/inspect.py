"""`python -m comfy_diffbfr inspect PATH`: what a model file is and which stage it can serve."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.checkpoint_io import Checkpoint, read_checkpoint, unwrap
from ..models.loader import ModelInfo, describe

HELP = "describe a model file: format, config, parameters, public checkpoint, stage, schedule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="model file (.safetensors/.pth/.pt/.ckpt/.bin) or diffusers folder")
    parser.add_argument("--hint", action="append", default=[], metavar="KEY=VALUE",
                        help="what the weights cannot reveal, e.g. num_heads=4 or norm_groups=16 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    report = inspect_checkpoint(read_checkpoint(args.path), parse_hints(args.hint))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def parse_hints(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings; values are read as JSON when they parse (numbers, true, [16, 8]), else kept as text."""
    hints: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CheckpointError(f"hint {item!r} is not KEY=VALUE")
        try:
            hints[key.strip()] = json.loads(value)
        except ValueError:
            hints[key.strip()] = value
        except RecursionError:
            raise CheckpointError(f"hint {key}: the value is nested too deeply") from None
    return hints


def inspect_state_dict(state_dict: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None,
                       name: str = "<state dict>") -> dict[str, Any]:
    """The report for an in-memory state dict (meta tensors are fine: nothing is built)."""
    ckpt = Checkpoint(path=Path(name), state_dict={})
    ckpt.state_dict, ckpt.buffers = unwrap(dict(state_dict), ckpt.path, ckpt.wrapping)
    return inspect_checkpoint(ckpt, hints)


def inspect_checkpoint(ckpt: Checkpoint, hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return report_of(describe(ckpt, hints))


def report_of(info: ModelInfo) -> dict[str, Any]:
    schedule = info.schedule
    return {
        "path": str(info.path),
        "format": info.format,
        "arch": info.arch,
        "public_checkpoint": info.public_name,
        "role": info.role,
        "conditions": info.conditions,
        "in_channels": info.in_channels,
        "cond_channels": info.cond_channels,
        "out_channels": info.out_channels,
        "resolution": info.resolution,
        "num_params": info.num_params,
        "wrapping": info.wrapping,
        "diffusion": info.diffusion,
        "schedule": {
            "name": schedule.name,
            "args": schedule.args,
            "num_timesteps": schedule.num_timesteps,
            "beta_first": float(schedule.betas[0]),
            "beta_last": float(schedule.betas[-1]),
            "abar_last": float(schedule.alphas_cumprod[-1]),
        },
        "config": info.config,
    }


def format_report(report: Mapping[str, Any]) -> str:
    stage = report["role"] or "none recognised (pass --hint role=irm64|irm256|tem)"
    conditions = ", ".join(report["conditions"]) or "none (unconditional)"
    sched = report["schedule"]
    diff = report["diffusion"]
    lines = [
        f"file:              {report['path']}",
        f"format:            {report['format']} (network: {report['arch']})",
        f"public checkpoint: {report['public_checkpoint'] or 'not recognised'}",
        f"serves stage:      {stage}",
        f"conditions:        {conditions}",
        f"channels:          in {report['in_channels']} (condition {report['cond_channels']}), out {report['out_channels']}",
        f"resolution:        {report['resolution'] or 'unknown (fully convolutional)'}",
        f"parameters:        {report['num_params']:,}",
        f"unwrapped:         {'; '.join(report['wrapping']) or 'raw state dict'}",
        f"schedule:          {sched['name']}{' ' + json.dumps(sched['args']) if sched['args'] else ''} T={sched['num_timesteps']}, "
        f"beta {sched['beta_first']:.3g}..{sched['beta_last']:.3g}, abar(T)={sched['abar_last']:.3g}",
        f"diffusion:         prediction {diff['prediction']}, learned sigma {diff['learned_sigma']}, "
        f"rescale timesteps {diff['rescale_timesteps']}, noise conditioning {diff['noise_conditioning']}",
        "config:",
    ]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in report["config"].items()]
    return "\n".join(lines)
