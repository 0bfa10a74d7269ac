"""Forward-pass time and peak memory of the public UNet configurations (random weights).

    python benchmarks/unet_forward.py [--quick] [--configs dps_ffhq256,...] [--device cpu|cuda]
                                      [--batches 1,4] [--dtypes fp32,bf16] [--iters 3] [--threads N]

Each (config, batch, dtype) runs in a fresh subprocess so that its peak memory is its own: on the
CPU the figure is the peak resident set size during the forward passes minus the size before them
(the weights are not counted); on CUDA it is ``torch.cuda.max_memory_allocated`` minus the weights.
bf16 runs under ``torch.autocast``. ``--quick`` means batch 1, one timed pass, 64x64 inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_diffbfr.models.loader import format_specs  # noqa: E402
from comfy_diffbfr.networks.adm_unet import adm_config  # noqa: E402

#: name -> (arch, config, native size, condition channels); the published constructor settings.
CONFIGS = {
    "dps_ffhq256": ("adm", adm_config(
        model_channels=128, channel_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=1,
        attention_levels=[False, False, False, False, True, False], num_head_channels=64,
        use_scale_shift_norm=True, resblock_updown=True, out_channels=6, learn_sigma=True, image_size=256), 256, 0),
    "sr3_64_512": ("sr3", dict(
        in_channel=6, out_channel=3, inner_channel=64, channel_mults=[1, 2, 4, 8, 16], attn_levels=[],
        res_blocks=1, norm_groups=16, image_size=512), 512, 3),
    "difface_ffhq512": ("adm", adm_config(
        model_channels=32, channel_mult=[1, 2, 4, 8, 8, 16, 16], num_res_blocks=[1, 2, 2, 2, 2, 3, 4],
        attention_levels=[False, False, False, False, True, True, True], num_head_channels=64,
        use_scale_shift_norm=True, out_channels=6, learn_sigma=True, image_size=512), 512, 0),
    "ddpm_celebahq256": ("ddpm", dict(
        in_channels=3, out_channels=3, base_channels=128, block_out_channels=[128, 128, 256, 256, 512, 512],
        layers_per_block=2, down_attention=[False, False, False, False, True, False],
        up_attention=[False, False, False, False, True, False], sample_size=256), 256, 0),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure(name: str, batch: int, dtype: str, device: str, iters: int, size: int | None) -> dict:
    """One measurement in this process: ms per forward (median) and peak extra memory in MiB."""
    arch, config, native, cond_ch = CONFIGS[name]
    spec = format_specs()[arch]
    with torch.device("meta"):
        net = spec.build(config)
    net = net.to_empty(device=device).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    weights_mib = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    levels = len(config.get("channel_mult") or config.get("channel_mults") or config["block_out_channels"])
    size = max(size or native, 2 ** (levels - 1))  # each level halves the size: DifFace-512 needs >= 64
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen, device=device)
    cond = torch.randn(batch, cond_ch, size, size, generator=gen, device=device) if cond_ch else None
    t = torch.full((batch,), 0.5 if arch == "sr3" else 500.0, device=device)  # gamma for SR3, a timestep otherwise

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            spec.call(net, x, t, cond)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    forward()  # warm-up (also where the memory peak is reached)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1000)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mib()) - base
    return {"config": name, "size": size, "batch": batch, "dtype": dtype, "device": device,
            "ms": statistics.median(times), "peak_mib": peak, "weights_mib": weights_mib,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {list(CONFIGS)}")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--iters", type=int, default=3, help="timed passes after one warm-up")
    parser.add_argument("--size", type=int, default=None, help="input size (default: each config's native size)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="batch 1, one timed pass, 64x64 inputs")
    parser.add_argument("--worker", nargs=4, metavar=("CONFIG", "BATCH", "DTYPE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batches, args.iters, args.size = "1", 1, args.size or 64
    if args.worker:
        name, batch, dtype, device = args.worker
        print(json.dumps(measure(name, int(batch), dtype, device, args.iters, args.size)))
        return

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    header = f"{'config':<18}{'size':>5}{'batch':>6}{'dtype':>6}{'device':>7}{'ms/fwd':>10}{'peak MiB':>10}{'params M':>10}"
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for name in args.configs.split(","):
        for device in devices:
            for batch in args.batches.split(","):
                for dtype in args.dtypes.split(","):
                    cmd = [sys.executable, __file__, "--worker", name, batch, dtype, device, "--iters", str(args.iters)]
                    cmd += ["--size", str(args.size)] if args.size else []
                    cmd += ["--threads", str(args.threads)] if args.threads else []
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{name:<18} batch {batch} {dtype} {device}: failed: {done.stderr.strip().splitlines()[-1:]}")
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    print(f"{r['config']:<18}{r['size']:>5}{r['batch']:>6}{r['dtype']:>6}{r['device']:>7}"
                          f"{r['ms']:>10.1f}{r['peak_mib']:>10.0f}{r['params_m']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
