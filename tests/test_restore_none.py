"""The `faces` and `restore --stages none` commands, and photos as users have them (on both paths:
no stage, and the diffusion stages with tiny random models)."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_diffbfr.cli import main
from comfy_diffbfr.defaults import STAGE_DEFAULTS
from comfy_diffbfr.errors import DiffBFRError
from comfy_diffbfr.faces import load_image
from comfy_diffbfr.pipeline import ROUND_TRIP_CROP_SIZE, DetectOptions, load_stages, parse_stage_names, restore_images
from comfy_diffbfr.vocabulary import STAGE_NAMES
from pack_helpers import stage_models

PORTRAIT = "facexlib_test.jpg"  # one face, 418x520


@pytest.fixture(scope="module")
def tiny_stages(tmp_path_factory):
    """The three stages with tiny random models, one step each."""
    paths = stage_models(tmp_path_factory.mktemp("tiny_models"))
    return load_stages(STAGE_NAMES, models=paths, settings={n: STAGE_DEFAULTS[n].updated(steps=1) for n in STAGE_NAMES})


@pytest.fixture(scope="module")
def portrait(faces_dir) -> np.ndarray:
    pytest.importorskip("dlib")
    return np.asarray(Image.open(faces_dir / "whole" / PORTRAIT).convert("RGB"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _restore(tmp_path, *files, extra=()) -> int:
    return main(["restore", *map(str, files), "-o", str(tmp_path / "out"), "--detector", "dlib", "--stages", "none", *extra])


def test_faces_json_lists_boxes_landmarks_scores_and_writes_crops(faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib")
    photos = [faces_dir / "whole" / "codeformer_01.jpg", faces_dir / "whole" / "fa_grass.jpg"]
    rc = main(["faces", *map(str, photos), "--detector", "dlib", "--json", "--out", str(tmp_path / "crops"), "--size", "128"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in report] == [str(p) for p in photos]
    assert len(report[0]["faces"]) == 4 and report[1]["faces"] == []
    for face in report[0]["faces"]:
        x0, y0, x1, y1 = face["box"]
        assert x0 < x1 and y0 < y1 and isinstance(face["score"], float)
        assert len(face["landmarks"]) == 5 and all(x0 - 5 <= x <= x1 + 5 for x, _ in face["landmarks"])
    assert [face["box"][0] for face in report[0]["faces"]] == sorted(face["box"][0] for face in report[0]["faces"])
    crops = sorted((tmp_path / "crops").iterdir())
    assert [c.name for c in crops] == [f"codeformer_01_{n}.png" for n in range(4)]
    assert Image.open(crops[0]).size == (128, 128)
    rc = main(["faces", str(photos[0]), "--detector", "dlib", "--json", "--select", "largest"])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)[0]["faces"]) == 1


def test_restore_none_round_trip_and_photo_without_face(faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib")
    photos = [faces_dir / "whole" / n for n in ("codeformer_02.png", "fa_grass.jpg")]  # RGBA group; no face
    assert _restore(tmp_path, *photos) == 0
    err = capsys.readouterr().err
    assert "fa_grass.jpg: no face found, written unchanged" in err
    for photo in photos:
        out = np.asarray(Image.open(tmp_path / "out" / f"{photo.stem}.png"))
        original = np.asarray(Image.open(photo))
        assert out.shape == original.shape
        if photo.name == "fa_grass.jpg":
            assert np.array_equal(out, original)
        else:
            assert _psnr(out, original) >= 35
            assert np.array_equal(out[..., 3], original[..., 3])  # alpha kept


def test_unreadable_files_are_reported_and_the_rest_is_done(faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = (faces_dir / "whole" / PORTRAIT).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 4])
    rc = _restore(tmp_path, tmp_path / "junk.jpg", tmp_path / "cut.jpg", faces_dir / "whole" / PORTRAIT)
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot read" in err and "junk.jpg" in err and "cut.jpg" in err
    assert (tmp_path / "out" / "facexlib_test.png").is_file()


def test_tiny_image_comes_back_unchanged(tmp_path, capsys):
    pytest.importorskip("dlib")
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "tiny.png")
    assert _restore(tmp_path, tmp_path / "tiny.png") == 0
    assert "no face found" in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "tiny.png")), arr)


@pytest.mark.parametrize("path", ["none", "stages"])
@pytest.mark.parametrize("kind", ["rgba", "grey", "16bit", "exif"])
def test_photo_formats_restore_with_their_face(kind, path, portrait, tmp_path, request):
    import cv2

    stages = request.getfixturevalue("tiny_stages") if path == "stages" else []
    file = tmp_path / f"{kind}.png"
    if kind == "rgba":
        alpha = np.tile(np.linspace(0, 255, portrait.shape[1]).astype(np.uint8), (portrait.shape[0], 1))
        Image.fromarray(np.dstack([portrait, alpha]), "RGBA").save(file)
    elif kind == "grey":
        Image.fromarray(portrait).convert("L").save(file)
    elif kind == "16bit":
        cv2.imwrite(str(file), portrait[..., ::-1].astype(np.uint16) * 257 + 3)  # values between the 8-bit levels
    else:  # stored on its side with EXIF orientation 8: only a reader that rotates it sees an upright face
        file = tmp_path / "exif.jpg"
        exif = Image.Exif()
        exif[0x0112] = 8
        Image.fromarray(np.rot90(portrait, -1).copy()).save(file, exif=exif.tobytes(), quality=95)
    original = load_image(file)
    (result,) = restore_images(original, stages, detect=DetectOptions(detector="dlib"))
    assert len(result.faces) == 1, kind
    out, inside = result.image, result.mask[0] > 0
    assert out.shape == original.shape
    assert torch.equal(out[0][~inside], original[0][~inside])  # 16 bits, alpha and all, outside the face
    if path == "none":
        assert _psnr((out[0] * 255).numpy(), (original[0] * 255).numpy()) >= 35
    else:  # the random models changed the face
        assert (out[0][inside] - original[0][inside]).abs().mean() > 0.01
    if kind == "rgba":
        assert torch.equal(out[..., 3], original[..., 3])
    if kind == "grey":  # no colour cast (float rounding and a trace of the crop's border at the photo edge aside)
        assert (out[..., 0] - out[..., 2]).abs().max() < 1e-3
    if kind == "16bit":
        assert not torch.equal(original, (original * 255).round() / 255)  # read with all 16 bits
    if kind == "exif":
        assert out.shape[1:3] == portrait.shape[:2]


@pytest.mark.slow
def test_huge_photo_keeps_memory_bounded(portrait, tmp_path):
    """8000x6000 with one face: the run's peak memory stays a small multiple of the photo itself
    (576 MB as float32), because detection runs on a 1280 px copy and paste-back only inside the face."""
    canvas = Image.new("RGB", (8000, 6000), (90, 110, 130))
    canvas.paste(Image.fromarray(portrait).resize((2090, 2600), Image.BICUBIC), (3000, 1500))
    canvas.save(tmp_path / "huge.jpg", quality=90)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, "-m", "comfy_diffbfr", "restore", str(tmp_path / "huge.jpg"), "-o", str(tmp_path / "out"), "--detector", "dlib",
         "--stages", "none"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 face(s)" in proc.stdout
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\n8000x6000 restore --stages none: peak RSS {peak_gb:.2f} GB")
    assert before / 2**20 < 3.0 and peak_gb < 3.0
    assert Image.open(tmp_path / "out" / "huge.png").size == (8000, 6000)


def test_unknown_stage_names_are_refused():
    assert parse_stage_names("tem, irm64") == ["irm64", "tem"] and parse_stage_names("none") == []
    with pytest.raises(DiffBFRError, match="unknown stage\\(s\\) \\['irm65'\\]"):
        parse_stage_names("irm64,irm65")


def test_no_stage_pastes_the_crops_of_every_photo_back():
    photo = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8), size=64, mode="bilinear").movedim(1, -1)
    results = restore_images(photo, [], detect=DetectOptions(aligned=True))
    assert [len(r.faces) for r in results] == [1, 1] and results[1].faces[0].image_index == 1
    assert results[0].faces[0].detector == "aligned" and results[0].faces[0].identity_distance is None
    assert ROUND_TRIP_CROP_SIZE == 1024
    centre = results[1].image[0, 32, 32]
    assert torch.allclose(centre, photo[1, 32, 32], atol=0.03)
