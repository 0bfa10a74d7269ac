"""The pack's ComfyUI node classes (a few lines each over the ``comfy_diffbfr`` library)."""

from .degrade_node import DiffBFRDegrade
from .face_nodes import DiffBFRFaceDetect, DiffBFRPasteBack
from .loader import DiffBFRModelLoader
from .restore_node import DiffBFRRestore
from .segs_nodes import DiffBFRFacesFromSEGS, DiffBFRFacesToSEGS
from .stage_nodes import DiffBFRIRM64, DiffBFRIRM256, DiffBFRTEM

# These ids are stored in saved workflows: never rename them.
NODE_CLASS_MAPPINGS = {
    "DiffBFRModelLoader": DiffBFRModelLoader,
    "DiffBFRFaceDetect": DiffBFRFaceDetect,
    "DiffBFRIRM64": DiffBFRIRM64,
    "DiffBFRIRM256": DiffBFRIRM256,
    "DiffBFRTEM": DiffBFRTEM,
    "DiffBFRPasteBack": DiffBFRPasteBack,
    "DiffBFRDegrade": DiffBFRDegrade,  # extra: test inputs
    "DiffBFRRestore": DiffBFRRestore,  # extra: the whole pipeline in one node
    "DiffBFRFacesFromSEGS": DiffBFRFacesFromSEGS,  # Impact Pack bridge
    "DiffBFRFacesToSEGS": DiffBFRFacesToSEGS,
}

# Display names carry the words users search for: the frontend of ComfyUI 0.3.x (1.27) searches only
# node ids and display names; newer ones also read each class's SEARCH_ALIASES.
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiffBFRModelLoader": "DiffBFR Model Loader",
    "DiffBFRFaceDetect": "DiffBFR Face Detect (align faces)",
    "DiffBFRIRM64": "DiffBFR IRM 64 (identity restoration)",
    "DiffBFRIRM256": "DiffBFR IRM 256 (identity restoration)",
    "DiffBFRTEM": "DiffBFR TEM (texture enhancement)",
    "DiffBFRPasteBack": "DiffBFR Paste Back (restored faces)",
    "DiffBFRDegrade": "DiffBFR Degrade (test input)",
    "DiffBFRRestore": "DiffBFR Blind Face Restoration (all in one)",
    "DiffBFRFacesFromSEGS": "DiffBFR Faces from SEGS (Impact Pack)",
    "DiffBFRFacesToSEGS": "DiffBFR Restored Faces to SEGS (Impact Pack)",
}
