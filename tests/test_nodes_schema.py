"""Every node's schema is what ComfyUI accepts: defaults within min/max, consistent return types,
stable ids; and the pack imports the way ComfyUI imports it (path-shaped module name)."""

from __future__ import annotations

import pytest

from comfy_diffbfr.workflow.ui_format import widget_inputs

from pack_helpers import load_pack

NODE_IDS = {"DiffBFRModelLoader", "DiffBFRFaceDetect", "DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM", "DiffBFRPasteBack"}
SOCKET_TYPES = {"IMAGE", "MASK", "DIFFBFR_MODEL", "DIFFBFR_FACES", "SEGS"}  # SEGS: Impact Pack's
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture(scope="module")
def mappings():
    pack = load_pack()
    return pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS


def test_the_six_stable_ids_are_exported_with_display_names(mappings):
    classes, names = mappings
    assert NODE_IDS <= set(classes)
    assert set(names) == set(classes)
    assert all(names[k].startswith("DiffBFR") for k in classes)


@pytest.mark.parametrize("node_id", sorted(NODE_IDS | {"DiffBFRDegrade", "DiffBFRRestore", "DiffBFRFacesFromSEGS", "DiffBFRFacesToSEGS"}))
def test_schema_is_valid(mappings, node_id):
    cls = mappings[0][node_id]
    schema = cls.INPUT_TYPES()
    assert set(schema) <= {"required", "optional", "hidden"} and "required" in schema
    for section in ("required", "optional"):
        for name, spec in schema.get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list):
                assert all(isinstance(v, str) for v in kind), name
                if "default" in options:
                    assert options["default"] in kind, f"{node_id}.{name}: default not among the choices"
            elif kind in WIDGETS:
                default = options.get("default")
                if kind in ("INT", "FLOAT"):
                    assert default is not None, f"{node_id}.{name} has no default"
                    assert options.get("min", default) <= default <= options.get("max", default), f"{node_id}.{name}"
                    if kind == "INT":
                        assert isinstance(default, int)
            else:
                assert kind in SOCKET_TYPES, f"{node_id}.{name}: unknown socket type {kind!r}"
    assert isinstance(cls.RETURN_TYPES, tuple) and all(t in SOCKET_TYPES | {"STRING"} for t in cls.RETURN_TYPES)
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("DiffBFR") and cls.DESCRIPTION


def test_stage_widgets_keep_their_saved_order(mappings):
    """Saved workflows store widget values by position: reordering breaks them."""
    for node_id in ("DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM"):
        schema = mappings[0][node_id].INPUT_TYPES()
        assert list(schema["required"]) == ["model", "image", "strength", "steps", "sampler", "eta", "seed", "seed_mode"]
        widgets = [name for name, _, _ in widget_inputs({"optional": schema["optional"]})]
        assert widgets == ["fidelity"]  # appended after the required widgets


def test_paste_back_keeps_its_widget_positions(mappings):
    from comfy_diffbfr.workflow.ui_format import widget_inputs

    schema = mappings[0]["DiffBFRPasteBack"].INPUT_TYPES()
    assert [name for name, _, _ in widget_inputs(schema)] == ["color_correction", "color_strength"]  # was strength


def test_loader_lists_the_model_folder_and_the_pack_weights(mappings, tmp_path, monkeypatch):
    from pack_helpers import tiny_model

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))
    tiny_model(tmp_path / "diffbfr" / "mine.safetensors", "tem", [], resolution=64)
    choices = mappings[0]["DiffBFRModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert "mine.safetensors" in choices
