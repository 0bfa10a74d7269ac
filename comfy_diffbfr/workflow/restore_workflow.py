"""`restore` with diffusion stages: the default workflow (``workflows/diffbfr_full.json``) run
through the headless runner, with the stage nodes the user did not ask for cut out of the chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DiffBFRError, WeightsMissingError
from ..host import folders
from .core_nodes import RunContext
from .runner import Runner, load_workflow, node_classes, to_prompt

DEFAULT_WORKFLOW = folders.PACK_ROOT / "workflows" / "diffbfr_full.json"
STAGE_NODES = {"irm64": "DiffBFRIRM64", "irm256": "DiffBFRIRM256", "tem": "DiffBFRTEM"}


def parse_stages(text: str) -> list[str]:
    """``"irm64,irm256,tem"`` -> the stage names, in the pipeline's order."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGE_NODES]
    if unknown or not names:
        raise DiffBFRError(f"unknown stage(s) {unknown or text!r}; use a comma list of {', '.join(STAGE_NODES)}, or 'none'")
    return [s for s in STAGE_NODES if s in names]


def per_stage(values: Sequence[Any], stages: Sequence[str], what: str) -> dict[str, Any]:
    """One value for all stages, or one per stage in order."""
    if len(values) == 1:
        return {s: values[0] for s in stages}
    if len(values) != len(stages):
        raise DiffBFRError(f"give one {what} for all stages or one per stage ({len(stages)}), got {len(values)}")
    return dict(zip(stages, values))


def _only(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    if len(ids) != 1:
        raise DiffBFRError(f"the default workflow must have one {class_type} node, it has {len(ids)}")
    return ids[0]


def restore_prompt(stages: Sequence[str], *, strength: dict | None = None, steps: dict | None = None,
                   seed: int | None = None, aligned: bool = False, detector: str = "auto",
                   workflow: Path = DEFAULT_WORKFLOW) -> tuple[dict, str, str]:
    """The default workflow as an API prompt running ``stages``; returns it with the LoadImage and PasteBack ids."""
    prompt = to_prompt(load_workflow(workflow), node_classes())
    detect, paste, load = _only(prompt, "DiffBFRFaceDetect"), _only(prompt, "DiffBFRPasteBack"), _only(prompt, "LoadImage")
    prompt[detect]["inputs"].update(aligned=aligned, detector=detector)
    previous = [detect, 1]  # the aligned crops
    for stage, class_type in STAGE_NODES.items():
        node_id = _only(prompt, class_type)
        if stage not in stages:
            del prompt[prompt[node_id]["inputs"]["model"][0]]  # its loader
            del prompt[node_id]
            continue
        inputs = prompt[node_id]["inputs"]
        _require_weights(prompt[inputs["model"][0]]["inputs"]["model_name"], stage)
        inputs["image"] = previous
        if strength and stage in strength:
            inputs["strength"] = strength[stage]
        if steps and stage in steps:
            inputs["steps"] = steps[stage]
        if seed is not None:
            inputs["seed"] = seed
        previous = [node_id, 0]
    prompt[paste]["inputs"]["restored"] = previous
    return prompt, load, paste


def _require_weights(name: str, stage: str) -> None:
    try:
        folders.resolve_model("diffbfr", name)
    except DiffBFRError:
        dirs = ", ".join(str(d) for d in folders.model_dirs("diffbfr"))
        raise WeightsMissingError(
            f"the {stage} starter weights {name!r} are not installed (looked in {dirs}). Put them there, choose "
            "other stages with --stages, or run '--stages none' (detection and paste-back only)."
        ) from None


def restore_file(prompt: dict, load_id: str, paste_id: str, image: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the restore prompt on one photo; returns PasteBack's image and mask."""
    prompt = json.loads(json.dumps(prompt))
    prompt[load_id]["inputs"]["image"] = str(Path(image).resolve())
    runner = Runner(RunContext(output_dir=Path(".")))
    outputs = runner.run(prompt, targets=[paste_id])
    return outputs[paste_id][0], outputs[paste_id][1]


def restore_paths(paths: Sequence[Path], output: Path, prompt: dict, load_id: str, paste_id: str, *,
                  overwrite: bool = False) -> int:
    """``restore`` with stages: each photo through the prompt, written as ``output/<stem>.png``
    (``files.OutputNames``: never over an input, a counter name unless ``overwrite``).

    A photo without a face is written unchanged (with a note); one that cannot be read or written
    is reported and skipped (``batch.PhotoBatch``). Returns the exit status."""
    import sys

    from ..batch import PhotoBatch
    from ..errors import NoFaceError
    from ..faces.image_io import image_writer
    from ..files import OutputNames
    from .core_nodes import load_image_file

    batch = PhotoBatch(paths)
    names = OutputNames(output, batch.paths, overwrite=overwrite)

    def process(path: Path) -> None:
        try:
            image, _ = restore_file(prompt, load_id, paste_id, path)
            note = None
        except NoFaceError:
            image, note = load_image_file(path)[0][:1], "no face found, written unchanged"
        target = names.write(Path(path).stem, ".png", image_writer(image, ".png"))
        if note:
            print(f"note: {path}: {note} to {target}", file=sys.stderr)
        else:
            print(f"{path} -> {target}")

    return batch.run(process)
