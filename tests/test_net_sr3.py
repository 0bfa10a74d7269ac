"""SR3 UNet + its checkpoint format: reference parity, config detection, hints, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model
from comfy_diffbfr.models.formats.sr3 import SPEC
from comfy_diffbfr.networks.sr3_unet import SR3UNet

from net_helpers import assert_bf16_autocast_close

PREFIX = "denoise_fn."


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def unet_weights(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet part of a GaussianDiffusion state dict (schedule buffers dropped, prefix stripped)."""
    return {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)}


def attn_levels(image_size: int, attn_res: list[int], num_levels: int) -> list[int]:
    """The reference's attention placement: level i when image_size // 2**i is in attn_res."""
    return [i for i in range(num_levels) if image_size // 2**i in attn_res]


def expected_config(kwargs: dict) -> dict:
    mults = list(kwargs.get("channel_mults", kwargs.get("channel_multiplier")))
    return {
        "in_channel": kwargs["in_channel"],
        "out_channel": kwargs["out_channel"],
        "inner_channel": kwargs["inner_channel"],
        "channel_mults": mults,
        "attn_levels": attn_levels(kwargs["image_size"], kwargs["attn_res"], len(mults)),
        "res_blocks": kwargs["res_blocks"],
        "norm_groups": kwargs["norm_groups"],
    }


def random_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = SR3UNet(**config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.state_dict()


@pytest.fixture(scope="module")
def fixture_dir(parity_dir):
    return parity_dir / "sr3"


@pytest.mark.parametrize("source", ["checkpoint", "safetensors"])
def test_reference_parity(fixture_dir, source):
    manifest = json.loads((fixture_dir / "fixture.json").read_text())
    kwargs = manifest["unet_constructor_kwargs"]
    path = fixture_dir / (manifest["checkpoint"]["file"] if source == "checkpoint" else "weights.safetensors")
    # norm_groups is the only thing the weights cannot reveal.
    model = load_model(path, {"norm_groups": kwargs["norm_groups"]})
    assert model.format == "sr3"
    assert {k: model.config[k] for k in expected_config(kwargs)} == expected_config(kwargs)
    # The loader's unwrapping and ours agree: the spec alone infers the same config.
    raw = load_file(fixture_dir / "weights.safetensors")
    assert SPEC.infer_config(unet_weights(raw), {"norm_groups": kwargs["norm_groups"]}) == model.config

    inputs = load_file(fixture_dir / "inputs.safetensors")
    reference = load_file(fixture_dir / "outputs.safetensors")["eps_float32"]
    with torch.no_grad():
        out = model.net(inputs["unet_input"], inputs["noise_level"])
        # The format puts the condition first and feeds gamma unchanged; gamma [B] == [B, 1].
        via_spec = SPEC.call(model.net, inputs["x_noisy"], inputs["noise_level"][:, 0], inputs["condition"])
    # Row 0 is the noise level of integer step t=10, row 1 a continuous value between two steps.
    for row in range(out.shape[0]):
        assert (out[row] - reference[row]).abs().max().item() <= 1e-4
    assert torch.equal(via_spec, out)
    assert model.cond_channels == kwargs["in_channel"] - kwargs["out_channel"]
    assert model.out_channels == kwargs["out_channel"] and not model.diffusion["learned_sigma"]
    # Any parameter dtype works (the float32 noise-level encoding follows the network's dtype).
    with torch.no_grad():
        double = model.net.double()(inputs["unet_input"].double(), inputs["noise_level"].double())
    assert (double - load_file(fixture_dir / "outputs.safetensors")["eps_float64"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "config",
    [
        dict(in_channel=6, out_channel=3, inner_channel=16, channel_mults=[1, 2], attn_levels=[], res_blocks=1, norm_groups=16),
        dict(in_channel=9, out_channel=3, inner_channel=8, channel_mults=[1, 1, 2, 3], attn_levels=[0, 3], res_blocks=3, norm_groups=8),
        dict(in_channel=3, out_channel=3, inner_channel=12, channel_mults=[2, 4, 4], attn_levels=[1], res_blocks=2, norm_groups=4),
    ],
)
def test_config_round_trip(tmp_path, config):
    config = {**config, "dropout": 0.0, "image_size": None}
    path = tmp_path / "sr3.safetensors"
    save_file(random_state_dict(config, seed=1), path)
    state_dict = load_file(path)
    assert SPEC.infer_config(state_dict, {"norm_groups": config["norm_groups"]}) == config
    # These widths are chosen so that the default (the largest of 32, 16, ... dividing every
    # GroupNorm width, concatenated skips included) is the group count they were built with.
    assert SPEC.infer_config(state_dict, {}) == config
    SPEC.build(config).load_state_dict(state_dict, strict=True)


def test_contradicting_and_unknown_hints():
    config = dict(in_channel=6, out_channel=3, inner_channel=8, channel_mults=[1, 2], attn_levels=[1], res_blocks=1,
                  norm_groups=8)
    state_dict = random_state_dict(config, seed=2)
    for hints, named in [
        ({"norm_groups": 3}, "norm_groups"),
        ({"inner_channel": 16}, "inner_channel"),
        ({"channel_multiplier": [1, 4]}, "channel_mults"),
        ({"image_size": 32, "attn_res": [32]}, "attn_res"),
        ({"norm_groups": "many"}, "norm_groups"),
        ({"num_heads": 2}, "num_heads"),
    ]:
        with pytest.raises(CheckpointError, match=named):
            SPEC.infer_config(state_dict, hints)
    # Consistent hints are accepted.
    ok = SPEC.infer_config(state_dict, {"image_size": 32, "attn_res": [16], "inner_channel": 8})
    assert ok["image_size"] == 32 and SPEC.io(ok)["resolution"] == 32


@pytest.mark.parametrize("name", ["sr3_16_128", "sr3_64_512"])
def test_public_signature_detection(parity_dir, name):
    signature = json.loads((parity_dir / "public_signatures" / f"{name}.json").read_text())
    kwargs = signature["constructor_kwargs"]
    state_dict = unet_weights({k: torch.empty(shape, device="meta") for k, shape in signature["keys"].items()})
    assert SPEC.matches(state_dict)
    # The 64->512 model's 16 groups are not in the weights; 16->128 gets its 32 from the default.
    hints = {"norm_groups": kwargs["norm_groups"]} if kwargs["norm_groups"] != 32 else {}
    config = SPEC.infer_config(state_dict, hints)
    assert {k: config[k] for k in expected_config(kwargs)} == expected_config(kwargs)
    with torch.device("meta"):
        net = SPEC.build(config)
    net.load_state_dict(state_dict, strict=True, assign=True)
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in state_dict.values())


def test_bf16_autocast_close_to_float32():
    config = dict(in_channel=6, out_channel=3, inner_channel=16, channel_mults=[1, 2], attn_levels=[1], res_blocks=1,
                  norm_groups=8)
    net = SR3UNet(**config).eval()
    net.load_state_dict(random_state_dict(config, seed=3))
    torch.manual_seed(4)
    x, gamma = torch.randn(2, 6, 16, 16), torch.tensor([0.3, 0.97])
    assert_bf16_autocast_close(net, x, gamma)
