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


def _pixel_to_normalised(size: int) -> np.ndarray:
    """1-D map pixel -> grid_sample coordinate (align_corners=False), as (scale, offset)."""
    return np.array([2.0 / size, 1.0 / size - 1.0])


def resample(src: torch.Tensor, out_to_src: np.ndarray, out_size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Sample ``src [C, h, w]`` at ``out_to_src @ (x, y, 1)`` for every pixel of an ``out_size = (H, W)``
    output; beyond ``src`` counts as 0. Returns ``[C, H, W]`` float32. One ``affine_grid`` + ``grid_sample``."""
    h, w = src.shape[-2:]
    out_h, out_w = out_size
    # normalised output -> output pixels -> source pixels -> normalised source
    sx, ox = _pixel_to_normalised(w)
    sy, oy = _pixel_to_normalised(h)
    to_norm = np.array([[sx, 0, ox], [0, sy, oy], [0, 0, 1]])
    from_norm = np.array([[out_w / 2.0, 0, (out_w - 1) / 2.0], [0, out_h / 2.0, (out_h - 1) / 2.0], [0, 0, 1]])
    theta = (to_norm @ np.vstack([out_to_src, [0, 0, 1]]) @ from_norm)[:2]
    theta_t = torch.as_tensor(theta, dtype=torch.float32, device=src.device)[None]
    grid = F.affine_grid(theta_t, [1, 1, out_h, out_w], align_corners=False)
    return F.grid_sample(src[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def shifted(affine: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``affine`` applied to ``(x + dx, y + dy)``: moves a matrix to a box whose origin is ``(dx, dy)``."""
    a = np.asarray(affine, dtype=np.float64)
    return np.hstack([a[:, :2], (a[:, 2] + a[:, :2] @ [dx, dy])[:, None]])


def warp_into(image: torch.Tensor, affine: np.ndarray, size: tuple[int, int], border: torch.Tensor) -> torch.Tensor:
    """Warp ``image [H, W, C]`` with ``affine`` (image -> output) to ``size = (h, w)`` like ``cv2.warpAffine``
    with bilinear interpolation and a constant ``border [C]``. Returns ``[h, w, C]`` on the image's device."""
    height, width = image.shape[:2]
    out_h, out_w = size
    inverse = invert_affine(affine)
    box = footprint(inverse, out_w, out_h, (width, height))
    border = border.to(image.device, torch.float32)
    if box is None:
        return border.expand(out_h, out_w, -1).clone().to(image.dtype)
    x0, y0, x1, y1 = box
    # Like OpenCV, pixels beyond the photo count as the border colour inside the interpolation:
    # bilinear weights sum to 1, so sampling (photo - border) with zeros outside and adding the
    # border back gives exactly that.
    region = image[y0:y1, x0:x1].permute(2, 0, 1).float() - border[:, None, None]
    to_region = inverse - np.array([[0, 0, x0], [0, 0, y0]])
    out = resample(region, to_region, (out_h, out_w))
    return (out + border[:, None, None]).permute(1, 2, 0).to(image.dtype)
