"""Validation before work: what ComfyUI's VALIDATE_INPUTS can see (a node's own widget values) is
checked before anything runs; what depends on the model file behind a link (its kind, whether IRM 256
needs 'lq') is checked by the first stage node for the whole graph, before any sampling. The headless
runner calls both the way ComfyUI does."""

from __future__ import annotations

import json

import pytest

import comfy_diffbfr.diffusion.samplers as samplers
from comfy_diffbfr.errors import DiffBFRError, NoFaceError, WorkflowError, WrongModelKindError
from comfy_diffbfr.workflow.runner import node_classes, run_workflow, to_prompt
from pack_helpers import EXAMPLE_PHOTO, REPO, load_pack, stage_models


@pytest.fixture(scope="module")
def starter_models(tmp_path_factory):
    return stage_models(tmp_path_factory.getbasetemp() / "models" / "diffbfr")


@pytest.fixture
def sampling_calls(monkeypatch):
    """Counts the diffusion stages that started sampling."""
    calls = []
    real = samplers.truncated_sample
    monkeypatch.setattr(samplers, "truncated_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _full(**changes) -> dict:
    """diffbfr_full.json in API form, 1 step per stage, aligned 64 px crops (no detector needed)."""
    prompt = to_prompt(json.loads((REPO / "workflows" / "diffbfr_full.json").read_text()), node_classes())
    for node in prompt.values():
        if node["class_type"] in ("DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM"):
            node["inputs"]["steps"] = 1
        if node["class_type"] == "DiffBFRFaceDetect":
            node["inputs"].update(crop_size=64, aligned=True)
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = str(EXAMPLE_PHOTO)
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
        prompt[node_id]["inputs"] = {k: v for k, v in prompt[node_id]["inputs"].items() if v is not None}
    return prompt


def _id(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def test_the_full_workflow_passes_the_checks_and_samples_three_stages(starter_models, tmp_path, sampling_calls):
    assert run_workflow(_full(), tmp_path).saved
    assert len(sampling_calls) == 3


def test_irm256_without_lq_is_refused_before_irm64_samples(starter_models, tmp_path, sampling_calls):
    prompt = _full()
    del prompt[_id(prompt, "DiffBFRIRM256")]["inputs"]["lq"]
    with pytest.raises(DiffBFRError, match=r"IRM 256 \(node \d+\): 'irm256.safetensors' is conditioned on the low-quality "
                                           r"face crops, but its 'lq' input is not connected"):
        run_workflow(prompt, tmp_path)
    assert sampling_calls == []


def test_a_wrong_kind_of_model_is_refused_before_any_stage_samples(starter_models, tmp_path, sampling_calls):
    prompt = _full()
    prompt[prompt[_id(prompt, "DiffBFRTEM")]["inputs"]["model"][0]]["inputs"]["model_name"] = "irm64.safetensors"
    with pytest.raises(WrongModelKindError, match=r"TEM \(node \d+\): TEM needs an unconditional face model; 'irm64.safetensors'"):
        run_workflow(prompt, tmp_path)
    assert sampling_calls == []


@pytest.mark.parametrize("indices, message", [
    ("", "selection 'index' needs face numbers in 'indices'"),
    ("0;2", "indices takes comma-separated face numbers such as 0,2; got '0;2'"),
])
def test_an_index_selection_without_valid_numbers_is_refused_before_anything_runs(indices, message, tmp_path, monkeypatch):
    import comfy_diffbfr.faces as faces

    monkeypatch.setattr(faces, "detect_faces", lambda *a, **k: pytest.fail("detection ran"))
    prompt = _full()
    prompt[_id(prompt, "DiffBFRFaceDetect")]["inputs"].update(selection="index", indices=indices, aligned=False)
    with pytest.raises(WorkflowError, match=r"node \d+ \(DiffBFRFaceDetect\): " + message):
        run_workflow(prompt, tmp_path)


def test_validate_inputs_keeps_comfyuis_choice_check_for_selection():
    detect = load_pack().NODE_CLASS_MAPPINGS["DiffBFRFaceDetect"]
    assert detect.VALIDATE_INPUTS(selection="biggest", indices="") == "selection must be one of all, largest, center, index, got 'biggest'"
    assert detect.VALIDATE_INPUTS(selection="index", indices=None) is True  # a linked 'indices' is known only at run time
    assert detect.VALIDATE_INPUTS(selection="all", indices="") is True


def test_an_index_that_selects_nothing_says_so_and_not_try_another_detector(tmp_path, one_thread):
    pytest.importorskip("dlib")
    prompt = _full()
    prompt[_id(prompt, "DiffBFRFaceDetect")]["inputs"].update(selection="index", indices="3", aligned=False, detector="dlib")
    with pytest.raises(NoFaceError) as info:
        run_workflow(prompt, tmp_path)
    message = str(info.value)
    assert "the selection kept no face" in message and "numbered 0..0 left to right; indices 3 select none" in message
    assert "another detector" not in message
