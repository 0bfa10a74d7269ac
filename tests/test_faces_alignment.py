"""FFHQ alignment: same matrices and crops as facexlib's FaceRestoreHelper; any crop size; aligned inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_diffbfr.errors import InvalidParameterError
from comfy_diffbfr.faces import detect_faces
from comfy_diffbfr.faces.alignment import crop_face, similarity_to_template, template_points


def _photo(h: int = 600, w: int = 700, seed: int = 0) -> np.ndarray:
    """A textured RGB uint8 'photo' (smooth blobs plus fine detail) so that resampling errors show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 40.0
    img = np.stack([np.sin(x * (c + 1) * 0.7 + y * 0.3 * c) for c in range(3)], -1) * 0.35 + 0.5
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _landmarks(rng: np.random.Generator, centre=(350, 300), scale=0.4, angle=0.3, noise=2.0) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    pts = (template_points(512) - 256) @ np.array([[c, s], [-s, c]]) + centre
    return pts + rng.normal(0, noise, pts.shape)


@pytest.fixture
def helper(monkeypatch):
    """facexlib's helper without its detection and parsing networks (their weights would be downloaded)."""
    import facexlib.utils.face_restoration_helper as frh

    monkeypatch.setattr(frh, "init_detection_model", lambda *a, **k: None)
    monkeypatch.setattr(frh, "init_parsing_model", lambda *a, **k: None)
    return frh.FaceRestoreHelper


@pytest.mark.parametrize("size, seed", [(512, 0), (512, 1), (256, 2)])
def test_matches_facexlib_helper(helper, size, seed):
    rng = np.random.default_rng(seed)
    photo = _photo(seed=seed)
    faces = [_landmarks(rng, centre=(250 + 200 * k, 300), scale=0.3 + 0.3 * k, angle=0.4 * (k - 0.5)) for k in range(2)]
    ref = helper(1, face_size=size, device=torch.device("cpu"))
    ref.input_img = photo[..., ::-1].copy()  # facexlib works in BGR
    ref.all_landmarks_5 = faces
    ref.align_warp_face()
    image = torch.from_numpy(photo).float() / 255.0
    for lmk, ref_affine, ref_crop in zip(faces, ref.affine_matrices, ref.cropped_faces, strict=True):
        affine = similarity_to_template(lmk, size)
        np.testing.assert_allclose(affine, ref_affine, atol=1e-3)
        crop = crop_face(image, affine, size).numpy()
        expected = ref_crop[..., ::-1].astype(np.float32) / 255.0
        inner = slice(size // 16, -size // 16)
        diff = np.abs(crop - expected)[inner, inner].mean()
        assert diff < 1 / 255, diff
        assert np.abs(crop - expected).max() < 0.1  # no gross misplacement anywhere


def test_crop_puts_landmarks_on_template_at_every_size():
    rng = np.random.default_rng(3)
    lmk = _landmarks(rng, noise=0.0)
    for size in (512, 256, 128, 64):
        affine = similarity_to_template(lmk, size)
        mapped = lmk @ affine[:, :2].T + affine[:, 2]
        np.testing.assert_allclose(mapped, template_points(size), atol=1e-3 * size)


def test_crop_beyond_photo_uses_facexlib_grey_border():
    image = torch.zeros(100, 100, 3)
    lmk = (template_points(512) - 256) * 0.2 + [5, 5]  # face in the corner: most of the crop is outside
    crop = crop_face(image, similarity_to_template(lmk, 128), 128)
    np.testing.assert_allclose(crop[0, 0].numpy(), [132 / 255, 133 / 255, 135 / 255], atol=1e-6)
    assert crop[-1, -1].abs().max() == 0  # inside the (black) photo


def test_aligned_mode_skips_detection_and_resizes():
    photo = torch.rand(1, 1024, 1024, 3)
    fs = detect_faces(photo, aligned=True, crop_size=256)
    assert fs.detector == "aligned" and len(fs) == 1 and fs.crops.shape == (1, 256, 256, 3)
    box_mean = torch.nn.functional.avg_pool2d(photo[0].permute(2, 0, 1), 4).permute(1, 2, 0)
    point_sampled = photo[0, 1::4, 1::4]
    # antialiased: close to the 4x4 means, unlike point sampling
    assert (fs.crops[0] - box_mean).abs().mean() < 0.5 * (point_sampled - box_mean).abs().mean()
    mapped = fs.faces[0].landmarks @ fs.faces[0].affine[:, :2].T + fs.faces[0].affine[:, 2]
    np.testing.assert_allclose(mapped, template_points(256), atol=1e-6)


def test_too_small_a_crop_size_is_refused():
    with pytest.raises(InvalidParameterError, match=r"crop_size must be a whole number in \[8, 2048\], got 4"):
        detect_faces(torch.rand(1, 16, 16, 3), crop_size=4, aligned=True)
