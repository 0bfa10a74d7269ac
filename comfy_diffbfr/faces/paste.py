"""``paste_back``: restored crops back into their photos, seamless and touching nothing else.

Each crop is warped back with the inverse of its alignment. Its weight is a soft square inset and
feathered by a fixed fraction of the crop, so in the photo the seam scales with the face; the
face-parsing mask multiplies in when its weights are present. Where faces overlap their colours
are averaged by weight. All work stays inside the faces' boxes, and pixels whose weight is 0 are
copied, so they are bit-identical to the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import params
from ..errors import InvalidParameterError
from .image_forms import as_image_batch
from ..host.device import compute_device
from .color import correct_colors
from .face_set import FaceSet, ImageBatch, as_image_list
from .parsing import parsing_available, parsing_masks
from .warp import footprint, invert_affine, resample, shifted

ERODE = 0.03  # of the crop size: weight 0 on this outer band (resampling edge, grey border)
FEATHER = 0.08  # of the crop size: then a smooth ramp up to 1


def edge_mask(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``[1, H, W]`` weight that is 0 near the crop border and rises smoothly to 1 inside."""

    def ramp(n: int) -> torch.Tensor:
        pos = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
        t = ((torch.minimum(pos, 1 - pos) - ERODE) / FEATHER).clamp(0, 1)
        return t * t * (3 - 2 * t)  # smoothstep: no visible edge where the ramp starts or ends

    return (ramp(height)[:, None] * ramp(width)[None, :])[None]


def _clusters(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Groups of indices whose boxes overlap, directly or through others."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i):
            b = boxes[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


@dataclass
class _CropPreparer:
    """Makes one face's ``[4, h, w]`` crop (colour-corrected RGB + weight) when it is needed, so
    that only one large crop at a time is in memory."""

    face_set: FaceSet
    restored: torch.Tensor
    color_correction: str
    color_strength: float
    use_parsing: bool
    device: torch.device
    grey_images: set[int]  # photos that are greyscale: their faces are pasted grey

    def __call__(self, row: int) -> torch.Tensor:
        x = self.restored[row : row + 1].to(self.device).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        if self.color_correction != "none":
            ref = self.face_set.crops[row : row + 1].to(self.device).permute(0, 3, 1, 2).float()
            if ref.shape[-2:] != (h, w):
                ref = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            x = correct_colors(x, ref, self.color_correction, self.color_strength)
        if self.face_set.faces[row].image_index in self.grey_images and not _is_grey(x, dim=1):
            x = (x * LUMA.to(x.device)[:, None, None]).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        weight = edge_mask(h, w, self.device)[None]
        if self.use_parsing:
            weight = weight * parsing_masks(x)
        return torch.cat([x.clamp(0, 1), weight], dim=1)[0]


LUMA = torch.tensor([0.299, 0.587, 0.114])  # BT.601


def _is_grey(x: torch.Tensor, dim: int = -1) -> bool:
    """R = G = B everywhere (how greyscale files are read)."""
    r, g, b = x.narrow(dim, 0, 1), x.narrow(dim, 1, 1), x.narrow(dim, 2, 1)
    return bool(torch.equal(r, g) and torch.equal(g, b))


@dataclass
class _Placement:
    """Where each restored crop goes: per face row, its image -> restored-crop matrix and its box in
    the photo (None when the face lies outside the photo)."""

    face_set: FaceSet
    prepare: _CropPreparer
    affines: list[np.ndarray]
    boxes: list[tuple[int, int, int, int] | None]


def _place(batch: list[torch.Tensor], face_set: FaceSet, restored: torch.Tensor, color_correction: str,
           color_strength: float, use_parsing: bool | None, device: torch.device | str | None) -> tuple[_Placement, torch.device]:
    restored = as_image_batch(restored, "restored")  # uint8, channels-first ...: see image_forms
    if len(batch) != len(face_set.image_sizes):
        raise InvalidParameterError(f"{len(batch)} images but the face set was made from {len(face_set.image_sizes)}")
    sizes = [tuple(image.shape[:2]) for image in batch]
    if sizes != [tuple(s) for s in face_set.image_sizes]:
        face_set = face_set.scaled_to(sizes)  # a resized copy of the photos: move the faces with it
    if restored.ndim != 4 or restored.shape[0] != len(face_set) or restored.shape[-1] != 3:
        raise InvalidParameterError(f"restored crops must be [{len(face_set)}, h, w, 3], got {tuple(restored.shape)}")
    device = compute_device() if device is None else torch.device(device)
    if use_parsing is None:
        use_parsing = parsing_available()
    rh, rw = restored.shape[1:3]
    to_restored = np.diag([rw / face_set.crop_size, rh / face_set.crop_size])
    affines, boxes = [], []
    for face in face_set.faces:
        # image -> restored-crop pixel centres: scale the crop_size matrix about the pixel centres
        a = to_restored @ face.affine
        a[:, 2] += 0.5 * (np.diag(to_restored) - 1)
        affines.append(a)
        h, w = sizes[face.image_index]
        boxes.append(footprint(invert_affine(a), rw, rh, (w, h)))
    grey = {i for i, image in enumerate(batch) if face_set.indices_of(i) and _is_grey(image[..., :3])}
    prepare = _CropPreparer(face_set, restored, color_correction, color_strength, use_parsing, device, grey)
    return _Placement(face_set, prepare, affines, boxes), device


def paste_back(
    images: ImageBatch,
    face_set: FaceSet,
    restored: torch.Tensor,
    *,
    color_correction: str = "none",
    color_strength: float = 1.0,
    use_parsing: bool | None = None,
    device: torch.device | str | None = None,
) -> tuple[ImageBatch, torch.Tensor | list[torch.Tensor]]:
    """Paste ``restored [N, h, w, 3]`` (one per face of ``face_set``, any size) into ``images``: the
    photos the faces were found on, or copies resized by any factor (``FaceSet.scaled_to``).

    ``color_correction`` ("none", "wavelet", "adain") pulls each restored crop towards the colours of
    its original crop by ``color_strength`` (0 = not at all, 1 = fully). ``use_parsing`` None = use the
    parsing mask when its weights are present; ``device`` None = the host's compute device. Returns
    the images (same form as given: one tensor, or a list of ``[1, H, W, C]``) and the paste weight:
    ``[B, H, W]`` (or a list of ``[1, H, W]``) in [0, 1]; where it is 0 the output equals the input
    bit for bit. Alpha channels are kept unchanged; a greyscale photo (R = G = B) gets its faces in
    grey (BT.601 luma), whatever colours a model gave them.
    """
    color_strength = params.BLEND.check(color_strength, "color_strength")
    single = isinstance(images, torch.Tensor) and images.ndim == 3  # one [H, W, C] comes back as one
    if isinstance(images, torch.Tensor):
        images = as_image_batch(images, "images")  # uint8, channels-first ...: see image_forms
    batch = as_image_list(images)
    placed, device = _place(batch, face_set, restored, color_correction, color_strength, use_parsing, device)

    # One copy of the input to write into; a batch tensor is copied whole, so no second copy is stacked.
    if isinstance(images, torch.Tensor):
        whole = images.clone()
        outputs = as_image_list(whole)
        whole_masks = torch.zeros(len(outputs), *outputs[0].shape[:2])
        masks = list(whole_masks.unbind(0))
    else:
        outputs = [image.clone() for image in batch]
        masks = [torch.zeros(image.shape[:2]) for image in batch]
    for index, (out, mask) in enumerate(zip(outputs, masks)):
        present = [r for r in placed.face_set.indices_of(index) if placed.boxes[r] is not None]
        for group in _clusters([placed.boxes[r] for r in present]):
            members = [present[g] for g in group]
            _blend_group(out, mask, [(placed.prepare(r), placed.affines[r], placed.boxes[r]) for r in members], device)
    if isinstance(images, torch.Tensor):
        return (whole[0] if single else whole), whole_masks
    return [o[None] for o in outputs], [m[None] for m in masks]


@dataclass
class FaceLayer:
    """One restored face warped into its photo, for compositing elsewhere (e.g. Impact Pack's SEGS):
    ``rgb [3, h, w]`` and ``weight [h, w]`` (paste_back's weight) over ``box`` = (x0, y0, x1, y1) of
    photo ``image_index``."""

    image_index: int
    box: tuple[int, int, int, int]
    rgb: torch.Tensor
    weight: torch.Tensor


def face_layers(
    images: ImageBatch,
    face_set: FaceSet,
    restored: torch.Tensor,
    *,
    color_correction: str = "none",
    color_strength: float = 1.0,
    use_parsing: bool | None = None,
    device: torch.device | str | None = None,
) -> list[FaceLayer | None]:
    """Each face of ``face_set`` as ``paste_back`` would paste it, one layer per face row (None for a
    face outside its photo), before faces are blended with each other or with the photo."""
    placed, _ = _place(as_image_list(images), face_set, restored, color_correction, color_strength, use_parsing, device)
    layers: list[FaceLayer | None] = []
    for row, (face, affine, box) in enumerate(zip(placed.face_set.faces, placed.affines, placed.boxes)):
        if box is None:
            layers.append(None)
            continue
        warped = _warp(placed.prepare(row), affine, box)
        layers.append(FaceLayer(face.image_index, box, warped[:3].cpu(), warped[3].clamp(0, 1).cpu()))
    return layers


def _warp(crop: torch.Tensor, affine: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A prepared ``[4, h, w]`` crop resampled over ``box`` of its photo."""
    x0, y0, x1, y1 = box
    return resample(crop, shifted(affine, x0, y0), (y1 - y0, x1 - x0))


def _blend_group(out: torch.Tensor, mask: torch.Tensor, faces: list[tuple[torch.Tensor, np.ndarray, tuple]],
                 device: torch.device) -> None:
    """Blend overlapping ``faces`` (prepared crop, image -> crop matrix, box) into ``out``; each face is
    sampled only inside its own box, into buffers that span the group's box."""
    x0 = min(box[0] for _, _, box in faces)
    y0 = min(box[1] for _, _, box in faces)
    x1 = max(box[2] for _, _, box in faces)
    y1 = max(box[3] for _, _, box in faces)
    colour_sum = torch.zeros(3, y1 - y0, x1 - x0, device=device)
    weight_sum = torch.zeros(1, y1 - y0, x1 - x0, device=device)
    untouched = torch.ones(1, y1 - y0, x1 - x0, device=device)  # product of (1 - w): how much photo remains
    for crop, affine, (bx0, by0, bx1, by1) in faces:
        warped = _warp(crop, affine, (bx0, by0, bx1, by1))
        w = warped[3:].clamp_(0, 1)
        sl = (slice(None), slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
        colour_sum[sl] += warped[:3] * w
        weight_sum[sl] += w
        untouched[sl] *= 1 - w
    alpha = 1 - untouched
    # ``out`` still holds the photo inside the members' boxes; the rest of the group's box may hold
    # another group's faces, so only pixels with weight are written.
    region = out[y0:y1, x0:x1, :3].to(device).permute(2, 0, 1)
    face = colour_sum / weight_sum.clamp_min(1e-12)
    blended = (region.float() * (1 - alpha) + face * alpha).clamp(0, 1).to(region.dtype)
    out[y0:y1, x0:x1, :3] = torch.where(alpha > 0, blended, region).permute(1, 2, 0).to(out.device)
    mask[y0:y1, x0:x1] = torch.where(alpha[0] > 0, alpha[0], mask[y0:y1, x0:x1].to(device)).to(mask.device)
