"""Flicker of restored faces in a video batch: per-face seeds against seed_mode per_track.

The video is a slowly panned still: frame t is a window of the example photo moved by ``--shift``
pixels per frame (integer moves, so the input frames are the same pixels, only shifted). Each
configuration runs the shipped pipeline through the pack's nodes (Face Detect -> IRM 64 -> IRM 256
-> TEM -> Paste Back, starter weights, few steps) on the whole batch; every restored frame is moved
back by its own shift, and the figure is the mean absolute change between consecutive frames
inside the face region (where either frame's paste mask is > 0), in 8-bit levels. The input frames
score exactly 0, so every level is flicker the restoration adds.

    python benchmarks/flicker.py [--frames 8] [--shift 1 2] [--steps 4 2 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from comfy_diffbfr.workflow.core_nodes import load_image_file  # noqa: E402
from pack_helpers import EXAMPLE_PHOTO, load_pack  # noqa: E402

CONFIGS = {  # name: (seed_mode, landmark_smoothing)
    "per_face": ("per_face", 0),
    "per_track": ("per_track", 0),
    "per_track + smoothing 2": ("per_track", 2),
}


def panned_frames(photo: torch.Tensor, frames: int, shift: tuple[int, int], size: int) -> tuple[torch.Tensor, list]:
    """``frames`` windows of ``size`` px of ``photo [1,H,W,3]``, moved by ``shift`` (dx, dy) per frame."""
    offsets = [(t * shift[0], t * shift[1]) for t in range(frames)]
    return torch.cat([photo[:, y : y + size, x : x + size] for x, y in offsets]), offsets


def flicker(frames: torch.Tensor, masks: torch.Tensor, offsets: list, size: int) -> float:
    """Mean |frame t+1 - frame t| (8-bit levels) over the face region, in the still photo's coordinates."""
    total, count = 0.0, 0
    for t in range(len(frames) - 1):
        (xa, ya), (xb, yb) = offsets[t], offsets[t + 1]
        # the part of the still both windows show, in each window's pixels
        x0, y0 = max(xa, xb), max(ya, yb)
        x1, y1 = min(xa, xb) + size, min(ya, yb) + size
        a = frames[t, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        b = frames[t + 1, y0 - yb : y1 - yb, x0 - xb : x1 - xb]
        face = (masks[t, y0 - ya : y1 - ya, x0 - xa : x1 - xa] > 0) | (masks[t + 1, y0 - yb : y1 - yb, x0 - xb : x1 - xb] > 0)
        total += float((a - b).abs()[face].sum()) * 255
        count += int(face.sum()) * 3
    return total / max(count, 1)


def restore(nodes: dict, frames: torch.Tensor, models: dict, seed_mode: str, smoothing: int, steps: list[int]):
    faces, crops = nodes["DiffBFRFaceDetect"]().detect(frames, "dlib", "all", 512, False, landmark_smoothing=smoothing)
    common = dict(sampler="ddim", eta=0.0, seed=0, seed_mode=seed_mode, faces=faces)
    (x,) = nodes["DiffBFRIRM64"]().run(models["irm64"], crops, strength=0.6, steps=steps[0], **common)
    (x,) = nodes["DiffBFRIRM256"]().run(models["irm256"], x, lq=crops, strength=0.5, steps=steps[1], **common)
    (x,) = nodes["DiffBFRTEM"]().run(models["tem"], x, strength=0.1, steps=steps[2], **common)
    return nodes["DiffBFRPasteBack"]().paste(frames, faces, x, "wavelet", 1.0), faces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--shift", type=int, nargs=2, default=(1, 2), metavar=("DX", "DY"), help="pixels per frame")
    ap.add_argument("--size", type=int, default=320, help="window size (the photo is 384 px)")
    ap.add_argument("--steps", type=int, nargs=3, default=(4, 2, 2), metavar=("IRM64", "IRM256", "TEM"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("COMFY_DIFFBFR_PROGRESS", "0")
    nodes = load_pack().NODE_CLASS_MAPPINGS
    models = {name: nodes["DiffBFRModelLoader"]().load(f"{name}.safetensors", "auto")[0] for name in ("irm64", "irm256", "tem")}
    photo, _ = load_image_file(EXAMPLE_PHOTO)
    frames, offsets = panned_frames(photo, args.frames, tuple(args.shift), args.size)
    print(f"{args.frames} frames of {args.size}x{args.size}, panned {tuple(args.shift)} px per frame; "
          f"steps {tuple(args.steps)}; starter weights; dlib detector")
    print(f"input frames: {flicker(frames, torch.ones(frames.shape[:3]), offsets, args.size):.3f} levels")
    with torch.inference_mode():
        for name, (seed_mode, smoothing) in CONFIGS.items():
            started = time.perf_counter()
            (out, masks), faces = restore(nodes, frames, models, seed_mode, smoothing, list(args.steps))
            tracks = sorted({f.track for f in faces.faces})
            print(f"{name:>24}: {flicker(out, masks, offsets, args.size):6.3f} levels mean |frame t+1 - frame t| in "
                  f"the face region ({len(faces)} faces, tracks {tracks}, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
