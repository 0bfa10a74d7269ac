"""The shipped workflows' saved layout is what ComfyUI's frontend draws: no node hides another.

A node is drawn at least as tall as its sockets and widgets need, and taller when its saved size is
(LiteGraph keeps the larger); its title bar sits above ``pos``. The heights below are the 1.27
frontend's, calibrated against nodes measured in a live ComfyUI (scripts/comfyui_screenshots.py):
20 px per socket row, 24 per widget (the seed's "control after generate" is one), 54 for a
multiline text box, 14 of padding; LoadImage with its picture is 314.
"""

from __future__ import annotations

import itertools
import json

import pytest

from comfy_diffbfr.workflow.ui_format import has_control, widget_inputs
from comfy_diffbfr.workflow.runner import node_classes
from pack_helpers import WORKFLOWS

TITLE, SLOT, WIDGET, MULTILINE, PADDING = 30, 20, 24, 54, 14
FIXED = {"LoadImage": 314}
PREVIEW = 330  # output nodes show the result: leave them room for it


def drawn_height(node_type: str, saved: float) -> float:
    cls = node_classes()[node_type]
    if node_type in FIXED:
        return max(saved, FIXED[node_type])
    schema = cls.INPUT_TYPES()
    widgets = widget_inputs(schema)
    names = {name for name, _, _ in widgets}
    sockets = [n for section in ("required", "optional") for n in schema.get(section, {}) if n not in names]
    rows = max(len(sockets), len(cls.RETURN_TYPES), 1)
    body = sum(MULTILINE if o.get("multiline") else WIDGET * (2 if has_control(n, k, o) else 1) for n, k, o in widgets)
    need = rows * SLOT + body + PADDING
    if getattr(cls, "OUTPUT_NODE", False):
        need = max(need, PREVIEW)
    return max(saved, need)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_node_hides_another_when_drawn(path):
    nodes = json.loads(path.read_text())["nodes"]
    boxes = {}
    for node in nodes:
        (x, y), (w, h) = node["pos"], node["size"]
        height = drawn_height(node["type"], h)
        assert h >= height, f"{path.name}: node {node['id']} ({node['type']}) is saved {h} px tall but drawn {height}"
        boxes[f"{node['id']}:{node['type']}"] = (x, y - TITLE, x + w, y + height)
    for (a, ra), (b, rb) in itertools.combinations(boxes.items(), 2):
        assert not (ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]), f"{path.name}: {a} overlaps {b}"
