"""Evaluation metrics and the `eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr.cli import main
from comfy_diffbfr.training.degradation import DegradationConfig
from comfy_diffbfr.training.evaluate import evaluate, format_table, psnr, ssim, texture_energy, unsharp_mask
from comfy_diffbfr.training.trainer import Trainer, TrainSettings


def detailed(size: int = 64, seed: int = 0) -> torch.Tensor:
    """IMAGE [1,S,S,3] with fine detail."""
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def blur(img: torch.Tensor) -> torch.Tensor:
    x = img.movedim(-1, 1)
    x = torch.nn.functional.avg_pool2d(x, 4)
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear").movedim(1, -1)


def test_metrics_behave():
    img = detailed()
    assert float(psnr(img, img)) == pytest.approx(100.0)
    assert float(psnr((img + 0.1).clamp(max=2), img)) == pytest.approx(20.0, abs=1e-3)
    assert float(ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.2 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim(noisy, img)) < 0.9
    ratio = float(torch.log(texture_energy(blur(img)) / texture_energy(img)))
    assert ratio < -2  # a blurred image has far less high-frequency energy


def test_evaluate_input_versus_output():
    hq = torch.cat([blur(detailed(64, i)) * 0.5 + detailed(64, i) * 0.5 for i in range(3)])
    cfg = DegradationConfig(blur_sigma=(2.0, 2.0), scale=(2.0, 2.0), jpeg_quality=(70.0, 70.0))
    unchanged = evaluate(hq, lambda lq: lq, degradation=cfg, seed=0, batch=2)
    assert unchanged.input == unchanged.output and unchanged.count == 3
    assert unchanged.input["texture"] < -0.5 and unchanged.input["psnr"] < 40
    queue = [hq[:2], hq[2:]]
    oracle = evaluate(hq, lambda lq: queue.pop(0), degradation=cfg, seed=0, batch=2)
    assert oracle.output["psnr"] == pytest.approx(100.0) and oracle.output["texture"] == pytest.approx(0.0, abs=1e-6)
    assert oracle.goals() == {"psnr": True, "texture": True}
    assert unchanged.goals()["texture"] is (abs(unchanged.output["texture"]) <= 1.5)
    # the unsharp-mask baseline: measured on the sharpened input, more texture than the input
    assert unchanged.unsharp["texture"] > unchanged.input["texture"] and unchanged.unsharp != unchanged.input
    assert unchanged.per_face[0]["unsharp_psnr"] != unchanged.per_face[0]["input_psnr"]
    header, *rows = format_table(unchanged).splitlines()[1:]
    assert header.split()[1:4] == ["input", "unsharp", "output"]


def test_unsharp_mask_is_pils_radius_2_150_percent():
    from PIL import Image, ImageFilter

    img = blur(detailed(32, 3))
    u8 = (img[0] * 255).round().byte().numpy()
    expected = np.asarray(Image.fromarray(u8).filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0)))
    out = unsharp_mask(img)
    assert out.shape == img.shape and torch.equal((out[0] * 255).round().byte(), torch.from_numpy(expected.copy()))


def test_identity_distance_on_real_faces(faces_dir):
    pytest.importorskip("dlib")
    from comfy_diffbfr.training.evaluate import IdentityModel

    def face(name: str) -> torch.Tensor:
        img = Image.open(faces_dir / "aligned" / name).convert("RGB").resize((256, 256), Image.LANCZOS)
        return torch.from_numpy(np.asarray(img).copy()).float().div(255)

    model = IdentityModel()
    a, b = face("gpen_ffhq_00001.png"), face("gpen_ffhq_00002.png")
    shape = model.shape(a)
    same = np.linalg.norm(model.descriptor(a, shape) - model.descriptor(a, shape))
    blurred = np.linalg.norm(model.descriptor(blur(a[None])[0], shape) - model.descriptor(a, shape))
    other = np.linalg.norm(model.descriptor(b, model.shape(b)) - model.descriptor(a, shape))
    assert same == 0.0
    assert 0.0 < blurred < other and other > 0.5


@pytest.mark.slow
def test_eval_command_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_PROGRESS", "0")
    hq_dir = tmp_path / "hq"
    hq_dir.mkdir()
    for i in range(2):
        arr = (detailed(256, i)[0].numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(hq_dir / f"f{i}.png")
    models = []
    for stage in ("irm64", "irm256", "tem"):
        Trainer(TrainSettings(stage=stage, data=str(hq_dir), out=str(tmp_path / stage), preset="tiny", steps=1,
                              batch_size=1, device="cpu", patch=32 if stage == "tem" else None)).train()
        models += ["--model", f"{stage}={tmp_path / stage / (stage + '.safetensors')}"]
    out_json = tmp_path / "eval.json"
    args = ["eval", "--hq", str(hq_dir), *models, "--steps", "1", "--fidelity", "16,0,32", "--limit", "2", "--no-identity",
            "--json", str(out_json), "--save", str(tmp_path / "strips"), "--sheet", str(tmp_path / "sheet.png")]
    assert main(args) == 0
    result = json.loads(out_json.read_text())
    assert set(result["goals"]) == {"psnr", "texture"} and len(result["per_face"]) == 2
    assert result["input"]["psnr"] < 100 and np.isfinite(result["output"]["psnr"])
    assert set(result["unsharp"]) == set(result["input"])
    settings = result["settings"]
    assert [s["stage"] for s in settings["stages"]] == ["irm64", "irm256", "tem"]
    assert [(s["steps"], s["fidelity"]) for s in settings["stages"]] == [(1, 16), (1, 0), (1, 32)]
    assert settings["degradation"] == "moderate" and settings["faces"] == 2
    assert Image.open(tmp_path / "strips" / "face_0000.png").size == (3 * 256, 256)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size[0] == 3 * 256 and sheet.size[1] > 2 * 256  # two rows and their labels
    assert main(["eval", "--hq", str(hq_dir), *models, "--degradation", "{oops"]) == 2
    assert main(["eval", "--hq", str(hq_dir), "--model", "irm999=x"]) == 2
