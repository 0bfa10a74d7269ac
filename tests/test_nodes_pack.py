"""The node classes over the library: shared model loads, and clear messages for wrong inputs."""

from __future__ import annotations

import pytest
import torch

import comfy_diffbfr.models as models_pkg
from comfy_diffbfr.errors import CheckpointError, DiffBFRError, NoFaceError, WrongModelKindError
from comfy_diffbfr.workflow import run_workflow
from pack_helpers import EXAMPLE_PHOTO, load_pack, tiny_model


@pytest.fixture(scope="module")
def nodes():
    return load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))
    return tmp_path / "diffbfr"


def test_two_loader_nodes_naming_one_file_load_it_once(model_dir, monkeypatch):
    tiny_model(model_dir / "shared_tem.safetensors", "tem", [], resolution=64)
    loads = []
    real = models_pkg.load_model
    monkeypatch.setattr(models_pkg, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    prompt = {
        "1": {"class_type": "DiffBFRModelLoader", "inputs": {"model_name": "shared_tem.safetensors", "precision": "auto"}},
        "2": {"class_type": "DiffBFRModelLoader", "inputs": {"model_name": "shared_tem.safetensors", "precision": "auto"}},
    }
    for i, loader in (("3", "1"), ("4", "2")):
        prompt[i] = {"class_type": "DiffBFRTEM", "inputs": {
            "model": [loader, 0], "image": ["9", 0], "strength": 0.1, "steps": 1, "sampler": "ddim", "eta": 0.0,
            "seed": 0, "seed_mode": "per_face"}}
        prompt[str(int(i) + 2)] = {"class_type": "SaveImage", "inputs": {"images": [i, 0], "filename_prefix": f"t{i}"}}
    prompt["9"] = {"class_type": "ImageScale", "inputs": {"image": ["8", 0], "upscale_method": "area", "width": 64,
                                                           "height": 64, "crop": "center"}}
    prompt["8"] = {"class_type": "LoadImage", "inputs": {"image": "diffbfr_example.png"}}
    ctx = run_workflow(prompt, model_dir.parent / "out")
    assert len(loads) == 1
    assert len(ctx.saved) == 2


def test_loader_gives_the_same_module_for_the_same_file(nodes, model_dir):
    tiny_model(model_dir / "a.safetensors", "tem", [], resolution=64)
    loader = nodes["DiffBFRModelLoader"]()
    (first,) = loader.load("a.safetensors", "auto")
    (second,) = nodes["DiffBFRModelLoader"]().load("a.safetensors", "auto")
    assert first.net is second.net
    with pytest.raises(CheckpointError, match="hints must be a JSON object"):
        loader.load("a.safetensors", "auto", hints="num_heads=4")
    with pytest.raises(CheckpointError, match="not found"):
        loader.load("missing.safetensors", "auto")


def test_stage_node_with_the_wrong_kind_of_model(nodes, model_dir):
    tiny_model(model_dir / "prior.safetensors", "tem", [], resolution=64)
    (handle,) = nodes["DiffBFRModelLoader"]().load("prior.safetensors", "auto")
    with pytest.raises(WrongModelKindError, match="'prior.safetensors' is an unconditional face prior \\(TEM\\). Load it in a DiffBFR TEM node"):
        nodes["DiffBFRIRM64"]().run(handle, torch.rand(1, 64, 64, 3), strength=0.5, steps=1, sampler="ddim",
                                     eta=0.0, seed=0, seed_mode="per_face")


def test_face_detect_on_a_photo_without_faces(nodes, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    blank = torch.full((1, 128, 128, 3), 0.5)
    with pytest.raises(NoFaceError, match="no face found.*set 'aligned'"):
        nodes["DiffBFRFaceDetect"]().detect(blank, "dlib", "all", 128, False)


def test_paste_back_with_mismatched_counts(nodes):
    photo = torch.rand(1, 80, 80, 3)
    face_set, crops = nodes["DiffBFRFaceDetect"]().detect(photo, "auto", "all", 64, True)  # aligned: one face
    paste = nodes["DiffBFRPasteBack"]()
    with pytest.raises(DiffBFRError, match="got 2 restored crops for a face set of 1 faces"):
        paste.paste(photo, face_set, torch.cat([crops, crops]), "none", 1.0)
    with pytest.raises(DiffBFRError, match="got 2 images but the face set was detected on 1"):
        paste.paste(torch.cat([photo, photo]), face_set, crops, "none", 1.0)
    image, mask = paste.paste(photo, face_set, torch.rand(1, 256, 256, 3), "wavelet", 1.0)
    assert image.shape == photo.shape and mask.shape[0] == 1


def test_degrade_node_is_seeded_and_keeps_the_size(nodes):
    image = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    node = nodes["DiffBFRDegrade"]()
    (a,) = node.degrade(image, 1.5, 3.0, 5.0, 50, 7)
    (b,) = node.degrade(image, 1.5, 3.0, 5.0, 50, 7)
    (c,) = node.degrade(image, 1.5, 3.0, 5.0, 50, 8)
    assert a.shape == image.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert (a - image).abs().mean() > 0.02  # visibly degraded
    (same,) = node.degrade(image, 0.0, 1.0, 0.0, 100, 0)
    assert torch.allclose(same, image, atol=1e-5)  # every step off: unchanged


def test_degrade_node_defaults_keep_the_example_face_detectable(nodes, one_thread):
    pytest.importorskip("dlib")
    from comfy_diffbfr.faces import detect_faces
    from comfy_diffbfr.workflow.core_nodes import load_image_file

    photo, _ = load_image_file(EXAMPLE_PHOTO)
    required = nodes["DiffBFRDegrade"].INPUT_TYPES()["required"]
    defaults = {name: spec[1]["default"] for name, spec in required.items() if name != "image"}
    assert defaults["preset"] == "custom"
    for seed in range(3):
        (lq,) = nodes["DiffBFRDegrade"]().degrade(photo, **{**defaults, "seed": seed})
        assert (lq - photo).abs().mean() > 0.01  # visibly degraded
        assert len(detect_faces(lq, detector="dlib", crop_size=64)) == 1, f"seed {seed}"


@pytest.mark.parametrize("preset", ["moderate", "severe"])
def test_degrade_node_presets_equal_the_command_line(nodes, preset, tmp_path):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.workflow.core_nodes import load_image_file

    assert main(["degrade", str(EXAMPLE_PHOTO), "-o", str(tmp_path), "--preset", preset, "--seed", "5"]) == 0
    photo, _ = load_image_file(EXAMPLE_PHOTO)
    (lq,) = nodes["DiffBFRDegrade"]().degrade(photo, 0.0, 1.0, 0.0, 100, 5, preset)  # sliders at "off": ignored
    (cli,), _ = load_image_file(tmp_path / EXAMPLE_PHOTO.name)
    assert (lq[0] - cli).abs().max() <= 1 / 255 + 1e-6  # the command line writes 8-bit PNG
    assert (lq - photo).abs().mean() > 0.02


def test_all_in_one_restore_equals_the_chain_of_nodes(nodes, model_dir, monkeypatch):
    from comfy_diffbfr import pipeline
    from comfy_diffbfr.defaults import STAGE_DEFAULTS
    from comfy_diffbfr.workflow.core_nodes import load_image_file

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    tiny_model(model_dir / "i64.safetensors", "irm64", ["lq"], resolution=64)
    tiny_model(model_dir / "tem.safetensors", "tem", [], resolution=64)
    load = nodes["DiffBFRModelLoader"]().load
    (m64,), (mtem,) = load("i64.safetensors", "auto"), load("tem.safetensors", "auto")
    photo, _ = load_image_file(EXAMPLE_PHOTO)
    from comfy_diffbfr.defaults import STAGE_DEFAULTS

    # the stage nodes' defaults, shortened
    monkeypatch.setitem(STAGE_DEFAULTS, "irm64", STAGE_DEFAULTS["irm64"].updated(steps=3))
    monkeypatch.setitem(STAGE_DEFAULTS, "tem", STAGE_DEFAULTS["tem"].updated(steps=2))
    monkeypatch.setattr(pipeline, "identity_model", lambda: None)  # dlib's distance has its own tests
    restore = nodes["DiffBFRRestore"]()
    with pytest.raises(DiffBFRError, match="connect at least one model"):
        restore.restore(photo, "auto", "none", 3)
    image, mask, report = restore.restore(photo, "auto", "none", 3, irm64=m64, tem=mtem, tem_fidelity=16)
    face_set, crops = nodes["DiffBFRFaceDetect"]().detect(photo, "auto", "all", 512, False)
    (x,) = nodes["DiffBFRIRM64"]().run(m64, crops, **STAGE_DEFAULTS["irm64"].updated(seed=3).as_kwargs())
    (x,) = nodes["DiffBFRTEM"]().run(mtem, x, **STAGE_DEFAULTS["tem"].updated(seed=3, fidelity=16).as_kwargs())
    chained, _ = nodes["DiffBFRPasteBack"]().paste(photo, face_set, x, "none", 1.0)
    assert torch.equal(image, chained) and mask.shape == (1, *photo.shape[1:3])
    assert report.startswith(f"image 0: {len(face_set)} face(s)") and "score" in report
    schema = nodes["DiffBFRRestore"].INPUT_TYPES()["optional"]
    assert {name: schema[f"{name}_fidelity"][1]["default"] for name in ("irm64", "irm256", "tem")} == {
        name: STAGE_DEFAULTS[name].fidelity for name in ("irm64", "irm256", "tem")}


def test_paste_back_accepts_the_old_strength_name(nodes, tmp_path):
    """The colour mix was called 'strength' before: UI workflows store it by position (now
    color_strength), API prompts by name; both still load and mean the same."""
    from comfy_diffbfr.workflow.runner import node_classes, validate

    photo = torch.rand(1, 80, 80, 3, generator=torch.Generator().manual_seed(0))
    face_set, crops = nodes["DiffBFRFaceDetect"]().detect(photo, "auto", "all", 64, True)
    tinted = (crops * 0.6 + 0.3).clamp(0, 1)
    paste = nodes["DiffBFRPasteBack"]()
    new, _ = paste.paste(photo, face_set, tinted, "adain", color_strength=0.3)
    old_prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "diffbfr_example.png"}},
        "2": {"class_type": "DiffBFRFaceDetect", "inputs": {"image": ["1", 0], "detector": "auto", "selection": "all",
                                                             "crop_size": 64, "aligned": True}},
        "3": {"class_type": "DiffBFRPasteBack", "inputs": {"image": ["1", 0], "faces": ["2", 0], "restored": ["2", 1],
                                                            "color_correction": "adain", "strength": 0.3}},
    }
    assert "color_strength" not in validate(old_prompt, node_classes())["3"]  # validates without the new name
    old, _ = paste.paste(photo, face_set, tinted, "adain", prompt=old_prompt, unique_id="3")  # as ComfyUI calls it
    full, _ = paste.paste(photo, face_set, tinted, "adain", prompt={}, unique_id="3")
    assert torch.equal(new, old) and not torch.equal(new, full)
    import json

    from comfy_diffbfr.workflow.runner import to_prompt
    from pack_helpers import REPO

    ui = json.loads((REPO / "workflows" / "diffbfr_full.json").read_text())  # saved as [color_correction, strength]
    (saved,) = [n["widgets_values"] for n in ui["nodes"] if n["type"] == "DiffBFRPasteBack"]
    (inputs,) = [n["inputs"] for n in to_prompt(ui, node_classes()).values() if n["class_type"] == "DiffBFRPasteBack"]
    assert (inputs["color_correction"], inputs["color_strength"]) == tuple(saved) and "strength" not in inputs
