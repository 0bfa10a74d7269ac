"""Affine resampling in torch, limited to the region a face covers.

Pixel centres sit at integer coordinates (OpenCV's convention), so an affine matrix estimated for
``cv2.warpAffine`` means the same here. Work is always cut down to the bounding box of the warped
rectangle, so a face in a 50-megapixel photo costs what the face costs, not what the photo costs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix, as 2x3."""
    full = np.vstack([np.asarray(affine, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def footprint(affine: np.ndarray, width: int, height: int, bounds: tuple[int, int], margin: int = 2) -> tuple[int, int, int, int] | None:
    """Integer box ``(x0, y0, x1, y1)`` (exclusive ends) covering the image under ``affine`` of the
    ``width`` x ``height`` rectangle, widened by ``margin`` and clipped to ``bounds = (W, H)``; None if empty."""
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]])
    mapped = corners @ np.asarray(affine)[:, :2].T + np.asarray(affine)[:, 2]
    x0 = max(math.floor(mapped[:, 0].min()) - margin, 0)
    y0 = max(math.floor(mapped[:, 1].min()) - margin, 0)
    x1 = min(math.ceil(mapped[:, 0].max()) + margin + 1, bounds[0])
    y1 = min(math.ceil(mapped[:, 1].max()) + margin + 1, bounds[1])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def pixel_grid(
    x0: int, y0: int, x1: int, y1: int, affine: np.ndarray, device: torch.device, origin: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """``[y1-y0, x1-x0, 2]`` coordinates ``affine @ (x, y, 1) - origin`` of the pixel centres of a box (float32)."""
    a = np.asarray(affine, dtype=np.float64).copy()
    a[:, 2] -= origin
    a = torch.as_tensor(a, device=device)
    xs = torch.arange(x0, x1, device=device, dtype=torch.float64)
    ys = torch.arange(y0, y1, device=device, dtype=torch.float64)
    gx = a[0, 0] * xs[None, :] + a[0, 1] * ys[:, None] + a[0, 2]
    gy = a[1, 0] * xs[None, :] + a[1, 1] * ys[:, None] + a[1, 2]
    return torch.stack([gx, gy], dim=-1).float()


def sample(src: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``src [C, h, w]`` at pixel coordinates ``coords [H, W, 2]`` (x, y); outside is 0. Returns ``[C, H, W]``."""
    h, w = src.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], device=coords.device)
    grid = (coords + 0.5) * scale - 1.0  # pixel centres -> align_corners=False normalised coordinates
    out = F.grid_sample(src[None].to(coords.dtype), grid[None], mode=mode, padding_mode="zeros", align_corners=False)
    return out[0]


def warp_into(image: torch.Tensor, affine: np.ndarray, size: tuple[int, int], border: torch.Tensor) -> torch.Tensor:
    """Warp ``image [H, W, C]`` with ``affine`` (image -> output) to ``size = (h, w)`` like ``cv2.warpAffine``
    with bilinear interpolation and a constant ``border [C]``. Returns ``[h, w, C]`` on the image's device."""
    height, width = image.shape[:2]
    out_h, out_w = size
    inverse = invert_affine(affine)
    box = footprint(inverse, out_w, out_h, (width, height))
    if box is None:
        return border.to(image.device, image.dtype).expand(out_h, out_w, -1).clone()
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1].permute(2, 0, 1).float()
    ones = torch.ones_like(region[:1])
    coords = pixel_grid(0, 0, out_w, out_h, inverse, image.device, origin=(x0, y0))
    sampled = sample(torch.cat([region, ones]), coords)
    # Like OpenCV, pixels beyond the photo count as the border colour inside the interpolation.
    colour, inside = sampled[:-1], sampled[-1:]
    out = colour + (1.0 - inside) * border.to(image.device).float()[:, None, None]
    return out.permute(1, 2, 0).to(image.dtype)
