"""Reading and writing photos as IMAGE tensors ``[1, H, W, C]`` float32 in ``[0, 1]``.

Photos come as users have them: EXIF-rotated JPEGs, RGBA and palette PNGs, greyscale and 16-bit
files. Every one becomes RGB (C = 3) or RGB + alpha (C = 4); greyscale is repeated over RGB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile

from ..errors import ImageReadError, InvalidParameterError
from ..files import Writer, write_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
# The EXIF orientation tag as numpy operations that undo it (same table as PIL.ImageOps.exif_transpose).
_ORIENT_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}


def list_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given plus the image files inside given folders (sorted, not recursive); at least one."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageReadError(f"{path} does not exist: give image files or folders that contain them")
    if not paths:
        shown = ", ".join(map(str, inputs)) or "(none given)"
        raise ImageReadError(f"no image files in {shown} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return paths


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Decode ``path`` inside this block: whatever a bad file makes PIL or OpenCV raise becomes an
    ``ImageReadError`` naming the file. Truncated files are refused (never completed with grey),
    also when another package has switched PIL's ``LOAD_TRUNCATED_IMAGES`` on; photos of more than
    2 x ``Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs) are refused by PIL.

    Every reader of photos uses it: ``load_image`` and the headless runner's LoadImage."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    except FileNotFoundError:
        raise ImageReadError(f"{path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"cannot read {path} as an image ({exc}): so many pixels are refused as a possible "
                             "decompression bomb; scale the photo down first") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise ImageReadError(
            f"cannot read {path} as an image ({exc}); check that it is a complete PNG, JPEG, WebP, BMP or TIFF file"
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _is_16bit_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """The pixels as ``[H, W, C]`` uint8/uint16/float32 plus the EXIF orientation (1 = upright)."""
    with Image.open(path) as im:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        im.load()
        if im.mode in ("RGB", "RGBA") and _is_16bit_png(path):
            # Pillow reads 16-bit colour PNGs as 8-bit; OpenCV keeps all 16 bits.
            import cv2

            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is not None:
                order = [2, 1, 0, 3][: raw.shape[2]]
                return np.ascontiguousarray(raw[..., order]), orientation
        return pil_pixels(im), orientation


def pil_pixels(im: Image.Image) -> np.ndarray:
    """A PIL image's pixels as ``[H, W, C]`` (or ``[H, W]``) uint8/uint16, or float32 in [0, 1]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16)[..., None]
    if im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float32)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / peak, 0, 1)[..., None]
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if im.mode in ("L", "LA"):
        return np.asarray(im)
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


def to_float(arr: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` pixels (uint8, uint16 or float in [0, 1]) as float32 ``[H, W, 3 or 4]``."""
    if arr.ndim == 2:
        arr = arr[..., None]
    out = arr.astype(np.float32)
    if arr.dtype in (np.uint8, np.uint16):
        out /= 255.0 if arr.dtype == np.uint8 else 65535.0  # in place: no second float copy of a huge photo
    if out.shape[2] in (1, 2):  # grey (+ alpha): repeat the grey over RGB
        out = np.concatenate([np.repeat(out[..., :1], 3, axis=2), out[..., 1:]], axis=2)
    return out


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read a photo as ``[1, H, W, C]`` float32 in [0, 1]: EXIF orientation applied, alpha kept (C = 4)."""
    path = Path(path)
    with reading(path):
        arr, orientation = _decode(path)
    if orientation in _ORIENT_OPS:
        arr = _ORIENT_OPS[orientation](arr)
    return torch.from_numpy(np.ascontiguousarray(to_float(arr)))[None]


_BAND_ROWS = 256  # rows converted at a time, so a huge photo never gets a full-size float temporary


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[H, W, C]`` float in [0, 1] to uint8 with rounding (so ``k/255`` comes back as exactly ``k``)."""
    out = np.empty(tuple(image.shape), dtype=np.uint8)
    for y in range(0, image.shape[0], _BAND_ROWS):
        band = image[y : y + _BAND_ROWS] * 255.0
        out[y : y + _BAND_ROWS] = band.clamp_(0, 255).round_().to(torch.uint8).cpu().numpy()
    return out


def image_writer(image: torch.Tensor, suffix: str, *, bits: int = 8) -> Writer:
    """``write(fh)`` that encodes ``[1, H, W, C]`` or ``[H, W, C]`` (C = 3 or 4) in the format of
    ``suffix`` (".png", ".jpg", ...); PNG may be 16-bit (``bits=16``). Checked before anything is written."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InvalidParameterError(f"save_image writes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidParameterError(f"save_image expects [H, W, 3 or 4], got {tuple(image.shape)}")
    suffix = suffix.lower()
    if bits == 16:
        if suffix != ".png":
            raise InvalidParameterError(f"cannot write a 16-bit {suffix or 'file'}: use a .png file name")

        def write16(fh: BinaryIO) -> None:
            import cv2

            arr = (image.clamp(0, 1).double() * 65535.0).round_().cpu().numpy().astype(np.uint16)
            ok, data = cv2.imencode(".png", np.ascontiguousarray(arr[..., [2, 1, 0, 3][: arr.shape[2]]]))
            if not ok:
                raise InvalidParameterError("OpenCV could not encode the 16-bit PNG")
            fh.write(data.tobytes())

        return write16
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise InvalidParameterError(f"cannot write {suffix or 'files without an extension'}: use .png, .jpg, .webp, .bmp or .tif")
    options = {"compress_level": 3} if fmt == "PNG" else {}
    return lambda fh: Image.fromarray(to_uint8(image)).save(fh, format=fmt, **options)


def save_image(image: torch.Tensor, path: str | os.PathLike, *, bits: int = 8) -> Path:
    """Write ``[1, H, W, C]`` or ``[H, W, C]`` (C = 3 or 4) to ``path`` (replaced in one step:
    ``files.write_atomic``); PNG may be 16-bit (``bits=16``)."""
    path = Path(path)
    return write_atomic(path, image_writer(image, path.suffix, bits=bits))


__all__ = ["IMAGE_SUFFIXES", "image_writer", "list_images", "load_image", "pil_pixels", "reading", "save_image", "to_float", "to_uint8"]
