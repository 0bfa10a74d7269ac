"""Five-point similarity alignment onto the FFHQ template that facexlib, GFPGAN and CodeFormer use.

Landmarks are (left eye, right eye, nose tip, left mouth corner, right mouth corner) in image
pixels, "left" as the viewer sees it. The matrix is estimated like facexlib's helper does
(OpenCV's 4-degree-of-freedom LMedS fit), so crops match what public restoration models saw.
"""

from __future__ import annotations

import numpy as np
import torch

from .warp import warp_into

# The facexlib template for a 512 x 512 crop; other sizes scale it.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
# facexlib's grey border (RGB) where the crop reaches beyond the photo.
BORDER_RGB = (132 / 255.0, 133 / 255.0, 135 / 255.0)


def template_points(size: int) -> np.ndarray:
    """The five template points for a ``size`` x ``size`` crop."""
    return FFHQ_TEMPLATE_512 * (size / 512.0)


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Closed-form similarity (rotation, uniform scale, shift) minimising the squared error src -> dst."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    denom = (s**2).sum()
    a = (s * d).sum() / denom
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / denom
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (mu_d - rot @ mu_s)[:, None]])


def similarity_to_template(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 image -> crop matrix that puts ``landmarks`` (5x2) onto the ``size`` template."""
    import cv2

    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = template_points(size)
    affine = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)[0]
    if affine is None or not np.isfinite(affine).all():  # degenerate points: fall back to plain least squares
        affine = _least_squares_similarity(src, dst)
    return affine.astype(np.float64)


def crop_face(image: torch.Tensor, affine: np.ndarray, size: int) -> torch.Tensor:
    """The aligned ``[size, size, 3]`` crop of ``image [H, W, C]`` (RGB channels only)."""
    border = torch.tensor(BORDER_RGB, dtype=torch.float32)
    return warp_into(image[..., :3], affine, (size, size), border).clamp_(0, 1)
