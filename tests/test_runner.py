"""The headless runner's core nodes and the UI -> API conversion (no models needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr.errors import WorkflowError
from comfy_diffbfr.workflow import core_nodes
from comfy_diffbfr.workflow.runner import run_workflow, set_input, to_prompt
from comfy_diffbfr.workflow.ui_format import to_api


def _png(path, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr.squeeze(), mode).save(path)
    return arr


def test_load_image_matches_comfyui_conversion(tmp_path):
    arr = _png(tmp_path / "a.png")
    image, mask = core_nodes.load_image_file(tmp_path / "a.png")
    assert image.dtype == torch.float32 and image.shape == (1, 30, 40, 3)
    assert torch.equal(image[0], torch.from_numpy(arr.astype(np.float32) / 255.0))
    assert mask.shape == (1, 64, 64) and not mask.any()  # no alpha: ComfyUI's 64x64 zero mask


def test_load_image_alpha_becomes_inverted_mask(tmp_path):
    arr = _png(tmp_path / "a.png", mode="RGBA")
    _, mask = core_nodes.load_image_file(tmp_path / "a.png")
    assert torch.allclose(mask[0], 1 - torch.from_numpy(arr[..., 3].astype(np.float32) / 255.0))


def test_save_image_truncates_like_comfyui_and_numbers_files(tmp_path):
    ctx = core_nodes.RunContext(output_dir=tmp_path)
    image = torch.tensor([[[[0.5, 1.2, -0.1]]]])
    core_nodes.SaveImage(ctx).save_images(image, "sub/x")
    core_nodes.SaveImage(ctx).save_images(torch.cat([image, image]), "sub/x")
    names = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert names == ["x_00001_.png", "x_00002_.png", "x_00003_.png"]
    assert np.array(Image.open(tmp_path / "sub" / "x_00001_.png")).tolist() == [[[127, 255, 0]]]
    with pytest.raises(WorkflowError, match="outside"):
        core_nodes.SaveImage(ctx).save_images(image, "../escape")


@pytest.mark.parametrize("method", core_nodes.UPSCALE_METHODS)
def test_image_scale_methods(method):
    image = torch.rand(2, 10, 20, 3)
    (out,) = core_nodes.ImageScale(None).upscale(image, method, 0, 15, "disabled")
    assert out.shape == (2, 15, 30, 3)
    (out,) = core_nodes.ImageScaleBy(None).upscale(image, method, 0.5)
    assert out.shape == (2, 5, 10, 3)
    if method == "nearest-exact":
        assert torch.equal(core_nodes.ImageScaleBy(None).upscale(image, method, 2.0)[0][:, ::2, ::2], image)


def test_center_crop_and_batch_resize():
    a, b = torch.rand(1, 8, 8, 3), torch.rand(1, 8, 16, 3)
    (out,) = core_nodes.ImageScale(None).upscale(b, "nearest-exact", 8, 8, "center")
    assert torch.equal(out, b[:, :, 4:12])
    (batch,) = core_nodes.ImageBatch(None).batch(a, b)
    assert batch.shape == (2, 8, 8, 3) and torch.equal(batch[0], a[0])


SCHEMAS = {
    "LoadImage": core_nodes.LoadImage.INPUT_TYPES(),
    "ImageScaleBy": core_nodes.ImageScaleBy.INPUT_TYPES(),
    "SaveImage": core_nodes.SaveImage.INPUT_TYPES(),
    "Seeded": {"required": {"image": ("IMAGE",), "seed": ("INT", {"default": 0}), "mode": (["a", "b"],)}},
}


def _ui(nodes, links):
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_ui_to_api_widgets_links_bypass_mute_and_reroute():
    wf = _ui(
        [
            {"id": 1, "type": "LoadImage", "mode": 0, "widgets_values": ["x.png", "image"], "inputs": []},
            {"id": 2, "type": "ImageScaleBy", "mode": 4, "widgets_values": ["area", 2.0],
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}]},
            {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 2}]},
            {"id": 4, "type": "Seeded", "mode": 0, "widgets_values": [7, "randomize", "b"],
             "inputs": [{"name": "image", "type": "IMAGE", "link": 3}]},
            {"id": 5, "type": "SaveImage", "mode": 2, "widgets_values": ["p"], "inputs": [{"name": "images", "type": "IMAGE", "link": 4}]},
            {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
        ],
        [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 1, 0, 5, 0, "IMAGE"]],
    )
    api = to_api(wf, SCHEMAS)
    assert set(api) == {"1", "4"}  # bypassed, muted, reroute and note nodes are gone
    assert api["1"]["inputs"] == {"image": "x.png"}  # the "upload" UI value is skipped
    assert api["4"]["inputs"] == {"seed": 7, "mode": "b", "image": ["1", 0]}  # control value skipped, bypass followed


def test_set_and_validation_errors_are_clear(tmp_path):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 2.0}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}}}
    _png(tmp_path / "a.png", size=(8, 6))
    set_input(prompt, "2.scale_by=0.5")
    assert prompt["2"]["inputs"]["scale_by"] == 0.5
    with pytest.raises(WorkflowError, match="no node '9'"):
        set_input(prompt, "9.x=1")
    ctx = run_workflow(prompt, tmp_path / "out", input_dirs=[tmp_path])
    assert [p.name for p in ctx.saved] == ["t_00001_.png"]
    assert Image.open(ctx.saved[0]).size == (4, 3)
    bad = json.loads(json.dumps(prompt))
    bad["2"]["inputs"]["scale_by"] = 100.0
    with pytest.raises(WorkflowError, match="above the maximum 8.0"):
        run_workflow(bad, tmp_path / "out")
    bad["2"]["inputs"].update(scale_by=1.0, upscale_method="cubic")
    with pytest.raises(WorkflowError, match="not one of the choices"):
        run_workflow(bad, tmp_path / "out")
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        to_prompt({"foo": 1}, {})


def test_unreadable_or_malformed_workflows_raise_workflow_errors(tmp_path):
    from comfy_diffbfr.workflow import load_workflow

    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(WorkflowError, match="cannot read workflow"):
        load_workflow(tmp_path / "binary.json")
    with pytest.raises(WorkflowError, match="expected a JSON object, got a list"):
        to_prompt([1, 2], {})
    with pytest.raises(WorkflowError, match="malformed UI-format workflow"):
        to_prompt({"nodes": [{"id": 1}], "links": []}, core_nodes.CORE_NODES)  # a node without a type
    with pytest.raises(WorkflowError, match="'inputs' is missing"):
        run_workflow({"1": {"class_type": "SaveImage"}}, tmp_path / "out")
    with pytest.raises(WorkflowError, match="node 1 has no 'inputs' object"):
        run_workflow({"1": {"class_type": "SaveImage"}}, tmp_path / "out", assignments=["1.filename_prefix=x"])


def test_bad_links_and_an_unmakeable_output_folder_raise_workflow_errors(tmp_path):
    _png(tmp_path / "a.png", size=(8, 6))
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    bad = json.loads(json.dumps(prompt))
    bad["1"]["inputs"]["image"] = [1, 2]  # a list is read as a link, and this one is not a valid link
    with pytest.raises(WorkflowError, match="a list value must be a link"):
        run_workflow(bad, tmp_path / "out", input_dirs=[tmp_path])
    bad = json.loads(json.dumps(prompt))
    bad["2"]["inputs"]["images"] = ["1", 5]
    with pytest.raises(WorkflowError, match="links to output 5 of node 1, which has 2"):
        run_workflow(bad, tmp_path / "out", input_dirs=[tmp_path])
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(WorkflowError, match="cannot create the output folder"):
        run_workflow(prompt, tmp_path / "taken", input_dirs=[tmp_path])


def test_validate_inputs_is_called_like_comfyui_does():
    from comfy_diffbfr.workflow.runner import validate

    seen = []

    class Checked:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE",), "x": ("INT", {"default": 0, "max": 5}), "y": ("INT", {"max": 5})},
                    "hidden": {"graph": "PROMPT"}}

        @classmethod
        def VALIDATE_INPUTS(cls, image, x, graph):
            seen.append((image, x, graph))
            return True if x < 10 else f"x must stay below 10, got {x}"

    classes = {**core_nodes.CORE_NODES, "Checked": Checked}
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "Checked", "inputs": {"image": ["1", 0], "x": "7", "y": 1}}}
    checked = validate(prompt, classes)
    assert checked["2"]["x"] == 7  # converted to INT; above its max 5, which is left to VALIDATE_INPUTS
    assert seen == [(None, 7, {})]  # a linked input arrives as None, the prompt is not known yet
    prompt["2"]["inputs"]["x"] = 12
    with pytest.raises(WorkflowError, match="node 2 \\(Checked\\): x must stay below 10, got 12"):
        validate(prompt, classes)
    prompt["2"]["inputs"].update(x=1, y=6)  # y is not named by VALIDATE_INPUTS: the built-in max applies
    with pytest.raises(WorkflowError, match="above the maximum 5"):
        validate(prompt, classes)
