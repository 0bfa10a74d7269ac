"""The restoration pipeline: photos in, restored photos, paste masks and per-face records out.

    stages = load_stages(["irm64", "irm256", "tem"])        # the starter weights, STAGE_DEFAULTS
    results = restore_images(photos, stages)                 # detect -> stages -> paste back

1. ``detect_faces`` (``faces/detect.py``) finds and aligns the faces of every photo.
2. ``restore_crops`` runs the stages on the crops of all photos together (``stages.run_stage``,
   which batches them by memory): IRM 64 (``stages.IRM64``) on the crops, IRM 256 on its output
   with the crops as ``lq``, TEM on its output; every stage's low-band lock refers to the crops
   except TEM's, which keeps its own input, as ``workflows/diffbfr_full.json`` wires the nodes.
3. ``paste_back`` (``faces/paste.py``) puts the restored crops back with colour correction;
   photos keep their alpha channel and bit depth as read, and grey photos get grey faces.

``restore``, ``eval`` (``restore_crops`` on aligned faces), the all-in-one node and the benchmarks
call these functions; the stage nodes call the same ``stages.run_stage``, so the node chain and
``restore`` give the same result for the same settings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from . import stages as stage_fns
from .defaults import STAGE_DEFAULTS, StageSettings
from .errors import DiffBFRError, WeightsMissingError
from .faces import Selection, detect_faces, dlib_models, paste_back
from .faces.face_set import FaceSet, ImageBatch, as_image_list
from .host import folders
from .host.model_cache import ModelHandle, load_cached
from .host.progress import PreviewCallback, overall
from .vocabulary import STAGE_NAMES, ColorCorrection, Precision, StageName

#: The starter weights' file names in the ``diffbfr`` model folders (what ``train_starter.sh`` exports).
STARTER_WEIGHTS: dict[StageName, str] = {name: f"{name}.safetensors" for name in STAGE_NAMES}
SPECS: dict[StageName, stage_fns.StageSpec] = {"irm64": stage_fns.IRM64, "irm256": stage_fns.IRM256, "tem": stage_fns.TEM}
STAGE_CROP_SIZE = 512  # the Face Detect node's default: what the stages start from
ROUND_TRIP_CROP_SIZE = 1024  # without stages: large faces keep their detail through the round trip
IDENTITY_SIZE = 256  # crops are compared at this size (the identity model's and eval's)


@dataclass(frozen=True)
class Stage:
    """One diffusion stage to run: which, with what model, how."""

    name: StageName
    model: ModelHandle
    settings: StageSettings

    @property
    def spec(self) -> stage_fns.StageSpec:
        return SPECS[self.name]


@dataclass(frozen=True)
class DetectOptions:
    detector: str = "auto"
    selection: Selection = Selection()
    aligned: bool = False  # every photo already is an aligned face crop
    crop_size: Optional[int] = None  # None: STAGE_CROP_SIZE with stages, ROUND_TRIP_CROP_SIZE without


@dataclass(frozen=True)
class PasteOptions:
    color_correction: Optional[ColorCorrection] = None  # None: wavelet with stages (as the workflows), none without
    color_strength: float = 1.0  # 0 = the restored colours, 1 = fully corrected towards the photo's
    use_parsing: Optional[bool] = None  # None: the face-parsing mask when its weights are present


@dataclass
class FaceRecord:
    """One restored face: where it was found, and (when dlib is installed) the identity distance
    between its low-quality crop and its restored crop (dlib: same person below 0.6)."""

    image_index: int
    box: tuple[float, float, float, float]
    score: float
    detector: str
    identity_distance: Optional[float] = None

    def describe(self) -> str:
        box = ",".join(f"{v:.0f}" for v in self.box)
        line = f"[{box}] score {self.score:.2f} ({self.detector})"
        if self.identity_distance is not None:
            line += f", identity distance {self.identity_distance:.3f} (low-quality vs restored crop; same person < 0.6)"
        return line

    def to_json(self) -> dict[str, Any]:
        out = {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4), "detector": self.detector}
        if self.identity_distance is not None:
            out["identity_distance"] = round(self.identity_distance, 4)
        return out


@dataclass
class RestoredPhoto:
    image: torch.Tensor  # [1, H, W, C] as read: C = 3 or 4 (alpha kept)
    mask: torch.Tensor  # [1, H, W] paste weight; 0 = pixel bit-identical to the input
    faces: list[FaceRecord] = field(default_factory=list)
    note: str = ""  # why nothing was restored, if so


def parse_stage_names(text: str) -> list[StageName]:
    """``"irm64,tem"`` -> the stage names in pipeline order; ``"none"`` -> no stage."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["none"]:
        return []
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        raise DiffBFRError(f"unknown stage(s) {unknown or text!r}; use a comma list of {', '.join(STAGE_NAMES)}, or 'none'")
    return [s for s in STAGE_NAMES if s in names]


def resolve_stage_model(name: StageName, model: str | Path | None = None) -> Path:
    """The model file of a stage: ``model`` as a path, else as a name in the ``diffbfr`` model
    folders; default the starter weights."""
    if model is not None and Path(model).exists():
        return Path(model)
    wanted = str(model) if model is not None else STARTER_WEIGHTS[name]
    try:
        return folders.resolve_model("diffbfr", wanted)
    except DiffBFRError:
        dirs = ", ".join(str(d) for d in folders.model_dirs("diffbfr"))
        what = f"the {name} model {wanted!r} is" if model is not None else f"the {name} starter weights {wanted!r} are"
        raise WeightsMissingError(
            f"{what} not installed (looked in {dirs}). Put the file there, choose other stages with --stages, "
            "or run '--stages none' (detection and paste-back only)."
        ) from None


def load_stages(names: Sequence[StageName], *, settings: Mapping[str, StageSettings] | None = None,
                models: Mapping[str, str | Path] | None = None, precision: Precision = "auto") -> list[Stage]:
    """The stages ``names`` with their models (``models[name]``, default the starter weights)
    through the model cache, and their ``settings`` (default ``STAGE_DEFAULTS``)."""
    settings, models = settings or {}, models or {}
    plan = []
    for name in names:
        path = resolve_stage_model(name, models.get(name))
        handle = load_cached(path, path.name, precision=precision)
        plan.append(Stage(name, handle, settings.get(name, STAGE_DEFAULTS[name])))
    return plan


def restore_crops(crops: torch.Tensor, stages: Sequence[Stage], *, first_face: int = 0,
                  callback: Optional[PreviewCallback] = None) -> torch.Tensor:
    """The stages on aligned low-quality crops ``[N, S, S, 3]``, all faces together; returns the
    restored crops ``[N, s, s, 3]`` (s = the last stage's size). Row i is face ``first_face + i`` of
    the run and uses its stage's seed + that number."""
    x = crops
    with overall(len(stages)):  # in ComfyUI one bar across the stages
        for stage in stages:
            lq = crops if stage.spec.conditional else None  # TEM's lock keeps its own input
            x = stage_fns.run_stage(stage.spec, stage.model, x, lq=lq, first_face=first_face, callback=callback,
                                    **stage.settings.as_kwargs())
    return x


def restore_images(images: ImageBatch, stages: Sequence[Stage], *, detect: DetectOptions = DetectOptions(),
                   paste: PasteOptions = PasteOptions(), identity: Any = None,
                   callback: Optional[PreviewCallback] = None) -> list[RestoredPhoto]:
    """Restore every face of every photo (an IMAGE ``[B, H, W, C]`` or a list of ``[1, H, W, C]``):
    one ``RestoredPhoto`` per photo, in order. Photos without a face come back unchanged, with a
    note. ``identity`` (an ``IdentityModel``, see ``identity_model``) adds each face's identity
    distance to its record; it never changes the result."""
    photos = as_image_list(images)
    crop_size = detect.crop_size or (STAGE_CROP_SIZE if stages else ROUND_TRIP_CROP_SIZE)
    face_set = detect_faces(images, detector=detect.detector, selection=detect.selection, crop_size=crop_size,
                            aligned=detect.aligned)
    restored = restore_crops(face_set.crops, stages, callback=callback) if stages and len(face_set) else face_set.crops
    color_correction = paste.color_correction or ("wavelet" if stages else "none")
    pasted, masks = paste_back([p[None] for p in photos], face_set, restored, color_correction=color_correction,
                               color_strength=paste.color_strength, use_parsing=paste.use_parsing)
    records = face_records(face_set, restored, identity)
    return [
        RestoredPhoto(image, mask, [records[k] for k in face_set.indices_of(i)], face_set.notes.get(i, ""))
        for i, (image, mask) in enumerate(zip(pasted, masks))
    ]


def face_records(face_set: FaceSet, restored: torch.Tensor, identity: Any = None) -> list[FaceRecord]:
    """A record per face of ``face_set``, with the identity distance between its crop and its
    restored crop when ``identity`` is given."""
    distances: list[Optional[float]] = [None] * len(face_set)
    if identity is not None and len(face_set):
        distances = identity_distances(identity, face_set.crops, restored)
    return [FaceRecord(f.image_index, tuple(float(v) for v in f.box), float(f.score), face_set.detector, d)
            for f, d in zip(face_set.faces, distances)]


def format_report(results: Sequence[RestoredPhoto]) -> str:
    """Every photo's faces, one line each (the all-in-one node's ``report`` output)."""
    lines = []
    for i, result in enumerate(results):
        lines.append(f"image {i}: {len(result.faces)} face(s)" + (f"; {result.note}" if result.note else ""))
        lines += [f"  face {k}: {face.describe()}" for k, face in enumerate(result.faces)]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def identity_model() -> Any:
    """dlib's face descriptor model when dlib and its weights are installed, else None (shared)."""
    if not dlib_models.available():
        return None
    from .training.evaluate import IdentityModel

    return IdentityModel()


def identity_distances(identity: Any, crops: torch.Tensor, restored: torch.Tensor) -> list[float]:
    """Identity distance per face between ``crops`` and ``restored`` (IMAGE batches of any sizes),
    both at IDENTITY_SIZE, with the landmarks found on the restored face."""
    a, b = (_at_identity_size(t) for t in (crops, restored))
    return [identity.distance(x, y) for x, y in zip(a, b)]


def _at_identity_size(images: torch.Tensor) -> torch.Tensor:
    x = images[..., :3].movedim(-1, 1).float().cpu()
    if x.shape[-1] != IDENTITY_SIZE:
        x = F.interpolate(x, size=(IDENTITY_SIZE, IDENTITY_SIZE), mode="bicubic", align_corners=False,
                          antialias=x.shape[-1] > IDENTITY_SIZE).clamp(0, 1)
    return x.movedim(1, -1)
