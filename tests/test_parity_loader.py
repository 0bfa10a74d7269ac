"""Every parity fixture loads through ``load_model`` and reproduces the reference network outputs.

Config-driven: the only hints are what the weights cannot reveal, read from each fixture.json
(head counts, attention order, norm groups, variant, diffusion settings); the structure itself
must be detected from the weights. Both the original checkpoint and weights.safetensors load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from comfy_diffbfr.models import load_model

ATOL = 1e-4
#: fixture format -> (our format, ADM variant)
FORMATS = {
    "sr3_janspiry": ("sr3", None),
    "guided_diffusion_unet": ("adm", "guided"),
    "guided_diffusion_superres": ("adm", "guided"),
    "improved_diffusion_unet": ("adm", "improved"),
    "difface_unet": ("adm", "difface"),
    "ddim_ermongroup_model": ("ddpm", None),
    "diffusers_unet2d": ("ddpm", None),
}
#: ermongroup get_beta_schedule names -> ours
ERMONGROUP_SCHEDULES = {"linear": "linear_range", "quad": "quad"}
ADM_HEAD_HINTS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


def _fixture_dirs() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "shared" / "parity"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "fixture.json").is_file())


def _hints(fixture: dict[str, Any]) -> dict[str, Any]:
    """What the weights cannot reveal, from the fixture's constructor and diffusion kwargs."""
    fmt, variant = FORMATS[fixture["format"]]
    hints: dict[str, Any] = {}
    if fmt == "sr3":
        hints["norm_groups"] = fixture["unet_constructor_kwargs"]["norm_groups"]
    elif fmt == "adm":
        kwargs = fixture["constructor_kwargs"]
        hints = {"variant": variant, **{k: kwargs[k] for k in ADM_HEAD_HINTS if k in kwargs}}
        if variant == "difface":
            hints.pop("num_heads_upsample", None)  # DifFace's up path has no such argument
    diffusion = fixture.get("diffusion", {}).get("create_gaussian_diffusion_kwargs")
    if diffusion:
        hints.update(num_timesteps=diffusion["steps"], noise_schedule=diffusion["noise_schedule"],
                     rescale_timesteps=diffusion["rescale_timesteps"])
    yaml_diffusion = fixture.get("yaml_style_config", {}).get("diffusion")
    if yaml_diffusion and yaml_diffusion["beta_schedule"] in ERMONGROUP_SCHEDULES:
        hints.update(num_timesteps=yaml_diffusion["num_diffusion_timesteps"],
                     noise_schedule=ERMONGROUP_SCHEDULES[yaml_diffusion["beta_schedule"]],
                     beta_start=yaml_diffusion["beta_start"], beta_end=yaml_diffusion["beta_end"])
    return hints


def _model_files(folder: Path, fixture: dict[str, Any]) -> list[Path]:
    if fixture["format"] == "diffusers_unet2d":
        return [folder / "unet", folder / "unet_legacy_bin", folder]
    return [folder / fixture["checkpoint"]["file"], folder / "weights.safetensors"]


def _cases() -> list[Any]:
    cases = []
    for folder in _fixture_dirs():
        fixture = json.loads((folder / "fixture.json").read_text())
        for path in _model_files(folder, fixture):
            cases.append(pytest.param(folder, fixture, path, id=f"{folder.name}/{path.name}"))
    return cases or [pytest.param(None, None, None, marks=pytest.mark.skip(reason="../shared/parity is absent"))]


@pytest.mark.parametrize("folder,fixture,path", _cases())
def test_fixture_checkpoint_reproduces_reference(folder, fixture, path):
    model = load_model(path, _hints(fixture))
    assert model.format == FORMATS[fixture["format"]][0]
    assert not model.net.training and all(p.dtype == torch.float32 for p in model.net.parameters())
    inputs = load_file(str(folder / "inputs.safetensors"))
    outputs = load_file(str(folder / "outputs.safetensors"))
    if model.format == "sr3":
        _check_sr3(model, folder, inputs, outputs)
    else:
        _check_timestep_model(model, inputs, outputs)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"max abs difference {diff:.3g} > {ATOL}"


def _check_timestep_model(model, inputs, outputs) -> None:
    low_res = inputs.get("low_res")
    extra = {"low_res": low_res} if low_res is not None else {}
    # The net sees t * 1000 / T when rescale_timesteps; our continuous time is tau = t + 1.
    scale = 1000.0 / model.schedule.num_timesteps if model.diffusion["rescale_timesteps"] else 1.0
    runs = [("timesteps", "out_float32"), ("timesteps_fractional", "out_fractional_t_float32")]
    checked = 0
    with torch.no_grad():
        for t_name, out_name in runs:
            if t_name not in inputs:
                continue
            t = inputs[t_name]
            _close(model.net(inputs["x"], t, **extra), outputs[out_name])
            _close(model.predict(inputs["x"], t.double() / scale + 1.0, low_res), outputs[out_name])
            checked += 1
    assert checked >= 1


def _check_sr3(model, folder: Path, inputs, outputs) -> None:
    schedule_ref = load_file(str(folder / "schedule.safetensors"))
    gamma_ref = schedule_ref["sqrt_alphas_cumprod_prev_float64"]
    T = model.schedule.num_timesteps
    assert T + 1 == gamma_ref.numel()
    # Our continuous axis: the reference's step t is tau = t + 1 and gamma = sqrt(abar(tau)).
    taus = torch.arange(0, T + 1, dtype=torch.float64)
    # Exact when the float32 betas buffer was recognised as a named schedule; else float32-accurate.
    rtol = 1e-6 if model.schedule.name == "custom" else 1e-12
    torch.testing.assert_close(model.schedule.abar(taus).sqrt(), gamma_ref, rtol=rtol, atol=0.0)

    noise_level = inputs["noise_level"].reshape(-1).double()
    # tau at which sqrt(abar) equals each row's noise level (log abar is linear between steps).
    log_abar = torch.log(model.schedule.abar(taus))
    target = torch.log(noise_level**2)
    n = torch.searchsorted(-log_abar, -target, right=True).clamp(1, T) - 1
    tau = n + (target - log_abar[n]) / (log_abar[n + 1] - log_abar[n])
    with torch.no_grad():
        _close(model.net(inputs["unet_input"], inputs["noise_level"]), outputs["eps_float32"])
        _close(model.predict(inputs["x_noisy"], tau, inputs["condition"]), outputs["eps_float32"])
