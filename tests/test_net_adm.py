"""ADM UNet (guided / improved-diffusion / DifFace) and its checkpoint format: parity with the
reference outputs, structure detection from keys and shapes, hints, and autocast."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_diffbfr.errors import CheckpointError, WrongModelKindError
from comfy_diffbfr.models import load_model
from comfy_diffbfr.models.formats.adm import SPEC
from comfy_diffbfr.networks.adm_unet import ADMUNet, GroupNorm32, adm_config

from net_helpers import assert_bf16_autocast_close

PARITY_FOLDERS = ["guided_diffusion", "guided_diffusion_superres", "improved_diffusion", "difface"]
HEAD_HINTS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")
VARIANT_OF_FORMAT = {"difface_unet": "difface", "improved_diffusion_unet": "improved"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def _fixture_hints(fixture: dict) -> dict:
    """Only what the weights cannot reveal."""
    kwargs = fixture["constructor_kwargs"]
    hints = {k: kwargs[k] for k in HEAD_HINTS if k in kwargs}
    if fixture["format"] in VARIANT_OF_FORMAT:
        hints["variant"] = VARIANT_OF_FORMAT[fixture["format"]]
    if hints.get("variant") == "difface":
        hints.pop("num_heads_upsample", None)  # DifFace has no such argument
    return hints


def _fixture_structure(fixture: dict) -> dict:
    """The structure the reference constructor built, in our config's terms."""
    kwargs = fixture["constructor_kwargs"]
    mult = list(kwargs["channel_mult"])
    if fixture["format"] == "difface_unet":  # absolute feature-map sizes
        scales = [kwargs["image_size"] // 2**level for level in range(len(mult))]
    else:  # downsample factors
        scales = [2**level for level in range(len(mult))]
    super_res = "SuperResModel" in fixture["reference"]
    return {
        "in_channels": kwargs["in_channels"] * (2 if super_res else 1),
        "out_channels": kwargs["out_channels"],
        "model_channels": kwargs["model_channels"],
        "channel_mult": mult,
        "num_res_blocks": adm_config(channel_mult=mult, num_res_blocks=kwargs["num_res_blocks"])["num_res_blocks"],
        "attention_levels": [s in kwargs["attention_resolutions"] for s in scales],
        "use_scale_shift_norm": kwargs.get("use_scale_shift_norm", False),
        "resblock_updown": kwargs.get("resblock_updown", False),
        "num_classes": kwargs.get("num_classes"),
        "super_res": super_res,
    }


@pytest.mark.parametrize("folder", PARITY_FOLDERS)
def test_parity_with_reference_outputs(parity_dir: Path, folder: str) -> None:
    root = parity_dir / folder
    fixture = json.loads((root / "fixture.json").read_text())
    hints = _fixture_hints(fixture)
    expected = _fixture_structure(fixture)
    inputs = load_file(root / "inputs.safetensors")
    outputs = load_file(root / "outputs.safetensors")
    cond = inputs.get("low_res")
    runs = [("timesteps", "out_float32"), ("timesteps_fractional", "out_fractional_t_float32")]
    runs = [(t, o) for t, o in runs if t in inputs and o in outputs]
    assert runs and ("low_res" in fixture["model_call"]) == (cond is not None)

    for path in (root / fixture["checkpoint"]["file"], root / "weights.safetensors"):
        model = load_model(path, hints)  # reads safely, unwraps, strips `module.`, asks SPEC
        assert model.format == "adm"
        assert json.loads(json.dumps(model.config)) == model.config
        assert {k: model.config[k] for k in expected} == expected
        assert model.cond_channels == (cond.shape[1] if cond is not None else 0)
        assert model.diffusion["learned_sigma"] == (outputs["out_float32"].shape[1] == 2 * inputs["x"].shape[1])
        for t_name, out_name in runs:
            with torch.no_grad():
                if "y" in inputs:  # class labels: not something the stages pass, so call the net itself
                    out = model.net(inputs["x"], inputs[t_name], low_res=cond, y=inputs["y"])
                else:
                    out = SPEC.call(model.net, inputs["x"], inputs[t_name], cond)
            diff = (out - outputs[out_name]).abs().max().item()
            assert diff <= 1e-4, f"{path.name} {t_name}: max abs diff {diff}"


def _random_config(rng: random.Random) -> tuple[dict, dict]:
    """A random structure and the hints (heads, variant) its checkpoint could not reveal."""
    levels = rng.randint(1, 4)
    mc = rng.choice([32, 64])
    cfg = {
        "model_channels": mc,
        "channel_mult": [rng.choice([1, 2] if mc == 32 else [0.5, 1, 1.5, 2]) for _ in range(levels)],
        "num_res_blocks": [rng.randint(1, 3) for _ in range(levels)],
        "attention_levels": [rng.random() < 0.5 for _ in range(levels)],
        "use_scale_shift_norm": rng.random() < 0.5,
        "resblock_updown": levels > 1 and rng.random() < 0.5,
        "num_classes": rng.choice([None, None, 10]),
    }
    cfg["conv_resample"] = cfg["resblock_updown"] or levels == 1 or rng.random() < 0.7
    image = 3
    cfg["learn_sigma"] = rng.random() < 0.5
    cfg["super_res"] = rng.random() < 0.4
    cfg["out_channels"] = 2 * image if cfg["learn_sigma"] else image
    cfg["in_channels"] = 2 * image if cfg["super_res"] else image
    widths = [int(m * mc) for m in cfg["channel_mult"]]
    variant = rng.choice(["guided", "difface"])
    hints: dict = {"variant": variant}
    if rng.random() < 0.5 and all(w % 16 == 0 for w in widths):
        hints["num_head_channels"] = rng.choice([16, 32] if all(w % 32 == 0 for w in widths) else [16])
    else:
        hints["num_heads"] = rng.choice([1, 2, 4])
    if variant == "guided" and rng.random() < 0.5:
        hints["num_heads_upsample"] = rng.choice([1, 2])
    hints["use_new_attention_order"] = rng.random() < 0.3
    expected = dict(cfg, **hints)
    del expected["variant"]
    if variant == "difface":
        expected["num_heads_upsample"] = 1
    return adm_config(**expected), hints


@pytest.mark.parametrize("seed", range(24))
def test_structure_round_trip(seed: int) -> None:
    config, hints = _random_config(random.Random(seed))
    with torch.device("meta"):
        state_dict = ADMUNet.from_config(config).state_dict()
    assert SPEC.matches(state_dict)
    assert SPEC.infer_config(state_dict, hints) == config


def test_round_trip_loads_real_weights() -> None:
    config = adm_config(
        model_channels=32,
        channel_mult=[1, 2, 2],
        num_res_blocks=[2, 1, 3],
        attention_levels=[False, True, True],
        num_heads=2,
        conv_resample=False,
        in_channels=6,
        out_channels=3,
        super_res=True,
    )
    torch.manual_seed(0)
    net = ADMUNet.from_config(config).eval()
    inferred = SPEC.infer_config(net.state_dict(), {"num_heads": 2, "variant": "guided"})
    assert inferred == config
    copy = SPEC.build(inferred).eval()
    copy.load_state_dict(net.state_dict(), strict=True)
    x, low_res, t = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 4, 4), torch.tensor([250.5])
    with torch.no_grad():
        assert torch.equal(SPEC.call(net, x, t, low_res), SPEC.call(copy, x, t, low_res))
    assert SPEC.io(config) == {
        "in_channels": 6,
        "out_channels": 3,
        "cond_channels": 3,
        "learned_sigma": False,
        "resolution": None,
    }


def _meta_state_dict(**config) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return ADMUNet(**config).state_dict()


BASE = dict(
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=2,
    attention_levels=[False, True, True],
    resblock_updown=True,
    use_scale_shift_norm=True,
    out_channels=6,
    learn_sigma=True,
)


@pytest.mark.parametrize(
    ("hints", "named"),
    [
        ({"attention_resolutions": [4]}, "attention_resolutions"),
        ({"image_size": 64, "attention_resolutions": [16, 8], "variant": "difface"}, "attention_resolutions"),
        ({"num_res_blocks": 1}, "num_res_blocks"),
        ({"num_res_blocks": [2, 2, 3]}, "num_res_blocks"),
        ({"channel_mult": [1, 2, 4]}, "channel_mult"),
        ({"model_channels": 64}, "model_channels"),
        ({"learn_sigma": False}, "learn_sigma"),
        ({"resblock_updown": False}, "resblock_updown"),
        ({"use_scale_shift_norm": False}, "use_scale_shift_norm"),
        ({"in_channels": 6}, "in_channels"),
        ({"variant": "improved"}, "improved"),
        ({"variant": "sr3"}, "variant"),
        ({"num_head_channel": 16}, "num_head_channel"),
        ({"num_heads": 3}, "3 heads"),
        ({"num_heads": "four"}, "num_heads"),
        ({"use_new_attention_order": "maybe"}, "use_new_attention_order"),
    ],
)
def test_contradicting_or_unknown_hint_is_named(hints: dict, named: str) -> None:
    with pytest.raises(CheckpointError, match=named):
        SPEC.infer_config(_meta_state_dict(**BASE), hints)


def test_agreeing_reference_hints_are_accepted() -> None:
    state_dict = _meta_state_dict(**BASE)
    guided = {"image_size": 64, "attention_resolutions": [2, 4], "num_res_blocks": 2, "channel_mult": [1, 2, 2]}
    scripts = {"attention_resolutions": "2,4", "channel_mult": "", "use_fp16": "false", "num_heads": "2"}
    difface = {"image_size": 64, "attention_resolutions": [32, 16], "variant": "difface"}
    assert SPEC.infer_config(state_dict, guided)["image_size"] == 64
    assert SPEC.infer_config(state_dict, difface)["num_heads_upsample"] == 1
    assert SPEC.io(SPEC.infer_config(state_dict, guided))["resolution"] == 64
    assert SPEC.infer_config(state_dict, scripts)["num_heads"] == 2


def test_damaged_checkpoint_is_refused() -> None:
    state_dict = _meta_state_dict(**BASE)
    del state_dict["middle_block.1.qkv.weight"]
    with pytest.raises(CheckpointError, match="middle_block.1.qkv.weight"):
        SPEC.infer_config(state_dict, {})
    assert not SPEC.matches({"downs.0.weight": torch.empty(1), "noise_level_mlp.1.weight": torch.empty(1)})


def test_call_checks_the_condition() -> None:
    net = SPEC.build(adm_config(**BASE)).eval()
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([3.0])
    with pytest.raises(WrongModelKindError, match="unconditional"):
        SPEC.call(net, x, t, x)
    sr = SPEC.build(adm_config(**dict(BASE, in_channels=6, super_res=True))).eval()
    with pytest.raises(WrongModelKindError, match="condition image"):
        SPEC.call(sr, x, t, None)


def test_difface_up_path_uses_one_head_without_head_width() -> None:
    state_dict = _meta_state_dict(**dict(BASE, num_heads=4))
    guided = SPEC.infer_config(state_dict, {"num_heads": 4})
    difface = SPEC.infer_config(state_dict, {"num_heads": 4, "variant": "difface"})
    with torch.device("meta"):
        heads = {
            name: ([b[1].heads for b in net.input_blocks if len(b) > 1], [b[1].heads for b in net.output_blocks if len(b) > 1])
            for name, net in (("guided", SPEC.build(guided)), ("difface", SPEC.build(difface)))
        }
    assert heads["guided"] == ([4] * 4, [4] * 6)
    assert heads["difface"] == ([4] * 4, [1] * 6)


def test_new_attention_order_is_a_permutation_of_legacy_qkv() -> None:
    """The same attention, with q/k/v rows packed per head (legacy) or per q/k/v (new)."""
    config = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[True, True], num_heads=2)
    torch.manual_seed(1)
    legacy = ADMUNet(**config).eval()
    new = ADMUNet(**dict(config, use_new_attention_order=True)).eval()
    state = {}
    for key, value in legacy.state_dict().items():
        if key.endswith("qkv.weight") or key.endswith("qkv.bias"):
            heads = 2
            rows = value.shape[0] // 3
            value = value.reshape(heads, 3, rows // heads, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        state[key] = value
    new.load_state_dict(state, strict=True)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.25])
    with torch.no_grad():
        a, b = legacy(x, t), new(x, t)
    assert (a - b).abs().max().item() < 1e-5


def _structure_of_signature(signature: dict) -> tuple[dict, dict]:
    """(expected structure, hints) from a public signature's published constructor config."""
    if "constructor_kwargs" in signature:  # DifFace: the UNetModel kwargs themselves
        kwargs = signature["constructor_kwargs"]
        levels = len(kwargs["channel_mult"])
        sizes = [kwargs["image_size"] // 2**level for level in range(levels)]
        expected = {
            "model_channels": kwargs["model_channels"],
            "channel_mult": list(kwargs["channel_mult"]),
            "num_res_blocks": adm_config(channel_mult=kwargs["channel_mult"], num_res_blocks=kwargs["num_res_blocks"])[
                "num_res_blocks"
            ],
            "attention_levels": [s in kwargs["attention_resolutions"] for s in sizes],
            "resblock_updown": kwargs["resblock_updown"],
            "use_scale_shift_norm": kwargs["use_scale_shift_norm"],
            "learn_sigma": kwargs["out_channels"] == 6,
            "super_res": False,
            "num_classes": None,
        }
        hints = {k: kwargs[k] for k in ("num_head_channels", "image_size", "attention_resolutions", "num_res_blocks")}
        return expected, dict(hints, variant="difface", channel_mult=kwargs["channel_mult"])
    kwargs = signature["constructor_kwargs_script_util"]  # guided script_util flags
    size = kwargs.get("large_size", kwargs.get("image_size"))
    default_mult = {512: [0.5, 1, 1, 2, 2, 4, 4], 256: [1, 1, 2, 2, 4, 4], 128: [1, 1, 2, 3, 4], 64: [1, 2, 3, 4]}
    mult = default_mult[size] if not kwargs.get("channel_mult") else [int(m) for m in kwargs["channel_mult"].split(",")]
    ds = {size // int(r) for r in kwargs["attention_resolutions"].split(",")}
    expected = {
        "model_channels": kwargs["num_channels"],
        "channel_mult": mult,
        "num_res_blocks": [kwargs["num_res_blocks"]] * len(mult),
        "attention_levels": [2**level in ds for level in range(len(mult))],
        "resblock_updown": kwargs["resblock_updown"],
        "use_scale_shift_norm": kwargs["use_scale_shift_norm"],
        "learn_sigma": kwargs["learn_sigma"],
        "super_res": "large_size" in kwargs,
        "num_classes": 1000 if kwargs["class_cond"] else None,
    }
    hints = {k: kwargs[k] for k in ("num_heads", "num_head_channels", "num_heads_upsample") if k in kwargs}
    return expected, hints


@pytest.mark.parametrize(
    "name",
    [
        "dps_ffhq_10m",
        "p2_ffhq_p2",
        "difface_iddpm_ffhq512",
        "difface_iddpm_ffhq256",
        "guided_256_uncond",
        "guided_64_256_upsampler",
    ],
)
def test_public_signature_layouts(parity_dir: Path, name: str) -> None:
    signature = json.loads((parity_dir / "public_signatures" / f"{name}.json").read_text())
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in signature["keys"].items()}
    expected, hints = _structure_of_signature(signature)
    assert SPEC.matches(state_dict)
    config = SPEC.infer_config(state_dict, hints)
    assert {k: config[k] for k in expected} == expected
    with torch.device("meta"):
        net = SPEC.build(config)
    net.load_state_dict(state_dict, strict=True, assign=True)
    assert sum(p.numel() for p in net.parameters()) == signature["num_params"]


def test_bf16_autocast_on_cpu_is_finite_and_close() -> None:
    torch.manual_seed(2)
    net = ADMUNet(**dict(BASE, num_heads=2)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([7.0, 901.5])
    assert_bf16_autocast_close(net, x, t)


def test_group_norm_runs_in_float32_under_autocast() -> None:
    norm = GroupNorm32(4, 8)
    x = torch.randn(2, 8, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    expected = torch.nn.functional.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"num_head_chanels": 32}, "num_head_chanels"),
        ({"channel_mult": [1, 2], "num_res_blocks": [1, 2, 3]}, "num_res_blocks"),
        ({"channel_mult": [1, 2], "attention_levels": [0, 1]}, "attention_levels"),
        ({"model_channels": 48}, "norm_groups"),
        ({"channel_mult": [1, 2], "attention_levels": [False, True], "num_head_channels": 96}, "num_head_channels 96"),
        ({"in_channels": 3, "super_res": True}, "super-resolution"),
        ({"norm_groups": 0}, "norm_groups must be at least 1"),
    ],
)
def test_bad_network_config_is_named(overrides: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        adm_config(**dict({"model_channels": 64}, **overrides))
    with pytest.raises(CheckpointError, match=named):
        SPEC.build(dict({"model_channels": 64}, **overrides))


def test_norm_groups_come_from_a_hint() -> None:
    """The references hard-code 32 groups; a narrower net of ours needs the hint."""
    config = adm_config(model_channels=16, channel_mult=[1, 2], num_res_blocks=1, norm_groups=8)
    state_dict = _meta_state_dict(**config)
    with pytest.raises(CheckpointError, match="norm_groups"):
        SPEC.infer_config(state_dict, {})
    assert SPEC.infer_config(state_dict, {"norm_groups": 8}) == config
