"""A bridge to Impact Pack's SEGS, without importing Impact Pack.

Impact Pack's SEGS is ``((height, width), [SEG, ...])`` where ``SEG`` is a namedtuple
``(cropped_image, cropped_mask, confidence, crop_region, bbox, label, control_net_wrapper)``:
``crop_region`` and ``bbox`` are ``[x1, y1, x2, y2]`` in pixels of the image the SEGS were made
on, ``cropped_image`` is the ``crop_region`` cut-out (an IMAGE tensor ``[B, h, w, 3]`` or its numpy
array, or None), ``cropped_mask`` a ``[h, w]`` mask of that region (``[B, h, w]`` per frame). Its
nodes read the fields by name, so a namedtuple with the same fields in the same order is one.

- ``faces_from_segs``: each segment's face found again inside its ``crop_region`` (the detector
  gives the landmarks that a box alone lacks), aligned like ``detect_faces``.
- ``segs_from_faces``: restored faces as SEGS, for Impact's SEGSPaste or detailer nodes: one SEG per
  face over the region its paste covers, holding the restored face and ``paste_back``'s weight.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import torch

from ..errors import InvalidParameterError
from .alignment import crop_face, similarity_to_template
from .detect import MIN_DETECTABLE, detect_faces
from .face_set import Face, FaceSet, ImageBatch, as_image_list, uniform_scale
from .paste import face_layers
from .selection import Selection
from .tracking import box_iou

SEG = namedtuple("SEG", ["cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label",
                         "control_net_wrapper"], defaults=[None])
MIN_OVERLAP = 0.1  # IoU with the segment's box below which a face found in its region is another face


def _segments(segs: Any, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(crop_region, bbox)`` of every segment in pixels of an image of ``size`` (H, W)."""
    try:
        (seg_h, seg_w), items = segs
        regions = [(np.asarray(s.crop_region, dtype=np.float64)[:4], np.asarray(s.bbox, dtype=np.float64)[:4]) for s in items]
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidParameterError(f"not Impact Pack SEGS ((height, width), [SEG, ...]): {exc}") from None
    if (seg_h, seg_w) != size:
        if uniform_scale((seg_h, seg_w), size) is None:
            raise InvalidParameterError(
                f"the SEGS were made on a {seg_w}x{seg_h} image, not on this {size[1]}x{size[0]} image "
                "or a copy resized by one factor: connect the image the SEGS were detected on"
            )
        scale = np.array([size[1] / seg_w, size[0] / seg_h] * 2)
        regions = [(region * scale, box * scale) for region, box in regions]
    return regions


def faces_from_segs(images: ImageBatch, segs: Any, *, detector: str = "auto", crop_size: int = 512,
                    device: torch.device | str | None = None) -> FaceSet:
    """The face of each segment, in every image of ``images`` (SEGS of a video apply to each frame):
    found by ``detector`` inside the segment's crop region, the one that overlaps the segment's box
    most; faces are ordered by image, then by segment. A segment without a face gets a note."""
    batch = as_image_list(images)
    faces: list[Face] = []
    crops: list[torch.Tensor] = []
    notes: dict[int, str] = {}
    detected: list[int] = []
    name = detector
    for index, image in enumerate(batch):
        h, w = image.shape[:2]
        missing = []
        count = 0
        for k, (region, box) in enumerate(_segments(segs, (h, w))):
            x0, y0 = (int(np.clip(np.floor(v), 0, lim)) for v, lim in zip(region[:2], (w, h)))
            x1, y1 = (int(np.clip(np.ceil(v), 0, lim)) for v, lim in zip(region[2:], (w, h)))
            if min(x1 - x0, y1 - y0) < MIN_DETECTABLE:
                missing.append(k)
                continue
            found = detect_faces(image[y0:y1, x0:x1][None], detector=detector, selection=Selection(),
                                 crop_size=8, device=device)  # crops are made again from the whole photo below
            name = found.detector
            offset = np.array([x0, y0, x0, y0], dtype=np.float64)
            overlaps = [box_iou(f.box + offset, box) for f in found.faces]
            if not overlaps or max(overlaps) < MIN_OVERLAP:
                missing.append(k)
                continue
            best = found.faces[int(np.argmax(overlaps))]
            affine = similarity_to_template(best.landmarks + [x0, y0], crop_size)
            faces.append(Face(index, affine, best.box + offset, best.landmarks + [x0, y0], best.score))
            crops.append(crop_face(image, affine, crop_size))
            count += 1
        detected.append(count)
        if missing:
            notes[index] = f"image {index}: no face found inside segment(s) {', '.join(map(str, missing))}"
    stacked = torch.stack(crops) if crops else torch.zeros(0, crop_size, crop_size, 3)
    return FaceSet(stacked.float().cpu(), faces, [tuple(im.shape[:2]) for im in batch], crop_size,
                   detector=name, notes=notes, detected=detected)


def segs_from_faces(images: ImageBatch, face_set: FaceSet, restored: torch.Tensor, *, color_correction: str = "none",
                    color_strength: float = 1.0, label: str = "face", device: torch.device | str | None = None) -> tuple:
    """SEGS with one SEG per face of ``face_set``: ``crop_region`` = the region its paste covers,
    ``cropped_image`` = that region with the restored face (IMAGE ``[B, h, w, 3]``, one row per image
    of the batch: the others keep their own pixels), ``cropped_mask`` = ``paste_back``'s weight
    (numpy ``[h, w]`` for one image; a tensor ``[B, h, w]``, zero in the other images, for a batch)."""
    batch = as_image_list(images)
    sizes = {tuple(im.shape[:2]) for im in batch}
    if len(sizes) != 1:
        raise InvalidParameterError("SEGS describe images of one size; these images differ in size")
    (height, width), = sizes
    layers = face_layers(batch, face_set, restored, color_correction=color_correction, color_strength=color_strength,
                         device=device)
    items = []
    for face, layer in zip(face_set.scaled_to([(height, width)] * len(batch)).faces, layers):
        if layer is None:
            continue
        x0, y0, x1, y1 = layer.box
        frames = torch.stack([im[y0:y1, x0:x1, :3].float() for im in batch])
        weight = layer.weight
        own = frames[layer.image_index]
        frames[layer.image_index] = torch.where(weight[..., None] > 0, layer.rgb.permute(1, 2, 0).clamp(0, 1), own)
        if len(batch) == 1:
            mask: Any = weight.numpy().astype(np.float32)
        else:
            mask = torch.zeros(len(batch), y1 - y0, x1 - x0)
            mask[layer.image_index] = weight
        bbox = [int(round(v)) for v in np.clip(face.box, 0, [width, height, width, height])]
        items.append(SEG(frames, mask, float(face.score), [x0, y0, x1, y1], bbox, label, None))
    return ((height, width), items)

