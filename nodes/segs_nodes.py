"""A bridge to Impact Pack's SEGS (without importing Impact Pack): its detectors and SEGS filters in
front of the DiffBFR stages, and the restored faces back as SEGS for SEGSPaste or detailer chains."""

from __future__ import annotations

import torch

from comfy_diffbfr.errors import NoFaceError
from comfy_diffbfr.faces.face_set import FaceSet

from .common import CATEGORY, FACES
from .face_nodes import color_correction_widget, color_strength_widget, detector_widget

SEGS = "SEGS"  # Impact Pack's socket type


class DiffBFRFacesFromSEGS:
    DESCRIPTION = (
        "Impact Pack SEGS -> DiffBFR faces: finds the face inside each segment's crop region (the landmarks a box "
        "alone lacks), aligns it like DiffBFR Face Detect and outputs the face set and the aligned crops for the "
        "DiffBFR stages and Paste Back. SEGS of one image apply to every frame of a batch."
    )
    SEARCH_ALIASES = ["segs", "impact pack", "segs to faces", "face restoration", "detailer"]
    CATEGORY = CATEGORY
    RETURN_TYPES = (FACES, "IMAGE")
    RETURN_NAMES = ("faces", "crops")
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) the SEGS were detected on (or a copy resized by one factor)."}),
                "segs": (SEGS, {"tooltip": "SEGS from an Impact Pack detector, e.g. a face bbox detector, after any SEGS filters."}),
                "detector": detector_widget(),
                "crop_size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                      "tooltip": "Size of the aligned face crops."}),
            },
        }

    def convert(self, image: torch.Tensor, segs: tuple, detector: str, crop_size: int) -> tuple[FaceSet, torch.Tensor]:
        from comfy_diffbfr.faces.segs import faces_from_segs

        face_set = faces_from_segs(image, segs, detector=detector, crop_size=crop_size)
        if len(face_set) == 0:
            why = "; ".join(face_set.notes.values()) or "the SEGS hold no segment"
            raise NoFaceError(
                f"DiffBFR Faces from SEGS: no face found in the segments ({why}). Check the SEGS detector and its "
                f"filters, or set 'detector' to another one than {detector!r}."
            )
        return (face_set, face_set.crops)


class DiffBFRFacesToSEGS:
    DESCRIPTION = (
        "Restored DiffBFR faces -> Impact Pack SEGS: one segment per face, over the region its paste covers, "
        "holding the restored face and the paste mask, for SEGSPaste or detailer chains."
    )
    SEARCH_ALIASES = ["segs", "impact pack", "faces to segs", "face restoration", "segs paste"]
    CATEGORY = CATEGORY
    RETURN_TYPES = (SEGS,)
    RETURN_NAMES = ("segs",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) the faces were found on (or a copy resized by one factor)."}),
                "faces": (FACES, {"tooltip": "The face set from DiffBFR Face Detect or DiffBFR Faces from SEGS."}),
                "restored": ("IMAGE", {"tooltip": "The restored crops of that face set (any size), e.g. from DiffBFR TEM."}),
                "color_correction": color_correction_widget(),
                "color_strength": color_strength_widget(),
            },
        }

    def convert(self, image: torch.Tensor, faces: FaceSet, restored: torch.Tensor, color_correction: str,
                color_strength: float) -> tuple[tuple]:
        from comfy_diffbfr.faces.segs import segs_from_faces

        return (segs_from_faces(image, faces, restored, color_correction=color_correction,
                                color_strength=color_strength),)
