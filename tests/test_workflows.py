"""Every shipped workflow runs in the headless runner, with tiny models under the starter names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_diffbfr.workflow.runner import node_classes, run_workflow, to_prompt
from pack_helpers import REPO, WORKFLOWS, stage_models

STAGE_NODES = {"DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM"}


@pytest.fixture(scope="module")
def starter_models(tmp_path_factory):
    # the folder conftest points COMFY_DIFFBFR_MODELS at; it comes before the pack's weights/
    return stage_models(tmp_path_factory.getbasetemp() / "models" / "diffbfr")


def quick_prompt(path):
    """The workflow in API form with 1 step per stage and small crops, so it runs in seconds."""
    prompt = to_prompt(json.loads(path.read_text()), node_classes())
    for node in prompt.values():
        if node["class_type"] in STAGE_NODES:
            node["inputs"]["steps"] = 1
        if node["class_type"] == "DiffBFRFaceDetect":
            node["inputs"]["crop_size"] = 128
    return prompt


def test_the_five_kinds_of_workflow_are_shipped():
    names = {p.stem for p in WORKFLOWS}
    assert {"diffbfr_full", "diffbfr_irm_only", "diffbfr_tem_polish", "diffbfr_mixed_core", "diffbfr_batch"} <= names
    for path in WORKFLOWS:
        wf = json.loads(path.read_text())
        loads = [n for n in wf["nodes"] if n["type"] == "LoadImage"]
        assert loads and all(n["widgets_values"][0] == "diffbfr_example.png" for n in loads)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_headless(path, starter_models, tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    ctx = run_workflow(quick_prompt(path), tmp_path)
    saved = ctx.saved
    assert saved, "the workflow wrote no image"
    assert all(p.parent.name == "temp" for p in ctx.previews)
    photo = np.array(Image.open(REPO / "examples" / "diffbfr_example.png"))
    for file in saved:
        out = np.array(Image.open(file))
        assert out.ndim == 3 and out.shape[2] == 3
        if out.shape == photo.shape:
            assert not np.array_equal(out, photo)  # the faces were changed


def test_same_seed_same_image_other_seed_different(starter_models, tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    path = REPO / "workflows" / "diffbfr_tem_polish.json"
    prompt = quick_prompt(path)
    tem = next(k for k, v in prompt.items() if v["class_type"] == "DiffBFRTEM")
    scale = next(k for k, v in prompt.items() if v["class_type"] == "ImageScale")
    prompt[scale]["inputs"].update(width=64, height=64)

    def render(seed, out):
        prompt[tem]["inputs"]["seed"] = seed
        return np.array(Image.open(run_workflow(prompt, tmp_path / out).saved[0]))

    first = render(1, "a")
    assert np.array_equal(first, render(1, "b"))
    assert not np.array_equal(first, render(2, "c"))


def test_run_command_with_input_and_set(starter_models, tmp_path, capsys):
    from comfy_diffbfr.cli import main

    photo = tmp_path / "other.png"
    Image.fromarray(np.full((100, 140, 3), 90, np.uint8)).save(photo)
    path = REPO / "workflows" / "diffbfr_tem_polish.json"
    workflow = json.loads(path.read_text())
    scale = next(n["id"] for n in workflow["nodes"] if n["type"] == "ImageScale")
    tem = next(n["id"] for n in workflow["nodes"] if n["type"] == "DiffBFRTEM")
    code = main(["run", str(path), "-o", str(tmp_path / "out"), "--input", str(photo),
                 "--set", f"{scale}.width=96", "--set", f"{scale}.height=64", "--set", f"{tem}.steps=1"])
    assert code == 0
    saved = capsys.readouterr().out.split()
    assert len(saved) == 1 and Image.open(saved[0]).size == (96, 64)
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--set", "999.steps=1"]) == 2
    assert "no node '999'" in capsys.readouterr().err


def test_restore_with_stages_runs_the_default_workflow(starter_models, tmp_path, capsys, monkeypatch):
    from comfy_diffbfr.cli import main

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(blank)
    photo = REPO / "examples" / "diffbfr_example.png"
    out = tmp_path / "out"
    code = main(["restore", str(photo), str(blank), "-o", str(out), "--stages", "irm64,tem",
                 "--steps", "1", "--strength", "0.5,0.2", "--seed", "4"])
    assert code == 0
    streams = capsys.readouterr()
    assert "blank.png: no face found, written unchanged" in streams.err
    restored, original = np.array(Image.open(out / "diffbfr_example.png")), np.array(Image.open(photo))
    assert restored.shape == original.shape and not np.array_equal(restored, original)
    assert np.array_equal(np.array(Image.open(out / "blank.png")), np.array(Image.open(blank)))
    assert main(["restore", str(photo), "-o", str(out), "--stages", "irm64,tem", "--steps", "1,2,3"]) == 2
    assert "one per stage (2), got 3" in capsys.readouterr().err


def test_restore_without_the_starter_weights_says_what_to_do(tmp_path, capsys, monkeypatch):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.host import folders

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path / "empty"))
    monkeypatch.setattr(folders, "PACK_WEIGHTS", tmp_path / "no_weights")
    code = main(["restore", str(REPO / "examples" / "diffbfr_example.png"), "-o", str(tmp_path / "o"), "--stages", "irm64,irm256,tem"])
    assert code == 2
    err = capsys.readouterr().err
    assert "starter weights 'irm64.safetensors' are not installed" in err and "'--stages none'" in err
    assert main(["restore", str(REPO / "examples" / "diffbfr_example.png"), "-o", str(tmp_path / "o"), "--stages", "irm65"]) == 2
    assert "unknown stage(s) ['irm65']" in capsys.readouterr().err


def test_restore_keeps_the_workflows_colour_correction_unless_asked(tmp_path, monkeypatch):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.workflow import restore_workflow as rw

    seen = []
    monkeypatch.setattr(rw, "restore_paths", lambda paths, out, prompt, load_id, paste_id: seen.append(prompt[paste_id]["inputs"]) or 0)
    workflow = to_prompt(json.loads((REPO / "workflows" / "diffbfr_full.json").read_text()), node_classes())
    (own,) = [n["inputs"]["color_correction"] for n in workflow.values() if n["class_type"] == "DiffBFRPasteBack"]
    photo = str(REPO / "examples" / "diffbfr_example.png")
    assert main(["restore", photo, "-o", str(tmp_path)]) == 0
    assert main(["restore", photo, "-o", str(tmp_path), "--color-correction", "adain", "--color-strength", "0.5"]) == 0
    assert seen[0]["color_correction"] == own != "none"
    assert (seen[1]["color_correction"], seen[1]["strength"]) == ("adain", 0.5)


def test_run_precision_overrides_every_model_loader(starter_models, tmp_path, monkeypatch, capsys):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.host.model_cache import ModelHandle
    from comfy_diffbfr.workflow import runner

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    prompt = quick_prompt(REPO / "workflows" / "diffbfr_full.json")
    loaders = [k for k, v in prompt.items() if v["class_type"] == runner.MODEL_LOADER]
    assert len(loaders) == 3
    for k in loaders:  # the saved workflow says fp32; the flag wins
        prompt[k]["inputs"]["precision"] = "fp32"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    used = []
    original = ModelHandle.compute_mode
    monkeypatch.setattr(ModelHandle, "compute_mode", lambda self, *a: used.append(self.precision) or original(self, *a))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--precision", "bf16"]) == 0
    assert used == ["bf16"] * 3  # each of the three stages ran with the flag's precision
    with pytest.raises(SystemExit):
        main(["run", str(path), "-o", str(tmp_path / "out"), "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
    with pytest.raises(runner.WorkflowError, match="--precision must be one of"):
        runner.set_precision(prompt, "fp8")
