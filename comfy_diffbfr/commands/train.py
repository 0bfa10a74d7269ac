"""`python -m comfy_diffbfr train --stage irm64|irm256|tem --data DIR --out DIR`."""

from __future__ import annotations

import argparse
import json

HELP = "train an IRM 64, IRM 256 or TEM stage on a folder of aligned faces (torchrun for several processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..host.device import PRECISIONS
    from ..training.presets import PREDICTIONS, PRESETS, STAGES
    from ..training.trainer import TrainSettings

    d = TrainSettings.__dataclass_fields__
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--data", required=True, help="folder of aligned face images (e.g. from 'faces --out DIR --size 256')")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, the exported model and samples/")
    parser.add_argument("--preset", default=d["preset"].default, choices=PRESETS, help="network size (default small)")
    parser.add_argument("--prediction", choices=PREDICTIONS, help="network target (default x0 for IRMs, v for the TEM)")
    parser.add_argument("--steps", type=int, default=d["steps"].default, help="optimizer steps in all")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="per process and micro-batch")
    parser.add_argument("--accum", type=int, default=d["accum"].default, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=d["lr"].default)
    parser.add_argument("--warmup", type=int, default=d["warmup"].default, help="linear learning-rate warm-up steps")
    parser.add_argument("--ema", type=float, default=d["ema"].default, help="EMA decay of the exported weights")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast dtype (auto: bf16 on GPUs, fp32 on CPUs)")
    parser.add_argument("--schedule", default="linear", choices=("linear", "quad", "cosine"))
    parser.add_argument("--num-timesteps", type=int, default=1000)
    parser.add_argument("--t-max", type=float, help="train on t < T * this fraction (default 0.4 for the TEM, else 1)")
    parser.add_argument("--patch", type=int, help="TEM only: train on random patches of this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--log-every", type=int, default=d["log_every"].default)
    parser.add_argument("--ckpt-every", type=int, default=d["ckpt_every"].default)
    parser.add_argument("--sample-every", type=int, default=0, help="write a PNG sample sheet every N steps (0: never)")
    parser.add_argument("--max-minutes", type=float, help="stop (checkpoint and export) after this many minutes")
    parser.add_argument("--export", help="path of the exported model (default OUT/STAGE.safetensors)")
    parser.add_argument("--export-dtype", default="fp16", choices=("fp16", "fp32"), help="stored weight dtype")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--degradation", default="{}", help="JSON of DegradationConfig overrides, e.g. '{\"scale\": [1, 16]}'")
    parser.add_argument("--resume", nargs="?", const="auto", help="resume from OUT/checkpoint.pt (or the path given)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest for small nets)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import DiffBFRError
    from ..training.trainer import TrainSettings, train

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        degradation = json.loads(args.degradation)
    except json.JSONDecodeError as exc:
        raise DiffBFRError(f"--degradation must be a JSON object: {exc}") from exc
    settings = TrainSettings(
        stage=args.stage, data=args.data, out=args.out, preset=args.preset, prediction=args.prediction,
        steps=args.steps, batch_size=args.batch_size, accum=args.accum, lr=args.lr, warmup=args.warmup,
        ema=args.ema, precision=args.precision, schedule=args.schedule, num_timesteps=args.num_timesteps,
        t_max=args.t_max, patch=args.patch, seed=args.seed, workers=args.workers, log_every=args.log_every,
        ckpt_every=args.ckpt_every, sample_every=args.sample_every, max_minutes=args.max_minutes,
        export=args.export, export_dtype=args.export_dtype, device=args.device, degradation=degradation,
    )
    trainer = train(settings, resume=args.resume)
    if trainer.dist.main:
        print(f"trained {args.stage} to step {trainer.step}; model: {trainer.export_path()}")
    return 0
