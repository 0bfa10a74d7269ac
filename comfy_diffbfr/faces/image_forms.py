"""The image forms the library's entry points accept (``detect_faces``, ``paste_back``, the stages).

The library works on ComfyUI IMAGE tensors: float32 ``[B, H, W, C]`` in [0, 1], C = 3 (RGB) or
4 (RGB + alpha). Forms whose meaning is certain are converted to that: uint8 and uint16 tensors
or arrays (scaled by 1/255 or 1/65535), other float dtypes, numpy arrays, PIL images, one image
``[H, W, C]`` and grey ``C = 1`` (repeated over RGB). Forms that would have to be guessed are
refused with an ``InvalidParameterError`` that names the expected form, because a wrong guess
gives "no face" or a garbage face without an error: channels-first ``[B, C, H, W]``, float values
far outside [0, 1] (a 0..255 float image), NaN or infinities, other dtypes and dimensions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidParameterError
from .image_io import pil_pixels, to_float

EXPECTED = "a ComfyUI IMAGE: float32 [B, H, W, C] (or one image [H, W, C]) in [0, 1] with C = 3 or 4"
#: Resampling overshoots [0, 1] a little; a 0..255 float image is far outside.
RANGE_SLACK = 0.5
_CHANNELS = (1, 3, 4)


def as_image_batch(images: Any, what: str = "image") -> torch.Tensor:
    """``images`` (one of the forms above) as float32 ``[B, H, W, C]``, C = 3 or 4, on its device;
    a float32 IMAGE in range comes back as it is (no copy)."""
    if isinstance(images, Image.Image):
        images = to_float(np.asarray(pil_pixels(images)))
    if isinstance(images, np.ndarray):
        if images.dtype not in (np.uint8, np.uint16) and images.dtype.kind != "f":
            raise InvalidParameterError(f"{what}: numpy arrays of {images.dtype} are not images; expected {EXPECTED}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InvalidParameterError(f"{what}: got a {type(images).__name__}; expected {EXPECTED}")
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4:
        raise InvalidParameterError(f"{what}: got shape {tuple(images.shape)}; expected {EXPECTED}")
    if x.shape[-1] not in _CHANNELS:
        hint = ("; it looks channels-first [B, C, H, W]: pass images.permute(0, 2, 3, 1)"
                if x.shape[1] in _CHANNELS else "")
        raise InvalidParameterError(f"{what}: got shape {tuple(images.shape)}{hint}; expected {EXPECTED}")
    if x.dtype in (torch.uint8, torch.uint16):
        x = x.float() / (255.0 if x.dtype == torch.uint8 else 65535.0)
    elif x.dtype.is_floating_point:
        x = x.float()
    else:
        raise InvalidParameterError(f"{what}: tensors of {x.dtype} are not images; expected {EXPECTED} (or uint8)")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InvalidParameterError(f"{what} holds NaN or infinite values; expected {EXPECTED}")
        if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            hint = "; a 0..255 image must be divided by 255" if hi > 1 + RANGE_SLACK else ""
            raise InvalidParameterError(f"{what}: values span [{lo:g}, {hi:g}]{hint}; expected {EXPECTED}")
    if x.shape[-1] == 1:
        x = x.repeat(1, 1, 1, 3)
    return x
