"""The degradation model: seeded, configurable, each step doing what it says; the degrade command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr.cli import main
from comfy_diffbfr.training.degradation import DegradationConfig, blur_kernel, degrade

OFF = {"blur_prob": 0.0, "scale": (1.0, 1.0), "gaussian_noise_prob": 0.0, "poisson_prob": 0.0, "jpeg_prob": 0.0}


def smooth_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def test_same_seed_same_image_other_seed_other_image():
    img = smooth_image()
    cfg = DegradationConfig()
    a, pa = degrade(img, cfg, 7)
    b, pb = degrade(img, cfg, 7)
    c, pc = degrade(img, cfg, 8)
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c) and pa != pc
    assert a.shape == img.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_everything_off_is_identity():
    img = smooth_image()
    out, _ = degrade(img, DegradationConfig(**OFF), 0)
    assert torch.allclose(out, img, atol=1e-6)


def test_kernels_are_normalised_and_shaped():
    iso = blur_kernel("iso", 21, 2.0, 5.0, 1.0)
    assert abs(float(iso.sum()) - 1) < 1e-5
    assert torch.allclose(iso, iso.T, atol=1e-7)  # sigma_y and theta ignored: round
    wide = blur_kernel("aniso", 41, 4.0, 1.0, 0.0)  # wide along x (columns)
    r = torch.arange(41.0) - 20
    var_x = float((wide.sum(0) * r**2).sum())
    var_y = float((wide.sum(1) * r**2).sum())
    assert var_x == pytest.approx(16.0, rel=0.05) and var_y == pytest.approx(1.0, rel=0.1)
    turned = blur_kernel("aniso", 41, 4.0, 1.0, np.pi / 2)
    assert torch.allclose(turned, wide.T, atol=1e-6)
    flat = blur_kernel("generalized_iso", 21, 4.0, 4.0, 0.0, beta=4.0)
    gauss = blur_kernel("iso", 21, 4.0, 4.0, 0.0)
    # half a sigma out: exp(-0.5 * 0.5**4) = 0.97 of the peak with beta 4, exp(-0.5 * 0.5**2) = 0.88 for a Gaussian
    assert float(flat[10, 12] / flat[10, 10]) == pytest.approx(0.9692, abs=1e-3)
    assert float(gauss[10, 12] / gauss[10, 10]) == pytest.approx(0.8825, abs=1e-3)


def test_blur_removes_detail_and_downsampling_sizes():
    img = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    blurred, _ = degrade(img, DegradationConfig(**{**OFF, "blur_prob": 1.0, "blur_sigma": (3.0, 3.0)}), 0)
    assert float(blurred.std()) < 0.5 * float(img.std())
    assert abs(float(blurred.mean()) - float(img.mean())) < 0.02  # normalised kernel keeps the mean
    cfg = DegradationConfig(**{**OFF, "scale": (4.0, 4.0)})
    small, p = degrade(img, cfg, 0, keep_size=False)
    assert small.shape == (3, 16, 16) and p["scale"] == 4.0
    back, _ = degrade(img, cfg, 0)
    assert back.shape == img.shape


def test_noise_level_and_jpeg():
    img = torch.full((3, 64, 64), 0.5)
    noisy, _ = degrade(img, DegradationConfig(**{**OFF, "gaussian_noise_prob": 1.0, "noise_sigma": (10.0, 10.0), "gray_noise_prob": 0.0}), 3)
    assert float((noisy - img).std()) == pytest.approx(10 / 255, rel=0.1)
    gray, _ = degrade(img, DegradationConfig(**{**OFF, "gaussian_noise_prob": 1.0, "noise_sigma": (10.0, 10.0), "gray_noise_prob": 1.0}), 3)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    poisson, _ = degrade(img, DegradationConfig(**{**OFF, "poisson_prob": 1.0, "poisson_scale": (1.0, 1.0)}), 3)
    assert float((poisson - img).std()) == pytest.approx((127.5**0.5) / 255, rel=0.15)
    detail = smooth_image(64) + 0.2 * torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    detail = detail.clamp(0, 1)
    q10, _ = degrade(detail, DegradationConfig(**{**OFF, "jpeg_prob": 1.0, "jpeg_quality": (10.0, 10.0)}), 0)
    q95, _ = degrade(detail, DegradationConfig(**{**OFF, "jpeg_prob": 1.0, "jpeg_quality": (95.0, 95.0)}), 0)
    assert float((q10 - detail).abs().mean()) > 1.5 * float((q95 - detail).abs().mean())


@pytest.mark.parametrize(
    "bad", [{"scale": (0.5, 2.0)}, {"scale": (1.0, 32.0)}, {"blur_sigma": (3.0, 1.0)}, {"kernel_size": 4},
            {"jpeg_quality": (0.0, 50.0)}, {"kernel_kinds": ("box",), "kernel_weights": (1.0,)}],
)
def test_bad_ranges_are_refused(bad):
    with pytest.raises(ValueError):
        DegradationConfig(**bad)


def test_config_round_trips_through_a_dict():
    cfg = DegradationConfig(scale=(2.0, 16.0))
    assert DegradationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown degradation setting"):
        DegradationConfig.from_dict({"sclae": [1, 2]})


def test_degrade_command(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        arr = (smooth_image(48, i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"f{i}.png")
    out = tmp_path / "out"
    args = ["degrade", str(src), "-o", str(out), "--seed", "5", "--params", "--set", '{"scale": [4, 4]}', "--small"]
    assert main(args) == 0
    assert Image.open(out / "f0.png").size == (12, 12)
    params = json.loads((out / "f1.json").read_text())
    assert params["seed"] == 6 and params["scale"] == 4.0
    first = np.asarray(Image.open(out / "f0.png"))
    assert main(args) == 0
    assert np.array_equal(first, np.asarray(Image.open(out / "f0.png")))  # seeded: reruns agree
    assert main(["degrade", str(src), "-o", str(out), "--preset", "nope"]) == 2
    assert "--preset must be one of" in capsys.readouterr().err
    assert main(["degrade", str(src), "-o", str(out), "--set", '{"scale": [0, 1]}']) == 2
