"""The Impact Pack SEGS bridge, with SEGS built the way Impact Pack builds them (no Impact Pack here):
SEGS -> DiffBFR faces finds and aligns the face of each segment; restored faces -> SEGS pasted the
way SEGSPaste pastes equals DiffBFR Paste Back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_diffbfr.errors import InvalidParameterError, NoFaceError
from comfy_diffbfr.faces import detect_faces, paste_back
from comfy_diffbfr.faces.segs import SEG, faces_from_segs, segs_from_faces
from comfy_diffbfr.workflow.core_nodes import load_image_file
from pack_helpers import EXAMPLE_PHOTO, load_pack

pytest.importorskip("dlib")

IMPACT_FIELDS = ("cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label", "control_net_wrapper")


def impact_seg(image: torch.Tensor, bbox, crop_factor: float = 3.0, label: str = "face") -> SEG:
    """A segment as Impact Pack's bbox detectors make it: the box grown by crop_factor about its
    centre (clipped to the image), the crop of that region, a numpy mask of the region."""
    h, w = image.shape[1:3]
    x0, y0, x1, y1 = bbox
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * crop_factor / 2, (y1 - y0) * crop_factor / 2
    region = [max(0, int(cx - half_w)), max(0, int(cy - half_h)), min(w, int(cx + half_w)), min(h, int(cy + half_h))]
    crop = image[:, region[1]:region[3], region[0]:region[2]].clone()
    mask = np.ones((region[3] - region[1], region[2] - region[0]), np.float32)
    return SEG(crop, mask, np.float32(0.9), region, [int(v) for v in bbox], label, None)


def segs_paste(images: torch.Tensor, segs) -> torch.Tensor:
    """Impact Pack's SEGSPaste with feather 0, alpha 255: ``image*(1-m) + cropped*m`` over each crop
    region; a [B,h,w] mask has one frame per image."""
    out = images.clone()
    for seg in segs[1]:
        x0, y0, x1, y1 = seg.crop_region
        cropped = torch.as_tensor(seg.cropped_image)
        mask = torch.as_tensor(seg.cropped_mask)
        for i in range(len(out)):
            m = (mask[i] if mask.ndim == 3 else mask)[..., None]
            out[i, y0:y1, x0:x1] = out[i, y0:y1, x0:x1] * (1 - m) + cropped[i] * m
    return out


@pytest.fixture(scope="module")
def photo():
    return load_image_file(EXAMPLE_PHOTO)[0]


@pytest.fixture(scope="module")
def direct(photo):
    return detect_faces(photo, detector="dlib", crop_size=128)


def test_seg_is_a_namedtuple_with_impact_packs_fields():
    assert SEG._fields == IMPACT_FIELDS and SEG._field_defaults == {"control_net_wrapper": None}


def test_segs_to_faces_aligns_each_segments_face_like_face_detect(photo, direct, one_thread):
    (face,) = direct.faces
    empty = impact_seg(photo, [4, 4, 40, 40], crop_factor=1.0)  # background only
    segs = ((384, 384), [impact_seg(photo, face.box), empty])
    faces, crops = load_pack().NODE_CLASS_MAPPINGS["DiffBFRFacesFromSEGS"]().convert(photo, segs, "dlib", 128)
    assert len(faces) == 1 and crops.shape == (1, 128, 128, 3) and faces.image_sizes == [(384, 384)]
    np.testing.assert_allclose(faces.faces[0].landmarks, face.landmarks, atol=2.0)  # same face, found in the region
    assert (crops - direct.crops).abs().mean() < 0.03
    assert "no face found inside segment(s) 1" in faces.notes[0]
    pasted, mask = paste_back(photo, faces, crops.flip(2))  # the face set serves Paste Back as Face Detect's does
    assert mask.sum() > 1000 and not torch.equal(pasted, photo)
    with pytest.raises(NoFaceError, match="no face found in the segments"):
        load_pack().NODE_CLASS_MAPPINGS["DiffBFRFacesFromSEGS"]().convert(photo, ((384, 384), [empty]), "dlib", 128)


def test_segs_of_a_resized_image_are_scaled_and_others_refused(photo, direct, one_thread):
    (face,) = direct.faces
    segs = ((768, 768), [impact_seg(torch.zeros(1, 768, 768, 3), face.box * 2)])
    faces = faces_from_segs(photo, segs, detector="dlib", crop_size=128)
    np.testing.assert_allclose(faces.faces[0].landmarks, face.landmarks, atol=2.0)
    with pytest.raises(InvalidParameterError, match="made on a 768x500 image"):
        faces_from_segs(photo, ((500, 768), segs[1]), detector="dlib")


def test_restored_faces_to_segs_paste_like_paste_back(photo, direct):
    restored = (1 - direct.crops).contiguous()  # any change that shows where it lands
    (segs,) = load_pack().NODE_CLASS_MAPPINGS["DiffBFRFacesToSEGS"]().convert(photo, direct, restored, "none", 1.0)
    assert segs[0] == (384, 384) and len(segs[1]) == 1
    seg = segs[1][0]
    assert type(seg)._fields == IMPACT_FIELDS and seg.label == "face" and seg.control_net_wrapper is None
    x0, y0, x1, y1 = seg.crop_region
    assert all(isinstance(v, int) for v in seg.crop_region + seg.bbox) and 0 <= x0 < x1 <= 384 and 0 <= y0 < y1 <= 384
    assert isinstance(seg.cropped_mask, np.ndarray) and seg.cropped_mask.shape == (y1 - y0, x1 - x0)
    assert seg.cropped_image.shape == (1, y1 - y0, x1 - x0, 3)
    expected, mask = paste_back(photo, direct, restored)
    assert torch.allclose(segs_paste(photo, segs), expected, atol=1e-5)
    assert np.allclose(seg.cropped_mask, mask[0, y0:y1, x0:x1].numpy(), atol=1e-6)


def test_a_batch_gives_one_mask_frame_per_image(photo):
    frames = torch.cat([photo, photo.flip(2)])  # the face moves in the second frame
    face_set = detect_faces(frames, detector="dlib", crop_size=64)
    assert [f.image_index for f in face_set.faces] == [0, 1]
    restored = (face_set.crops * 0.5).contiguous()
    segs = segs_from_faces(frames, face_set, restored)
    assert [torch.as_tensor(s.cropped_mask).shape[0] for s in segs[1]] == [2, 2]
    assert not torch.as_tensor(segs[1][0].cropped_mask)[1].any()  # face 0 is not pasted into frame 1
    expected, _ = paste_back(frames, face_set, restored)
    assert torch.allclose(segs_paste(frames, segs), expected, atol=1e-5)
