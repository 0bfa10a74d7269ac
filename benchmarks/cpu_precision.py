"""CPU precision of the starter networks: ms per forward in fp32, fp32 + channels_last, bf16 autocast
and bf16 + channels_last (what ``auto`` picks where it pays), at each stage's working size; what
``auto`` decides here and how long its measurement takes; and how close bf16 stays to fp32 over
one stage run.

    python benchmarks/cpu_precision.py [--batches 1,4] [--iters 2] [--threads N] [--steps 6]

Timings are the fastest of ``--iters`` rounds after a warm-up round, the four modes taking turns in
each round; the CPU time of the process is printed beside the wall time, as it suffers less when
other processes share the machine. The closeness check
runs the three stages (IRM 64 -> IRM 256 -> TEM) on degraded face crops from ../shared/faces with
``--steps`` steps each, once with precision fp32 and once with auto, and prints the PSNR between
the two outputs of every stage.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_diffbfr import stages  # noqa: E402
from comfy_diffbfr.faces import load_image  # noqa: E402
from comfy_diffbfr.host import cpu_precision, device  # noqa: E402
from comfy_diffbfr.host.model_cache import load_cached  # noqa: E402

NETS = {"irm64": stages.IRM64, "irm256": stages.IRM256, "tem": stages.TEM}
MODES = {
    "fp32": device.FP32,
    "fp32+cl": device.ComputeMode(torch.float32, channels_last=True),
    "bf16": device.ComputeMode(torch.bfloat16),
    "bf16+cl": device.CPU_BF16,
}
CROPS = ["codeformer_cropped_0143.png", "codeformer_cropped_0240.png"]


def forward_times(handle, size: int, batch: int, rounds: int) -> dict[str, tuple[float, float]]:
    """mode -> (wall ms, CPU ms of this process) per forward: the fastest of ``rounds``, the modes
    taking turns within each round so that load from other processes hits them alike."""
    loaded = handle.loaded
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, loaded.in_channels - loaded.cond_channels, size, size, generator=gen)
    cond = torch.randn(batch, loaded.cond_channels, size, size, generator=gen) if loaded.cond_channels else None
    tau = torch.full((batch,), loaded.schedule.num_timesteps / 2, dtype=torch.float64)

    def once(mode: device.ComputeMode) -> tuple[float, float]:
        device.set_memory_format(handle.net, mode.channels_last)
        args = (device.in_mode(x, mode), tau, None if cond is None else device.in_mode(cond, mode))
        wall, cpu_time = time.perf_counter(), time.process_time()
        with torch.no_grad(), device.autocast(cpu, mode.dtype):
            loaded.predict(*args)
        return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu_time) * 1000

    best = {name: (math.inf, math.inf) for name in MODES}
    for round_ in range(rounds + 1):
        for name, mode in MODES.items():
            wall, cpu_ms = once(mode)
            if round_:  # round 0 is the warm-up
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu_ms))
    return best


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--iters", type=int, default=4, help="timed rounds after a warm-up round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6, help="steps per stage of the closeness check (0: skip it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_precision.machine_id()}; bf16 units (AMX / AVX512-BF16): {cpu_precision.has_bf16_units()}")
    handles = {name: load_cached(REPO / "weights" / f"{name}.safetensors", f"{name}.safetensors") for name in NETS}
    sizes = {name: NETS[name].size or handles[name].loaded.resolution for name in NETS}

    print(f"\nms per forward, wall / CPU time of this process (fastest of {args.iters} rounds):")
    print(f"{'net':<8}{'size':>5}{'batch':>6}" + "".join(f"{m:>16}" for m in MODES))
    for name, handle in handles.items():
        for batch in map(int, args.batches.split(",")):
            row = forward_times(handle, sizes[name], batch, args.iters)
            cells = "".join(f"{f'{wall:.0f} / {cpu_ms:.0f}':>16}" for wall, cpu_ms in row.values())
            print(f"{name:<8}{sizes[name]:>5}{batch:>6}{cells}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: measure as a first run would
        chooser = cpu_precision.CpuPrecisionChooser(Path(tmp) / cpu_precision.CACHE_NAME)
        cpu_precision.CHOOSER = chooser
        print("\nauto on this CPU (first run: measured, then cached):")
        for name, handle in handles.items():
            size = (sizes[name], sizes[name])
            start = time.perf_counter()
            mode = handle.compute_mode(torch.device("cpu"), size)
            seconds = time.perf_counter() - start
            entry = chooser.measurement(handle.network_key(size)) or {}
            print(f"  {name}: {'bf16 + channels_last' if mode.dtype == torch.bfloat16 else 'fp32'} "
                  f"(measured fp32 {entry.get('fp32_ms', '-')} ms, bf16 {entry.get('bf16_ms', '-')} ms; "
                  f"the check took {seconds:.2f} s)")

        if args.steps:
            shared = REPO.parent / "shared" / "faces" / "degraded"
            lq = torch.cat([load_image(shared / n)[..., :3] for n in CROPS])
            print(f"\nfp32 vs auto over the three stages ({len(CROPS)} degraded crops, {args.steps} steps each):")
            outputs = {}
            for precision in ("fp32", "auto"):
                run = {name: load_cached(h.loaded.path, h.name, precision=precision) for name, h in handles.items()}
                start, cpu_start = time.perf_counter(), time.process_time()
                quiet = {"seed": 1, "callback": lambda *_: None}  # no progress bars
                x64 = stages.run_irm64(run["irm64"], lq, strength=0.6, steps=args.steps, **quiet)
                x256 = stages.run_irm256(run["irm256"], x64, lq=lq, strength=0.5, steps=args.steps, **quiet)
                tem = stages.run_tem(run["tem"], x256, strength=0.1, steps=max(1, args.steps // 2), **quiet)
                outputs[precision] = (x64, x256, tem, time.perf_counter() - start, time.process_time() - cpu_start)
            for i, stage in enumerate(("IRM 64", "IRM 256", "TEM")):
                print(f"  {stage}: PSNR fp32 vs auto {psnr(outputs['fp32'][i], outputs['auto'][i]):.1f} dB")
            print(f"  wall / CPU time: fp32 {outputs['fp32'][3]:.1f} / {outputs['fp32'][4]:.1f} s, "
                  f"auto {outputs['auto'][3]:.1f} / {outputs['auto'][4]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
