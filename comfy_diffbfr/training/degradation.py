"""The standard blind-face-restoration degradation (as in GFPGAN / DiffBFR training):

    y = resize_back( JPEG_q( downsample_s( x * k ) + n ) )

with a random blur kernel ``k`` (isotropic or anisotropic Gaussian, or a generalised Gaussian with
shape beta), downsampling by ``s`` in [1, 16], Gaussian and Poisson noise ``n`` and JPEG quality
``q``. Every range is configurable and every draw comes from one seed, so a degraded image is a
pure function of (image, config, seed): datasets stay reproducible across workers and resumes.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidParameterError

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso")
MAX_KERNEL_SIZE = 101  # px; a kernel costs size^2 (Real-ESRGAN uses at most 21)
MAX_BLUR_SIGMA = 50.0  # px


@dataclass(frozen=True)
class DegradationConfig:
    """Ranges are inclusive ``(low, high)`` pairs drawn uniformly; a probability of 0 disables a step.

    Units: blur sigma in pixels of the input; noise sigma on the 0..255 scale; ``poisson_scale``
    multiplies shot noise of an 8-bit image; ``scale`` is the downsampling factor. The defaults are
    meant for 256 px faces: GFPGAN's ranges at 512 px (sigma 0.1-10, x0.8-8), with the blur halved
    for the halved size and the downsampling kept, since real low-quality faces are often 32-64 px.
    """

    blur_prob: float = 1.0
    kernel_size: int = 41
    kernel_kinds: tuple[str, ...] = KERNEL_KINDS
    kernel_weights: tuple[float, ...] = (0.4, 0.4, 0.1, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 5.0)
    beta: tuple[float, float] = (0.5, 4.0)
    scale: tuple[float, float] = (1.0, 8.0)
    gaussian_noise_prob: float = 1.0
    noise_sigma: tuple[float, float] = (0.0, 15.0)
    gray_noise_prob: float = 0.3
    poisson_prob: float = 0.3
    poisson_scale: tuple[float, float] = (0.05, 2.0)
    jpeg_prob: float = 1.0
    jpeg_quality: tuple[float, float] = (60.0, 100.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if f.name != "kernel_kinds" and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
                raise InvalidParameterError(f"degradation setting {f.name}={value!r} must hold finite numbers")
        for name in ("blur_prob", "gaussian_noise_prob", "gray_noise_prob", "poisson_prob", "jpeg_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidParameterError(f"degradation setting {name} is a probability in [0, 1], got {getattr(self, name)}")
        if not (0 <= self.blur_sigma[0] and self.blur_sigma[-1] <= MAX_BLUR_SIGMA):
            raise InvalidParameterError(f"blur_sigma must lie in [0, {MAX_BLUR_SIGMA}], got {self.blur_sigma}")
        if self.kernel_size > MAX_KERNEL_SIZE:
            raise InvalidParameterError(f"kernel_size must be at most {MAX_KERNEL_SIZE}, got {self.kernel_size}")
        for name in ("blur_sigma", "beta", "scale", "noise_sigma", "poisson_scale", "jpeg_quality"):
            if not isinstance(getattr(self, name), tuple) or len(getattr(self, name)) != 2:
                raise InvalidParameterError(f"degradation range {name} must be a (low, high) pair, got {getattr(self, name)!r}")
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"degradation range {name}={lo, hi}: the low end must not exceed the high end")
        if self.kernel_size % 2 == 0 or self.kernel_size < 3:
            raise ValueError(f"kernel_size must be odd and >= 3, got {self.kernel_size}")
        if not (1.0 <= self.scale[0] and self.scale[1] <= 16.0):
            raise ValueError(f"scale must lie in [1, 16], got {self.scale}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        unknown = set(self.kernel_kinds) - set(KERNEL_KINDS)
        if unknown or len(self.kernel_kinds) != len(self.kernel_weights):
            raise ValueError(f"kernel_kinds must be among {KERNEL_KINDS}, one weight each; got {self.kernel_kinds}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DegradationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown degradation setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def blur_kernel(kind: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 2.0) -> torch.Tensor:
    """A normalised ``[size, size]`` kernel ``exp(-0.5 * (d^T S^-1 d) ** (beta / 2))``, where S has
    principal standard deviations sigma_x, sigma_y rotated by theta. beta = 2 is the Gaussian."""
    if kind in ("iso", "generalized_iso"):
        sigma_y, theta = sigma_x, 0.0
    if kind in ("iso", "aniso"):
        beta = 2.0
    r = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    k = torch.exp(-0.5 * q ** (beta / 2))
    return (k / k.sum()).float()


def _fft_filter(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve ``[C,H,W]`` with a ``[k,k]`` kernel, reflect padding; FFT so 41x41 kernels stay cheap."""
    p = kernel.shape[-1] // 2
    h, w = img.shape[-2:]
    mode = "reflect" if p < min(h, w) else "replicate"
    padded = F.pad(img[None], (p, p, p, p), mode=mode)[0]
    ph, pw = padded.shape[-2:]
    kpad = torch.zeros(ph, pw, dtype=img.dtype)
    kpad[: kernel.shape[0], : kernel.shape[1]] = kernel
    # Centre the kernel at the origin so the result is not shifted.
    kpad = torch.roll(kpad, shifts=(-p, -p), dims=(0, 1))
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(kpad), s=(ph, pw))
    return out[:, p : p + h, p : p + w]


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    down = size[0] < img.shape[-2]
    return F.interpolate(img[None], size=size, mode="bicubic", align_corners=False, antialias=down)[0]


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def draw_params(config: DegradationConfig, seed: int) -> dict[str, Any]:
    """Every random choice of one degradation, drawn from ``seed`` alone."""
    rng = np.random.default_rng(seed)
    u = lambda rng_range: float(rng.uniform(*rng_range))
    weights = np.asarray(config.kernel_weights, dtype=np.float64)
    params: dict[str, Any] = {
        "blur": bool(rng.random() < config.blur_prob),
        "kernel": str(config.kernel_kinds[rng.choice(len(weights), p=weights / weights.sum())]),
        "sigma_x": u(config.blur_sigma),
        "sigma_y": u(config.blur_sigma),
        "theta": float(rng.uniform(0, math.pi)),
        "beta": u(config.beta),
        "scale": u(config.scale),
        "gaussian_noise": bool(rng.random() < config.gaussian_noise_prob),
        "noise_sigma": u(config.noise_sigma),
        "gray_noise": bool(rng.random() < config.gray_noise_prob),
        "poisson": bool(rng.random() < config.poisson_prob),
        "poisson_scale": u(config.poisson_scale),
        "jpeg": bool(rng.random() < config.jpeg_prob),
        "jpeg_quality": round(u(config.jpeg_quality)),
        "noise_seed": int(rng.integers(0, 2**63 - 1)),
    }
    return params


def degrade(
    hq: torch.Tensor, config: DegradationConfig, seed: int, *, keep_size: bool = True
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Degrade one image ``[3,H,W]`` float in [0,1]. Returns the low-quality image (resized back to
    ``H x W`` when ``keep_size``, else at the downsampled size) and the parameters drawn."""
    if hq.ndim != 3 or hq.shape[0] != 3:
        raise ValueError(f"degrade expects one RGB image [3,H,W], got shape {tuple(hq.shape)}")
    p = draw_params(config, seed)
    h, w = hq.shape[-2:]
    x = hq.float()
    if p["blur"]:
        k = blur_kernel(p["kernel"], config.kernel_size, p["sigma_x"], p["sigma_y"], p["theta"], p["beta"])
        x = _fft_filter(x, k)
    small = (max(1, round(h / p["scale"])), max(1, round(w / p["scale"])))
    x = _resize(x, small)
    gen = torch.Generator().manual_seed(p["noise_seed"] % (2**63))
    if p["gaussian_noise"] and p["noise_sigma"] > 0:
        shape = (1, *x.shape[1:]) if p["gray_noise"] else x.shape
        x = x + torch.randn(shape, generator=gen) * (p["noise_sigma"] / 255)
    if p["poisson"]:
        base = x.clamp(0, 1) * 255
        x = x + (torch.poisson(base, generator=gen) - base) / 255 * p["poisson_scale"]
    x = x.clamp(0, 1)
    if p["jpeg"]:
        x = _jpeg(x, p["jpeg_quality"])
    if keep_size:
        x = _resize(x, (h, w))
    return x.clamp(0, 1), p
