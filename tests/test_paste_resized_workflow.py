"""Paste Back on another size of the photo, with ComfyUI's core resize nodes between Face Detect and
Paste Back (the headless runner runs both, as ComfyUI would)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_diffbfr.errors import DiffBFRError
from comfy_diffbfr.workflow.core_nodes import RunContext
from comfy_diffbfr.workflow.runner import Runner
from pack_helpers import EXAMPLE_PHOTO

pytest.importorskip("dlib")


def _prompt(resize: dict) -> dict:
    """Detect on the example photo, resize the photo with ``resize`` (a core node), paste the face
    crops (shrunk, so the paste changes the photo) into both the original and the resized photo."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": str(EXAMPLE_PHOTO)}},
        "2": {"class_type": "DiffBFRFaceDetect", "inputs": {"image": ["1", 0], "detector": "dlib", "selection": "all",
                                                             "crop_size": 128, "aligned": False}},
        "3": {**resize, "inputs": {**resize["inputs"], "image": ["1", 0]}},
        "4": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 1], "upscale_method": "area", "scale_by": 0.5}},
        "5": {"class_type": "DiffBFRPasteBack", "inputs": {"image": ["3", 0], "faces": ["2", 0], "restored": ["4", 0],
                                                            "color_correction": "none", "strength": 1.0}},
        "6": {"class_type": "DiffBFRPasteBack", "inputs": {"image": ["1", 0], "faces": ["2", 0], "restored": ["4", 0],
                                                            "color_correction": "none", "strength": 1.0}},
    }


def _run(prompt: dict, tmp_path) -> dict:
    return Runner(RunContext(output_dir=tmp_path)).run(prompt, targets=["5", "6"])


@pytest.mark.parametrize("resize", [
    {"class_type": "ImageScaleBy", "inputs": {"upscale_method": "bilinear", "scale_by": 0.5}},
    {"class_type": "ImageScaleBy", "inputs": {"upscale_method": "lanczos", "scale_by": 1.7}},
    {"class_type": "ImageScale", "inputs": {"upscale_method": "bicubic", "width": 500, "height": 0, "crop": "disabled"}},
], ids=["by_0.5", "by_1.7", "width_500"])
def test_the_face_lands_where_it_is_in_the_resized_photo(resize, tmp_path, one_thread):
    outputs = _run(_prompt(resize), tmp_path)
    resized, (image, mask), (_, full_mask) = outputs["3"][0], outputs["5"], outputs["6"]
    assert image.shape == resized.shape and mask.shape == resized.shape[:3]
    # the paste weight in the resized photo is the resized paste weight of the original photo
    expected = F.interpolate(full_mask[None], size=mask.shape[1:], mode="bilinear", align_corners=False)[0]
    assert (mask > 0).sum() > 500
    assert (mask - expected).abs().mean() < 0.01 and (mask - expected).abs().max() < 0.35
    untouched = mask == 0
    assert torch.equal(image[untouched], resized[untouched])
    assert not torch.equal(image, resized)


@pytest.mark.parametrize("resize", [
    {"class_type": "ImageScale", "inputs": {"upscale_method": "bilinear", "width": 300, "height": 200, "crop": "center"}},
    {"class_type": "ImageScale", "inputs": {"upscale_method": "bilinear", "width": 384, "height": 300, "crop": "disabled"}},
], ids=["centre_crop", "stretch"])
def test_a_cropped_or_stretched_photo_is_refused_naming_the_inputs(resize, tmp_path, one_thread):
    with pytest.raises(DiffBFRError, match=r"'image' is 3\d\dx[23]00 but the 'faces' were detected on 384x384"):
        _run(_prompt(resize), tmp_path)
