"""Schedules: betas of every family, the continuous abar(tau) and its inverse, diffusers' float32
schedules, and the reference respacings. Fixture checks read their configuration from fixture.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfy_diffbfr.diffusion.reference_respacing import diffusers_timesteps, grid_from_steps, space_timesteps, spaced_betas
from comfy_diffbfr.diffusion.respacing import even_grid
from comfy_diffbfr.diffusion.schedules import Schedule, diffusers_schedule, make_betas
from comfy_diffbfr.errors import InvalidParameterError

SCHEDULES = {
    "linear1000": lambda: Schedule.from_name("linear", 1000),
    "cosine4000": lambda: Schedule.from_name("cosine", 4000),
    "sr3_linear2000": lambda: Schedule.from_name("linear_range", 2000, start=1e-6, end=1e-2),
    "quad500": lambda: Schedule.from_name("quad", 500, start=1e-4, end=2e-2),
}
#: SR3's ``make_beta_schedule`` names -> ours (its "linear" is an unscaled linspace)
SR3_KINDS = {"linear": "linear_range", "quad": "quad", "cosine": "cosine"}


def _fixture(parity_dir: Path, folder: str) -> tuple[dict, Path]:
    path = parity_dir / folder
    if not (path / "fixture.json").is_file():
        pytest.skip(f"{path} has no fixture.json")
    return json.loads((path / "fixture.json").read_text()), path


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request) -> Schedule:
    return SCHEDULES[request.param]()


def test_abar_is_exact_at_integers(schedule):
    T = schedule.num_timesteps
    n = torch.arange(T + 1, dtype=torch.float64)
    abar = schedule.abar(n)
    assert abar[0].item() == 1.0
    # tau = t + 1 is the references' step t: abar(n) == alphas_cumprod[n - 1], bit for bit
    assert torch.equal(abar[1:], schedule.alphas_cumprod)
    torch.testing.assert_close(abar[1:], torch.cumprod(1 - schedule.betas, 0), rtol=1e-13, atol=0)


def test_abar_is_strictly_monotone_and_continuous(schedule):
    T = schedule.num_timesteps
    taus = torch.linspace(0, T, 20 * T + 7, dtype=torch.float64)
    abar = schedule.abar(taus)
    assert bool((abar[1:] < abar[:-1]).all())
    # continuity at every integer: left and right limits meet the value
    n = torch.arange(1, T, dtype=torch.float64)
    eps = 1e-9
    at, left, right = schedule.abar(n), schedule.abar(n - eps), schedule.abar(n + eps)
    assert float((left - at).abs().max()) < 1e-8 and float((right - at).abs().max()) < 1e-8


def test_abar_interpolates_geometrically_between_steps(schedule):
    n, f = 37, 0.3
    alpha = 1 - schedule.betas[n]  # alpha_{n+1} on our axis
    expected = schedule.alphas_cumprod[n - 1] * alpha**f
    assert schedule.abar(n + f).item() == pytest.approx(expected.item(), rel=1e-12)


def test_tau_at_inverts_abar(schedule):
    T = schedule.num_timesteps
    taus = torch.cat([torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * T,
                      torch.tensor([0.0, 1.0, 2.5, float(T)], dtype=torch.float64)])
    back = schedule.tau_at(schedule.abar(taus))
    torch.testing.assert_close(back, taus, rtol=0, atol=1e-6)


def test_abar_and_tau_at_reject_out_of_range():
    sch = Schedule.from_name("linear", 100)
    with pytest.raises(InvalidParameterError, match="tau must lie in"):
        sch.abar(100.5)
    with pytest.raises(InvalidParameterError, match="tau must lie in"):
        sch.abar(-0.1)
    with pytest.raises(InvalidParameterError, match="abar must lie in"):
        sch.tau_at(sch.alphas_cumprod[-1] / 2)


def test_make_betas_rejects_bad_input():
    with pytest.raises(InvalidParameterError, match="unknown schedule"):
        make_betas("sigmoid", 10)
    with pytest.raises(InvalidParameterError, match="start= and end="):
        make_betas("linear_range", 10)
    with pytest.raises(InvalidParameterError, match=r"\(0, 1\)"):
        Schedule(torch.tensor([0.1, 1.5]))


def test_linear_is_scaled_by_t():
    betas = make_betas("linear", 4000)
    assert betas[0].item() == pytest.approx(0.25e-4) and betas[-1].item() == pytest.approx(0.005)


def test_cosine_matches_its_closed_form():
    T = 4000
    f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    sch = Schedule.from_name("cosine", T)
    n = torch.tensor([1, 17, 2000, 3500], dtype=torch.float64)
    expected = torch.from_numpy(f(n.numpy()) / f(0.0))
    torch.testing.assert_close(sch.abar(n), expected, rtol=1e-9, atol=0)  # the 0.999 clip is only at the end


def test_net_time_floors_at_zero_and_rescales():
    sch = Schedule.from_name("cosine", 4000)
    tau = torch.tensor([0.0, 0.5, 1.0, 18.0, 4000.0])
    assert sch.net_time(tau).tolist() == [0.0, 0.0, 0.0, 17.0, 3999.0]
    assert sch.net_time(tau, rescale_timesteps=True).tolist() == [0.0, 0.0, 0.0, 4.25, 999.75]


def test_from_alphas_cumprod_keeps_values_exactly():
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)
    sch = Schedule.from_alphas_cumprod(ac)
    assert torch.equal(sch.alphas_cumprod, ac.double())
    assert torch.equal(sch.abar(torch.arange(1, 1001.0)), ac.double())
    with pytest.raises(InvalidParameterError, match="strictly decreasing"):
        Schedule.from_alphas_cumprod(torch.tensor([0.9, 0.95]))


# --- grids and reference respacings -------------------------------------------------------------


def test_even_grid_is_evenly_spaced_from_real_t0():
    grid = even_grid(123.4, 10)
    assert grid.dtype == torch.float64 and grid.numel() == 11
    assert grid[0].item() == 123.4 and grid[-1].item() == 0.0
    torch.testing.assert_close(grid[:-1] - grid[1:], torch.full((10,), 12.34, dtype=torch.float64))
    assert even_grid(601, 601)[:5].tolist() == [601, 600, 599, 598, 597]
    for bad in [(10.0, 0), (10.0, 2.5), (0.0, 5), (-1.0, 5)]:
        with pytest.raises(InvalidParameterError):
            even_grid(*bad)


def test_grid_from_steps_shifts_reference_steps():
    assert grid_from_steps([0, 500, 999]).tolist() == [1000, 501, 1, 0]
    with pytest.raises(InvalidParameterError):
        grid_from_steps([])


def test_space_timesteps_known_cases():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "3") == [0, 4, 9]  # stride 4.5: round(4.5) == 4 (banker's rounding)
    kept = space_timesteps(1000, "10,15,20")
    assert len(kept) == 45 and kept[0] == 0 and kept[-1] == 999
    assert max(kept[:10]) < 334 <= min(kept[10:25])  # one section per third
    with pytest.raises(InvalidParameterError, match="cannot keep"):
        space_timesteps(10, "11")


def test_spaced_betas_keep_abar_at_the_kept_steps():
    sch = Schedule.from_name("linear", 1000)
    kept = space_timesteps(1000, "25")
    betas = spaced_betas(sch, kept)
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), sch.alphas_cumprod[kept], rtol=1e-12, atol=0)


def test_diffusers_timesteps_spacings():
    assert diffusers_timesteps(1000, 50)[:3] == [980, 960, 940] and diffusers_timesteps(1000, 50)[-1] == 0
    assert diffusers_timesteps(1000, 50, steps_offset=1)[-1] == 1
    assert diffusers_timesteps(1000, 10, spacing="trailing") == list(range(999, 0, -100))
    assert diffusers_timesteps(1000, 4, spacing="linspace") == [999, 666, 333, 0]
    with pytest.raises(InvalidParameterError):
        diffusers_timesteps(1000, 10, spacing="karras")


# --- fixtures: betas as the references compute them ----------------------------------------------


@pytest.mark.parametrize("folder", ["guided_diffusion", "improved_diffusion"])
def test_adm_schedule_and_respacing_match_reference(parity_dir, folder):
    fixture, path = _fixture(parity_dir, folder)
    kwargs = fixture["diffusion"]["create_gaussian_diffusion_kwargs"]
    ref = load_file(path / "schedule.safetensors")
    sch = Schedule.from_name(kwargs["noise_schedule"], kwargs["steps"])
    torch.testing.assert_close(sch.betas, ref["betas_float64"], rtol=0, atol=1e-15)
    torch.testing.assert_close(sch.alphas_cumprod, ref["alphas_cumprod_float64"], rtol=1e-13, atol=0)
    kept = space_timesteps(kwargs["steps"], fixture["diffusion"]["spaced_timestep_respacing"])
    assert kept == ref["spaced_timestep_map"].tolist()
    torch.testing.assert_close(spaced_betas(sch, kept), ref["spaced_betas_float64"], rtol=1e-12, atol=1e-15)


def test_difface_respacing_matches_reference(parity_dir):
    fixture, path = _fixture(parity_dir, "difface")
    kwargs = fixture["diffusion"]["create_gaussian_diffusion_kwargs"]
    ref = load_file(path / "schedule.safetensors")
    sch = Schedule.from_name(kwargs["noise_schedule"], kwargs["steps"])
    kept = space_timesteps(kwargs["steps"], kwargs["timestep_respacing"])
    assert kept == ref["spaced_timestep_map"].tolist()
    torch.testing.assert_close(spaced_betas(sch, kept), ref["spaced_betas_float64"], rtol=1e-12, atol=1e-15)


def test_sr3_schedule_matches_reference(parity_dir):
    fixture, path = _fixture(parity_dir, "sr3")
    opt = fixture["config_json_style"]["model"]["beta_schedule"]["val"]
    kind = SR3_KINDS[opt["schedule"]]
    args = {"start": opt["linear_start"], "end": opt["linear_end"]} if kind != "cosine" else {}
    sch = Schedule.from_name(kind, opt["n_timestep"], **args)
    ref = load_file(path / "schedule.safetensors")
    torch.testing.assert_close(sch.betas, ref["betas_float64"], rtol=0, atol=1e-15)
    # SR3's sqrt_alphas_cumprod_prev is sqrt(abar) on our axis, index n = tau
    taus = torch.arange(sch.num_timesteps + 1, dtype=torch.float64)
    torch.testing.assert_close(sch.abar(taus).sqrt(), ref["sqrt_alphas_cumprod_prev_float64"], rtol=0, atol=1e-13)


def test_ddim_model_schedule_matches_reference(parity_dir):
    fixture, path = _fixture(parity_dir, "ddim_model")
    opt = fixture["yaml_style_config"]["diffusion"]
    if opt["beta_schedule"] != "linear":
        pytest.skip(f"ermongroup schedule {opt['beta_schedule']!r} is not one of ours")
    betas = make_betas("linear_range", opt["num_diffusion_timesteps"], start=opt["beta_start"], end=opt["beta_end"])
    torch.testing.assert_close(betas, load_file(path / "schedule.safetensors")["betas_float64"], rtol=0, atol=1e-15)


def test_diffusers_schedule_matches_float32_reference(parity_dir):
    fixture, path = _fixture(parity_dir, "diffusers_unet2d")
    sch = diffusers_schedule(fixture["scheduler"]["kwargs"])
    ref = load_file(path / "schedule.safetensors")
    assert torch.equal(sch.alphas_cumprod, ref["alphas_cumprod"].double())  # bit-exact float32 cumprod
    torch.testing.assert_close(sch.betas, ref["betas"].double(), rtol=0, atol=1e-6)


def test_diffusers_schedule_rejects_unsupported():
    with pytest.raises(InvalidParameterError, match="beta_schedule"):
        diffusers_schedule({"beta_schedule": "sigmoid"})
    with pytest.raises(InvalidParameterError, match="zero_snr"):
        diffusers_schedule({"rescale_betas_zero_snr": True})
    sch = diffusers_schedule({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 100})
    torch.testing.assert_close(sch.betas, make_betas("cosine", 100), rtol=1e-5, atol=1e-7)
