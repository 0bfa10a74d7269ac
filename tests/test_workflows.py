"""Every shipped workflow runs in the headless runner, with tiny models under the starter names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_diffbfr.workflow.runner import node_classes, run_workflow, to_prompt
from pack_helpers import EXAMPLE_PHOTO, REPO, WORKFLOWS, stage_models, stand_in_public_prior

STAGE_NODES = {"DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM"}


@pytest.fixture(scope="module")
def starter_models(tmp_path_factory):
    # the folder conftest points COMFY_DIFFBFR_MODELS at; it comes before the pack's weights/
    folder = tmp_path_factory.getbasetemp() / "models" / "diffbfr"
    models = stage_models(folder)
    stand_in_public_prior(folder)  # the prior diffbfr_public_prior.json names
    return models


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
    photo = np.array(Image.open(EXAMPLE_PHOTO))
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


def test_restore_with_stages(starter_models, tmp_path, capsys, monkeypatch):
    from comfy_diffbfr.cli import main

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(blank)
    photo = EXAMPLE_PHOTO
    rgba = tmp_path / "rgba.png"
    pixels = np.array(Image.open(photo).convert("RGB"))
    alpha = np.tile(np.linspace(0, 255, pixels.shape[1]).astype(np.uint8), (pixels.shape[0], 1))
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(rgba)
    out = tmp_path / "out"
    code = main(["restore", str(photo), str(blank), str(rgba), "-o", str(out), "--stages", "irm64,tem",
                 "--steps", "1", "--strength", "0.5,0.2", "--fidelity", "0,64", "--seed", "4"])
    assert code == 0
    streams = capsys.readouterr()
    assert "blank.png: no face found, written unchanged" in streams.err
    assert "fidelity 0" in streams.err and "fidelity 64" in streams.err  # the settings used, per stage
    restored, original = np.array(Image.open(out / "diffbfr_example.png")), np.array(Image.open(photo))
    assert restored.shape == original.shape and not np.array_equal(restored, original)
    assert np.array_equal(np.array(Image.open(out / "blank.png")), np.array(Image.open(blank)))
    with_alpha = np.array(Image.open(out / "rgba.png"))
    assert with_alpha.shape[2] == 4 and np.array_equal(with_alpha[..., 3], alpha)  # alpha kept with stages
    assert not np.array_equal(with_alpha[..., :3], pixels)
    assert main(["restore", str(photo), "-o", str(out), "--stages", "irm64,tem", "--steps", "1,2,3"]) == 2
    assert "one per stage (2: irm64, tem), got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse refuses it before anything runs
        main(["restore", str(photo), "-o", str(out), "--fidelity", "-8"])
    assert refused.value.code == 2 and "argument --fidelity: each value must be a whole number in [0, 4096]" in capsys.readouterr().err


def test_restore_json_reports_every_face_and_the_settings(starter_models, tmp_path, capsys, monkeypatch):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.defaults import STAGE_DEFAULTS

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    photo = EXAMPLE_PHOTO
    assert main(["restore", str(photo), "-o", str(tmp_path), "--stages", "irm64", "--json", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    (stage,) = report["stages"]
    assert stage["stage"] == "irm64" and stage["precision"] == "fp32"
    assert {k: stage[k] for k in ("strength", "steps", "fidelity")} == {
        k: getattr(STAGE_DEFAULTS["irm64"], k) for k in ("strength", "steps", "fidelity")}
    (entry,) = report["photos"]
    assert entry["output"] == str(tmp_path / "diffbfr_example.png") and len(entry["faces"]) >= 1
    face = entry["faces"][0]
    assert len(face["box"]) == 4 and face["detector"] in ("dlib", "retinaface_resnet50")
    try:
        import dlib  # noqa: F401
    except ImportError:
        assert "identity_distance" not in face
    else:
        assert 0.0 <= face["identity_distance"] < 2.0


def test_restore_without_the_starter_weights_says_what_to_do(tmp_path, capsys, monkeypatch):
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.host import folders

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path / "empty"))
    monkeypatch.setattr(folders, "PACK_WEIGHTS", tmp_path / "no_weights")
    code = main(["restore", str(EXAMPLE_PHOTO), "-o", str(tmp_path / "o"), "--stages", "irm64,irm256,tem"])
    assert code == 2
    err = capsys.readouterr().err
    assert "starter weights 'irm64.safetensors' are not installed" in err and "'--stages none'" in err
    assert main(["restore", str(EXAMPLE_PHOTO), "-o", str(tmp_path / "o"), "--stages", "irm65"]) == 2
    assert "unknown stage(s) ['irm65']" in capsys.readouterr().err


def test_restore_keeps_the_workflows_colour_correction_unless_asked(starter_models, tmp_path, monkeypatch):
    from comfy_diffbfr import pipeline
    from comfy_diffbfr.cli import main

    seen = []
    real = pipeline.paste_back
    monkeypatch.setattr(pipeline, "paste_back", lambda *a, **k: seen.append(k) or real(*a, **k))
    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    workflow = to_prompt(json.loads((REPO / "workflows" / "diffbfr_full.json").read_text()), node_classes())
    (own,) = [n["inputs"]["color_correction"] for n in workflow.values() if n["class_type"] == "DiffBFRPasteBack"]
    photo = str(EXAMPLE_PHOTO)
    fast = ["--stages", "irm64", "--steps", "1", "--no-identity"]
    assert main(["restore", photo, "-o", str(tmp_path), *fast]) == 0
    assert main(["restore", photo, "-o", str(tmp_path), *fast, "--color-correction", "adain", "--color-strength", "0.5"]) == 0
    assert main(["restore", photo, "-o", str(tmp_path), "--stages", "none"]) == 0
    assert seen[0]["color_correction"] == own != "none"
    assert (seen[1]["color_correction"], seen[1]["color_strength"]) == ("adain", 0.5)
    assert seen[2]["color_correction"] == "none"


@pytest.mark.slow
def test_cli_restore_equals_the_node_chain(starter_models, tmp_path, monkeypatch):
    """`restore` (the pipeline) and FaceDetect -> IRM64 -> IRM256 -> TEM -> PasteBack run by the
    headless runner (workflows/diffbfr_batch.json: two photos in one batch) give the same bits,
    with every setting at its default."""
    from comfy_diffbfr.cli import main
    from comfy_diffbfr.faces.image_io import to_uint8
    from comfy_diffbfr.workflow.core_nodes import RunContext
    from comfy_diffbfr.workflow.runner import Runner

    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    photo = EXAMPLE_PHOTO
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    pixels = np.array(Image.open(photo).convert("RGB"))
    Image.fromarray(pixels).save(first)
    Image.fromarray(pixels[:, ::-1].copy()).save(second)  # mirrored: a different face
    prompt = to_prompt(json.loads((REPO / "workflows" / "diffbfr_batch.json").read_text()), node_classes())
    loads = sorted(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    for node_id, path in zip(loads, (first, second)):
        prompt[node_id]["inputs"]["image"] = str(path)
    (paste,) = [k for k, v in prompt.items() if v["class_type"] == "DiffBFRPasteBack"]
    chained = Runner(RunContext(output_dir=tmp_path)).run(prompt, targets=[paste])[paste][0]
    assert main(["restore", str(first), str(second), "-o", str(tmp_path / "cli"), "--no-identity"]) == 0
    for row, path in enumerate((first, second)):
        cli = np.array(Image.open(tmp_path / "cli" / path.name))
        assert not np.array_equal(cli, np.array(Image.open(path)))
        assert np.array_equal(cli, to_uint8(chained[row])), path.name


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
