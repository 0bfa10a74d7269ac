"""Paste-back: inverse warp, soft mask, overlaps, colour correction, untouched pixels stay bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfy_diffbfr.errors import InvalidParameterError
from comfy_diffbfr.faces import Face, FaceSet, paste_back
from comfy_diffbfr.faces import paste as paste_module
from comfy_diffbfr.faces.alignment import crop_face, similarity_to_template, template_points
from comfy_diffbfr.faces.warp import footprint, invert_affine


def _photo(h=400, w=500, channels=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, channels, h // 20, w // 20, generator=g), size=(h, w), mode="bicubic", align_corners=False)
    return (smooth[0].permute(1, 2, 0) + 0.02 * torch.rand(h, w, channels, generator=g)).clamp(0, 1)


def _face_set(images: list[torch.Tensor], placements: list[tuple[int, float, float, float]], size=256) -> FaceSet:
    """Faces at (image index, centre x, centre y, scale), aligned exactly onto the template."""
    faces, crops = [], []
    for index, cx, cy, scale in placements:
        lmk = (template_points(512) - 256) * scale + [cx, cy]
        affine = similarity_to_template(lmk, size)
        faces.append(Face(index, affine, np.array([cx - 60 * scale, cy - 60 * scale, cx + 60 * scale, cy + 80 * scale]), lmk, 1.0))
        crops.append(crop_face(images[index], affine, size))
    return FaceSet(torch.stack(crops), faces, [tuple(im.shape[:2]) for im in images], size)


def _psnr(a, b):
    return 10 * torch.log10(1 / ((a - b) ** 2).mean()).item()


def test_round_trip_keeps_outside_bit_identical_and_face_close():
    photo = _photo()
    fs = _face_set([photo], [(0, 130, 150, 0.35), (0, 370, 250, 0.3)])
    out, mask = paste_back(photo[None], fs, fs.crops)
    assert out.shape == (1, 400, 500, 3) and mask.shape == (1, 400, 500)
    outside = mask[0] == 0
    assert outside.float().mean() > 0.3
    assert torch.equal(out[0][outside], photo[outside])
    assert mask[0, 150, 130] == 1 and mask[0, 250, 370] == 1  # face centres fully pasted
    assert _psnr(out[0], photo) > 40


def test_restored_crops_may_have_another_size():
    photo = _photo(seed=1)
    fs = _face_set([photo], [(0, 250, 200, 0.5)], size=512)
    small = F.interpolate(fs.crops.permute(0, 3, 1, 2), size=(256, 256), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    out, mask = paste_back(photo, fs, small)
    assert out.shape == photo.shape and mask.shape == (1, 400, 500)
    assert _psnr(out, photo) > 35
    assert torch.equal(out[mask[0] == 0], photo[mask[0] == 0])


@pytest.mark.parametrize("size", [(200, 250), (800, 1000), (301, 376)])  # x0.5, x2, x0.752 (rounded sides)
def test_paste_into_a_resized_copy_of_the_photo_lands_on_the_same_face(size):
    photo = _photo(seed=8)
    fs = _face_set([photo], [(0, 180, 160, 0.35), (0, 360, 260, 0.3)])
    # a marked face crop (a colour no photo pixel has) shows where each face lands
    marked = torch.zeros_like(fs.crops)
    marked[..., 1] = 1
    full, full_mask = paste_back(photo, fs, marked)
    resized = F.interpolate(photo.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    out, mask = paste_back(resized, fs, marked)
    assert out.shape == resized.shape and mask.shape == (1, *size)
    expected = F.interpolate(full_mask[None], size=size, mode="bilinear", align_corners=False)[0]
    assert (mask - expected).abs().mean() < 0.01 and (mask - expected).abs().max() < 0.35  # same place, same shape
    ys, xs = torch.nonzero(mask[0] == 1, as_tuple=True)
    scale = size[1] / 500
    assert abs(xs.float().mean().item() - scale * full_mask[0].nonzero()[:, 1].float().mean().item()) < 2
    assert torch.equal(out[mask[0] == 0], resized[mask[0] == 0])  # nothing else touched
    # the moved faces still map their landmarks onto the template
    moved = fs.scaled_to([size])
    for face in moved.faces:
        mapped = face.landmarks @ face.affine[:, :2].T + face.affine[:, 2]
        np.testing.assert_allclose(mapped, template_points(256), atol=1e-6)


def test_paste_into_a_cropped_or_stretched_photo_is_refused():
    photo = _photo(seed=9)
    fs = _face_set([photo], [(0, 250, 200, 0.4)])
    for size in ((400, 400), (200, 500), (310, 376)):  # centre crop, stretch, 3 px off a uniform resize
        with pytest.raises(InvalidParameterError, match="aspect ratios differ"):
            paste_back(torch.zeros(*size, 3), fs, fs.crops)


def test_overlapping_faces_are_averaged_without_seams():
    photo = _photo(seed=2)
    fs = _face_set([photo], [(0, 220, 200, 0.5), (0, 280, 200, 0.5)])
    red = torch.zeros(1, 256, 256, 3)
    red[..., 0] = 1
    blue = torch.zeros(1, 256, 256, 3)
    blue[..., 2] = 1
    out, mask = paste_back(photo, fs, torch.cat([red, blue]))
    np.testing.assert_allclose(out[200, 250].numpy(), [0.5, 0.0, 0.5], atol=1e-4)  # both weights are 1 here
    row = out[200, 150:350]
    assert (row[1:] - row[:-1]).abs().max() < 0.1  # the colour changes gradually from red to blue
    assert torch.equal(out[mask[0] == 0], photo[mask[0] == 0])


def test_faces_of_different_groups_never_erase_each_other():
    photo = _photo(h=600, w=600, seed=3)
    placements = [(0, 150, 150, 0.12), (0, 380, 200, 0.4), (0, 200, 380, 0.4)]
    fs = _face_set([photo], placements)
    boxes = [footprint(invert_affine(f.affine), fs.crop_size, fs.crop_size, (600, 600)) for f in fs.faces]

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    # precondition: the small face overlaps neither big one, but lies inside the big ones' joint box
    assert not overlap(boxes[0], boxes[1]) and not overlap(boxes[0], boxes[2]) and overlap(boxes[1], boxes[2])
    assert min(boxes[1][0], boxes[2][0]) < 150 < max(boxes[1][2], boxes[2][2])
    assert min(boxes[1][1], boxes[2][1]) < 150 < max(boxes[1][3], boxes[2][3])
    colours = torch.eye(3)[:, None, None, :].expand(3, fs.crop_size, fs.crop_size, 3).contiguous()
    out, _ = paste_back(photo, fs, colours)
    for (_, cx, cy, _), colour in zip(placements, colours[:, 0, 0], strict=True):
        np.testing.assert_allclose(out[cy, cx].numpy(), colour.numpy(), atol=1e-4)


def test_alpha_is_kept_and_batches_keep_their_form():
    rgba = _photo(channels=4, seed=4)
    photos = torch.stack([rgba, _photo(channels=4, seed=5)])
    fs = _face_set([photos[0], photos[1]], [(0, 200, 200, 0.4), (1, 300, 220, 0.4)])
    shifted = (fs.crops * 0.5).contiguous()
    out, mask = paste_back(photos, fs, shifted)
    assert out.shape == photos.shape and mask.shape == (2, 400, 500)
    assert torch.equal(out[..., 3], photos[..., 3])
    assert (out[0, 200, 200, :3] - photos[0, 200, 200, :3] * 0.5).abs().max() < 0.02
    listed, masks = paste_back([photos[:1], photos[1:]], fs, shifted)
    assert isinstance(listed, list) and torch.equal(listed[1], out[1:]) and torch.equal(masks[0], mask[:1])


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_colour_correction_pulls_towards_the_original(method):
    photo = _photo(seed=6)
    fs = _face_set([photo], [(0, 250, 200, 0.5)])
    tinted = (fs.crops * torch.tensor([0.6, 0.9, 1.0]) + torch.tensor([0.0, 0.05, 0.2])).clamp(0, 1)
    plain, mask = paste_back(photo, fs, tinted)
    fixed, _ = paste_back(photo, fs, tinted, color_correction=method)
    half, _ = paste_back(photo, fs, tinted, color_correction=method, color_strength=0.5)
    none_, _ = paste_back(photo, fs, tinted, color_correction=method, color_strength=0.0)
    inside = mask[0] == 1
    err = {name: (img[inside] - photo[inside]).abs().mean().item() for name, img in
           {"plain": plain, "fixed": fixed, "half": half, "none": none_}.items()}
    assert err["fixed"] < 0.25 * err["plain"]
    assert err["fixed"] < err["half"] < err["plain"]
    assert torch.equal(none_, plain)
    assert torch.equal(fixed[mask[0] == 0], photo[mask[0] == 0])


def test_parsing_mask_limits_the_paste(monkeypatch):
    photo = _photo(seed=7)
    fs = _face_set([photo], [(0, 250, 200, 0.5)])

    def left_half(crops):
        m = torch.zeros(crops.shape[0], 1, *crops.shape[-2:])
        m[..., : crops.shape[-1] // 2] = 1
        return m

    monkeypatch.setattr(paste_module, "parsing_masks", left_half)
    _, plain = paste_back(photo, fs, fs.crops * 0, use_parsing=False)
    _, parsed = paste_back(photo, fs, fs.crops * 0, use_parsing=True)
    assert plain[0, 200, 280] == 1 and parsed[0, 200, 280] == 0  # right of the face centre: cut by the mask
    assert parsed[0, 200, 220] == 1


def test_parsing_mask_keeps_face_classes_blurred_with_a_zero_border(monkeypatch):
    from comfy_diffbfr.faces import parsing

    class HalfSkinHalfHair(torch.nn.Module):  # stands in for ParseNet: class 1 (skin) left, 17 (hair) right
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
            logits[:, 1, :, : x.shape[-1] // 2] = 1
            logits[:, 17, :, x.shape[-1] // 2 :] = 1
            return logits, x

    from comfy_diffbfr.host.model_cache import ModuleHandle

    monkeypatch.setattr(parsing, "_parsenet", lambda: ModuleHandle(HalfSkinHalfHair()))
    masks = parsing.parsing_masks(torch.rand(2, 3, 256, 256))
    assert masks.shape == (2, 1, 256, 256)
    assert masks[0, 0, 128, 40] > 0.99 and masks[0, 0, 128, 220] < 0.01  # skin kept, hair not
    assert 0.2 < masks[0, 0, 128, 128] < 0.8  # blurred across the class boundary
    assert masks[..., :4, :].max() == 0 and masks[..., :, :4].max() == 0  # zero along the border


def test_parsenet_weights_load_from_the_model_folder_and_bad_files_are_refused():
    from facexlib.parsing.parsenet import ParseNet

    from comfy_diffbfr.errors import CheckpointError
    from comfy_diffbfr.faces import weights
    from comfy_diffbfr.faces.parsing import _build, _parsenet, parsing_available

    assert not parsing_available()
    folder = weights.model_dirs(weights.KIND)[0]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    reference = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    path = folder / "parsing_parsenet.pth"
    torch.save({"module." + k: v for k, v in reference.state_dict().items()}, path)
    try:
        assert parsing_available()
        handle = _parsenet()
        assert handle.module is _parsenet().module  # loaded once, through the model cache
        for (name, p), q in zip(handle.module.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        path.write_bytes(b"not a state dict")
        with pytest.raises(CheckpointError, match="not a usable ParseNet"):
            _build(path)
    finally:
        path.unlink()


def test_a_grey_photo_gets_grey_faces():
    """Whatever colours the restored crops have, a greyscale photo (R = G = B, as grey files are
    read) stays grey; a colour photo keeps the crops' colours."""
    grey = _photo(channels=1).expand(-1, -1, 3).contiguous()
    fs = _face_set([grey], [(0, 200, 200, 0.4)])
    red = fs.crops.clone()
    red[..., 0] = 1.0
    out, mask = paste_back(grey[None], fs, red)
    inside = mask[0] > 0
    assert inside.any() and torch.equal(out[0][~inside], grey[~inside])
    assert (out[0, ..., 0] - out[0, ..., 2]).abs().max() == 0
    colour = _photo()
    fs = _face_set([colour], [(0, 200, 200, 0.4)])
    out, mask = paste_back(colour[None], fs, fs.crops * torch.tensor([1.0, 0.0, 0.0]))
    assert out[0, ..., 1][mask[0] > 0.99].max() < 0.01
