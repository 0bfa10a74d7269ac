"""Precision ``auto`` on the CPU: the bf16-or-float32 decision, its cache, and that bf16 +
channels_last computes what float32 computes (closely) and channels_last alone exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_diffbfr import stages
from comfy_diffbfr.host import cpu_precision, device
from comfy_diffbfr.host.cpu_precision import MARGIN, CpuPrecisionChooser
from comfy_diffbfr.host.model_cache import load_cached
from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config
from pack_helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Timer:
    """A fake measurement: returns fixed times and counts its calls."""

    def __init__(self, fp32_ms: float, bf16_ms: float) -> None:
        self.result = (fp32_ms, bf16_ms)
        self.calls = 0

    def __call__(self, forward) -> cpu_precision.Timing:
        self.calls += 1
        return cpu_precision.Timing(*self.result, self.result[1] / self.result[0])


def _never(_bf16: bool) -> None:
    raise AssertionError("the network must not run")


def _chooser(path: Path, timer: Timer, *, units: bool = True, machine: str = "cpu A") -> CpuPrecisionChooser:
    return CpuPrecisionChooser(path, has_units=lambda: units, machine=lambda: machine, timer=timer)


def test_no_bf16_units_means_float32_without_measuring(tmp_path):
    timer = Timer(100.0, 10.0)
    assert _chooser(tmp_path / "c.json", timer, units=False).prefers_bf16("net", _never) is False
    assert timer.calls == 0 and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("bf16_ms,expected", [(120.0, False), (MARGIN * 100.0 + 1.0, False), (60.0, True)])
def test_bf16_only_when_measured_clearly_faster(tmp_path, bf16_ms, expected):
    assert _chooser(tmp_path / "c.json", Timer(100.0, bf16_ms)).prefers_bf16("net", _never) is expected


def test_a_measurement_is_made_once_per_machine_and_network(tmp_path):
    path = tmp_path / "sub" / "c.json"
    timer = Timer(100.0, 60.0)
    chooser = _chooser(path, timer)
    assert chooser.prefers_bf16("net1", _never) and chooser.prefers_bf16("net1", _never)
    assert timer.calls == 1  # memory hit
    assert _chooser(path, timer).prefers_bf16("net1", _never) and timer.calls == 1  # file hit in a new process
    _chooser(path, timer).prefers_bf16("net2", _never)
    _chooser(path, Timer(100.0, 150.0), machine="cpu B").prefers_bf16("net1", _never)
    assert timer.calls == 2
    machines = json.loads(path.read_text())["machines"]
    assert set(machines) == {"cpu A", "cpu B"} and set(machines["cpu A"]) == {"net1", "net2"}
    assert machines["cpu A"]["net1"] == chooser.measurement("net1") == {"bf16": True, "fp32_ms": 100.0, "bf16_ms": 60.0, "ratio": 0.6}
    assert chooser.measurement("net3") is None
    assert machines["cpu B"]["net1"]["bf16"] is False
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.json"]  # no temporary file left


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"machines": 3}', '{"machines": {"cpu A": {"net": 5}}}', ""])
def test_a_corrupt_cache_file_is_measured_again_and_rewritten(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    timer = Timer(100.0, 50.0)
    assert _chooser(path, timer).prefers_bf16("net", _never) is True
    assert timer.calls == 1
    assert json.loads(path.read_text())["machines"]["cpu A"]["net"]["bf16"] is True


def test_an_unwritable_cache_folder_still_decides(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    timer = Timer(100.0, 50.0)
    chooser = _chooser(blocker / "c.json", timer)  # a folder that cannot be created
    assert chooser.prefers_bf16("net", _never) and chooser.prefers_bf16("net", _never)
    assert timer.calls == 1


def test_measure_alternates_and_decides_by_the_median_ratio_of_rounds():
    """Another process slows one float32 forward 5x: the median of the rounds' ratios ignores it."""
    calls: list[bool] = []
    now = [0.0]

    def forward(bf16: bool) -> None:
        calls.append(bf16)
        burst = 5 if len(calls) == 3 else 1  # the first round's second forward
        now[0] += (0.05 if bf16 else 0.1) * burst

    timing = cpu_precision.measure(forward, clock=lambda: now[0])
    assert calls == [True, False, True, True, False, False, True]  # warm-up, then ABBA rounds
    assert timing.ratio == pytest.approx(0.5) and timing.fp32_ms == pytest.approx(100.0)
    calls.clear()

    def slow_forward(bf16: bool) -> None:  # one round is past the budget: it is the only one
        calls.append(bf16)
        now[0] += cpu_precision.BUDGET_S

    assert cpu_precision.measure(slow_forward, clock=lambda: now[0]).ratio == pytest.approx(1.0)
    assert len(calls) == 3


def test_resolve_mode_on_the_cpu():
    cpu = torch.device("cpu")
    assert device.resolve_mode("fp32", cpu) == device.FP32
    assert device.resolve_mode("bf16", cpu) == device.CPU_BF16
    assert device.resolve_mode("fp16", cpu) == device.FP32  # CPU autocast: bf16 only
    assert device.resolve_mode("auto", cpu, cpu_prefers_bf16=lambda: True) == device.CPU_BF16
    assert device.resolve_mode("auto", cpu, cpu_prefers_bf16=lambda: False) == device.FP32
    with pytest.raises(ValueError, match="precision must be one of"):
        device.resolve_mode("int8", cpu)


def test_auto_on_the_cpu_times_the_real_network_at_the_stage_size(tmp_path, monkeypatch):
    seen = []

    def timer(forward):
        forward(False)
        forward(True)  # both modes run the network without error
        seen.append(forward)
        return cpu_precision.Timing(100.0, 50.0, 0.5)

    chooser = CpuPrecisionChooser(tmp_path / "c.json", has_units=lambda: True, timer=timer)
    monkeypatch.setattr(cpu_precision, "CHOOSER", chooser)
    handle = load_cached(tiny_model(tmp_path / "irm64.safetensors", "irm64", ["lq"], resolution=64), "irm64.safetensors")
    cpu = torch.device("cpu")
    assert handle.compute_mode(cpu, (64, 64)) == device.CPU_BF16
    assert handle.network_key((64, 64)) != handle.network_key((32, 32))
    out = stages.run_irm64(handle, torch.rand(1, 64, 64, 3), seed=1, strength=0.5, steps=2)
    assert len(seen) == 1 and torch.isfinite(out).all()  # measured once, for both calls
    entry = json.loads((tmp_path / "c.json").read_text())["machines"][cpu_precision.machine_id()]
    assert set(entry) == {handle.network_key((64, 64))}


def _tiny_adm() -> tuple[ADMUNet, tuple[torch.Tensor, ...]]:
    config = adm_config(in_channels=6, out_channels=6, learn_sigma=True, super_res=True, model_channels=32,
                        channel_mult=[1, 2], num_res_blocks=[1, 2], attention_levels=[True, True],
                        num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)
    torch.manual_seed(3)
    net = ADMUNet.from_config(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(4)
    return net, (torch.randn(2, 3, 16, 16, generator=gen), torch.tensor([10.0, 700.5]), torch.randn(2, 3, 8, 8, generator=gen))


def test_channels_last_computes_what_contiguous_computes():
    net, (x, t, low_res) = _tiny_adm()
    with torch.no_grad():
        reference = net(x, t, low_res)
        device.set_memory_format(net, True)
        assert net.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        out = net(device.in_mode(x, device.CPU_BF16), t, device.in_mode(low_res, device.CPU_BF16))
        device.set_memory_format(net, False)
        assert net.input_blocks[0][0].weight.is_contiguous()
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_bf16_channels_last_stays_close_to_float32():
    net, (x, t, low_res) = _tiny_adm()
    mode = device.CPU_BF16
    with torch.no_grad():
        reference = net(x, t, low_res)
        device.set_memory_format(net, mode.channels_last)
        with device.autocast(torch.device("cpu"), mode.dtype):
            out = net(device.in_mode(x, mode), t, device.in_mode(low_res, mode))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    error = (out.float() - reference).abs()
    assert error.max().item() < 0.05 * reference.abs().max().item()
    assert error.mean().item() < 0.04 * reference.abs().mean().item()  # bf16 keeps ~3 significant digits
