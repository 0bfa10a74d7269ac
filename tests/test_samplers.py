"""Sampler steps and loops: properties of the step math, truncated_sample's contract, and parity
with the reference fixtures (recorded network outputs and noise replayed through the step
functions). Fixture tests take their schedule, respacing and variance settings from fixture.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from comfy_diffbfr.diffusion.reference_respacing import diffusers_timesteps, grid_from_steps, space_timesteps
from comfy_diffbfr.diffusion.respacing import even_grid
from comfy_diffbfr.diffusion.samplers import generator_noise, sample_grid, truncated_sample
from comfy_diffbfr.diffusion.schedules import Schedule, diffusers_schedule
from comfy_diffbfr.diffusion.steps import (
    ddim_step,
    ddpm_step,
    q_sample,
    split_output,
    to_eps_x0,
    transition,
)
from comfy_diffbfr.errors import Interrupted, InvalidParameterError, WrongModelKindError
from comfy_diffbfr.vocabulary import PREDICTIONS

STEP_ATOL = 1e-5  # README: p_sample / q_sample / scheduler tensors
NET_ATOL = 1e-4  # README: network outputs (where the fixture network itself runs)
TINY_T_DDIM_ATOL = 1e-3  # README: DDIM where re-deriving eps from the clipped x0 is ill-conditioned


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    diff = _max_diff(actual, expected)
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


# --- fake models ---------------------------------------------------------------------------------


class FakeModel:
    """A LoadedModel stand-in whose output is a fixed elementwise function of (x_t, tau): rows are
    independent by construction, and every call is recorded."""

    def __init__(self, schedule: Schedule, *, prediction: str = "eps", learned_sigma: bool = False) -> None:
        self.schedule = schedule
        self.diffusion = {"prediction": prediction, "learned_sigma": learned_sigma}
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def predict(self, x_t, tau, cond=None):
        self.calls.append((x_t.clone(), tau.clone(), cond))
        out = torch.tanh(x_t) * 0.5 + 0.001 * tau.to(x_t.dtype).reshape(-1, 1, 1, 1)
        if cond is not None:
            out = out + 0.1 * cond
        if self.diffusion["learned_sigma"]:
            out = torch.cat([out, torch.tanh(x_t)], dim=1)
        return out


class OracleModel(FakeModel):
    """Knows the clean image x0 and returns the exact eps / x0 / v for the x_t it is given."""

    def __init__(self, schedule: Schedule, x0: torch.Tensor, prediction: str) -> None:
        super().__init__(schedule, prediction=prediction)
        self.x0 = x0

    def predict(self, x_t, tau, cond=None):
        abar = self.schedule.abar(tau).reshape(-1, 1, 1, 1).to(x_t.dtype)
        x0 = self.x0.to(x_t.dtype)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[self.diffusion["prediction"]]


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _image(seed: int, shape=(3, 3, 8, 8)) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1).float()


# --- step math ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_prediction_conversions_round_trip(kind):
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    abar = torch.tensor([0.9, 0.05], dtype=torch.float64)
    a, s = abar.sqrt().reshape(-1, 1, 1, 1), (1 - abar).sqrt().reshape(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    pred = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[kind]
    got_eps, got_x0 = to_eps_x0(pred, x_t, abar, kind)
    torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-12)
    with pytest.raises(InvalidParameterError, match="prediction type"):
        to_eps_x0(pred, x_t, abar, "score")


def test_transition_between_integers_is_the_reference_posterior():
    """Independent of our abar: the textbook posterior coefficients from the betas."""
    sch = Schedule.from_name("cosine", 300)
    betas, ac = sch.betas, sch.alphas_cumprod
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    t = torch.tensor([0, 1, 150, 299])
    tr = transition(sch, t + 1.0, t.double())
    torch.testing.assert_close(tr.beta, betas[t], rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(tr.coef_x0, (betas * ac_prev.sqrt() / (1 - ac))[t], rtol=1e-10, atol=0)
    torch.testing.assert_close(tr.coef_xt, ((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac))[t], rtol=1e-10, atol=0)
    torch.testing.assert_close(tr.posterior_variance, (betas * (1 - ac_prev) / (1 - ac))[t], rtol=1e-10, atol=0)
    assert tr.final.tolist() == [True, False, False, False]
    assert tr.posterior_log_variance[0].item() == pytest.approx(torch.log(torch.tensor(1e-20)).item())  # SR3 clip
    above = transition(sch, t + 1.0, t.double(), tau_above=t + 2.0)  # guided: the step above
    assert above.posterior_log_variance[0].item() == pytest.approx(float(torch.log(betas[1] * (1 - ac[0]) / (1 - ac[1]))))
    torch.testing.assert_close(above.posterior_log_variance[1:], tr.posterior_log_variance[1:])


def test_transition_over_a_real_interval_matches_two_substeps_marginal():
    """The posterior mean of one long step keeps the forward marginals: with x0 known exactly,
    E[x_to] = sqrt(abar_to) x0 for x_from drawn from the forward process, at real times."""
    sch = Schedule.from_name("linear", 1000)
    tr = transition(sch, 612.3, 257.9)
    # coef_x0 * x0 + coef_xt * E[x_from] == sqrt(abar_to) x0  and  variance consistency
    assert (tr.coef_x0 + tr.coef_xt * tr.abar_from.sqrt()).item() == pytest.approx(tr.abar_to.sqrt().item(), rel=1e-12)
    total = tr.coef_xt**2 * (1 - tr.abar_from) + tr.posterior_variance
    assert total.item() == pytest.approx((1 - tr.abar_to).item(), rel=1e-12)


def test_transition_rejects_non_decreasing_times():
    sch = Schedule.from_name("linear", 100)
    with pytest.raises(InvalidParameterError, match="tau_from > tau_to"):
        transition(sch, 5.0, 5.0)
    with pytest.raises(InvalidParameterError, match="tau_above"):
        transition(sch, 5.0, 0.0, tau_above=4.0)


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_ddim_eta0_follows_the_oracle_trajectory(kind):
    """A model that predicts the truth makes deterministic DDIM land on the forward marginal."""
    sch = Schedule.from_name("cosine", 1000)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    model = OracleModel(sch, x0, kind)
    x_t = q_sample(x0, 700.5, eps, sch)
    out = ddim_step(model.predict(x_t, torch.tensor([700.5, 700.5])), x_t, sch, 700.5, 300.25, None, prediction=kind)
    torch.testing.assert_close(out.sample, q_sample(x0, 300.25, eps, sch), rtol=0, atol=1e-10)
    final = ddim_step(model.predict(x_t, torch.tensor([700.5, 700.5])), x_t, sch, 700.5, 0.0, None, prediction=kind)
    torch.testing.assert_close(final.sample, x0, rtol=0, atol=1e-10)


def test_ddpm_final_step_adds_no_noise_and_others_need_noise():
    sch = Schedule.from_name("linear", 1000)
    x_t, out = _image(1, (2, 3, 4, 4)), _image(2, (2, 3, 4, 4))
    final = ddpm_step(out, x_t, sch, 3.0, 0.0, None)
    torch.testing.assert_close(final.sample, final.mean)
    with pytest.raises(InvalidParameterError, match="adds noise"):
        ddpm_step(out, x_t, sch, 30.0, 20.0, None)
    with pytest.raises(InvalidParameterError, match="shape"):
        ddpm_step(out, x_t, sch, 30.0, 20.0, torch.zeros(1, 3, 4, 4))


def test_learned_range_interpolates_between_the_two_log_variances():
    sch = Schedule.from_name("linear", 1000)
    x_t = _image(1, (1, 3, 4, 4))
    tr = transition(sch, 401.0, 301.0)
    for v, expected in [(-1.0, tr.posterior_log_variance), (1.0, tr.beta.log()), (0.0, (tr.posterior_log_variance + tr.beta.log()) / 2)]:
        out = torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, v)], dim=1)
        got = ddpm_step(out, x_t, sch, 401.0, 301.0, torch.zeros_like(x_t), learned_sigma=True).log_variance
        assert got.flatten()[0].item() == pytest.approx(expected.item(), rel=1e-6)
    large = ddpm_step(x_t, x_t, sch, 401.0, 301.0, torch.zeros_like(x_t), variance="large").log_variance
    assert large.flatten()[0].item() == pytest.approx(tr.beta.log().item(), rel=1e-6)


def test_split_output_checks_channels():
    main, var = split_output(torch.zeros(2, 6, 4, 4), 3, True)
    assert main.shape[1] == 3 and var.shape[1] == 3
    with pytest.raises(WrongModelKindError, match="expected 6 channels"):
        split_output(torch.zeros(2, 3, 4, 4), 3, True)


# --- truncated_sample -----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5), ("ddim", 0.0)])
def test_rows_do_not_depend_on_their_neighbours(sampler, eta):
    sch = Schedule.from_name("linear", 1000)
    start, cond = _image(1), _image(2)
    batch = truncated_sample(FakeModel(sch), start, cond=cond, strength=0.3, steps=6, sampler=sampler, eta=eta,
                             generators=_gens(11, 22, 33))
    alone = truncated_sample(FakeModel(sch), start[1:2], cond=cond[1:2], strength=0.3, steps=6, sampler=sampler,
                             eta=eta, generators=_gens(22))
    assert torch.equal(batch[1:2], alone)
    other = truncated_sample(FakeModel(sch), start, cond=cond, strength=0.3, steps=6, sampler=sampler, eta=eta,
                             generators=_gens(11, 99, 33))
    assert torch.equal(other[[0, 2]], batch[[0, 2]]) and not torch.equal(other[1], batch[1])


def test_truncated_start_and_time_grid():
    sch = Schedule.from_name("cosine", 4000)
    start = _image(1, (2, 3, 8, 8))
    model = FakeModel(sch)
    truncated_sample(model, start, strength=0.0123, steps=4, generators=_gens(5, 6))
    taus = [float(c[1][0]) for c in model.calls]
    torch.testing.assert_close(torch.tensor(taus, dtype=torch.float64), even_grid(0.0123 * 4000, 4)[:-1])
    assert all(c[1].dtype == torch.float64 and c[1].shape == (2,) for c in model.calls)
    eps = torch.stack([torch.randn(3, 8, 8, generator=g) for g in _gens(5, 6)])
    abar = sch.abar(0.0123 * 4000)
    expected = abar.sqrt() * start.double() + (1 - abar).sqrt() * eps.double()
    _close(model.calls[0][0], expected, 1e-6, "x_t0")


def test_explicit_t0_matches_strength():
    sch = Schedule.from_name("linear", 1000)
    start = _image(1)
    a = truncated_sample(FakeModel(sch), start, strength=0.25, steps=3, sampler="ddpm", generators=_gens(1, 2, 3))
    b = truncated_sample(FakeModel(sch), start, t0=250.0, steps=3, sampler="ddpm", generators=_gens(1, 2, 3))
    assert torch.equal(a, b)
    model = FakeModel(sch)
    truncated_sample(model, start, t0=37.5, steps=3, generators=_gens(1, 2, 3))
    assert [float(c[1][0]) for c in model.calls] == [37.5, 25.0, 12.5]


def test_callback_reports_each_step_and_can_interrupt():
    sch = Schedule.from_name("linear", 1000)
    seen = []

    def callback(step, total, x0_pred):
        seen.append((step, total, x0_pred.shape, float(x0_pred.abs().max())))
        if step == 3:
            raise Interrupted("cancelled by the user")

    model = FakeModel(sch)
    with pytest.raises(Interrupted):
        truncated_sample(model, _image(1), strength=0.5, steps=10, sampler="ddpm", generators=_gens(1, 2, 3),
                         callback=callback)
    assert [s[:2] for s in seen] == [(1, 10), (2, 10), (3, 10)]
    assert len(model.calls) == 3  # stopped right after the step whose callback raised
    assert all(s[2] == (3, 3, 8, 8) and s[3] <= 1.0 for s in seen)  # clipped x0 predictions


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_oracle_model_restores_the_clean_image(kind):
    sch = Schedule.from_name("linear", 1000)
    x0 = _image(4) * 0.9
    out = truncated_sample(OracleModel(sch, x0, kind), _image(5), strength=0.6, steps=7, generators=_gens(1, 2, 3))
    _close(out, x0, 1e-5, f"{kind} oracle")


def test_learned_sigma_model_and_reduced_precision():
    sch = Schedule.from_name("linear", 1000)
    model = FakeModel(sch, learned_sigma=True)
    out = truncated_sample(model, _image(1).bfloat16(), strength=0.4, steps=3, sampler="ddpm", generators=_gens(1, 2, 3))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 3, 8, 8) and torch.isfinite(out.float()).all()
    assert all(c[0].dtype == torch.bfloat16 for c in model.calls)
    ref = truncated_sample(FakeModel(sch, learned_sigma=True), _image(1), strength=0.4, steps=3, sampler="ddpm",
                           generators=_gens(1, 2, 3))
    _close(out, ref, 0.1, "bf16 vs fp32")


def test_wrong_output_channels_is_a_clear_error():
    sch = Schedule.from_name("linear", 1000)
    model = FakeModel(sch)
    model.diffusion["learned_sigma"] = True
    model.predict = lambda x, t, c=None: x  # 3 channels where 6 are expected
    with pytest.raises(WrongModelKindError, match="learned_sigma"):
        truncated_sample(model, _image(1), strength=0.5, steps=2, generators=_gens(1, 2, 3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({}, "exactly one"),
        ({"strength": 0.5, "t0": 10.0}, "exactly one"),
        ({"t0": 1001.0}, "t0 must be"),
        ({"strength": 0.5, "steps": 0}, "steps"),
        ({"strength": 0.5, "sampler": "euler"}, "sampler"),
        ({"strength": 0.5, "eta": -1.0}, "eta"),
        ({"strength": 0.5, "generators": _gens(1)}, "one torch.Generator per batch row"),
        ({"strength": 0.5, "cond": torch.zeros(2, 3, 8, 8)}, "cond has 2 rows"),
    ],
)
def test_truncated_sample_rejects_bad_arguments(kwargs, match):
    sch = Schedule.from_name("linear", 1000)
    args = {"steps": 2, "generators": _gens(1, 2, 3), **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        truncated_sample(FakeModel(sch), _image(1), **args)


def test_generator_noise_draws_rows_from_their_own_generators():
    like = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    draw = generator_noise(_gens(7, 8), like)
    first, second = draw(), draw()
    assert first.dtype == torch.float64 and not torch.equal(first, second)
    g = torch.Generator().manual_seed(8)
    torch.randn(3, 4, 4, generator=g)
    assert torch.equal(second[1], torch.randn(3, 4, 4, generator=g).double())


# --- parity: guided / improved-diffusion (recorded model output) ---------------------------------


def _load(parity_dir: Path, folder: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    path = parity_dir / folder
    if not (path / "sampler.safetensors").is_file():
        pytest.skip(f"{path} has no sampler.safetensors")
    fixture = json.loads((path / "fixture.json").read_text())
    return fixture, load_file(path / "sampler.safetensors"), load_file(path / "schedule.safetensors")


def _adm_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "prediction": "x0" if kwargs.get("predict_xstart") else "eps",
        "learned_sigma": bool(kwargs["learn_sigma"]),
        "variance": "small" if kwargs.get("sigma_small") else "large",
    }


def _spaced_times(kept: list[int], t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tau_from, tau_to, tau_above) of spaced steps t in the process that keeps ``kept``."""
    grid = grid_from_steps(kept).flip(0)  # ascending: 0, kept[0] + 1, ...
    grid = torch.cat([grid, grid[-1:] + 1])  # the step above the top one is never a final step
    return grid[t + 1], grid[t], grid[t + 2]


@pytest.mark.parametrize("folder", ["guided_diffusion", "improved_diffusion"])
def test_adm_q_sample(parity_dir, folder):
    fixture, s, _ = _load(parity_dir, folder)
    kwargs = fixture["diffusion"]["create_gaussian_diffusion_kwargs"]
    sch = Schedule.from_name(kwargs["noise_schedule"], kwargs["steps"])
    out = q_sample(s["q_sample.x_start"], s["q_sample.t"] + 1.0, s["q_sample.noise"], sch)
    _close(out, s["q_sample.out"], STEP_ATOL, f"{folder} q_sample")


@pytest.mark.parametrize("folder", ["guided_diffusion", "improved_diffusion"])
@pytest.mark.parametrize("group", ["p_sample_full", "p_sample_spaced"])
def test_adm_p_sample_and_ddim(parity_dir, folder, group):
    fixture, s, ref = _load(parity_dir, folder)
    kwargs = fixture["diffusion"]["create_gaussian_diffusion_kwargs"]
    sch = Schedule.from_name(kwargs["noise_schedule"], kwargs["steps"])
    t = s[f"{group}.t"]
    if group == "p_sample_full":
        kept = list(range(kwargs["steps"]))
    else:
        kept = space_timesteps(kwargs["steps"], fixture["diffusion"]["spaced_timestep_respacing"])
        assert kept == ref["spaced_timestep_map"].tolist()
    tau_from, tau_to, tau_above = _spaced_times(kept, t)
    received = sch.net_time(tau_from, rescale_timesteps=kwargs["rescale_timesteps"])
    _close(received, s[f"{group}.model_received_t"], 1e-4, f"{folder} {group} model_received_t")

    settings = _adm_settings(kwargs)
    out = ddpm_step(s["fixed_model_output"], s["x_t"], sch, tau_from, tau_to, s[f"{group}.noise"],
                    tau_above=tau_above, **settings)
    for ours, theirs in [("mean", "mean"), ("log_variance", "log_variance"), ("pred_x0", "pred_xstart"), ("sample", "sample")]:
        _close(getattr(out, ours), s[f"{group}.{theirs}"], STEP_ATOL, f"{folder} {group}.{theirs}")
    _close(out.log_variance.exp(), s[f"{group}.variance"], STEP_ATOL, f"{folder} {group}.variance")

    etas = sorted({m.group(1) for k in s if (m := re.fullmatch(rf"{group}\.ddim_eta([0-9.]+)\.sample", k))})
    assert etas, "the fixture records DDIM samples"
    # README: at tiny t, re-deriving eps from the clipped x0 is ill-conditioned in float32
    tiny = (1 - sch.abar(tau_from)) < 1e-2
    for eta in etas:
        got = ddim_step(s["fixed_model_output"], s["x_t"], sch, tau_from, tau_to, s[f"{group}.ddim_eta{eta}.noise"],
                        eta=float(eta), prediction=settings["prediction"], learned_sigma=settings["learned_sigma"])
        for row in range(t.numel()):
            atol = TINY_T_DDIM_ATOL if tiny[row] else STEP_ATOL
            _close(got.sample[row], s[f"{group}.ddim_eta{eta}.sample"][row], atol, f"{folder} {group} ddim eta {eta} row {row}")


# --- parity: SR3 ---------------------------------------------------------------------------------

SR3_KINDS = {"linear": "linear_range", "quad": "quad", "cosine": "cosine"}


def _sr3_schedule(fixture: dict[str, Any]) -> Schedule:
    opt = fixture["config_json_style"]["model"]["beta_schedule"]["val"]
    kind = SR3_KINDS[opt["schedule"]]
    args = {"start": opt["linear_start"], "end": opt["linear_end"]} if kind != "cosine" else {}
    return Schedule.from_name(kind, opt["n_timestep"], **args)


def test_sr3_q_sample_at_continuous_gamma(parity_dir):
    fixture, s, _ = _load(parity_dir, "sr3")
    sch = _sr3_schedule(fixture)
    gamma = s["q_sample.continuous_sqrt_alpha_cumprod"].double().flatten()
    out = q_sample(s["q_sample.x_start"], sch.tau_at(gamma**2), s["q_sample.noise"], sch)
    _close(out, s["q_sample.out"], STEP_ATOL, "sr3 q_sample")


def test_sr3_p_sample_steps(parity_dir):
    fixture, s, _ = _load(parity_dir, "sr3")
    sch = _sr3_schedule(fixture)
    steps = sorted({int(m.group(1)) for k in s if (m := re.fullmatch(r"p_sample_t(\d+)\.x_t", k))})
    assert steps, "the fixture records p_sample steps"
    for n in steps:
        p = f"p_sample_t{n}."
        _close(sch.abar(torch.tensor(n + 1.0)).sqrt().float().expand(2, 1), s[p + "noise_level"], 0.0, f"t{n} gamma")
        out = ddpm_step(s[p + "eps"], s[p + "x_t"], sch, n + 1.0, float(n), s[p + "noise"])
        for ours, theirs in [("pred_x0", "x_recon_clipped"), ("mean", "model_mean"), ("sample", "x_prev")]:
            _close(getattr(out, ours), s[p + theirs], STEP_ATOL, f"sr3 t{n} {theirs}")
        _close(out.log_variance.flatten()[:1], s[p + "posterior_log_variance_clipped"], 1e-5, f"sr3 t{n} log var")


def _sr3_trajectory(s: dict[str, torch.Tensor]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(t, noise, x_after) for each recorded step, in order."""
    found = sorted((int(m.group(1)), int(m.group(2))) for k in s if (m := re.fullmatch(r"traj\.noise_step(\d+)_t(\d+)", k)))
    return [(t, s[f"traj.noise_step{k}_t{t}"], s[f"traj.x_after_step{k}_t{t}"]) for k, t in found]


def test_sr3_truncated_start(parity_dir):
    fixture, s, _ = _load(parity_dir, "sr3")
    sch = _sr3_schedule(fixture)
    cond = load_file(parity_dir / "sr3" / "inputs.safetensors")["condition"]
    t_start = _sr3_trajectory(s)[0][0]
    x = q_sample(cond, t_start + 1.0, s["traj.start_noise"], sch)  # gamma = sqrt_alphas_cumprod_prev[t_s + 1]
    _close(x, s["traj.x_start_from_condition"], STEP_ATOL, "sr3 x_start_from_condition")


def _load_fixture_model(parity_dir: Path, folder: str, fixture: dict[str, Any]):
    """The fixture network through the real loader (the trajectory needs the network's outputs)."""
    loader_tests = pytest.importorskip("test_parity_loader", reason="the loader parity helpers are absent")
    from comfy_diffbfr.models import load_model

    return load_model(parity_dir / folder / "weights.safetensors", loader_tests._hints(fixture))


def test_sr3_trajectory_with_the_fixture_network(parity_dir, one_thread):
    fixture, s, _ = _load(parity_dir, "sr3")
    model = _load_fixture_model(parity_dir, "sr3", fixture)
    cond = load_file(parity_dir / "sr3" / "inputs.safetensors")["condition"]
    traj = _sr3_trajectory(s)
    taus = torch.tensor([traj[0][0] + 1.0] + [t for t, _, _ in traj], dtype=torch.float64)
    noises = iter(noise for _, noise, _ in traj)
    states = []
    out = sample_grid(model, s["traj.x_start_from_condition"], taus, cond=cond, sampler="ddpm",
                      noise=lambda: next(noises), callback=lambda k, n, x0: states.append(k))
    assert states == list(range(1, len(traj) + 1))
    _close(out, traj[-1][2], NET_ATOL, "sr3 trajectory end")
    x = s["traj.x_start_from_condition"]
    for t, noise, expected in traj:  # each step from the recorded previous state
        got = sample_grid(model, x, torch.tensor([t + 1.0, float(t)]), cond=cond, sampler="ddpm", noise=lambda: noise)
        _close(got, expected, NET_ATOL, f"sr3 trajectory step t{t}")
        x = expected


# --- parity: DifFace (respaced p_sample with its fixture network) ----------------------------------


def test_difface_spaced_p_sample(parity_dir, one_thread):
    fixture, s, ref = _load(parity_dir, "difface")
    kwargs = fixture["diffusion"]["create_gaussian_diffusion_kwargs"]
    sch = Schedule.from_name(kwargs["noise_schedule"], kwargs["steps"])
    kept = space_timesteps(kwargs["steps"], kwargs["timestep_respacing"])
    assert kept == ref["spaced_timestep_map"].tolist()
    tau_from, tau_to, tau_above = _spaced_times(kept, s["t_spaced"])
    _close(sch.net_time(tau_from, rescale_timesteps=kwargs["rescale_timesteps"]), s["model_received_t"], 1e-4,
           "difface model_received_t")
    model = _load_fixture_model(parity_dir, "difface", fixture)
    with torch.no_grad():
        output = model.predict(s["x_t"], tau_from)
    out = ddpm_step(output, s["x_t"], sch, tau_from, tau_to, s["noise"], tau_above=tau_above, **_adm_settings(kwargs))
    for ours, theirs in [("mean", "mean"), ("log_variance", "log_variance"), ("pred_x0", "pred_xstart"), ("sample", "sample")]:
        _close(getattr(out, ours), s[theirs], NET_ATOL, f"difface {theirs}")


# --- parity: diffusers schedulers ------------------------------------------------------------------


def _diffusers(parity_dir: Path):
    fixture, s, _ = _load(parity_dir, "diffusers_unet2d")
    kwargs = fixture["scheduler"]["kwargs"]
    variance = {"fixed_small": "small", "fixed_large": "large"}.get(kwargs.get("variance_type", "fixed_small"))
    if variance is None:
        pytest.skip(f"variance_type {kwargs['variance_type']!r} is not one of ours")
    settings = {
        "prediction": {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[kwargs.get("prediction_type", "epsilon")],
        "clip": bool(kwargs.get("clip_sample", True)),
    }
    return kwargs, s, diffusers_schedule(kwargs), settings, variance


def test_diffusers_add_noise(parity_dir):
    _, s, sch, _, _ = _diffusers(parity_dir)
    out = q_sample(s["add_noise.original"], s["add_noise.t"] + 1.0, s["add_noise.noise"], sch)
    _close(out, s["add_noise.out"], STEP_ATOL, "diffusers add_noise")


def test_diffusers_ddpm_steps(parity_dir):
    _, s, sch, settings, variance = _diffusers(parity_dir)
    steps = sorted({int(m.group(1)) for k in s if (m := re.fullmatch(r"ddpm_step_t(\d+)\.prev_sample", k))})
    assert steps, "the fixture records DDPM steps"
    for n in steps:
        p = f"ddpm_step_t{n}."
        out = ddpm_step(s["model_output"], s["x_t"], sch, n + 1.0, float(n), s[p + "variance_noise"],
                        variance=variance, **settings)
        _close(out.sample, s[p + "prev_sample"], STEP_ATOL, f"diffusers ddpm t{n} prev_sample")
        _close(out.pred_x0, s[p + "pred_original_sample"], STEP_ATOL, f"diffusers ddpm t{n} pred_original_sample")


def test_diffusers_spaced_ddpm_step(parity_dir):
    kwargs, s, sch, settings, variance = _diffusers(parity_dir)
    timesteps = s["ddpm_spaced.timesteps"].tolist()
    ours = diffusers_timesteps(kwargs["num_train_timesteps"], len(timesteps),
                               spacing=kwargs.get("timestep_spacing", "leading"), steps_offset=kwargs.get("steps_offset", 0))
    assert ours == timesteps
    grid, i = grid_from_steps(ours), ours.index(int(s["ddpm_spaced.t"]))
    out = ddpm_step(s["model_output"], s["x_t"], sch, grid[i], grid[i + 1], s["ddpm_spaced.variance_noise"],
                    variance=variance, **settings)
    _close(out.sample, s["ddpm_spaced.prev_sample"], STEP_ATOL, "diffusers ddpm_spaced prev_sample")


def test_diffusers_ddim_step(parity_dir):
    kwargs, s, sch, settings, _ = _diffusers(parity_dir)
    T, timesteps = kwargs["num_train_timesteps"], s["ddim_eta0.timesteps"].tolist()
    assert diffusers_timesteps(T, len(timesteps), steps_offset=kwargs.get("steps_offset", 0)) == timesteps
    t = int(s["ddim_eta0.t"])
    prev = t - T // len(timesteps)  # DDIMScheduler's previous step; below 0: clean data (set_alpha_to_one)
    tau_to = prev + 1.0 if prev >= 0 else (0.0 if kwargs.get("set_alpha_to_one", True) else 1.0)
    channels = s["x_t"].shape[1]
    out = ddim_step(s["model_output"][:, :channels], s["x_t"], sch, t + 1.0, tau_to, None,
                    rederive_eps=False, **settings)  # diffusers keeps the model's eps
    atol = TINY_T_DDIM_ATOL if (1 - sch.abar(t + 1.0)) < 1e-2 else STEP_ATOL
    _close(out.sample, s["ddim_eta0.prev_sample"], atol, "diffusers ddim prev_sample")
    _close(out.pred_x0, s["ddim_eta0.pred_original_sample"], STEP_ATOL, "diffusers ddim pred_original_sample")
