"""Every node explains itself: a description, a tooltip on every widget, and search terms that the
ComfyUI frontend finds (1.27 searches ids and display names; newer frontends also SEARCH_ALIASES)."""

from __future__ import annotations

import pytest

from comfy_diffbfr.workflow.ui_format import widget_inputs
from pack_helpers import load_pack

SEARCH_TERMS = ("face restoration", "restore face", "blind face", "identity", "texture")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def test_every_node_has_a_description_and_search_aliases(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20, node_id
        aliases = getattr(cls, "SEARCH_ALIASES", None)
        assert isinstance(aliases, list) and aliases and all(isinstance(a, str) and a for a in aliases), node_id


def test_every_widget_of_every_node_has_a_tooltip(pack):
    missing = [f"{node_id}.{name}" for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()
               for name, _, options in widget_inputs(cls.INPUT_TYPES()) if not options.get("tooltip")]
    assert not missing, f"widgets without a tooltip: {missing}"
    # the widgets the issue names, checked by name so that a schema change cannot hide them
    schema = pack.NODE_CLASS_MAPPINGS["DiffBFRFaceDetect"].INPUT_TYPES()["required"]
    assert schema["detector"][1]["tooltip"] and schema["crop_size"][1]["tooltip"]
    stage = pack.NODE_CLASS_MAPPINGS["DiffBFRIRM64"].INPUT_TYPES()["required"]
    assert stage["sampler"][1]["tooltip"] and stage["seed"][1]["tooltip"]


@pytest.mark.parametrize("term", SEARCH_TERMS)
def test_search_terms_reach_a_node_in_old_and_new_frontends(pack, term):
    classes, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert any(term in getattr(cls, "SEARCH_ALIASES", []) for cls in classes.values()), term
    # the 1.27 frontend matches each word of the query (fuzzily) against the id and the display name
    assert any(all(word[:5] in f"{node_id} {names[node_id]}".lower() for word in term.split()) for node_id in classes), term
