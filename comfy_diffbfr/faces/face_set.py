"""The faces found in a batch of photos: aligned crops plus what is needed to put them back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import InvalidParameterError

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
    track: int | None = None  # the same person across the frames of a batch (``tracking.assign_tracks``)

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
    detected: list[int] = field(default_factory=list)  # faces the detector found per image, before selection

    def __len__(self) -> int:
        return len(self.faces)

    def indices_of(self, image_index: int) -> list[int]:
        """Rows of ``crops`` / ``faces`` that belong to photo ``image_index``."""
        return [i for i, f in enumerate(self.faces) if f.image_index == image_index]

    def scaled_to(self, image_sizes: Sequence[tuple[int, int]]) -> "FaceSet":
        """The same faces for photos resized to ``image_sizes`` ``(H, W)``: each affine, box and set
        of landmarks is mapped through the resize (pixel centres, as the resampling nodes place
        them). Raises ``InvalidParameterError`` when a size is not a uniformly scaled version of the
        size the faces were found on (see ``uniform_scale``)."""
        if len(image_sizes) != len(self.image_sizes):
            raise InvalidParameterError(f"{len(image_sizes)} images but the face set was made from {len(self.image_sizes)}")
        maps = []
        for index, (old, new) in enumerate(zip(self.image_sizes, image_sizes)):
            if uniform_scale(old, new) is None:
                raise InvalidParameterError(
                    f"image {index} is {new[1]}x{new[0]} but its faces were found on a {old[1]}x{old[0]} image, and "
                    "one is not a resized copy of the other (the aspect ratios differ): paste into the image the "
                    "faces were detected on, or into a copy resized without cropping or stretching"
                )
            (h0, w0), (h1, w1) = old, tuple(new)
            sx, sy = w1 / w0, h1 / h0
            # new pixel centre x' sits at (x' + 0.5) / sx - 0.5 of the old photo (and likewise in y)
            maps.append(np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]]))
        faces = []
        for face in self.faces:
            to_new = maps[face.image_index]
            to_old = np.linalg.inv(np.vstack([to_new, [0.0, 0.0, 1.0]]))
            affine = (np.vstack([face.affine, [0.0, 0.0, 1.0]]) @ to_old)[:2]
            points = np.asarray(face.landmarks, dtype=np.float64) @ to_new[:, :2].T + to_new[:, 2]
            box = (np.asarray(face.box, dtype=np.float64).reshape(2, 2) @ to_new[:, :2].T + to_new[:, 2]).ravel()
            faces.append(replace(face, affine=affine, box=box, landmarks=points))
        return replace(self, faces=faces, image_sizes=[tuple(s) for s in image_sizes])


def uniform_scale(old: tuple[int, int], new: tuple[int, int]) -> float | None:
    """The factor by which an ``old`` ``(H, W)`` image was resized to ``new`` without changing its
    aspect ratio beyond rounding (each side within one pixel of ``side * factor``), else None."""
    (h0, w0), (h1, w1) = old, new
    if min(h0, w0, h1, w1) <= 0:
        return None
    # the factors that round each side to its new length; a uniform resize lies in both ranges
    low = max((w1 - 1) / w0, (h1 - 1) / h0)
    high = min((w1 + 1) / w0, (h1 + 1) / h0)
    return (w1 / w0 + h1 / h0) / 2 if low <= high else None


def as_image_list(images: ImageBatch) -> list[torch.Tensor]:
    """An IMAGE batch ``[B, H, W, C]`` or a list of ``[1, H, W, C]`` / ``[H, W, C]`` -> list of ``[H, W, C]``."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim != 4:
            raise InvalidParameterError(f"expected an IMAGE tensor [B, H, W, C], got shape {tuple(images.shape)}")
        return list(images.unbind(0))
    out = []
    for im in images:
        out.extend(as_image_list(im))
    return out
