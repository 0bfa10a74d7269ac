"""The offline detector and the `none` round trip on every whole photo of ../shared/faces/whole.

One pass over the photos (session fixture) serves both tests: detection runs once per photo."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from comfy_diffbfr.faces import load_image
from comfy_diffbfr.pipeline import DetectOptions, restore_images

pytestmark = pytest.mark.slow  # a round trip over every whole photo of ../shared


@pytest.fixture(scope="session")
def whole_results(faces_dir):
    pytest.importorskip("dlib")
    rows = [r for r in csv.DictReader(open(faces_dir / "manifest.csv")) if r["kind"] == "whole"]
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-face ops: a second thread costs more than it gains here
    try:
        for row in rows:
            results.append(_round_trip(faces_dir / "whole" / row["file"], int(row["faces"])))
    finally:
        torch.set_num_threads(threads)
    return results


def _round_trip(path, counted: int) -> dict:
    image = load_image(path)
    (res,) = restore_images(image, [], detect=DetectOptions(detector="dlib"))
    mse = ((res.image - image)[..., :3] ** 2).mean().item()
    outside = res.mask[0] == 0
    return {
        "file": path.name,
        "counted": counted,
        "detected": len(res.faces),
        "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
        "outside_identical": torch.equal(res.image[0][outside], image[0][outside]),
        "alpha_kept": image.shape[-1] == 3 or torch.equal(res.image[..., 3], image[..., 3]),
        "pasted": bool((res.mask > 0).any()),
    }


def test_offline_detector_finds_90_percent_with_few_extras(whole_results):
    counted = sum(r["counted"] for r in whole_results)
    found = sum(min(r["counted"], r["detected"]) for r in whole_results)
    extra = sum(max(0, r["detected"] - r["counted"]) for r in whole_results)
    print(f"\ndlib on {len(whole_results)} whole photos: found {found}/{counted} ({found / counted:.1%}), "
          f"extra {extra} ({extra / counted:.1%})")
    assert found >= 0.90 * counted
    assert extra <= 0.05 * counted


def test_round_trip_none_is_lossless_outside_the_mask(whole_results):
    worst = min(whole_results, key=lambda r: r["psnr"])
    print(f"\nround trip on {len(whole_results)} photos: worst PSNR {worst['psnr']:.2f} dB ({worst['file']})")
    for r in whole_results:
        assert r["psnr"] >= 35.0, r
        assert r["outside_identical"], r
        assert r["alpha_kept"], r
        assert r["pasted"] == (r["detected"] > 0), r
