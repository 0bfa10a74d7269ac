"""``detect_faces``: photos in, a ``FaceSet`` of aligned crops out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import params
from .alignment import crop_face, similarity_to_template, template_points
from .detectors import get_detector
from .face_set import Face, FaceSet, ImageBatch, as_image_list
from .image_io import to_uint8
from .selection import Selection

MIN_DETECTABLE = 16  # px: no detector finds a face in a smaller photo


def detection_copy(image: torch.Tensor, max_side: int, max_short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 copy of ``image [H, W, C]`` scaled so its long side is at most ``max_side`` and its
    short side at most ``max_short_side``, and the scale ``(sx, sy)`` from photo to copy.

    A big photo is first shrunk by an integer factor with area averaging, band by band, so it never
    gets a full-size copy; OpenCV's area resize then brings it to the exact size."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w), (max_short_side or min(h, w)) / min(h, w))
    if scale == 1.0:
        return to_uint8(image[..., :3]), np.ones(2)
    k = int(1.0 / scale)
    if k > 1:
        band = 64 * k
        small = torch.cat([
            F.avg_pool2d(image[y : y + band, : w - w % k, :3].permute(2, 0, 1)[None], k)[0].permute(1, 2, 0)
            for y in range(0, h - h % k, band)
        ])
    else:
        small = image[..., :3]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = cv2.resize(to_uint8(small), size, interpolation=cv2.INTER_AREA)
    # the integer shrink dropped up to k-1 rows/columns at the far edges, so each axis has its own scale
    return rgb, np.array([size[0] / (w - w % k), size[1] / (h - h % k)])


def _to_photo(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # pixel centres: x_small + 0.5 = (x + 0.5) * scale
    return (np.asarray(points, dtype=np.float64) + 0.5) / scale - 0.5


def _aligned_face(image: torch.Tensor, index: int, size: int) -> tuple[Face, torch.Tensor]:
    """An already aligned crop: the whole picture is the face, resized to ``size``."""
    h, w = image.shape[:2]
    sx, sy = size / w, size / h
    affine = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    landmarks = (template_points(size) + 0.5) / [sx, sy] - 0.5
    crop = image[..., :3].permute(2, 0, 1)[None].float()
    if (h, w) != (size, size):
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return Face(index, affine, np.array([0.0, 0.0, w - 1.0, h - 1.0]), landmarks, 1.0), crop[0].permute(1, 2, 0)


def detect_faces(
    images: ImageBatch,
    *,
    detector: str = "auto",
    selection: Selection = Selection(),
    crop_size: int = 512,
    aligned: bool = False,
    device: torch.device | str | None = None,
) -> FaceSet:
    """Find, select and align the faces of every photo (``[B, H, W, C]`` or a list of differently
    sized ``[1, H, W, C]``). With ``aligned=True`` each picture already is an aligned face crop.
    The detector network runs on ``device`` (default: the host's compute device)."""
    crop_size = params.CROP_SIZE.check(crop_size, "crop_size")
    batch = as_image_list(images)
    det = None if aligned else get_detector(detector, device)
    faces: list[Face] = []
    crops: list[torch.Tensor] = []
    notes: dict[int, str] = {}
    detected: list[int] = []
    for index, image in enumerate(batch):
        h, w = image.shape[:2]
        if aligned:
            face, crop = _aligned_face(image, index, crop_size)
            faces.append(face)
            crops.append(crop)
            detected.append(1)
            continue
        raws = []
        if min(h, w) >= MIN_DETECTABLE:
            small, scale = detection_copy(image, det.max_side, det.max_short_side)
            threshold = det.default_threshold if selection.score_threshold is None else selection.score_threshold
            raws = det.detect(small, threshold)
        boxes = np.array([_to_photo(r.box.reshape(2, 2), scale).ravel() for r in raws]).reshape(-1, 4)
        scores = np.array([r.score for r in raws])
        kept = selection.apply(boxes, scores, (h, w))
        detected.append(len(raws))
        if not kept:
            notes[index] = f"no face found in image {index} ({w}x{h}; {_why_none(selection, boxes, scores)})"
        for k in kept:
            landmarks = _to_photo(raws[k].landmarks, scale)
            affine = similarity_to_template(landmarks, crop_size)
            faces.append(Face(index, affine, boxes[k], landmarks, raws[k].score))
            crops.append(crop_face(image, affine, crop_size))
    stacked = torch.stack(crops) if crops else torch.zeros(0, crop_size, crop_size, 3)
    return FaceSet(
        crops=stacked.float().cpu(),
        faces=faces,
        image_sizes=[tuple(im.shape[:2]) for im in batch],
        crop_size=crop_size,
        detector="aligned" if aligned else det.name,
        notes=notes,
        detected=detected,
    )


def _why_none(selection: Selection, boxes: np.ndarray, scores: np.ndarray) -> str:
    if not len(boxes):
        return "none detected"
    numbered = len(selection.numbered(boxes, scores))
    if selection.mode == "index" and numbered:
        return (f"{len(boxes)} detected, numbered 0..{numbered - 1} left to right; indices "
                f"{', '.join(map(str, selection.indices))} select none of them")
    return f"{len(boxes)} detected, none selected"
