"""Run ComfyUI workflows (UI or API format) without ComfyUI.

The pack's own nodes come from the pack's ``nodes`` package (imported the way ComfyUI imports
the pack), the core nodes from ``core_nodes``. Inputs are validated like ComfyUI validates them
(required inputs, widget value types, min/max, combo lists, links to existing nodes) before
anything runs; then the nodes upstream of the output nodes run once each, in dependency order,
under ``torch.inference_mode()`` as in ComfyUI.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..errors import WorkflowError
from ..host.device import PRECISIONS
from ..host.folders import PACK_ROOT
from .core_nodes import CORE_NODES, RunContext, make_folder
from .ui_format import is_ui_format, to_api

PACK_MODULE = "comfy_diffbfr_pack"
ASSETS_DIR = PACK_ROOT / "assets"  # the example photo the shipped workflows load
# (not examples/: ComfyUI would serve that folder as the template folder instead of workflows/)


def pack_nodes() -> dict[str, type]:
    """The pack's NODE_CLASS_MAPPINGS, importing its top-level ``__init__.py`` as ComfyUI does."""
    module = sys.modules.get(PACK_MODULE)
    if module is None:
        init = PACK_ROOT / "__init__.py"
        if not init.is_file():
            raise WorkflowError(f"the node pack is not beside the library ({init} is missing); run from a checkout of the pack")
        spec = importlib.util.spec_from_file_location(PACK_MODULE, init, submodule_search_locations=[str(PACK_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACK_MODULE]
            raise
    return dict(module.NODE_CLASS_MAPPINGS)


def node_classes() -> dict[str, type]:
    return {**CORE_NODES, **pack_nodes()}


#: Deeper JSON than any saved workflow has (ComfyUI's own files nest about 6 levels).
MAX_NESTING = 64


def load_workflow(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 text, or not JSON (a raw NUL byte, ...)
        raise WorkflowError(f"cannot read workflow {path}: {exc}") from None
    except RecursionError:
        raise WorkflowError(f"cannot read workflow {path}: its JSON is nested too deeply to be a workflow") from None


def _check_nesting(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than ``MAX_NESTING`` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise WorkflowError(f"{what} is nested more than {MAX_NESTING} levels deep; it is not a ComfyUI workflow")
        stack.extend((child, depth + 1) for child in children)


def to_prompt(workflow: Mapping[str, Any], classes: Mapping[str, type]) -> dict[str, dict]:
    """The API prompt of a UI- or API-format workflow (a deep copy, safe to edit)."""
    if not isinstance(workflow, Mapping):
        raise WorkflowError(f"not a ComfyUI workflow: expected a JSON object, got a {type(workflow).__name__}")
    _check_nesting(workflow, "the workflow")
    if is_ui_format(workflow):
        try:
            return to_api(workflow, {name: cls.INPUT_TYPES() for name, cls in classes.items()})
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:  # a field missing or of the wrong kind
            raise WorkflowError(f"malformed UI-format workflow ({type(exc).__name__}: {exc}); "
                                "save it again from ComfyUI or export it in the API format") from None
        except RecursionError:
            raise WorkflowError("malformed UI-format workflow: its Reroute or bypassed nodes link in a circle") from None
    if workflow and all(isinstance(v, Mapping) and "class_type" in v for v in workflow.values()):
        for node_id, node in workflow.items():
            if not isinstance(node_id, str) or not isinstance(node["class_type"], str):
                raise WorkflowError(f"node {node_id!r}: node ids and class_type must be strings, got {node['class_type']!r}")
        return copy.deepcopy(dict(workflow))
    raise WorkflowError("not a ComfyUI workflow: expected the UI format (nodes + links) or the API format ({id: {class_type, inputs}})")


def set_input(prompt: dict, assignment: str) -> None:
    """Apply ``NODE.INPUT=VALUE``; VALUE is JSON when it parses as JSON, else a string."""
    target, sep, raw = assignment.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not name:
        raise WorkflowError(f"--set expects NODE.INPUT=VALUE, got {assignment!r}")
    if node_id not in prompt:
        raise WorkflowError(f"--set {assignment!r}: the workflow has no node {node_id!r} (ids: {', '.join(sorted(prompt))})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:
        raise WorkflowError(f"--set {assignment!r}: the value is nested too deeply") from None
    _check_nesting(value, f"--set {assignment!r}")
    inputs = prompt[node_id].get("inputs")
    if not isinstance(inputs, dict):
        raise WorkflowError(f"--set {assignment!r}: node {node_id} has no 'inputs' object")
    inputs[name] = value


#: the pack's model loader node, whose ``precision`` input ``set_precision`` overrides
MODEL_LOADER = "DiffBFRModelLoader"


def set_precision(prompt: dict, precision: str) -> None:
    """Set the ``precision`` input of every model loader node (one of ``device.PRECISIONS``)."""
    if precision not in PRECISIONS:
        raise WorkflowError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    for node in prompt.values():
        if node["class_type"] == MODEL_LOADER and isinstance(node.get("inputs"), dict):
            node["inputs"]["precision"] = precision


def set_images(prompt: dict, files: Sequence[Path]) -> None:
    """Replace the image of the LoadImage nodes (in id order): file i goes to node i, the last file to the rest."""
    loaders = sorted((k for k, v in prompt.items() if v["class_type"] == "LoadImage"), key=_id_order)
    if files and not loaders:
        raise WorkflowError("--input was given but the workflow has no LoadImage node")
    for i, node_id in enumerate(loaders):
        if files:
            prompt[node_id]["inputs"]["image"] = str(Path(files[min(i, len(files) - 1)]).resolve())


def _id_order(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _convert(kind: str, value: Any) -> Any:
    """A widget value converted as ComfyUI converts it (``int()`` truncates, numbers become text),
    except that NaN, infinities, containers, text that is not true/false for a BOOLEAN and NUL
    bytes are refused: ``ValueError`` with the reason."""
    if kind in ("INT", "FLOAT"):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            for parse in (int, float):
                try:
                    number = parse(value.strip())
                    break
                except ValueError:
                    continue
        if number is None:
            raise ValueError(f"{value!r} is not a valid {kind}")
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise ValueError(f"{value!r} is not a finite number")
        if kind == "FLOAT":
            return float(number)
        return int(number)
    if kind == "BOOLEAN":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{value!r} is not true or false")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not text")
    value = str(value)
    if "\x00" in value:
        raise ValueError(f"{value!r} contains a NUL byte, which no name or text may hold")
    return value


def _check_value(node_id: str, cls: type, name: str, kind: Any, options: Mapping[str, Any], value: Any,
                 limits: bool = True) -> Any:
    """``value`` converted to the widget type; ``limits`` also checks min/max and the choices."""
    where = f"node {node_id} ({cls.__name__}) input {name!r}"
    if isinstance(kind, (list, tuple)):
        if isinstance(value, (list, dict)) or (limits and value not in kind):
            shown = ", ".join(map(repr, list(kind)[:8])) or "none available"
            raise WorkflowError(f"{where}: {value!r} is not one of the choices ({shown})")
        return value
    if kind not in WIDGET_KINDS:
        raise WorkflowError(f"{where} takes a link [node id, output slot] to another node's {kind} output, got {value!r}")
    try:
        value = _convert(kind, value)
    except ValueError as exc:
        raise WorkflowError(f"{where}: {exc}") from None
    if not limits:
        return value
    if "min" in options and value < options["min"]:
        raise WorkflowError(f"{where}: {value} is below the minimum {options['min']}")
    if "max" in options and value > options["max"]:
        raise WorkflowError(f"{where}: {value} is above the maximum {options['max']}")
    return value


def _custom_checks(cls: type) -> tuple[Optional[Any], set[str], bool]:
    """A node's ``VALIDATE_INPUTS``, the input names it declares, and whether it takes ``**kwargs``."""
    check = getattr(cls, "VALIDATE_INPUTS", None)
    if check is None:
        return None, set(), False
    spec = inspect.getfullargspec(check)
    return check, set(spec.args), spec.varkw is not None


def _run_custom_check(node_id: str, node: Mapping[str, Any], cls: type, inputs: Mapping[str, Any]) -> None:
    """Call ``VALIDATE_INPUTS`` as ComfyUI does before running anything: with the node's constant
    inputs, every linked input as None, and hidden values that need no run (the prompt is empty)."""
    check, names, any_name = _custom_checks(cls)
    if check is None or not (names or any_name):
        return
    values = {name: (None if isinstance(value, list) else value) for name, value in inputs.items()}
    for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
        values[name] = {"PROMPT": {}, "UNIQUE_ID": node_id}.get(kind)
    if "input_types" in names:
        raise WorkflowError(f"{cls.__name__}.VALIDATE_INPUTS asks for input_types, which the headless runner does not provide")
    result = check(**{k: v for k, v in values.items() if any_name or k in names})
    if result is not True:
        title = node.get("_meta", {}).get("title") or node["class_type"]
        raise WorkflowError(f"node {node_id} ({title}): {result if result is not False else 'its inputs were refused'}")


def validate(prompt: Mapping[str, dict], classes: Mapping[str, type]) -> dict[str, dict]:
    """Checked and type-converted inputs per node; raises ``WorkflowError`` on the first problem.
    As in ComfyUI, a node's ``VALIDATE_INPUTS`` runs last, and the inputs it names skip the
    built-in min/max and choice checks."""
    checked: dict[str, dict] = {}
    for node_id, node in prompt.items():
        cls = classes.get(node["class_type"])
        if cls is None:
            raise WorkflowError(f"node {node_id}: unknown node type {node['class_type']!r}")
        if not isinstance(node.get("inputs"), Mapping):
            raise WorkflowError(f"node {node_id} ({node['class_type']}): 'inputs' is missing or not an object")
        schema = cls.INPUT_TYPES()
        specs = {**schema.get("required", {}), **schema.get("optional", {})}
        _, custom, any_name = _custom_checks(cls)
        inputs = {}
        for name, spec in specs.items():
            value = node["inputs"].get(name)
            if value is None:
                if name in schema.get("required", {}):
                    raise WorkflowError(f"node {node_id} ({node['class_type']}): required input {name!r} is missing")
                continue
            if isinstance(value, list):  # as in ComfyUI, a list is always a link [node id, output slot]
                if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
                    raise WorkflowError(f"node {node_id}: input {name!r} is {value!r}; a list value must be a link "
                                        "[node id (a string), output slot (an integer)]")
                if value[0] not in prompt:
                    raise WorkflowError(f"node {node_id}: input {name!r} links to missing node {value[0]!r}")
                inputs[name] = value
                continue
            # limits of inputs that VALIDATE_INPUTS names are left to it, as in ComfyUI
            inputs[name] = _check_value(node_id, cls, name, spec[0], spec[1] if len(spec) > 1 else {}, value,
                                        limits=not (name in custom or any_name))
        _run_custom_check(node_id, node, cls, inputs)
        checked[node_id] = inputs
    return checked


class Runner:
    """Executes one prompt; ``outputs`` holds every node's results afterwards."""

    def __init__(self, ctx: RunContext, classes: Optional[Mapping[str, type]] = None) -> None:
        self.ctx = ctx
        self.classes = dict(classes or node_classes())
        self.outputs: dict[str, tuple] = {}

    def _instance(self, cls: type) -> Any:
        return cls(self.ctx) if cls.__name__ in CORE_NODES and CORE_NODES[cls.__name__] is cls else cls()

    def run(self, prompt: Mapping[str, dict], extra_pnginfo: Optional[dict] = None,
            targets: Optional[Sequence[str]] = None) -> dict[str, tuple]:
        """Run the output nodes (or just ``targets`` and what they need)."""
        inputs = validate(prompt, self.classes)
        sinks = list(targets) if targets else [
            k for k, v in prompt.items() if getattr(self.classes[v["class_type"]], "OUTPUT_NODE", False)]
        if not sinks:
            raise WorkflowError("the workflow has no output node (SaveImage, PreviewImage, ...): nothing would be produced")
        with torch.inference_mode():
            for node_id in sorted(sinks, key=_id_order):
                try:
                    self._execute(node_id, prompt, inputs, extra_pnginfo, ())
                except RecursionError:
                    raise WorkflowError(f"the chain of nodes that node {node_id} depends on is too long to run") from None
        return self.outputs

    def _execute(self, node_id: str, prompt, inputs, extra_pnginfo, path: tuple) -> tuple:
        if node_id in self.outputs:
            return self.outputs[node_id]
        if node_id in path:
            raise WorkflowError(f"the workflow has a cycle through node {node_id}")
        cls = self.classes[prompt[node_id]["class_type"]]
        kwargs = {}
        for name, value in inputs[node_id].items():
            if isinstance(value, list):
                outputs = self._execute(value[0], prompt, inputs, extra_pnginfo, path + (node_id,))
                if not 0 <= value[1] < len(outputs):
                    raise WorkflowError(f"node {node_id}: input {name!r} links to output {value[1]} of node {value[0]}, "
                                        f"which has {len(outputs)} output(s)")
                kwargs[name] = outputs[value[1]]
            else:
                kwargs[name] = value
        hidden_values = {"PROMPT": dict(prompt), "EXTRA_PNGINFO": extra_pnginfo, "UNIQUE_ID": node_id}
        for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
            kwargs[name] = hidden_values.get(kind)
        result = getattr(self._instance(cls), cls.FUNCTION)(**kwargs)
        if isinstance(result, dict):
            result = tuple(result.get("result", ()))
        self.outputs[node_id] = tuple(result)
        return self.outputs[node_id]


def run_workflow(
    workflow: Mapping[str, Any],
    output_dir: Path,
    *,
    images: Sequence[Path] = (),
    assignments: Sequence[str] = (),
    input_dirs: Sequence[Path] = (),
    precision: Optional[str] = None,
) -> RunContext:
    """Run a workflow (UI or API format); returns the context with the list of saved files.
    ``precision`` overrides the workflow's value in every model loader (after ``assignments``)."""
    classes = node_classes()
    prompt = to_prompt(workflow, classes)
    set_images(prompt, images)
    for assignment in assignments:
        set_input(prompt, assignment)
    if precision is not None:
        set_precision(prompt, precision)
    ctx = RunContext(output_dir=Path(output_dir), input_dirs=[Path(d) for d in input_dirs] + [ASSETS_DIR])
    make_folder(ctx.output_dir)
    extra = {"workflow": dict(workflow)} if is_ui_format(workflow) else None
    Runner(ctx, classes).run(prompt, extra_pnginfo=extra)
    return ctx
