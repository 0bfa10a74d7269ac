"""Our safetensors format: save_model -> load_model round trips for every network family."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfy_diffbfr.diffusion.schedules import Schedule
from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model, save_model
from comfy_diffbfr.models.checkpoint_io import read_checkpoint
from comfy_diffbfr.models.loader import format_specs
from comfy_diffbfr.models.native import read_metadata
from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config
from comfy_diffbfr.networks.ddpm_unet import DDPMUNet
from comfy_diffbfr.networks.sr3_unet import SR3UNet


def _tiny(arch: str) -> tuple[torch.nn.Module, dict]:
    """A small random network of ``arch`` and the config its format spec infers for it."""
    torch.manual_seed(1)
    if arch == "adm":
        net, hints = ADMUNet.from_config(adm_config(
            in_channels=6, out_channels=6, learn_sigma=True, super_res=True, model_channels=32, channel_mult=[1, 2],
            num_res_blocks=[1, 2], attention_levels=[False, True], num_head_channels=16, use_scale_shift_norm=True,
        )), {"num_head_channels": 16}
    elif arch == "sr3":
        net, hints = SR3UNet(in_channel=6, out_channel=3, inner_channel=8, channel_mults=[1, 2], attn_levels=[1],
                             res_blocks=1, norm_groups=4), {"norm_groups": 4}
    else:
        net, hints = DDPMUNet(in_channels=9, out_channels=3, base_channels=16, block_out_channels=[16, 32],
                              layers_per_block=1, down_attention=[False, True], up_attention=[False, True],
                              norm_num_groups=8), {"norm_num_groups": 8}
    spec = format_specs()[arch]
    config = spec.infer_config(net.state_dict(), hints)
    built = spec.build(config)
    built.load_state_dict(net.state_dict())
    return built.eval(), config


CASES = {
    # arch: (role, conditions, schedule, prediction)
    "adm": ("irm256", ["lq"], Schedule.from_name("cosine", 400), "eps"),
    "sr3": ("irm64", ["lq"], Schedule.from_name("linear_range", 2000, start=1e-6, end=1e-2), "eps"),
    "ddpm": ("irm256", ["lq", "prev"], Schedule(torch.linspace(1e-3, 0.05, 50, dtype=torch.float64) ** 1.2), "v"),
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_round_trip(tmp_path, arch):
    net, config = _tiny(arch)
    role, conditions, schedule, prediction = CASES[arch]
    path = save_model(tmp_path / f"{arch}.safetensors", net, arch=arch, config=config, role=role,
                      conditions=conditions, schedule=schedule, prediction=prediction, resolution=64,
                      training={"steps": 123, "data": "ffhq"})
    m = load_model(path)
    assert (m.format, m.arch, m.role, m.conditions, m.resolution) == ("diffbfr", arch, role, conditions, 64)
    assert m.config == json.loads(json.dumps(config)) and m.public_name is None
    assert m.diffusion["prediction"] == prediction and m.diffusion["num_timesteps"] == schedule.num_timesteps
    assert m.diffusion["noise_conditioning"] == ("gamma" if arch == "sr3" else "timestep")
    assert torch.equal(m.schedule.betas, schedule.betas) and m.schedule.name == schedule.name
    assert m.cond_channels == 3 * len(conditions)
    for key, value in net.state_dict().items():
        assert torch.equal(m.net.state_dict()[key], value), key
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 3 * len(conditions), 16, 16)
    tau = torch.tensor([3.0, 17.5], dtype=torch.float64)
    spec = format_specs()[arch]
    t_net = schedule.abar(tau).sqrt() if arch == "sr3" else schedule.net_time(tau)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x, tau, cond), spec.call(net, x, t_net.float(), cond), rtol=0, atol=0)
    assert read_metadata(read_checkpoint(path)).training == {"steps": 123, "data": "ffhq"}


def test_named_schedule_is_stored_by_name_custom_as_betas(tmp_path):
    net, config = _tiny("sr3")
    common = dict(arch="sr3", config=config, role="irm64", conditions=["lq"], prediction="eps")
    named = save_model(tmp_path / "named.safetensors", net, schedule=Schedule.from_name("quad", 100, start=1e-4, end=2e-2), **common)
    custom_betas = torch.rand(30, dtype=torch.float64) * 0.01 + 1e-4
    custom = save_model(tmp_path / "custom.safetensors", net, schedule=Schedule(custom_betas), **common)
    with safe_open(str(named), "pt") as f:
        assert json.loads(f.metadata()["schedule"]) == {"name": "quad", "num_timesteps": 100, "args": {"start": 1e-4, "end": 2e-2}}
        assert not any(k.startswith("__schedule__") for k in f.keys())
    assert torch.equal(load_file(str(custom))["__schedule__.betas"], custom_betas)
    assert torch.equal(load_model(custom).schedule.betas, custom_betas)


def test_native_hints(tmp_path):
    net, config = _tiny("sr3")
    path = save_model(tmp_path / "m.safetensors", net, arch="sr3", config=config, role="irm64", conditions=["lq"],
                      schedule=Schedule.from_name("linear", 1000), prediction="eps")
    assert load_model(path, {"role": "irm256"}).role == "irm256"
    with pytest.raises(CheckpointError, match="config and schedule are stored"):
        load_model(path, {"norm_groups": 8})


def test_invalid_arguments_are_refused(tmp_path):
    net, config = _tiny("sr3")
    good = dict(arch="sr3", config=config, role="irm64", conditions=["lq"], schedule=Schedule.from_name("linear", 100), prediction="eps")
    for bad in ({"arch": "vae"}, {"role": "stage9"}, {"conditions": ["mask"]}, {"prediction": "score"}):
        with pytest.raises(ValueError, match=str(next(iter(bad.values()))).strip("[]'")):
            save_model(tmp_path / "x.safetensors", net, **{**good, **bad})
    assert not (tmp_path / "x.safetensors").exists()


def _rewrite_metadata(path, **changes) -> None:
    with safe_open(str(path), "pt") as f:
        metadata = {**f.metadata(), **changes}
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_newer_or_damaged_files_are_refused(tmp_path):
    net, config = _tiny("sr3")
    path = save_model(tmp_path / "m.safetensors", net, arch="sr3", config=config, role=None, conditions=["lq"],
                      schedule=Schedule.from_name("linear", 100), prediction="eps")
    _rewrite_metadata(path, diffbfr_format_version="99")
    with pytest.raises(CheckpointError, match="newer comfy-diffbfr"):
        load_model(path)
    _rewrite_metadata(path, diffbfr_format_version="1", config="{not json")
    with pytest.raises(CheckpointError, match="damaged diffbfr metadata"):
        load_model(path)

