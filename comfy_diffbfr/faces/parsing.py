"""Optional face-parsing mask (facexlib's ParseNet) that keeps hair, neck and clothes of the photo.

Used only when ``parsing_parsenet.pth`` is in a ``facedetection`` folder (never downloaded here:
the plain soft mask works without it); shared through the model cache, on the compute device."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..host.model_cache import ModuleHandle, load_module
from .weights import find_weights, load_facexlib_state

# CelebAMask-HQ classes pasted back: everything but background 0, neck 14, cloth 16, hair 17, hat 18.
_FACE_CLASSES = [c for c in range(19) if c not in (0, 14, 16, 17, 18)]
_PARSE_SIZE = 512


def _build(path: Path) -> torch.nn.Module:
    from facexlib.parsing.parsenet import ParseNet

    return load_facexlib_state(ParseNet(in_size=_PARSE_SIZE, out_size=_PARSE_SIZE, parsing_ch=19), path, "ParseNet")


def _parsenet() -> ModuleHandle:
    """The shared ParseNet (model cache); raises when its weights are absent."""
    path = find_weights("parsenet")
    if path is None:
        raise CheckpointError("parsing_parsenet.pth is not in the facedetection model folder")
    return load_module(path, _build, tag="parsenet")


def parsing_available() -> bool:
    return find_weights("parsenet") is not None


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def parsing_masks(crops: torch.Tensor) -> torch.Tensor:
    """Soft face masks ``[N, 1, S, S]`` in [0, 1] for aligned crops ``[N, 3, S, S]`` (the skin, eyes,
    brows, nose and mouth region, blurred so it fades out, zero along the crop border)."""
    handle = _parsenet()
    device = handle.prepare()
    size = crops.shape[-1]
    x = F.interpolate(crops.float().to(device), size=(_PARSE_SIZE, _PARSE_SIZE), mode="bilinear",
                      align_corners=False, antialias=True)
    with torch.inference_mode():
        labels = handle.module(x * 2.0 - 1.0)[0].argmax(1, keepdim=True)
    mask = torch.isin(labels, torch.tensor(_FACE_CLASSES, device=labels.device)).float()
    mask = _gaussian_blur(_gaussian_blur(mask, 11.0), 11.0)
    border = _PARSE_SIZE // 50
    mask[..., :border, :] = 0
    mask[..., -border:, :] = 0
    mask[..., :, :border] = 0
    mask[..., :, -border:] = 0
    mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return mask.to(crops.device)
