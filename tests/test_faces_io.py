"""Photos as users have them: EXIF rotation, RGBA, palette, grey, 16-bit; unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr.errors import DiffBFRError, ImageReadError, InvalidParameterError
from comfy_diffbfr.faces import list_images, load_image, save_image


def _rgb(h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_round_trip_is_exact(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (1, 12, 20, 3) and image.dtype == torch.float32
    save_image(image, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_rgba_keeps_alpha(tmp_path):
    arr = np.dstack([_rgb(), np.arange(240, dtype=np.uint8).reshape(12, 20)])
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape[-1] == 4
    assert torch.equal((image[0, ..., 3] * 255).round().to(torch.uint8), torch.from_numpy(arr[..., 3]))
    save_image(image, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_palette_with_transparency_becomes_rgba(tmp_path):
    im = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    image = load_image(tmp_path / "p.png")
    assert image.shape[-1] == 4 and (image[..., 3] == 0).any() and (image[..., 3] == 1).any()


def test_grey_is_repeated_over_rgb(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.shape[-1] == 3
    assert torch.equal(image[..., 0], image[..., 2])
    assert torch.equal((image[0, ..., 1] * 255).round().to(torch.uint8), torch.from_numpy(grey))


def test_16_bit_grey_and_colour_keep_their_precision(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65536, (10, 14), dtype=np.uint16)
    colour = rng.integers(0, 65536, (10, 14, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    cv2.imwrite(str(tmp_path / "c16.png"), colour[..., ::-1])  # OpenCV writes BGR
    g = load_image(tmp_path / "g16.png")[0]
    c = load_image(tmp_path / "c16.png")[0]
    np.testing.assert_allclose(g[..., 1].numpy(), grey / 65535.0, atol=1e-7)
    np.testing.assert_allclose(c.numpy(), colour / 65535.0, atol=1e-7)  # not cut to 8 bits
    save_image(c, tmp_path / "out16.png", bits=16)
    np.testing.assert_allclose(load_image(tmp_path / "out16.png")[0].numpy(), colour / 65535.0, atol=1e-7)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:10, :10] = 255  # a white top-left corner shows where the picture went
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    image = load_image(tmp_path / "r.jpg")[0, ..., 0]
    expected_shape = (40, 60) if orientation == 3 else (60, 40)
    assert tuple(image.shape) == expected_shape
    corner = {3: (-1, -1), 6: (0, -1), 8: (-1, 0)}[orientation]
    assert image[corner] > 0.9 and image[0, 0] < 0.1


def test_unreadable_and_truncated_files_raise_a_clear_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    for name in ("junk.png", "cut.jpg", "missing.png"):
        with pytest.raises(ImageReadError, match=name):
            load_image(tmp_path / name)


def test_list_images_expands_folders_and_refuses_missing_paths(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.jpg", "b.png"]
    with pytest.raises(ImageReadError, match="does not exist"):
        list_images([tmp_path / "nope"])


def test_unwritable_output_and_bad_shapes_raise_clear_errors(tmp_path):
    (tmp_path / "taken").write_bytes(b"a file where the output folder should be")
    image = torch.rand(1, 8, 8, 3)
    with pytest.raises(DiffBFRError, match="cannot write .*taken"):
        save_image(image, tmp_path / "taken" / "out.png")
    with pytest.raises(InvalidParameterError, match="one image, got a batch of 2"):
        save_image(torch.rand(2, 8, 8, 3), tmp_path / "two.png")
    with pytest.raises(InvalidParameterError, match="use a .png file name"):
        save_image(image, tmp_path / "deep.jpg", bits=16)
