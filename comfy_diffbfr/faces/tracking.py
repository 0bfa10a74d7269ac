"""The same face across the frames of a batch (a video): track ids by position, and steadier crops.

``assign_tracks`` numbers each person: frame by frame, a face continues the track whose last box
it overlaps most (IoU), or whose centre is near its own when a fast move leaves no overlap; the
rest start new tracks (numbered in order of appearance, left to right). A track survives a few
frames without a detection. With ``seed_mode="per_track"`` a stage gives face i the noise of
``seed + track``, the same in every frame.

``smooth_tracks`` averages each track's landmarks over the neighbouring frames (a centred window,
so a steady pan or zoom is followed exactly and only the detector's jitter is removed) and cuts the
crops again; Paste Back puts every crop back where its smoothed alignment says.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import InvalidParameterError
from .alignment import crop_face, similarity_to_template
from .face_set import FaceSet, ImageBatch, as_image_list

MIN_IOU = 0.2  # below this a box is not the same face ...
MAX_CENTRE_SHIFT = 0.5  # ... unless its centre moved less than this fraction of the face's size
MAX_GAP = 2  # frames a track may miss before a face in its place counts as someone new


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def _centre_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Distance of the box centres, in units of the smaller box's shorter side."""
    size = max(min(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]), 1e-6)
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / size)


def assign_tracks(face_set: FaceSet) -> FaceSet:
    """The face set with ``Face.track`` set for every face (see the module doc)."""
    tracks: list[tuple[int, np.ndarray, int]] = []  # (id, last box, last frame)
    faces = list(face_set.faces)
    for frame in range(len(face_set.image_sizes)):
        rows = face_set.indices_of(frame)
        live = [k for k, (_, _, last) in enumerate(tracks) if frame - last <= MAX_GAP + 1]
        pairs = []
        for r in rows:
            box = np.asarray(faces[r].box, dtype=np.float64)
            for k in live:
                iou, shift = box_iou(box, tracks[k][1]), _centre_shift(box, tracks[k][1])
                if iou >= MIN_IOU or shift <= MAX_CENTRE_SHIFT:
                    pairs.append((-iou, shift, r, k))
        taken_rows: set[int] = set()
        taken_tracks: set[int] = set()
        for _, _, r, k in sorted(pairs):  # best overlap first, then nearest
            if r in taken_rows or k in taken_tracks:
                continue
            taken_rows.add(r)
            taken_tracks.add(k)
            tracks[k] = (tracks[k][0], np.asarray(faces[r].box, dtype=np.float64), frame)
            faces[r] = replace(faces[r], track=tracks[k][0])
        for r in rows:  # left to right, as detect_faces numbers them
            if r not in taken_rows:
                tracks.append((len(tracks), np.asarray(faces[r].box, dtype=np.float64), frame))
                faces[r] = replace(faces[r], track=len(tracks) - 1)
    return replace(face_set, faces=faces)


def smooth_tracks(images: ImageBatch, face_set: FaceSet, radius: int) -> FaceSet:
    """Each tracked face's landmarks averaged over up to ``radius`` frames on each side (fewer near
    the ends of its track, the same number on both sides), and its crop cut again from ``images``."""
    if radius < 0:
        raise InvalidParameterError(f"the smoothing radius must be 0 or more frames, got {radius}")
    if radius == 0 or not face_set.faces:
        return face_set
    if any(f.track is None for f in face_set.faces):
        face_set = assign_tracks(face_set)
    batch = as_image_list(images)
    faces = list(face_set.faces)
    crops = face_set.crops.clone()
    for track in sorted({f.track for f in faces}):
        rows = sorted((r for r, f in enumerate(faces) if f.track == track), key=lambda r: faces[r].image_index)
        points = np.stack([np.asarray(faces[r].landmarks, dtype=np.float64) for r in rows])
        for j, r in enumerate(rows):
            k = min(radius, j, len(rows) - 1 - j)
            mean = points[j - k : j + k + 1].mean(axis=0)
            affine = similarity_to_template(mean, face_set.crop_size)
            move = (mean - points[j]).mean(axis=0)
            faces[r] = replace(faces[r], landmarks=mean, affine=affine, box=np.asarray(faces[r].box) + np.tile(move, 2))
            crops[r] = crop_face(batch[faces[r].image_index], affine, face_set.crop_size).to(crops.dtype)
    return replace(face_set, faces=faces, crops=crops)


def track_offsets(face_set: FaceSet) -> list[int]:
    """The seed offset of every face row for ``seed_mode="per_track"``: its track id."""
    if any(f.track is None for f in face_set.faces):
        face_set = assign_tracks(face_set)
    return [int(f.track) for f in face_set.faces]

