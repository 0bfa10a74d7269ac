"""Video batches: faces matched across frames by position (track ids), seed_mode per_track (the same
noise for the same person in every frame), and landmark smoothing along a track."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_diffbfr import stages
from comfy_diffbfr.errors import DiffBFRError, InvalidParameterError
from comfy_diffbfr.faces import Face, FaceSet
from comfy_diffbfr.faces.alignment import crop_face, similarity_to_template, template_points
from comfy_diffbfr.faces.tracking import assign_tracks, smooth_tracks, track_offsets
from pack_helpers import EXAMPLE_PHOTO, load_pack, tiny_model


def _face(frame: int, cx: float, cy: float, size: float = 100.0) -> Face:
    points = (template_points(512) - 256) * (size / 200) + [cx, cy]
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    return Face(frame, similarity_to_template(points, 64), box, points, 1.0)


def _set(faces: list[Face], frames: int) -> FaceSet:
    return FaceSet(torch.zeros(len(faces), 64, 64, 3), faces, [(400, 600)] * frames, 64)


def test_faces_keep_their_track_across_frames_by_position():
    faces = [
        _face(0, 150, 200), _face(0, 400, 200),
        _face(1, 160, 202), _face(1, 395, 205),
        _face(2, 380, 210),  # the left person is missed in frame 2 ...
        _face(3, 178, 206), _face(3, 377, 212), _face(3, 560, 100, 60),  # ... and found again; someone new
        _face(7, 180, 206),  # after a gap longer than MAX_GAP: a new track
    ]
    tracked = assign_tracks(_set(faces, 8))
    assert [f.track for f in tracked.faces] == [0, 1, 0, 1, 1, 0, 1, 2, 3]
    assert track_offsets(tracked) == [0, 1, 0, 1, 1, 0, 1, 2, 3]
    assert all(f.track is None for f in faces)  # the input face set is not changed


def test_a_box_that_changes_size_little_overlap_still_continues_the_track_by_its_centre():
    # 100 px box, then a 40 px box about the same centre (IoU 0.16, below MIN_IOU)
    tracked = assign_tracks(_set([_face(0, 150, 200, 100), _face(1, 155, 200, 40)], 2))
    assert [f.track for f in tracked.faces] == [0, 0]
    far = assign_tracks(_set([_face(0, 150, 200, 60), _face(1, 260, 200, 60)], 2))
    assert [f.track for f in far.faces] == [0, 1]


def test_smoothing_removes_jitter_and_follows_a_steady_pan_exactly():
    rng = np.random.default_rng(0)
    photos = torch.rand(9, 400, 600, 3)
    steady = [_face(t, 150 + 3 * t, 200) for t in range(9)]
    jittery = [_face(t, 150 + 3 * t + rng.normal(0, 2), 200 + rng.normal(0, 2)) for t in range(9)]
    smoothed = smooth_tracks(photos, assign_tracks(_set(jittery, 9)), radius=3)
    truth = np.stack([f.landmarks for f in steady])
    before = np.abs(np.stack([f.landmarks for f in jittery]) - truth)[1:-1].mean()
    after = np.abs(np.stack([f.landmarks for f in smoothed.faces]) - truth)[1:-1].mean()
    assert after < 0.6 * before
    still = smooth_tracks(photos, assign_tracks(_set(steady, 9)), radius=3)
    np.testing.assert_allclose(np.stack([f.landmarks for f in still.faces]), truth, atol=1e-9)  # a pan is kept
    for face, crop in zip(smoothed.faces, smoothed.crops):  # crops are cut again at the smoothed alignment
        assert torch.allclose(crop, crop_face(photos[face.image_index], face.affine, 64))
    assert smooth_tracks(photos, _set(jittery, 9), radius=0).faces == jittery
    with pytest.raises(InvalidParameterError):
        smooth_tracks(photos, _set(jittery, 9), radius=-1)


def test_per_track_gives_a_person_the_same_noise_in_every_frame():
    noise = lambda gens: torch.stack([torch.randn(3, generator=g) for g in gens])  # noqa: E731
    per_track = noise(stages.generators(4, 10, "per_track", torch.device("cpu"), offsets=[0, 1, 0, 1]))
    assert torch.equal(per_track[0], per_track[2]) and torch.equal(per_track[1], per_track[3])
    assert not torch.equal(per_track[0], per_track[1])
    per_face = noise(stages.generators(4, 10, "per_face", torch.device("cpu")))
    assert torch.equal(per_face[0], per_track[0]) and not torch.equal(per_face[0], per_face[2])
    with pytest.raises(InvalidParameterError, match="connect the 'faces' output of DiffBFR Face Detect"):
        stages.generators(4, 10, "per_track", torch.device("cpu"))


def test_stage_nodes_with_per_track_restore_a_still_video_identically(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("dlib")
    from comfy_diffbfr.workflow.core_nodes import load_image_file

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))
    tiny_model(tmp_path / "diffbfr" / "i64.safetensors", "irm64", ["lq"], resolution=64)
    nodes = load_pack().NODE_CLASS_MAPPINGS
    (model,) = nodes["DiffBFRModelLoader"]().load("i64.safetensors", "auto")
    photo, _ = load_image_file(EXAMPLE_PHOTO)
    frames = photo.repeat(3, 1, 1, 1)  # a video that does not move
    faces, crops = nodes["DiffBFRFaceDetect"]().detect(frames, "dlib", "all", 64, False, landmark_smoothing=1)
    assert [f.track for f in faces.faces] == [0, 0, 0]
    settings = dict(strength=0.6, steps=2, sampler="ddim", eta=0.0, seed=3)
    (tracked,) = nodes["DiffBFRIRM64"]().run(model, crops, faces=faces, seed_mode="per_track", **settings)
    (per_face,) = nodes["DiffBFRIRM64"]().run(model, crops, faces=faces, seed_mode="per_face", **settings)
    assert torch.equal(tracked[0], tracked[1]) and torch.equal(tracked[0], tracked[2])  # no flicker at all
    assert not torch.equal(per_face[0], per_face[1])  # other noise in every frame


def test_per_track_without_the_face_set_is_refused_before_sampling(tmp_path, monkeypatch):
    import comfy_diffbfr.diffusion.samplers as samplers
    from comfy_diffbfr.workflow import run_workflow

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))
    tiny_model(tmp_path / "diffbfr" / "i64.safetensors", "irm64", ["lq"], resolution=64)
    monkeypatch.setattr(samplers, "truncated_sample", lambda *a, **k: pytest.fail("a stage sampled"))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": str(EXAMPLE_PHOTO)}},
        "2": {"class_type": "DiffBFRFaceDetect", "inputs": {"image": ["1", 0], "detector": "auto", "selection": "all",
                                                             "crop_size": 64, "aligned": True}},
        "3": {"class_type": "DiffBFRModelLoader", "inputs": {"model_name": "i64.safetensors", "precision": "auto"}},
        "4": {"class_type": "DiffBFRIRM64", "inputs": {"model": ["3", 0], "image": ["2", 1], "strength": 0.5, "steps": 1,
                                                        "sampler": "ddim", "eta": 0.0, "seed": 0, "seed_mode": "per_track"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "t"}},
    }
    with pytest.raises(DiffBFRError, match=r"IRM 64 \(node 4\): seed_mode 'per_track' needs the face set"):
        run_workflow(prompt, tmp_path / "out")
    prompt["4"]["inputs"]["faces"] = ["2", 0]
    monkeypatch.undo()
    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))
    assert run_workflow(prompt, tmp_path / "out").saved
