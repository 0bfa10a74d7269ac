"""Train one DiffBFR stage (IRM 64, IRM 256 or TEM) and export it as a native model file.

Features: EMA weights (what is exported), bf16/fp16 autocast, gradient accumulation, checkpoints
with exact resume, a progress bar with loss and it/s, periodic PNG sample sheets, and several
processes through ``torchrun`` (DDP; NCCL on GPUs, gloo on CPUs).

Exact resume: no random state is carried from step to step. The data of step k is a pure function
of (seed, k) (see ``data.StagePairs``) and the timesteps and noise of step k come from generators
seeded with (seed, k, micro-batch, rank). A checkpoint therefore only holds the weights, the EMA,
the optimizer (and loss-scaler) state and k, and a resumed run reproduces the uninterrupted run's
losses bit for bit on the same hardware.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.schedules import SCHEDULE_KINDS, Schedule
from ..errors import CheckpointError, DiffBFRError
from ..host.device import PRECISIONS
from ..networks.adm_unet import ADMUNet
from .data import StagePairs, StreamBatches, load_face_folder
from .degradation import DegradationConfig
from .presets import PREDICTIONS, STAGE_INFO, stage_config

#: Fraction of T the TEM trains on by default: it runs from strengths of about 0.1-0.3 only.
TEM_T_MAX = 0.4
#: Truncated-sampling strengths of the sample sheets (the pipeline's defaults are similar).
SHEET_STRENGTH = {"irm64": 1.0, "irm256": 0.5, "tem": 0.2}
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainSettings:
    stage: str
    data: str
    out: str
    preset: str = "small"
    prediction: str | None = None  # None: the stage's default (x0 for IRMs, v for the TEM)
    steps: int = 10000
    batch_size: int = 16  # per process and micro-batch
    accum: int = 1
    lr: float = 2e-4
    warmup: int = 100
    ema: float = 0.999
    precision: str = "auto"
    schedule: str = "linear"
    num_timesteps: int = 1000
    t_max: float | None = None  # fraction of T sampled in training; None: TEM_T_MAX for the TEM, else 1
    patch: int | None = None  # TEM only: train on random patches of this size
    seed: int = 0
    workers: int = 0
    log_every: int = 20
    ckpt_every: int = 1000
    sample_every: int = 0
    max_minutes: float | None = None
    export: str | None = None  # default: OUT/<stage>.safetensors
    export_dtype: str = "fp16"
    device: str = "auto"
    grad_clip: float = 1.0
    degradation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_INFO:
            raise DiffBFRError(f"--stage must be one of {tuple(STAGE_INFO)}, got {self.stage!r}")
        self.prediction = self.prediction or STAGE_INFO[self.stage].default_prediction
        if self.prediction not in PREDICTIONS:
            raise DiffBFRError(f"--prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.precision not in PRECISIONS:
            raise DiffBFRError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULE_KINDS or self.schedule == "linear_range":
            raise DiffBFRError(f"--schedule must be linear, quad or cosine, got {self.schedule!r}")
        if self.export_dtype not in ("fp16", "fp32"):
            raise DiffBFRError(f"--export-dtype must be fp16 or fp32, got {self.export_dtype!r}")
        if self.t_max is None:
            self.t_max = TEM_T_MAX if self.stage == "tem" else 1.0
        if self.patch is not None and not 8 <= self.patch <= STAGE_INFO[self.stage].size:
            raise DiffBFRError(f"--patch must lie in [8, {STAGE_INFO[self.stage].size}], got {self.patch}")
        if not 0 < self.t_max <= 1:
            raise DiffBFRError(f"--t-max is a fraction of T in (0, 1], got {self.t_max}")
        for name in ("steps", "batch_size", "accum"):
            if getattr(self, name) < 1:
                raise DiffBFRError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        try:
            DegradationConfig.from_dict(self.degradation)
        except (TypeError, ValueError) as exc:
            raise DiffBFRError(f"bad --degradation settings: {exc}") from exc


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


class _Dist:
    """This process's place among ``torchrun``'s processes (one process when not under torchrun)."""

    def __init__(self, device_arg: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu") if device_arg in ("auto", "cuda") else torch.device(device_arg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed shapes; exact resume is promised per hardware
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 where the hardware has it (CUDA Ampere+, and CPUs: bf16 autocast uses AMX/AVX512-BF16)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


class Trainer:
    def __init__(self, settings: TrainSettings, *, faces: torch.Tensor | None = None) -> None:
        self.s = settings
        self.dist = _Dist(settings.device)
        self.device = self.dist.device
        self.out = Path(settings.out)
        info = STAGE_INFO[settings.stage]
        self.info = info
        self.config = stage_config(settings.stage, settings.preset)
        torch.manual_seed(settings.seed)  # identical initial weights on every process
        self.net = ADMUNet.from_config(self.config).to(self.device)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=settings.lr, weight_decay=0.0)
        self.amp = _autocast_dtype(settings.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.schedule = Schedule.from_name(settings.schedule, settings.num_timesteps)
        self.abar = self.schedule.alphas_cumprod.float().to(self.device)
        self.step = 0
        self.faces = faces if faces is not None else load_face_folder(settings.data, 256)
        self.pairs = StagePairs(
            self.faces, settings.stage, seed=settings.seed,
            degradation=DegradationConfig.from_dict(settings.degradation), patch=settings.patch,
        )
        self.model = self.net
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.seconds = 0.0

    # ----- checkpoints -------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_path()
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {
                "step": self.step,
                "seconds": self.seconds,
                "settings": json.dumps(asdict(self.s)),
                "net": self.net.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            partial = path.with_name(path.name + ".partial")
            torch.save(state, partial)
            os.replace(partial, path)
        self.dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from {path}: {exc}") from exc
        saved = json.loads(state["settings"])
        for key in ("stage", "preset", "prediction", "schedule", "num_timesteps", "seed", "patch"):
            if saved[key] != getattr(self.s, key):
                raise CheckpointError(
                    f"{path} was trained with {key}={saved[key]!r}, this run has {getattr(self.s, key)!r}; "
                    "resume with the same settings or start a new --out folder"
                )
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])

    # ----- one optimizer step -------------------------------------------------------------
    def _target(self, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        if self.s.prediction == "eps":
            return noise
        if self.s.prediction == "x0":
            return x0
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v

    def _micro_loss(self, x0: torch.Tensor, cond: torch.Tensor, micro: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(_seed(self.s.seed, self.step, micro, self.dist.rank))
        t_hi = max(1, round(self.s.t_max * self.schedule.num_timesteps))
        t = torch.randint(0, t_hi, (x0.shape[0],), generator=gen, device=self.device)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        abar = self.abar[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        low_res = cond if cond.shape[1] else None
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            pred = self.model(x_t, t.float(), low_res=low_res)
        return F.mse_loss(pred.float(), self._target(x0, noise, abar))

    def _lr(self) -> float:
        return self.s.lr * min(1.0, (self.step + 1) / max(1, self.s.warmup))

    def _update_ema(self) -> None:
        decay = min(self.s.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.lerp_(p.detach(), 1 - decay)
            for e, b in zip(self.ema.buffers(), self.net.buffers()):
                e.copy_(b)

    def train_step(self, batches) -> float:
        self.net.train()
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        total = 0.0
        for micro in range(self.s.accum):
            x0, cond = (b.to(self.device, non_blocking=True) for b in next(batches))
            last = micro == self.s.accum - 1
            ctx = self.model.no_sync() if self.dist.world > 1 and not last else contextlib.nullcontext()
            with ctx:
                loss = self._micro_loss(x0, cond, micro)
                self.scaler.scale(loss / self.s.accum).backward()
            total += float(loss.detach()) / self.s.accum
        self.scaler.unscale_(self.opt)
        nn.utils.clip_grad_norm_(self.net.parameters(), self.s.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self._update_ema()
        return self.dist.mean(total)

    # ----- the loop -------------------------------------------------------------------------
    def loader(self):
        sampler = StreamBatches(
            self.s.batch_size, accum=self.s.accum, rank=self.dist.rank, world=self.dist.world, start_step=self.step
        )
        loader = torch.utils.data.DataLoader(
            self.pairs, batch_sampler=sampler, num_workers=self.s.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if self.s.workers else None,
        )
        return iter(loader)

    def train(self, *, until: int | None = None, on_step: Callable[[int, float], None] | None = None) -> list[tuple[int, float]]:
        """Train to step ``until`` (default: ``steps``), or until ``max_minutes`` of this run have
        passed; checkpoint, export and (with ``sample_every``) a last sample sheet at the end.
        Returns ``(step, loss)`` for each step run."""
        end = min(until or self.s.steps, self.s.steps)
        history: list[tuple[int, float]] = []
        batches = self.loader()
        bar = _progress(end, self.step, f"train {self.s.stage}") if self.dist.main else None
        started = time.monotonic()
        last_log, window = time.monotonic(), 0
        while self.step < end:
            t_step = time.monotonic()
            loss = self.train_step(batches)
            self.seconds += time.monotonic() - t_step
            history.append((self.step, loss))
            window += 1
            if on_step:
                on_step(self.step, loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            elif self.dist.main and (self.step % self.s.log_every == 0 or self.step == end):
                rate = window / max(1e-9, time.monotonic() - last_log)
                print(f"step {self.step}/{end} loss {loss:.4f} {rate:.2f} it/s", file=sys.stderr, flush=True)
                last_log, window = time.monotonic(), 0
            if self.s.ckpt_every and self.step % self.s.ckpt_every == 0 and self.step < end:
                self.save_checkpoint()
            if self.s.sample_every and self.step % self.s.sample_every == 0 and self.dist.main:
                self.sample_sheet()
            over = self.s.max_minutes is not None and time.monotonic() - started > 60 * self.s.max_minutes
            if self.dist.any(over):
                break
        if bar is not None:
            bar.close()
        if self.dist.main and history:
            rate = len(history) / max(1e-9, time.monotonic() - started)
            print(f"stopped at step {self.step}: loss {history[-1][1]:.4f}, {rate:.2f} it/s over this run", file=sys.stderr)
        self.save_checkpoint()
        if self.dist.main:
            self.export()
            if self.s.sample_every and self.step % self.s.sample_every:
                self.sample_sheet()  # after the export, so a failing sheet never costs the model
        self.dist.barrier()
        return history

    # ----- outputs --------------------------------------------------------------------------
    def export_path(self) -> Path:
        return Path(self.s.export) if self.s.export else self.out / f"{self.s.stage}.safetensors"

    def export(self, path: Path | None = None) -> Path:
        """The EMA weights as a native model file (``load_model`` gives float32 nets whatever the
        stored dtype)."""
        from ..models.native import save_model

        net = copy.deepcopy(self.ema).cpu()
        if self.s.export_dtype == "fp16":
            net = net.half()
        training = {
            "stage": self.s.stage,
            "preset": self.s.preset,
            "steps": self.step,
            "batch_size": self.s.batch_size * self.s.accum * self.dist.world,
            "lr": self.s.lr,
            "ema": self.s.ema,
            "precision": self.s.precision,
            "t_max": self.s.t_max,
            "patch": self.s.patch,
            "train_seconds": round(self.seconds, 1),
            "faces": len(self.faces),
            "data": Path(self.s.data).name,
            "degradation": DegradationConfig.from_dict(self.s.degradation).to_dict(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
        }
        return save_model(
            path or self.export_path(), net, arch="adm", config=self.config, role=self.info.role,
            conditions=list(self.info.conditions), schedule=self.schedule, prediction=self.s.prediction,
            resolution=self.info.size, training=training,
        )

    def sample_sheet(self, count: int = 4, steps: int = 20) -> Path:
        """A PNG with one row per sample: inputs (conditions), result, target."""
        from PIL import Image

        from ..diffusion.samplers import truncated_sample
        from ..models import load_model

        tmp = self.export(self.out / "samples" / "ema_latest.safetensors")
        model = load_model(tmp)
        model.net.to(self.device)
        pairs = StagePairs(self.faces, self.s.stage, seed=self.s.seed + 1, degradation=self.pairs.degradation, patch=None)
        rows = []
        for i in range(count):
            x0, cond = pairs[i]
            x0, cond = x0[None].to(self.device), cond[None].to(self.device)
            start = cond[:, :3] if cond.shape[1] else x0
            gens = [torch.Generator(device=self.device).manual_seed(i)]
            with torch.no_grad():
                out = truncated_sample(
                    model, start, cond=cond if cond.shape[1] else None, strength=SHEET_STRENGTH[self.s.stage],
                    steps=steps, generators=gens,
                )
            tiles = [cond[:, j : j + 3] for j in range(0, cond.shape[1], 3)] + [out, x0]
            rows.append(torch.cat([t.clamp(-1, 1) for t in tiles], dim=-1))
        sheet = ((torch.cat(rows, dim=-2)[0] + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        Image.fromarray(sheet).save(path)
        return path


def _progress(total: int, initial: int, label: str):
    if os.environ.get("COMFY_DIFFBFR_PROGRESS", "1") == "0":
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=label, unit="it", dynamic_ncols=True, mininterval=1.0)


def train(settings: TrainSettings, *, resume: str | None = None) -> Trainer:
    """Build a trainer, resume when asked (``"auto"``: from OUT/checkpoint.pt if present), train."""
    trainer = Trainer(settings)
    if resume == "auto":
        resume = str(trainer.checkpoint_path()) if trainer.checkpoint_path().exists() else None
    if resume:
        trainer.load_checkpoint(resume)
    trainer.train()
    return trainer


