"""workflows/diffbfr_public_prior.json: an unconditional prior in the TEM node, locked to the
low-quality crops, restores blind faces; its output keeps the crops' low band at any strength.

The prior here is a small guided-diffusion-layout network saved the way the public priors are (a
plain ``.pth`` state dict), under the file name users have for DifFace's FFHQ-512 prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_diffbfr.diffusion.lowband import low_band
from comfy_diffbfr.models import load_model
from comfy_diffbfr.workflow.core_nodes import RunContext
from comfy_diffbfr.workflow.runner import ASSETS_DIR, Runner, node_classes, set_input, to_prompt
from pack_helpers import REPO

WORKFLOW = REPO / "workflows" / "diffbfr_public_prior.json"
PRIOR_NAME = "iddpm_ffhq512_ema500000.pth"


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> Path:
    """The starter TEM's network saved as a public prior is: a plain guided-diffusion ``.pth``
    state dict. A trained prior, not a random one: a random network cannot denoise, so its
    leftover noise would be clipped to [0, 1] and move the low band."""
    folder = tmp_path_factory.getbasetemp() / "models" / "diffbfr"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(load_model(REPO / "weights" / "tem.safetensors").net.state_dict(), folder / PRIOR_NAME)
    return folder / PRIOR_NAME


def _prompt(strength: float, fidelity: int) -> tuple[dict, str, str]:
    prompt = to_prompt(json.loads(WORKFLOW.read_text()), node_classes())
    ids = {node["class_type"]: key for key, node in prompt.items()}
    tem, detect = ids["DiffBFRTEM"], ids["DiffBFRFaceDetect"]
    # small crops keep it quick; the workflow's own number of steps (a few steps from a high
    # strength would end on a noisy x0 whose clipping to [0, 1] moves the low band)
    loader = ids["DiffBFRModelLoader"]
    for assignment in (f"{detect}.crop_size=128", f"{detect}.detector=dlib", f"{tem}.strength={strength}",
                       f"{tem}.fidelity={fidelity}"):
        set_input(prompt, assignment)
    prompt[loader]["inputs"]["hints"] = json.dumps({"prediction": "v"})  # what the file cannot tell
    return prompt, tem, detect


def test_the_workflow_runs_a_public_prior_file_in_the_tem_node_locked_to_the_crops():
    prompt = to_prompt(json.loads(WORKFLOW.read_text()), node_classes())
    loader = next(n for n in prompt.values() if n["class_type"] == "DiffBFRModelLoader")
    tem = next(n for n in prompt.values() if n["class_type"] == "DiffBFRTEM")
    detect = next(k for k, n in prompt.items() if n["class_type"] == "DiffBFRFaceDetect")
    assert loader["inputs"]["model_name"] == PRIOR_NAME
    assert tem["inputs"]["image"] == [detect, 1] and tem["inputs"]["reference"] == [detect, 1]
    assert 0.4 <= tem["inputs"]["strength"] <= 0.7 and tem["inputs"]["fidelity"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("strength", [0.4, 0.7, 1.0])
def test_output_low_band_is_the_crops_at_any_strength(prior, strength, one_thread):
    band = 32
    prompt, tem, detect = _prompt(strength, band)
    runner = Runner(RunContext(output_dir=Path("."), input_dirs=[ASSETS_DIR]))
    outputs = runner.run(prompt, targets=[tem])
    crops, restored = outputs[detect][1], outputs[tem][0]
    assert restored.shape == crops.shape
    low = lambda x: low_band(x.movedim(-1, 1).double(), band)  # noqa: E731
    diff = (low(restored) - low(crops)).abs()
    print(f"strength {strength}: low band |diff| mean {float(diff.mean()):.2e} max {float(diff.max()):.2e}")
    # exact inside the sampler (tests/test_lowband.py); here only the final clip to [0, 1] moves it
    assert float(diff.mean()) < 2e-3 and float(diff.max()) < 0.05
    # ... while the prior changed the image: the high band is not the crops'.
    assert float((restored - crops).abs().mean()) > 0.01


@pytest.mark.slow
def test_without_the_lock_the_prior_moves_the_low_band(prior, one_thread):
    prompt, tem, detect = _prompt(0.7, 0)
    outputs = Runner(RunContext(output_dir=Path("."), input_dirs=[ASSETS_DIR])).run(prompt, targets=[tem])
    low = lambda x: low_band(x.movedim(-1, 1).double(), 32)  # noqa: E731
    assert float((low(outputs[tem][0]) - low(outputs[detect][1])).abs().mean()) > 1e-2
