"""The faces found in a batch of photos: aligned crops plus what is needed to put them back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .image_forms import as_image_batch

ImageBatch = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class Face:
    """One face. ``affine`` maps photo pixels to crop pixels (2x3, pixel centres at integers, for a
    crop of ``FaceSet.crop_size``); ``box`` is ``(x0, y0, x1, y1)`` and ``landmarks`` are the five
    FFHQ points (eyes, nose, mouth corners) as 5x2, both in photo pixels."""

    image_index: int
    affine: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    score: float

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }


@dataclass
class FaceSet:
    """``crops`` is an IMAGE ``[N, S, S, 3]`` (S = ``crop_size``), one row per entry of ``faces``;
    ``image_sizes`` holds ``(H, W)`` of every photo of the batch, with or without faces."""

    crops: torch.Tensor
    faces: list[Face]
    image_sizes: list[tuple[int, int]]
    crop_size: int
    detector: str = ""
    notes: dict[int, str] = field(default_factory=dict)  # image index -> why it has no face

    def __len__(self) -> int:
        return len(self.faces)

    def indices_of(self, image_index: int) -> list[int]:
        """Rows of ``crops`` / ``faces`` that belong to photo ``image_index``."""
        return [i for i, f in enumerate(self.faces) if f.image_index == image_index]


def as_image_list(images: ImageBatch) -> list[torch.Tensor]:
    """An IMAGE batch ``[B, H, W, C]`` or a list of ``[1, H, W, C]`` / ``[H, W, C]`` -> list of ``[H, W, C]``.
    Other forms (uint8, numpy, PIL, ...) are converted or refused by ``image_forms.as_image_batch``."""
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in as_image_list(item)]
    return list(as_image_batch(images, "images").unbind(0))
