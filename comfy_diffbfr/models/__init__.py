"""Loading and saving diffusion models: ``load_model`` reads every supported checkpoint family
(SR3, guided/improved diffusion, DifFace, ermongroup/ddim, diffusers UNet2DModel, our own files);
``save_model`` writes our own format. See docs/ARCHITECTURE.md, "load_model"."""

from .loader import LoadedModel, ModelInfo, describe, load_model
from .native import save_model

__all__ = ["LoadedModel", "ModelInfo", "describe", "load_model", "save_model"]
