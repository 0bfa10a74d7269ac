"""Random DifFace ``UNetModel`` layouts (``tests/fixtures/difface/``): the structure is inferred from
each state dict, with only what weights cannot reveal as hints, and the network reproduces the
reference output. The layouts cover per-level res blocks, attention at any level including the
first, odd image sizes (where DifFace's down and up paths differ), head widths and counts (its up
path uses one head unless a head width is set), both attention orders, ResBlock or conv resampling,
average pooling, class labels and learned sigma."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model
from comfy_diffbfr.models.formats.adm import SPEC, difface_attention_levels

from difface_cases import OUTPUTS_FILE, load_cases, seeded_inputs, seeded_state_dict

ATOL = 1e-5
CASES = load_cases()
OUTPUTS = load_file(str(OUTPUTS_FILE))

pytestmark = pytest.mark.usefixtures("one_thread")


def _hints(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Only what the weights cannot reveal."""
    return {"variant": "difface", **{k: kwargs[k] for k in ("num_heads", "num_head_channels", "use_new_attention_order")}}


def _write(case: dict[str, Any], folder: Path) -> Path:
    """The state dict as DifFace's trainer leaves it: a DDP ``module.`` EMA .pth, or a safetensors copy."""
    state_dict = seeded_state_dict(case["signature"], case["seed"])
    if case["wrapping"]:
        path = folder / "ema_model_1000.pth"
        torch.save({case["wrapping"] + k: v for k, v in state_dict.items()}, path)
    else:
        path = folder / "model.safetensors"
        save_file(dict(state_dict), str(path))
    return path


def test_the_cases_cover_the_layouts() -> None:
    """Guards the fixture set itself: each rule below is exercised by some case."""
    def levels(case):
        kw = case["kwargs"]
        return difface_attention_levels(kw["image_size"], len(kw["channel_mult"]), kw["attention_resolutions"])

    kwargs = [c["kwargs"] for c in CASES]
    assert len(CASES) >= 24
    assert any(levels(c)[0][0] for c in CASES), "attention at the first level"
    assert any(down != up for down, up in map(levels, CASES)), "down and up paths differ"
    assert any(isinstance(k["num_res_blocks"], list) and len(set(k["num_res_blocks"])) > 1 for k in kwargs)
    assert any(k["num_head_channels"] == -1 and k["num_heads"] > 1 and k["attention_resolutions"] for k in kwargs)
    for flag in ("use_new_attention_order", "resblock_updown", "use_scale_shift_norm"):
        assert {k[flag] for k in kwargs} == {True, False}
    assert any(not k["conv_resample"] and not k["resblock_updown"] and len(k["channel_mult"]) > 1 for k in kwargs)
    assert any(k["num_classes"] for k in kwargs) and {c["wrapping"] for c in CASES} == {"", "module."}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_difface_layout_reproduces_the_reference(case: dict[str, Any], tmp_path: Path) -> None:
    kwargs = case["kwargs"]
    model = load_model(_write(case, tmp_path), _hints(kwargs))
    inputs = seeded_inputs(case)
    expected = OUTPUTS[case["name"]]
    with torch.no_grad():
        out = model.net(inputs["x"], inputs["timesteps"], y=inputs.get("y"))
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= ATOL
        if "y" not in inputs:  # the stages' entry point; the reference step t is tau = t + 1
            out = model.predict(inputs["x"], inputs["timesteps"].double() + 1.0)
            assert (out - expected).abs().max().item() <= ATOL


@pytest.mark.parametrize("case", CASES[:12], ids=[c["name"] for c in CASES[:12]])
def test_reference_constructor_hints_agree(case: dict[str, Any]) -> None:
    """The reference's own arguments, absolute attention sizes included, are accepted as hints."""
    kwargs = case["kwargs"]
    state_dict = seeded_state_dict(case["signature"], case["seed"])
    inferred = SPEC.infer_config(state_dict, _hints(kwargs))
    hinted = SPEC.infer_config(state_dict, {
        **_hints(kwargs),
        **{k: kwargs[k] for k in ("image_size", "attention_resolutions", "num_res_blocks", "channel_mult",
                                  "model_channels", "out_channels", "num_classes", "use_scale_shift_norm")},
    })
    assert hinted == {**inferred, "image_size": kwargs["image_size"]}


def test_odd_size_attention_differs_between_paths_and_wrong_sizes_are_named() -> None:
    # 20 px, 4 levels: down 20, 10, 5, 2; up 2, 4, 8, 16; attention at 10 is on the way down only.
    assert difface_attention_levels(20, 4, [10, 4]) == ([False, True, False, False], [False, False, True, False])
    config = dict(model_channels=32, channel_mult=[1, 1, 1, 1], num_res_blocks=1, num_head_channels=16,
                  attention_levels=[False, True, False, False], attention_levels_up=[False, False, True, False])
    with torch.device("meta"):
        state_dict = SPEC.build(config).state_dict()
    cfg = SPEC.infer_config(state_dict, {"variant": "difface", "num_head_channels": 16})
    assert (cfg["attention_levels"], cfg["attention_levels_up"]) == (config["attention_levels"], config["attention_levels_up"])
    ok = {"variant": "difface", "num_head_channels": 16, "image_size": 20}
    assert SPEC.infer_config(state_dict, {**ok, "attention_resolutions": [10, 4]})["image_size"] == 20
    with pytest.raises(CheckpointError, match="attention_resolutions"):
        SPEC.infer_config(state_dict, {**ok, "attention_resolutions": [10]})


def _difface_only(case: dict[str, Any]) -> bool:
    kw = case["kwargs"]
    nrb = kw["num_res_blocks"]
    down, up = difface_attention_levels(kw["image_size"], len(kw["channel_mult"]), kw["attention_resolutions"])
    return (isinstance(nrb, list) and len(set(nrb)) > 1) or down != up


DIFFACE_ONLY = [c for c in CASES if _difface_only(c) and c["kwargs"]["num_head_channels"] == -1]


@pytest.mark.parametrize("case", DIFFACE_ONLY, ids=[c["name"] for c in DIFFACE_ONLY])
def test_a_layout_only_difface_builds_gets_its_head_rule_without_the_variant_hint(case: dict[str, Any]) -> None:
    state_dict = seeded_state_dict(case["signature"], case["seed"])
    hints = _hints(case["kwargs"])
    without = {k: v for k, v in hints.items() if k != "variant"}
    assert SPEC.infer_config(state_dict, without) == SPEC.infer_config(state_dict, hints)
    assert SPEC.infer_config(state_dict, without)["num_heads_upsample"] == 1
