"""The low-band lock: the projection against a hand calculation, its exactness inside a step for
every prediction type, and sampling bit-identical to the unlocked sampler when it is off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_diffbfr.diffusion.lowband import LowBandLock, band_sizes, low_band, project_low_band
from comfy_diffbfr.diffusion.samplers import truncated_sample
from comfy_diffbfr.diffusion.schedules import Schedule
from comfy_diffbfr.diffusion.steps import ddim_step, ddpm_step, to_eps_x0
from comfy_diffbfr.errors import InvalidParameterError


def test_low_band_by_hand_for_two_pixels_to_one():
    # n = 2, k = 1: D = [1/2, 1/2], U = [1, 1]^T, D U = 1, so L = U D = the mean on both pixels.
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=torch.float64)
    assert torch.allclose(low_band(x, 1), torch.full_like(x, 4.0))


def test_low_band_by_hand_four_to_two():
    # n = 4, k = 2: D averages pairs; U (bilinear, half-pixel centres) maps (a, b) to
    # (a, 3a/4 + b/4, a/4 + 3b/4, b); D U = [[7/8, 1/8], [1/8, 7/8]]; L = U (D U)^-1 D.
    down = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], dtype=torch.float64)
    up = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=torch.float64)
    proj = up @ torch.linalg.inv(down @ up) @ down
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(low_band(x, 2), proj @ x[0, 0] @ proj.T, atol=1e-12)


@pytest.mark.parametrize("size,band", [(64, 32), (64, 16), (256, 128), (256, 37), (96, 5)])
def test_projection_is_exact_and_keeps_the_high_band(size, band):
    g = torch.Generator().manual_seed(size + band)
    x0 = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    ref = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    out = project_low_band(x0, ref, band)
    assert (low_band(out, band) - low_band(ref, band)).abs().max() < 1e-5
    assert ((out - low_band(out, band)) - (x0 - low_band(x0, band))).abs().max() < 1e-5
    # The low band is what the area-downsampled copy holds: the copies of out and ref agree.
    k = band_sizes(band, size, size)
    assert (F.interpolate(out, size=k, mode="area") - F.interpolate(ref, size=k, mode="area")).abs().max() < 1e-5


def test_weight_moves_only_part_of_the_way():
    g = torch.Generator().manual_seed(3)
    x0, ref = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    half = project_low_band(x0, ref, 8, weight=0.5)
    assert torch.allclose(low_band(half, 8), 0.5 * (low_band(x0, 8) + low_band(ref, 8)), atol=1e-6)


def test_band_at_or_above_the_size_replaces_the_image_and_non_square_keeps_the_ratio():
    x0, ref = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert torch.allclose(project_low_band(x0, ref, 8), ref)
    assert band_sizes(32, 64, 128) == (32, 64)
    with pytest.raises(InvalidParameterError):
        project_low_band(x0, torch.ones(1, 3, 4, 4), 2)
    with pytest.raises(InvalidParameterError, match="fidelity"):
        LowBandLock(ref, -1)


SCHEDULE = Schedule.from_name("linear", 1000)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_locked_step_to_zero_returns_the_reference_low_band(kind, learned_sigma, sampler):
    g = torch.Generator().manual_seed(7)
    x_t = torch.randn(2, 3, 32, 32, generator=g)
    out = torch.randn(2, 6 if learned_sigma else 3, 32, 32, generator=g) * 0.3
    ref = torch.rand(2, 3, 32, 32, generator=g) * 1.6 - 0.8
    lock = LowBandLock(ref, 16)
    step = ddim_step if sampler == "ddim" else ddpm_step
    kwargs = {"tau_above": 40.0} if sampler == "ddpm" else {}
    res = step(out, x_t, SCHEDULE, 20.0, 0.0, None, prediction=kind, learned_sigma=learned_sigma,
               correct_x0=lock, **kwargs)
    assert (low_band(res.sample, 16) - low_band(ref, 16)).abs().max() < 1e-5
    # The high band is the model's (clipped) x0's.
    _, x0 = to_eps_x0(out[:, :3], x_t, SCHEDULE.abar(torch.tensor(20.0, dtype=torch.float64)), kind)
    x0 = x0.clamp(-1, 1)
    assert ((res.sample - low_band(res.sample, 16)) - (x0 - low_band(x0, 16))).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_a_locked_intermediate_ddim_step_is_the_step_from_the_corrected_x0(kind):
    g = torch.Generator().manual_seed(11)
    x_t = torch.randn(1, 3, 16, 16, generator=g)
    out = torch.randn(1, 3, 16, 16, generator=g) * 0.3
    ref = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    res = ddim_step(out, x_t, SCHEDULE, 300.0, 200.0, None, prediction=kind, correct_x0=LowBandLock(ref, 4))
    assert (low_band(res.pred_x0, 4) - low_band(ref, 4)).abs().max() < 1e-5
    a_from, a_to = SCHEDULE.abar(torch.tensor(300.0, dtype=torch.float64)), SCHEDULE.abar(torch.tensor(200.0, dtype=torch.float64))
    eps = (x_t - a_from.sqrt() * res.pred_x0) / (1 - a_from).sqrt()
    expected = a_to.sqrt() * res.pred_x0 + (1 - a_to).sqrt() * eps
    assert torch.allclose(res.sample, expected.float(), atol=1e-5)


class _Toy:
    """A fixed 'network': a few convolutions of x_t and the time, in x0 / eps / v layout."""

    def __init__(self, prediction: str):
        self.schedule = SCHEDULE
        self.diffusion = {"prediction": prediction, "learned_sigma": False}
        self.weight = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(5)) * 0.2

    def predict(self, x_t, tau, cond=None):
        return torch.tanh(F.conv2d(x_t, self.weight.to(x_t), padding=1) + tau.to(x_t).view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_lock_off_is_bit_identical(kind, sampler, eta):
    model = _Toy(kind)
    start = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    plain = truncated_sample(model, start, strength=0.5, steps=5, sampler=sampler, eta=eta, generators=gens())
    for lock in (None, LowBandLock(start, 0), LowBandLock(start, 8, weight=0.0), LowBandLock(start, 8, stop=600.0)):
        again = truncated_sample(model, start, strength=0.5, steps=5, sampler=sampler, eta=eta, generators=gens(), lock=lock)
        assert torch.equal(plain, again)
    locked = truncated_sample(model, start, strength=0.5, steps=5, sampler=sampler, eta=eta, generators=gens(),
                              lock=LowBandLock(start, 8))
    assert not torch.equal(plain, locked)
    assert (low_band(locked, 8) - low_band(start, 8)).abs().max() < 1e-5


def test_window_releases_the_lock_below_stop():
    model = _Toy("x0")
    start = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    seen = []

    class Spy(LowBandLock):
        def __call__(self, x0):
            seen.append(True)
            return super().__call__(x0)

    # t0 = 500, 5 steps at 500, 400, ..., 100: locked while tau > 250 -> three steps.
    truncated_sample(model, start, strength=0.5, steps=5, generators=[torch.Generator().manual_seed(0)],
                     lock=Spy(start, 8, stop=250.0))
    assert len(seen) == 3
