"""Face detection, FFHQ alignment and paste-back on IMAGE tensors ``[B, H, W, C]`` float32 in [0, 1].

``detect_faces`` turns photos into a ``FaceSet`` (aligned crops plus how to put each back);
``paste_back`` puts restored crops back into the photos.
"""

from .detect import detect_faces
from .detectors import DETECTORS
from .face_set import Face, FaceSet
from .image_io import list_images, load_image, save_image
from .paste import paste_back
from .selection import Selection

__all__ = ["DETECTORS", "Face", "FaceSet", "Selection", "detect_faces", "list_images", "load_image", "paste_back", "save_image"]
