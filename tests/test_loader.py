"""load_model's framework: unwrapping, schedule recovery, diffusion hints, roles, predict's time axis."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_diffbfr.diffusion.schedules import diffusers_schedule, make_betas
from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model
from comfy_diffbfr.models.checkpoint_io import unwrap
from comfy_diffbfr.models.loader import schedule_from_betas
from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config
from comfy_diffbfr.networks.sr3_unet import SR3UNet

PATH = Path("ckpt.pth")


def _t(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


# --- unwrapping -------------------------------------------------------------------------------


def test_wrapper_dict_prefers_ema():
    ema, raw = {"a.weight": torch.ones(2)}, {"a.weight": torch.zeros(2)}
    notes: list[str] = []
    sd, buffers = unwrap({"model": raw, "ema": ema, "step": 10}, PATH, notes)
    assert torch.equal(sd["a.weight"], torch.ones(2)) and buffers == {}
    assert "'ema'" in notes[0]


def test_nested_wrappers_and_ddp_prefix():
    sd, _ = unwrap({"iters_start": 5, "state_dict": {"module.model.a.weight": _t(3), "module.model.b.bias": _t(1)}}, PATH)
    assert sorted(sd) == ["a.weight", "b.bias"]


def test_ermongroup_list_takes_ema_last():
    model, ema = {"module.conv_in.weight": _t(1)}, {"module.conv_in.weight": torch.ones(1)}
    sd, _ = unwrap([model, {"state": {}}, 3, 100, ema], PATH)
    assert torch.equal(sd["conv_in.weight"], torch.ones(1))
    sd, _ = unwrap([model, {"state": {}}, 3, 100, None], PATH)  # no EMA saved: the model
    assert torch.equal(sd["conv_in.weight"], _t(1))


def test_sr3_buffers_split_off_and_prefix_stripped():
    sd, buffers = unwrap({"denoise_fn.downs.0.weight": _t(4, 6, 3, 3), "betas": _t(10), "alphas_cumprod": _t(10)}, PATH)
    assert list(sd) == ["downs.0.weight"] and sorted(buffers) == ["alphas_cumprod", "betas"]


def test_non_tensor_extras_are_dropped():
    sd, _ = unwrap({"a.weight": _t(2), "_metadata_version": 1}, PATH)
    assert list(sd) == ["a.weight"]


# --- schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,args", [("linear_range", {"start": 1e-6, "end": 1e-2}), ("linear", {}),
                                       ("cosine", {}), ("quad", {"start": 1e-4, "end": 2e-2})])
def test_float32_betas_buffer_recovers_the_named_schedule(kind, args):
    exact = make_betas(kind, 2000, **args)
    schedule = schedule_from_betas(exact.float())
    assert schedule.name == kind and schedule.args == args
    assert torch.equal(schedule.betas, exact)  # float64 values, not the float32 buffer's


def test_other_betas_are_kept_as_stored():
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64) ** 1.5
    schedule = schedule_from_betas(betas)
    assert schedule.name == "custom" and torch.equal(schedule.betas, betas)


# --- small real checkpoints -------------------------------------------------------------------

TINY_ADM = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[False, True],
                use_scale_shift_norm=True, num_head_channels=16)


def _adm(tmp_path: Path, name: str = "adm.pth", wrap=lambda sd: {"ema": sd}, **overrides) -> tuple[Path, ADMUNet]:
    torch.manual_seed(0)
    net = ADMUNet.from_config(adm_config(**{**TINY_ADM, **overrides}))
    path = tmp_path / name
    torch.save(wrap(net.state_dict()), path)
    return path, net.eval()


def test_unconditional_adm_defaults(tmp_path):
    path, _ = _adm(tmp_path, out_channels=6, learn_sigma=True)
    m = load_model(path, {"num_head_channels": 16})
    assert (m.format, m.arch, m.role, m.conditions, m.public_name) == ("adm", "adm", "tem", [], None)
    assert (m.in_channels, m.out_channels, m.cond_channels) == (3, 6, 0)
    assert m.diffusion == {"num_timesteps": 1000, "schedule": "linear", "prediction": "eps", "learned_sigma": True,
                           "rescale_timesteps": False, "noise_conditioning": "timestep"}
    assert torch.equal(m.schedule.betas, make_betas("linear", 1000))
    assert m.path == path and not m.net.training


def test_predict_maps_tau_to_the_rescaled_timestep(tmp_path):
    path, net = _adm(tmp_path)
    hints = {"num_head_channels": 16, "num_timesteps": 4000, "noise_schedule": "cosine", "rescale_timesteps": True}
    with pytest.raises(CheckpointError, match="timestep_respacing='250' is not used: the steps are chosen per stage"):
        load_model(path, {**hints, "timestep_respacing": "250"})
    m = load_model(path, hints)
    assert m.diffusion["num_timesteps"] == 4000 and m.diffusion["schedule"] == "cosine"
    assert m.diffusion["rescale_timesteps"]
    x = torch.randn(2, 3, 16, 16)
    tau = torch.tensor([1.0, 2001.5], dtype=torch.float64)
    with torch.no_grad():
        expected = net(x, torch.tensor([0.0, 2000.5 * 0.25]))
        torch.testing.assert_close(m.predict(x, tau), expected, rtol=0, atol=1e-5)
        # a scalar tau serves the whole batch; below the first step the net sees t = 0
        torch.testing.assert_close(m.predict(x, 0.5), net(x, torch.zeros(2)), rtol=0, atol=1e-5)


def test_super_resolution_adm_roles_and_conditions(tmp_path):
    path, net = _adm(tmp_path, in_channels=6, super_res=True)
    m = load_model(path, {"num_head_channels": 16})
    assert (m.conditions, m.cond_channels, m.role) == (["lq"], 3, None)  # size unknown: no stage guessed
    assert load_model(path, {"num_head_channels": 16, "image_size": 64}).role == "irm64"
    assert load_model(path, {"num_head_channels": 16, "resolution": 256}).role == "irm256"
    assert load_model(path, {"num_head_channels": 16, "role": "irm256"}).role == "irm256"
    for bad in ("abc", [1]):
        with pytest.raises(CheckpointError, match="resolution must be a whole number of pixels"):
            load_model(path, {"num_head_channels": 16, "resolution": bad})
    for bad in ({"num_timesteps": 0}, {"noise_schedule": "linear_range", "beta_start": "x", "beta_end": 0.02}):
        with pytest.raises(CheckpointError, match="invalid schedule"):
            load_model(path, {"num_head_channels": 16, **bad})
    x, low = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x, 11.0, low), net(x, torch.tensor([10.0]), low_res=low), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hints,message", [
    ({"role": "stage3"}, "role 'stage3'"),
    ({"conditions": "lq,mask"}, "unknown condition source"),
    ({"prediction": "score"}, "prediction='score'"),
    ({"noise_schedule": "sigmoid"}, "noise_schedule 'sigmoid'"),
    ({"noise_schedule": "linear_range"}, "beta_start and beta_end"),
    ({"rescale_timesteps": "maybe"}, "true or false"),
    ({"num_headz": 4}, "num_headz"),
])
def test_bad_hints_are_named(tmp_path, hints, message):
    path, _ = _adm(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path, hints)


def test_hint_contradicting_the_weights_errors(tmp_path):
    path, _ = _adm(tmp_path)
    with pytest.raises(CheckpointError, match="contradicts"):
        load_model(path, {"channel_mult": [1, 2, 4]})


TINY_SR3 = dict(in_channel=6, out_channel=3, inner_channel=8, channel_mults=[1, 2], attn_levels=[1], res_blocks=1, norm_groups=4)


def _sr3_file(tmp_path: Path, with_buffers: bool) -> tuple[Path, SR3UNet, torch.Tensor]:
    torch.manual_seed(0)
    net = SR3UNet(**TINY_SR3).eval()
    betas = make_betas("linear_range", 2000, start=1e-6, end=1e-2)
    sd = {f"denoise_fn.{k}": v for k, v in net.state_dict().items()}
    if with_buffers:
        sd["betas"] = betas.float()
        sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    path = tmp_path / ("sr3_gen.safetensors" if with_buffers else "sr3_bare.safetensors")
    save_file(sd, str(path))
    return path, net, betas


def test_sr3_schedule_from_buffers_and_gamma(tmp_path):
    path, net, betas = _sr3_file(tmp_path, with_buffers=True)
    m = load_model(path, {"norm_groups": 4, "image_size": 64})
    assert (m.format, m.role, m.conditions, m.diffusion["noise_conditioning"]) == ("sr3", "irm64", ["lq"], "gamma")
    assert m.schedule.name == "linear_range" and torch.equal(m.schedule.betas, betas)
    # SR3's p_sample at step t feeds sqrt_alphas_cumprod_prev[t + 1] = sqrt(alphas_cumprod[t]); tau = t + 1.
    t = torch.tensor([0, 10, 1999])
    gamma = torch.cumprod(1 - betas, 0)[t].sqrt()
    x, cond = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = net(torch.cat([cond, x], 1), gamma.float())
        torch.testing.assert_close(m.predict(x, t.double() + 1, cond), expected, rtol=0, atol=1e-5)


def test_sr3_without_schedule_needs_hints_unless_recognised(tmp_path):
    path, _, betas = _sr3_file(tmp_path, with_buffers=False)
    with pytest.raises(CheckpointError, match="does not store its noise schedule"):
        load_model(path, {"norm_groups": 4})
    hints = {"norm_groups": 4, "noise_schedule": "linear_range", "num_timesteps": 2000, "beta_start": 1e-6, "beta_end": 1e-2}
    assert torch.equal(load_model(path, hints).schedule.betas, betas)


def test_schedule_hint_overrides_stored_buffers(tmp_path):
    path, _, _ = _sr3_file(tmp_path, with_buffers=True)
    m = load_model(path, {"norm_groups": 4, "noise_schedule": "cosine", "num_timesteps": 1000})
    assert m.schedule.name == "cosine" and m.schedule.num_timesteps == 1000


def test_fp16_weights_load_as_float32(tmp_path):
    path, net = _adm(tmp_path, wrap=lambda sd: {k: v.half() for k, v in sd.items()})
    m = load_model(path, {"num_head_channels": 16})
    assert all(p.dtype == torch.float32 for p in m.net.parameters())
    ref = net.state_dict()["out.2.weight"].half().float()
    assert torch.equal(m.net.state_dict()["out.2.weight"], ref)


def test_loaded_weights_are_the_network_tensors_each_in_its_own_memory(tmp_path):
    # A pickle may store one tensor under two keys and views into one storage; the network built
    # from such a file must still have independent parameters (training updates them in place).
    _, net = _adm(tmp_path)
    sd = net.state_dict()
    base, conv = "input_blocks.0.0.bias", "input_blocks.0.0.weight"
    alias = next(k for k in sd if sd[k].shape == sd[base].shape and k != base)
    big = torch.cat([sd[conv].flatten(), sd[conv].flatten()])
    hostile = {**sd, alias: sd[base], conv: big[: sd[conv].numel()].view_as(sd[conv])}
    path = tmp_path / "aliased.pth"
    torch.save(hostile, path)
    m = load_model(path, {"num_head_channels": 16})
    tensors = list(m.net.parameters())
    assert not any(t.is_meta for t in tensors) and all(t.requires_grad for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    loaded = m.net.state_dict()
    assert torch.equal(loaded[alias], sd[base]) and torch.equal(loaded[conv], sd[conv])
    with torch.no_grad():
        loaded[base].add_(1.0)
    assert torch.equal(loaded[alias], sd[base])  # the other key's parameter did not move


def test_diffusers_scheduler_config_sets_the_diffusion(parity_dir, tmp_path):
    import json
    import shutil

    shutil.copytree(parity_dir / "diffusers_unet2d" / "unet", tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "scheduler").mkdir()
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"}
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    m = load_model(tmp_path / "pipe")
    assert (m.format, m.diffusion["prediction"], m.diffusion["num_timesteps"]) == ("ddpm", "v", 500)
    assert torch.equal(m.schedule.alphas_cumprod, diffusers_schedule(config).alphas_cumprod)  # as diffusers computes it
    torch.testing.assert_close(m.schedule.betas, make_betas("quad", 500, start=0.00085, end=0.012), rtol=1e-3, atol=0)
    assert m.wrapping == ["diffusers folder (diffusion_pytorch_model.safetensors)"]
    config["beta_schedule"] = "sigmoid"
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="beta_schedule 'sigmoid'"):
        load_model(tmp_path / "pipe" / "unet")  # the scheduler beside unet/ is found too


def test_ermongroup_training_checkpoint_loads_its_ema(tmp_path):
    from comfy_diffbfr.networks.ddpm_unet import DDPMUNet

    def tiny(seed: int) -> DDPMUNet:
        torch.manual_seed(seed)
        return DDPMUNet(in_channels=3, out_channels=3, base_channels=32, block_out_channels=[32, 64], layers_per_block=1,
                        down_attention=[False, True], up_attention=[False, True]).eval()

    model, ema = tiny(0), tiny(1)
    ddp = lambda net: {f"module.{k}": v for k, v in net.state_dict().items()}  # noqa: E731
    torch.save([ddp(model), {"state": {}, "param_groups": []}, 10, 5000, ddp(ema)], tmp_path / "ckpt.pth")
    m = load_model(tmp_path / "ckpt.pth")
    assert m.format == "ddpm" and m.schedule.name == "linear_range" and m.schedule.args == {"start": 1e-4, "end": 0.02}
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x, 101.0), ema(x, torch.tensor([100.0])), rtol=0, atol=1e-5)
