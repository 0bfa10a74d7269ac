"""One table of defaults: the stage nodes and the shipped workflows carry its values."""

from __future__ import annotations

import copy
import json
from dataclasses import fields

import pytest

from comfy_diffbfr.defaults import STAGE_DEFAULTS, StageSettings
from comfy_diffbfr.workflow.runner import node_classes, to_prompt
from pack_helpers import WORKFLOWS

STAGE_OF = {"DiffBFRIRM64": "irm64", "DiffBFRIRM256": "irm256", "DiffBFRTEM": "tem"}
WIDGETS = [f.name for f in fields(StageSettings) if f.name not in ("seed", "fidelity_weight", "fidelity_stop")]
# The workflows that run the pipeline as it is by default carry every value of the table; the
# special-purpose ones choose some of their own (workflows/README.md says why).
OWN_CHOICES = {
    "diffbfr_mixed_core": {"strength", "steps"},  # TEM on a bicubic upscale of IRM 64
    "diffbfr_tem_polish": {"strength", "steps"},  # TEM on any image
    "diffbfr_public_prior": {"strength", "steps", "fidelity"},  # a public prior as the restorer
}


def test_stage_nodes_default_to_the_table():
    classes = node_classes()
    for class_type, stage in STAGE_OF.items():
        schema = classes[class_type].INPUT_TYPES()
        for name in WIDGETS:
            spec = {**schema["required"], **schema["optional"]}[name]
            default = spec[1]["default"]
            assert default == getattr(STAGE_DEFAULTS[stage], name), (class_type, name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflows_carry_the_table(path):
    prompt = to_prompt(json.loads(path.read_text()), node_classes())
    stage_nodes = [n for n in prompt.values() if n["class_type"] in STAGE_OF]
    assert stage_nodes
    for node in stage_nodes:
        table = STAGE_DEFAULTS[STAGE_OF[node["class_type"]]]
        names = [n for n in WIDGETS if n not in OWN_CHOICES.get(path.stem, ())]
        for name in names:
            assert node["inputs"][name] == getattr(table, name), (path.name, node["class_type"], name)


def test_a_workflow_saved_before_the_fidelity_widget_gets_the_table_default():
    workflow = json.loads(next(p for p in WORKFLOWS if p.stem == "diffbfr_full").read_text())
    old = copy.deepcopy(workflow)
    for node in old["nodes"]:
        if node["type"] in STAGE_OF:
            node["widgets_values"] = node["widgets_values"][:7]  # strength .. seed_mode
    prompt = to_prompt(old, node_classes())
    for node in prompt.values():
        if node["class_type"] in STAGE_OF:
            assert node["inputs"]["fidelity"] == STAGE_DEFAULTS[STAGE_OF[node["class_type"]]].fidelity


def test_a_prompt_without_fidelity_runs_with_the_table_default(monkeypatch):
    from comfy_diffbfr import stages

    seen = {}
    monkeypatch.setattr(stages, "run_stage", lambda stage, model, image, **kw: seen.update(kw) or image)
    node = node_classes()["DiffBFRTEM"]()
    node.run(None, None, strength=0.1, steps=2, sampler="ddim", eta=0.0, seed=0, seed_mode="per_face")
    assert seen["fidelity"] == STAGE_DEFAULTS["tem"].fidelity
