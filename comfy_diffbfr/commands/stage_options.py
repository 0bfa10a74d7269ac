"""The diffusion-stage options that `restore` and `eval` share, and the settings they make.

Every per-stage option takes one value for all stages or a comma list of one per stage in pipeline
order (``--steps 10,4,2``). Whatever is not given comes from ``STAGE_DEFAULTS``
(``comfy_diffbfr/defaults.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .. import params
from ..defaults import STAGE_DEFAULTS, StageSettings
from ..errors import DiffBFRError
from ..vocabulary import PRECISIONS, STAGE_NAMES, StageName
from .argtypes import number, number_list

FIDELITY_HELP = (
    "how much of the input face each stage must keep, so the person stays the same: at every step "
    "the result's coarse content (a copy this many pixels wide, at the stage's working size: 64 for "
    "IRM 64, 256 for IRM 256 and TEM) is taken from the low-quality face. 0 = off (the model alone "
    "decides); larger = closer to the input, less change. One value, or a comma list of one per "
    "stage (default: {})"
)


def _defaults(field: str) -> str:
    return ",".join(str(getattr(STAGE_DEFAULTS[s], field)) for s in STAGE_NAMES)


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="STAGE=PATH",
                        help="use this model file (or name in the diffbfr model folders) for a stage instead of "
                             "its starter weights (repeatable)")
    parser.add_argument("--strength", type=number_list(params.STRENGTH), metavar="S[,S...]",
                        help=f"truncation point t0 as a fraction of T, {params.STRENGTH} (how much noise the stage adds "
                             f"before it denoises); one value, or a comma list of one per stage (default: {_defaults('strength')})")
    parser.add_argument("--steps", type=number_list(params.STEPS), metavar="N[,N...]",
                        help=f"reverse steps, {params.STEPS}; one value, or a comma list of one per stage "
                             f"(default: {_defaults('steps')})")
    parser.add_argument("--fidelity", type=number_list(params.FIDELITY), metavar="PX[,PX...]",
                        help=FIDELITY_HELP.format(_defaults("fidelity")))
    parser.add_argument("--seed", type=number(params.SEED), default=None,
                        help=f"sampling seed {params.SEED}; face i of the run uses seed + i (default 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="compute precision of the stage networks. auto: the device's best; on a CPU, bf16 with "
                             "channels_last where the CPU has bf16 units (AMX, AVX512-BF16) and a one-time check "
                             "(cached) finds it faster for that network, else fp32")


def _per_stage(values: list | None, flag: str, names: Sequence[StageName]) -> dict[str, Any]:
    """One value for all stages, or one per stage in order (checked by argparse already)."""
    if not values:
        return {}
    if len(values) == 1:
        return {s: values[0] for s in names}
    if len(values) != len(names):
        raise DiffBFRError(f"{flag}: give one value for all stages or one per stage ({len(names)}: "
                           f"{', '.join(names)}), got {len(values)}")
    return dict(zip(names, values))


def stage_settings(args: argparse.Namespace, names: Sequence[StageName]) -> dict[str, StageSettings]:
    """``STAGE_DEFAULTS`` of each stage with the command line's values."""
    given = {
        "strength": _per_stage(args.strength, "--strength", names),
        "steps": _per_stage(args.steps, "--steps", names),
        "fidelity": _per_stage(args.fidelity, "--fidelity", names),
    }
    return {s: STAGE_DEFAULTS[s].updated(seed=args.seed, **{k: v.get(s) for k, v in given.items()}) for s in names}


def stage_models(args: argparse.Namespace) -> dict[str, str]:
    """``--model STAGE=PATH`` as ``{stage: path}``."""
    models = {}
    for item in args.model:
        stage, _, path = item.partition("=")
        if stage not in STAGE_NAMES or not path:
            raise DiffBFRError(f"--model takes STAGE=PATH with STAGE one of {list(STAGE_NAMES)}, got {item!r}")
        models[stage] = path
    return models


def describe(stages: Sequence[Any]) -> list[dict[str, Any]]:
    """The stages as run: name, model file, precision and every setting (for --json and messages)."""
    return [{"stage": s.name, "model": s.model.name, "precision": s.model.precision, **s.settings.as_kwargs()}
            for s in stages]


def summary(stages: Sequence[Any]) -> str:
    """One line: each stage with its model and main settings."""
    return "; ".join(f"{s['stage']} ({s['model']}: strength {s['strength']}, {s['steps']} steps, fidelity {s['fidelity']})"
                     for s in describe(stages)) or "no stage"
