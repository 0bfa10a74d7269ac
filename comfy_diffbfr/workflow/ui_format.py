"""UI-format workflows (what users save and drag into ComfyUI) to the API prompt format.

Follows what ComfyUI's frontend does when it queues a graph: ``widgets_values`` are positional
over the node's widget inputs (required, then optional, in ``INPUT_TYPES`` order), with the extra
UI-only values skipped (the "control after generate" value after a seed, the "upload" value of an
image picker); widgets added after a workflow was saved take their defaults, as in the frontend. Muted nodes (mode 2) are dropped, bypassed nodes (mode 4) pass their input of the
same type through, Reroutes are followed, and notes are ignored.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import WorkflowError

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
MUTED, BYPASSED = 2, 4


def is_ui_format(workflow: Mapping[str, Any]) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def widget_inputs(schema: Mapping[str, Any]) -> list[tuple[str, Any, dict]]:
    """``(name, type, options)`` of the widget inputs, in the order their values are saved."""
    out = []
    for section in ("required", "optional"):
        for name, spec in schema.get(section, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES) and not options.get("forceInput"):
                out.append((name, kind, options))
    return out


def has_control(name: str, kind: Any, options: Mapping[str, Any]) -> bool:
    """Whether the frontend adds a "control after generate" widget (and saved value) after this widget."""
    return options.get("control_after_generate", False) or (kind == "INT" and name in ("seed", "noise_seed"))


def _widget_values(node: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    saved = node.get("widgets_values") or []
    widgets = widget_inputs(schema)
    if isinstance(saved, dict):
        return {name: saved[name] for name, _, _ in widgets if name in saved}
    values, i = {}, 0
    required = set(schema.get("required", {}))
    upload_pending = False
    for name, kind, options in widgets:
        if name not in required and upload_pending:
            i += 1  # the "upload" value follows the required widgets
            upload_pending = False
        if i >= len(saved):
            # Saved before this widget existed: the frontend gives it its default, and so do we.
            if "default" in options:
                values[name] = options["default"]
            elif isinstance(kind, (list, tuple)) and kind:
                values[name] = kind[0]
            continue
        values[name] = saved[i]
        i += 1
        if has_control(name, kind, options):
            i += 1
        if options.get("image_upload"):
            upload_pending = True
    return values


def to_api(workflow: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The API prompt ``{id: {class_type, inputs}}`` of a UI workflow; ``schemas`` = INPUT_TYPES by class."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by the headless runner; unpack them in ComfyUI first")
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id: int) -> list | None:
        """``[origin id, slot]`` for a link, following Reroutes and bypassed nodes."""
        _, origin, slot, _, _, kind = links[link_id][:6]
        node = nodes[str(origin)]
        if node.get("mode") == MUTED:
            return None
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp.get("type") == kind):
                    return source(inp["link"])
            return None
        return [str(origin), slot]

    prompt: dict[str, dict] = {}
    for node_id, node in nodes.items():
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        if node["type"] not in schemas:
            raise WorkflowError(f"node {node_id} is of type {node['type']!r}, which is not available here")
        inputs: dict[str, Any] = _widget_values(node, schemas[node["type"]])
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src = source(inp["link"])
                if src is not None:
                    inputs[inp["name"]] = src
                else:
                    inputs.pop(inp["name"], None)
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title", node["type"])}}
    return prompt
