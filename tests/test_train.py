"""The trainer: the loss falls, resume is exact, torchrun trains, exports load and serve their stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr import stages
from comfy_diffbfr.cli import main
from comfy_diffbfr.errors import (
    CheckpointError,
    DiffBFRError,
    ImageReadError,
    WrongModelKindError,
)
from comfy_diffbfr.models import load_model
from comfy_diffbfr.training.data import StagePairs, StreamBatches, load_face_folder
from comfy_diffbfr.training.trainer import Trainer, TrainSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory) -> Path:
    """Four smooth synthetic 'faces' (random low-frequency colour fields) as PNG files."""
    folder = tmp_path_factory.mktemp("faces")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        coarse = torch.rand(1, 3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False)[0]
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"face{i}.png")
    return folder


def settings(face_dir: Path, out: Path, **kw) -> TrainSettings:
    base = {"stage": "irm64", "data": str(face_dir), "out": str(out), "preset": "tiny", "steps": 6, "batch_size": 2,
                "lr": 1e-3, "warmup": 1, "log_every": 1000, "ckpt_every": 0, "device": "cpu", "export_dtype": "fp32"}
    return TrainSettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_PROGRESS", "0")


def test_loss_falls_on_a_tiny_run(face_dir, tmp_path):
    trainer = Trainer(settings(face_dir, tmp_path, steps=12, batch_size=2, lr=3e-3))
    losses = [loss for _, loss in trainer.train()]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_resumed_run_reproduces_the_uninterrupted_losses(face_dir, tmp_path):
    kw = {"stage": "irm64", "steps": 4, "batch_size": 1, "accum": 2}
    whole = Trainer(settings(face_dir, tmp_path / "whole", **kw))
    uninterrupted = whole.train()
    first = Trainer(settings(face_dir, tmp_path / "split", **kw))
    part1 = first.train(until=2)
    assert (tmp_path / "split" / "checkpoint.pt").exists()
    second = Trainer(settings(face_dir, tmp_path / "split", **kw))
    second.load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert second.step == 2
    part2 = second.train()
    assert part1 + part2 == uninterrupted  # bit for bit, step numbers included
    for a, b in zip(whole.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)
    other_seed = Trainer(settings(face_dir, tmp_path / "other", **{**kw, "seed": 1}))
    assert other_seed.train(until=1)[0] != uninterrupted[0]


def test_resume_refuses_other_settings(face_dir, tmp_path):
    Trainer(settings(face_dir, tmp_path, steps=1)).train()
    with pytest.raises(CheckpointError, match="preset"):
        Trainer(settings(face_dir, tmp_path, steps=1, preset="small")).load_checkpoint(tmp_path / "checkpoint.pt")


def test_data_stream_is_a_function_of_position_and_splits_across_processes(face_dir):
    faces = load_face_folder(face_dir)
    pairs = StagePairs(faces, "irm256", seed=3)
    a, b = pairs[5], StagePairs(faces, "irm256", seed=3)[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 256, 256) and a[1].shape == (6, 256, 256)  # conditions prev, lq
    one = iter(StreamBatches(4, world=1, start_step=2))
    rank0, rank1 = iter(StreamBatches(2, world=2, rank=0, start_step=2)), iter(StreamBatches(2, world=2, rank=1, start_step=2))
    assert next(one) == next(rank0) + next(rank1) == [8, 9, 10, 11]
    epoch = sorted(pairs.face_index(p) for p in range(4))
    assert epoch == [0, 1, 2, 3]  # each epoch visits every face once
    tem = StagePairs(faces, "tem", patch=32)[0]
    assert tem[0].shape == (3, 32, 32) and tem[1].shape[0] == 0


@pytest.mark.parametrize("stage", ["irm64", "irm256", "tem"])
def test_export_loads_and_serves_its_stage(face_dir, tmp_path, stage):
    trainer = Trainer(settings(face_dir, tmp_path, stage=stage, steps=1, batch_size=1, export_dtype="fp16",
                               patch=64 if stage == "tem" else None))
    trainer.train()
    model = load_model(tmp_path / f"{stage}.safetensors")
    assert model.format == "diffbfr" and model.role == stage
    assert model.conditions == {"irm64": ["lq"], "irm256": ["prev", "lq"], "tem": []}[stage]
    assert model.diffusion["prediction"] == ("v" if stage == "tem" else "x0")
    assert all(p.dtype == torch.float32 for p in model.net.parameters())  # stored fp16, served float32
    for a, b in zip(model.net.state_dict().values(), trainer.ema.state_dict().values()):
        assert torch.equal(a, b.half().float())
    lq = torch.rand(1, 48, 48, 3)
    common = {"strength": 0.3, "steps": 1, "seed": 0}
    if stage == "irm64":
        out = stages.run_irm64(model, lq, **common)
        assert out.shape == (1, 64, 64, 3)
    elif stage == "irm256":
        out = stages.run_irm256(model, torch.rand(1, 64, 64, 3), lq=lq, **common)
        assert out.shape == (1, 256, 256, 3)
    else:
        out = stages.run_tem(model, torch.rand(1, 256, 256, 3), **common)
        assert out.shape == (1, 256, 256, 3)
        with pytest.raises(WrongModelKindError):
            stages.run_irm64(model, lq, **common)
    assert bool(torch.isfinite(out).all())
    meta = model.config
    assert meta["super_res"] == (stage != "tem")


def test_sample_sheet_is_written(face_dir, tmp_path):
    trainer = Trainer(settings(face_dir, tmp_path, steps=2, sample_every=2))
    trainer.train()
    sheet = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert sheet.size == (3 * 64, 4 * 64)  # lq | result | HQ, four rows


def test_bad_settings_are_clear_errors(face_dir, tmp_path):
    with pytest.raises(DiffBFRError, match="--stage"):
        settings(face_dir, tmp_path, stage="irm128")
    with pytest.raises(DiffBFRError, match="--patch"):
        settings(face_dir, tmp_path, stage="tem", patch=512)
    with pytest.raises(ImageReadError, match="does not exist"):
        Trainer(settings(tmp_path / "missing", tmp_path))
    assert main(["train", "--stage", "irm64", "--data", str(face_dir), "--out", str(tmp_path), "--degradation", "{bad"]) == 2


def test_torchrun_with_two_cpu_processes(face_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COMFY_DIFFBFR_PROGRESS": "0"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "comfy_diffbfr", "train", "--stage", "irm64", "--data", str(face_dir), "--out", str(out),
        "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--device", "cpu", "--log-every", "1", "--threads", "1",
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained irm64 to step 3") == 1  # rank 0 reports and exports
    assert "step 3/3" in proc.stderr
    assert load_model(out / "irm64.safetensors").role == "irm64"
    training = load_training(out / "irm64.safetensors")
    assert training["batch_size"] == 4 and training["steps"] == 3  # 2 processes x 2 faces


def load_training(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["training"])
