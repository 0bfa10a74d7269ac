"""DDPM-TF UNet (ermongroup/ddim Model and diffusers UNet2DModel layouts) + its format: parity,
config detection in both layouts, hints, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model
from comfy_diffbfr.models.formats.ddpm import SPEC
from comfy_diffbfr.networks.ddpm_unet import DDPMUNet

from net_helpers import assert_bf16_autocast_close

DIFFUSERS_RESNET = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
DIFFUSERS_ATTENTION = {
    False: {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
    True: {"norm": "group_norm", "q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"},
}

# Non-default knobs everywhere, different level counts, asymmetric attention, a mult[0] != 1 base.
CONFIGS = {
    "ermongroup_wide_base": dict(
        in_channels=3, out_channels=3, base_channels=8, block_out_channels=[16, 16, 32], layers_per_block=1,
        down_attention=[False, True, False], up_attention=[False, True, False], time_embedding_dim=32, norm_num_groups=8,
    ),
    "diffusers_knobs": dict(
        in_channels=3, out_channels=6, base_channels=16, block_out_channels=[16, 32, 48], layers_per_block=2,
        down_attention=[True, False, True], up_attention=[False, True, True], time_embedding_dim=80,
        resnet_time_scale_shift="scale_shift", attention_head_dim=8, norm_num_groups=8, downsample_padding=1,
        mid_block_scale_factor=2**0.5, freq_shift=0.0, flip_sin_to_cos=True, norm_eps=1e-5,
    ),
    "five_levels_no_mid_attention": dict(
        in_channels=6, out_channels=3, base_channels=8, block_out_channels=[8, 8, 16, 16, 24], layers_per_block=1,
        down_attention=[False, False, False, True, False], up_attention=[False, False, False, True, False],
        mid_attention=False, norm_num_groups=4, time_embedding_dim=32,
    ),
    "no_resample_conv": dict(
        in_channels=3, out_channels=3, base_channels=16, block_out_channels=[16, 32], layers_per_block=3,
        down_attention=[False, False], up_attention=[True, False], resample_with_conv=False, norm_num_groups=16,
        time_embedding_dim=64,
    ),
}
NOT_IN_WEIGHTS = ("freq_shift", "flip_sin_to_cos", "norm_eps", "downsample_padding", "attention_head_dim",
                  "mid_block_scale_factor", "norm_num_groups")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def full_config(partial: dict, layout: str) -> dict:
    """What infer_config returns for a network built from ``partial``."""
    defaults = dict(mid_attention=True, freq_shift=1.0, flip_sin_to_cos=False, norm_num_groups=32, attn_norm_num_groups=None,
                    norm_eps=1e-6, downsample_padding=0, resample_with_conv=True, attention_head_dim=None,
                    resnet_time_scale_shift="default", mid_block_scale_factor=1.0, center_input_sample=False, dropout=0.0,
                    sample_size=None)
    return {"layout": layout, **defaults, **partial}


def random_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = DDPMUNet(**config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.15)
    return net.state_dict()


def to_diffusers_layout(state_dict: dict[str, torch.Tensor], levels: int, legacy: bool) -> dict[str, torch.Tensor]:
    """Our (ermongroup) keys renamed the way diffusers names UNet2DModel parameters (written
    independently of the format's own mapping, in the opposite direction)."""
    simple = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
              "norm_out": "conv_norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
    attention = DIFFUSERS_ATTENTION[legacy]
    out = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if module in simple:
            new = simple[module]
        elif parts[0] == "mid":
            if parts[1] == "attn_1":
                new = f"mid_block.attentions.0.{attention[parts[2]]}"
            else:
                new = f"mid_block.resnets.{int(parts[1][-1]) - 1}.{DIFFUSERS_RESNET.get(parts[2], parts[2])}"
        else:
            direction, level, kind = parts[0], int(parts[1]), parts[2]
            prefix = f"{direction}_blocks.{level if direction == 'down' else levels - 1 - level}"
            if kind in ("downsample", "upsample"):
                new = f"{prefix}.{kind}rs.0.conv"
            elif kind == "block":
                new = f"{prefix}.resnets.{parts[3]}.{DIFFUSERS_RESNET.get(parts[4], parts[4])}"
            else:
                new = f"{prefix}.attentions.{parts[3]}.{attention[parts[4]]}"
        if ".attentions." in new and tensor.dim() == 4:
            tensor = tensor[:, :, 0, 0]  # diffusers attention projections are Linear layers
        out[f"{new}.{param}"] = tensor
    return out


def diffusers_json(config: dict) -> dict:
    """The config.json diffusers would write for ``config`` (a network diffusers can express)."""
    return {
        "sample_size": config["sample_size"], "in_channels": config["in_channels"], "out_channels": config["out_channels"],
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": config["time_embedding_dim"],
        "freq_shift": config["freq_shift"], "flip_sin_to_cos": config["flip_sin_to_cos"],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in config["down_attention"]],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config["up_attention"])],
        "block_out_channels": config["block_out_channels"], "layers_per_block": config["layers_per_block"],
        "mid_block_scale_factor": config["mid_block_scale_factor"], "downsample_padding": config["downsample_padding"],
        "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
        "attention_head_dim": config["attention_head_dim"], "norm_num_groups": config["norm_num_groups"],
        "attn_norm_num_groups": config["attn_norm_num_groups"], "norm_eps": config["norm_eps"],
        "resnet_time_scale_shift": config["resnet_time_scale_shift"], "add_attention": config["mid_attention"],
        "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
    }


def test_ermongroup_parity(parity_dir):
    folder = parity_dir / "ddim_model"
    manifest = json.loads((folder / "fixture.json").read_text())
    model_yaml, image_size = manifest["yaml_style_config"]["model"], manifest["yaml_style_config"]["data"]["image_size"]
    inputs = load_file(folder / "inputs.safetensors")
    reference = load_file(folder / "outputs.safetensors")["out_float32"]
    for path in (folder / manifest["checkpoint"]["file"], folder / "weights.safetensors"):
        # Everything the reference fixes (groups, eps, embedding) is the format's default: no hints.
        model = load_model(path)
        config = model.config
        levels = len(model_yaml["ch_mult"])
        attention = [image_size // 2**i in model_yaml["attn_resolutions"] for i in range(levels)]
        assert model.format == "ddpm" and config["layout"] == "ermongroup"
        assert config["base_channels"] == model_yaml["ch"]
        assert config["block_out_channels"] == [model_yaml["ch"] * m for m in model_yaml["ch_mult"]]
        assert config["layers_per_block"] == model_yaml["num_res_blocks"]
        assert config["down_attention"] == config["up_attention"] == attention
        assert (config["in_channels"], config["out_channels"]) == (model_yaml["in_channels"], model_yaml["out_ch"])
        with torch.no_grad():
            out = model.net(inputs["x"], inputs["timesteps"])
            # Real-valued timesteps at integer values give the integer result. (Fractional t is
            # pinned by the diffusers fixture: the same network.)
            as_float = SPEC.call(model.net, inputs["x"], inputs["timesteps"].float(), None)
            # No size assertion: half the reference resolution runs too.
            small = model.net(inputs["x"][:, :, ::2, ::2], inputs["timesteps"])
        assert (out - reference).abs().max().item() <= 1e-4
        assert (as_float - reference).abs().max().item() <= 1e-4
        assert small.shape[-1] == inputs["x"].shape[-1] // 2
    # The spec alone, on the raw file, infers what the loader did.
    assert SPEC.infer_config(load_file(folder / "weights.safetensors"), {}) == config
    # Any parameter dtype works (the float32 sinusoid follows the network's dtype).
    with torch.no_grad():
        double = model.net.double()(inputs["x"].double(), inputs["timesteps"])
    assert (double - load_file(folder / "outputs.safetensors")["out_float64"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("folder", ["unet", "unet_legacy_bin"])
@pytest.mark.parametrize("times,output", [("timesteps", "out_float32"), ("timesteps_fractional", "out_fractional_t_float32")])
def test_diffusers_parity(parity_dir, folder, times, output):
    root = parity_dir / "diffusers_unet2d"
    config_json = json.loads((root / folder / "config.json").read_text())
    model = load_model(root / folder)  # the loader passes config.json entries to the spec as hints
    inputs = load_file(root / "inputs.safetensors")
    reference = load_file(root / "outputs.safetensors")[output]
    with torch.no_grad():
        out = model.net(inputs["x"], inputs[times])
    assert (out - reference).abs().max().item() <= 1e-4

    config = model.config
    assert model.format == "ddpm" and config["layout"] == "diffusers"
    for key in ("block_out_channels", "layers_per_block", "freq_shift", "flip_sin_to_cos", "norm_eps", "norm_num_groups",
                "downsample_padding", "attention_head_dim", "resnet_time_scale_shift", "mid_block_scale_factor"):
        assert config[key] == config_json[key], key
    assert config["down_attention"] == [t.startswith("Attn") for t in config_json["down_block_types"]]
    assert config["up_attention"] == [t.startswith("Attn") for t in reversed(config_json["up_block_types"])]
    assert SPEC.io(config)["resolution"] == config_json["sample_size"]
    # diffusers accepts one timestep for the whole batch.
    with torch.no_grad():
        both = model.net(inputs["x"], inputs[times][0].expand(inputs["x"].shape[0]))
        single = model.net(inputs["x"], inputs[times][0])
    assert torch.equal(both, single)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip_both_layouts(tmp_path, name):
    config = full_config(CONFIGS[name], "ermongroup")
    state_dict = random_state_dict({k: v for k, v in config.items() if k != "layout"}, seed=len(name))
    path = tmp_path / "net.safetensors"
    save_file(state_dict, path)
    hints = {k: config[k] for k in NOT_IN_WEIGHTS}
    assert SPEC.infer_config(load_file(path), hints) == config

    diffusers_expressible = config["resample_with_conv"] and config["base_channels"] == config["block_out_channels"][0]
    if not diffusers_expressible:
        return
    net = SPEC.build(config).eval()
    net.load_state_dict(state_dict)
    torch.manual_seed(0)
    x, t = torch.randn(1, config["in_channels"], 16, 16), torch.tensor([321.75])
    with torch.no_grad():
        reference = net(x, t)
    for legacy in (False, True):
        renamed = to_diffusers_layout(state_dict, len(config["block_out_channels"]), legacy)
        assert SPEC.matches(renamed)
        inferred = SPEC.infer_config(renamed, diffusers_json(config))
        assert inferred == {**config, "layout": "diffusers"}
        other = SPEC.build(inferred).eval()
        other.load_state_dict(SPEC.prepare_state_dict(renamed), strict=True)
        with torch.no_grad():
            assert torch.equal(other(x, t), reference)


def test_scale_shift_mid_attention_norm_follows_the_weights():
    config = full_config(CONFIGS["diffusers_knobs"], "ermongroup")
    config["attn_norm_num_groups"] = 4
    state_dict = random_state_dict({k: v for k, v in config.items() if k != "layout"}, seed=7)
    assert "mid.attn_1.norm.weight" in state_dict
    hints = {k: config[k] for k in NOT_IN_WEIGHTS}
    # Without the hint the GroupNorm's presence says it exists; its group count defaults to norm_num_groups.
    assert SPEC.infer_config(state_dict, hints)["attn_norm_num_groups"] == config["norm_num_groups"]
    assert SPEC.infer_config(state_dict, {**hints, "attn_norm_num_groups": 4}) == config
    with pytest.raises(CheckpointError, match="attn_norm_num_groups"):
        SPEC.infer_config(state_dict, {**hints, "attn_norm_num_groups": None})


def test_contradicting_unknown_and_unsupported_hints(parity_dir):
    root = parity_dir / "diffusers_unet2d" / "unet"
    state_dict = load_file(root / "diffusion_pytorch_model.safetensors")
    good = {k: v for k, v in json.loads((root / "config.json").read_text()).items() if not k.startswith("_")}
    config = SPEC.infer_config(state_dict, good)
    widths = config["block_out_channels"]
    flip_down = ["DownBlock2D" if t.startswith("Attn") else "AttnDownBlock2D" for t in good["down_block_types"]]
    flip_up = ["UpBlock2D" if t.startswith("Attn") else "AttnUpBlock2D" for t in good["up_block_types"]]
    other_shift = {"default": "scale_shift", "scale_shift": "default"}[config["resnet_time_scale_shift"]]
    cases = [
        ({"block_out_channels": [2 * w for w in widths]}, "block_out_channels"),
        ({"layers_per_block": config["layers_per_block"] + 1}, "layers_per_block"),
        ({"down_block_types": flip_down}, "down_attention"),
        ({"up_block_types": flip_up}, "up_attention"),
        ({"resnet_time_scale_shift": other_shift}, "resnet_time_scale_shift"),
        ({"time_embedding_dim": config["time_embedding_dim"] + 1}, "time_embedding_dim"),
        ({"norm_num_groups": min(widths) + 1}, "norm_num_groups"),  # cannot divide the narrowest GroupNorm
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"down_block_types": ["CrossAttnDownBlock2D"] * len(widths)}, "down_block_types"),
        ({"downsample_padding": 2}, "downsample_padding"),
        ({"flip_sin_to_cos": "maybe"}, "flip_sin_to_cos"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"num_heads": 4}, "num_heads"),
    ]
    if config["mid_attention"] or any(config["down_attention"] + config["up_attention"]):
        cases.append(({"attention_head_dim": widths[-1] + 1}, "attention_head_dim"))  # wider than any attention
    for change, named in cases:
        with pytest.raises(CheckpointError, match=named):
            SPEC.infer_config(state_dict, {**good, **change})


def test_matches_only_this_family(parity_dir):
    root = parity_dir / "diffusers_unet2d" / "unet"
    state_dict = load_file(root / "diffusion_pytorch_model.safetensors")
    # A cross-attention UNet (Stable Diffusion's UNet2DConditionModel) shares the outer key names.
    cross_attention = {**state_dict, "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(32, 32)}
    assert not SPEC.matches(cross_attention)
    sr3 = {"noise_level_mlp.1.weight": torch.zeros(32, 8), "downs.0.weight": torch.zeros(8, 6, 3, 3)}
    assert not SPEC.matches(sr3)
    with pytest.raises(CheckpointError, match="not an ermongroup"):
        SPEC.infer_config(sr3, {})


@pytest.mark.parametrize("name,keys", [("ddnm_sdedit_celeba_hq", "keys"), ("diffusers_ddpm_celebahq_256", "keys"),
                                       ("diffusers_ddpm_celebahq_256", "keys_legacy_attention_names")])
def test_public_signature_detection(parity_dir, name, keys):
    signature = json.loads((parity_dir / "public_signatures" / f"{name}.json").read_text())
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in signature[keys].items()}
    assert SPEC.matches(state_dict)
    if "config" in signature:  # diffusers: its config.json is what the loader passes as hints
        hints = dict(signature["config"])
        config = SPEC.infer_config(state_dict, hints)
        for key in ("block_out_channels", "layers_per_block", "freq_shift", "flip_sin_to_cos", "norm_eps",
                    "norm_num_groups", "downsample_padding", "attention_head_dim", "in_channels", "out_channels"):
            assert config[key] == hints[key], key
        assert config["down_attention"] == [t.startswith("Attn") for t in hints["down_block_types"]]
        assert config["up_attention"] == [t.startswith("Attn") for t in reversed(hints["up_block_types"])]
    else:  # ermongroup: no hints at all
        model, size = signature["yaml"]["model"], signature["yaml"]["data"]["image_size"]
        config = SPEC.infer_config(state_dict, {})
        attention = [size // 2**i in model["attn_resolutions"] for i in range(len(model["ch_mult"]))]
        assert config["block_out_channels"] == [model["ch"] * m for m in model["ch_mult"]]
        assert config["layers_per_block"] == model["num_res_blocks"]
        assert config["down_attention"] == config["up_attention"] == attention
        assert (config["norm_num_groups"], config["norm_eps"]) == (32, 1e-6)
    with torch.device("meta"):
        net = SPEC.build(config)
    prepared = SPEC.prepare_state_dict(state_dict)
    net.load_state_dict(prepared, strict=True, assign=True)
    assert sum(p.numel() for p in net.parameters()) == signature["num_params"]


def test_bf16_autocast_close_to_float32():
    config = {k: v for k, v in full_config(CONFIGS["diffusers_knobs"], "x").items() if k != "layout"}
    net = DDPMUNet(**config).eval()
    net.load_state_dict(random_state_dict(config, seed=5))
    torch.manual_seed(6)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 640.5])
    assert_bf16_autocast_close(net, x, t)
