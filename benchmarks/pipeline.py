"""The restoration pipeline's stages with the starter weights: ms per face and peak memory.

For each precision (fp32 and auto; CUDA too when present) and batch size (1 and 8), one fresh
process loads the three starter stages through ``pipeline.load_stages`` and runs IRM 64, IRM 256 and
TEM at the default settings (``STAGE_DEFAULTS``) on random crops, after one warm-up call. It prints
ms per face per stage (with the mode each ran in: fp32, bf16, +cl = channels_last) and the process's
peak resident memory (RSS).

    python benchmarks/pipeline.py [--threads 2] [--repeats 2] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(device: str, precision: str, batch: int, repeats: int, threads: int) -> dict:
    """One configuration, in this process."""
    import torch

    sys.path.insert(0, str(REPO))
    from comfy_diffbfr import stages
    from comfy_diffbfr.pipeline import load_stages
    from comfy_diffbfr.vocabulary import STAGE_NAMES

    torch.set_num_threads(threads)
    loaded = load_stages(list(STAGE_NAMES), precision=precision)
    crops = torch.rand(batch, 512, 512, 3, generator=torch.Generator().manual_seed(0))
    result: dict = {"device": device, "precision": precision, "batch": batch, "stages": {}}
    x = crops
    for stage in loaded:
        settings = stage.settings.as_kwargs()
        lq = crops if stage.spec.conditional else None  # as pipeline.restore_crops
        run = lambda: stages.run_stage(stage.spec, stage.model, x, lq=lq, **settings)  # noqa: E731
        out = run()  # warm-up (and auto's measured check, once per machine and network)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000 / repeats / batch
        size = tuple(stages.resize(x.movedim(-1, 1)[:1], 64 if stage.name == "irm64" else 256).shape[-2:])
        mode = stage.model.compute_mode(torch.device(device), size)
        result["stages"][stage.name] = {"ms_per_face": round(ms, 1), "steps": settings["steps"],
                                        "mode": {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[mode.dtype]
                                                + ("+cl" if mode.channels_last else "")}
        x = out
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--one", nargs=3, metavar=("DEVICE", "PRECISION", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        device, precision, batch = args.one
        if device == "cpu":  # keep the stages off any GPU for the CPU figures
            import os
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        print(json.dumps(measure(device, precision, int(batch), args.repeats, args.threads)))
        return 0
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} threads, CPU AMX: {torch.cpu._is_amx_tile_supported()}")
    print(f"{'device':<6} {'precision':<9} {'batch':>5}  {'IRM 64':>18} {'IRM 256':>18} {'TEM':>18}  peak RSS")
    for device in devices:
        for precision in ("fp32", "auto"):
            for batch in (int(b) for b in args.batches.split(",")):
                line = subprocess.run(
                    [sys.executable, __file__, "--one", device, precision, str(batch), "--repeats", str(args.repeats),
                     "--threads", str(args.threads)], capture_output=True, text=True, check=True).stdout.splitlines()[-1]
                r = json.loads(line)
                cells = [f"{s['ms_per_face']:>7.0f} ms ({s['mode']})" for s in r["stages"].values()]
                extra = f", CUDA {r['peak_cuda_mib']} MiB" if "peak_cuda_mib" in r else ""
                print(f"{device:<6} {precision:<9} {batch:>5}  " + " ".join(f"{c:>18}" for c in cells)
                      + f"  {r['peak_rss_mib']} MiB{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
