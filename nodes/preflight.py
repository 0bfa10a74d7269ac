"""A check of the whole graph before the first diffusion stage samples.

ComfyUI's ``VALIDATE_INPUTS`` sees only a node's own widget values (a linked input arrives as
None), so which model file reaches a stage node through its ``model`` link is unknown there. Each
stage node therefore receives the prompt (hidden ``PROMPT``) and, before it samples, checks every
stage node of the graph: its model is of the right kind, IRM 256 gets the low-quality crops on
``lq`` when its model is conditioned on them, and seed_mode per_track gets the face set. The first stage to run thus stops a graph that
would fail later, before any sampling. Models are loaded through the loader node's own cache, so
the loader nodes then find them loaded.
"""

from __future__ import annotations

from typing import Any, Mapping

from comfy_diffbfr import stages
from comfy_diffbfr.errors import DiffBFRError, WrongModelKindError

LOADER = "DiffBFRModelLoader"
LOADER_WIDGETS = ("model_name", "precision", "hints")


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def check_stage_nodes(prompt: Mapping[str, Mapping[str, Any]], stage_of: Mapping[str, stages.StageSpec]) -> None:
    """Raise for the first stage node (in id order) whose model cannot serve it; ``stage_of`` maps
    a stage node's class name to its stage. Models behind anything but a loader node with fixed
    widget values are left to the stage itself."""
    from .loader import DiffBFRModelLoader

    for node_id in sorted(prompt, key=lambda k: (len(k), k)):
        node = prompt[node_id]
        stage = stage_of.get(node.get("class_type"))
        inputs = node.get("inputs", {})
        link = inputs.get("model")
        if stage is None:
            continue
        title = node.get("_meta", {}).get("title")
        where = f"{title if title and title != node['class_type'] else 'DiffBFR ' + stage.title} (node {node_id})"
        if inputs.get("seed_mode") == "per_track" and not _is_link(inputs.get("faces")):
            raise DiffBFRError(
                f"{where}: seed_mode 'per_track' needs the face set: connect the 'faces' output of DiffBFR Face "
                "Detect to its 'faces' input. (Checked before any stage samples.)"
            )
        if not _is_link(link):
            continue
        source = prompt.get(link[0], {})
        settings = {k: v for k, v in source.get("inputs", {}).items() if k in LOADER_WIDGETS}
        if source.get("class_type") != LOADER or any(_is_link(v) for v in settings.values()):
            continue
        (handle,) = DiffBFRModelLoader().load(**settings)
        try:
            stages.check_model(stage, handle)
        except WrongModelKindError as exc:
            raise WrongModelKindError(f"{where}: {exc}") from None
        if stages.requires_lq(stage, handle.loaded) and not _is_link(inputs.get("lq")):
            raise DiffBFRError(
                f"{where}: {handle.name!r} is conditioned on the low-quality face crops, but its 'lq' input is not "
                "connected: connect the 'crops' output of DiffBFR Face Detect to it. (Checked before any stage samples.)"
            )
