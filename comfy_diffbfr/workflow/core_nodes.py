"""The core ComfyUI nodes the shipped workflows use, re-implemented for the headless runner.

Written from the behaviour of ComfyUI's nodes (no ComfyUI code), so that on the CPU their outputs
equal ComfyUI's bit for bit: the same PIL/numpy conversions when loading and saving, and the same
resampling calls (``torch.nn.functional.interpolate`` without antialiasing; lanczos through an
8-bit PIL round trip).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from ..errors import ImageReadError, WorkflowError
from ..faces.image_io import reading
from ..files import write_atomic

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


@dataclass
class RunContext:
    """Folders of one headless run (ComfyUI's input, output and temp folders)."""

    output_dir: Path
    input_dirs: list[Path] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)  # SaveImage's files
    previews: list[Path] = field(default_factory=list)  # PreviewImage's files (in temp/)

    @property
    def temp_dir(self) -> Path:
        return self.output_dir / "temp"


def _frames(path: Path) -> Iterator[Image.Image]:
    """The frames of ``path``, EXIF-rotated. Unlike ComfyUI, which completes a truncated file with
    grey on a second try, the runner refuses it (``image_io.reading``): nobody is watching a
    headless run to notice the grey half."""
    with Image.open(path) as img:
        for frame in ImageSequence.Iterator(img):
            yield ImageOps.exif_transpose(frame), img.format


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE ``[F,H,W,3]`` and MASK ``[F,h,w]`` as ComfyUI's LoadImage makes them.

    Frames of another size than the first are skipped; the mask is ``1 - alpha``, or a 64x64 zero
    mask when the file has no transparency.
    """
    images, masks, fmt = [], [], None
    with reading(path):
        for frame, fmt in _frames(path):
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if images and rgb.size != (images[0].shape[2], images[0].shape[1]):
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask.unsqueeze(0))
    if len(images) > 1 and fmt != "MPO":
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)
    return images[0], masks[0]


def image_to_pil(image: torch.Tensor) -> Image.Image:
    """One IMAGE ``[H,W,C]`` to 8-bit PIL as ComfyUI's SaveImage does (scale, clip, truncate)."""
    return Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8))


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[B,C,H,W]`` resized with PIL's Lanczos through 8-bit images."""
    out = []
    for sample in samples:
        pil = image_to_pil(sample.movedim(0, -1)).resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize ``[B,C,H,W]``; ``crop="center"`` first cuts the input to the target aspect ratio."""
    if method not in UPSCALE_METHODS:
        raise WorkflowError(f"unknown upscale method {method!r}; choose one of {UPSCALE_METHODS}")
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        return lanczos(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def _resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """``common_upscale`` for an IMAGE ``[B,H,W,C]``."""
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def make_folder(folder: Path) -> None:
    """``mkdir -p`` that reports a folder it cannot make (a file in the way, no permission) clearly."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkflowError(f"cannot create the output folder {folder}: {exc.strerror or exc}; "
                            "choose an output folder you can write to") from None


class _CoreNode:
    """Core nodes get the run's folders when built (the pack's nodes take no arguments)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx


class LoadImage(_CoreNode):
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image": ("COMBO", {"image_upload": True, "options": None})}}

    def resolve(self, name: str) -> Path:
        name = re.sub(r" \[(input|output|temp)\]$", "", name)
        if Path(name).is_absolute():
            path = Path(name)
            if path.is_file():
                return path
        else:
            for folder in self.ctx.input_dirs:
                if (folder / name).is_file():
                    return folder / name
        searched = ", ".join(str(d) for d in self.ctx.input_dirs)
        raise ImageReadError(f"LoadImage: image {name!r} not found (searched {searched}); pass --input FILE")

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image_file(self.resolve(image))


class SaveImage(_CoreNode):
    CATEGORY = "image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    KIND = "output"
    COMPRESS_LEVEL = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def folder(self) -> Path:
        return self.ctx.output_dir

    def prefix(self, filename_prefix: str) -> str:
        return filename_prefix

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Optional[dict] = None) -> dict:
        prefix = self.prefix(filename_prefix)
        root = self.folder()
        subfolder = os.path.dirname(os.path.normpath(prefix))
        stem = os.path.basename(os.path.normpath(prefix))
        target = (root / subfolder).resolve()
        if not target.is_relative_to(root.resolve()):
            raise WorkflowError(f"SaveImage: filename_prefix {filename_prefix!r} points outside the output folder")
        make_folder(target)
        counter = _next_counter(target, stem)
        results = []
        for batch_number, image in enumerate(images):
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            for key, value in (extra_pnginfo or {}).items():
                metadata.add_text(key, json.dumps(value))
            base = stem.replace("%batch_num%", str(batch_number))
            pil = image_to_pil(image)
            # the next free counter when the file is put in place: a concurrent run (or an input
            # of this one) under the same name is never replaced
            path = write_atomic((target / f"{base}_{n:05}_.png" for n in count(counter)),
                                lambda fh: pil.save(fh, format="PNG", pnginfo=metadata, compress_level=self.COMPRESS_LEVEL),
                                replace=False)
            counter = int(path.name[len(base) + 1 : -5]) + 1
            (self.ctx.saved if self.KIND == "output" else self.ctx.previews).append(path)
            results.append({"filename": path.name, "subfolder": subfolder, "type": self.KIND})
        return {"ui": {"images": results}}


def _next_counter(folder: Path, stem: str) -> int:
    """One past the highest ``<stem>_<NNNNN>_`` counter in ``folder`` (ComfyUI's numbering)."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)_")
    counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return max(counters, default=0) + 1


class PreviewImage(SaveImage):
    KIND = "temp"
    COMPRESS_LEVEL = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def folder(self) -> Path:
        return self.ctx.temp_dir

    def prefix(self, filename_prefix: str) -> str:
        return "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))


class _Upscale(_CoreNode):
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"


class ImageScale(_Upscale):

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "image": ("IMAGE",), "upscale_method": (UPSCALE_METHODS,),
            "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "crop": (CROP_METHODS,),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        if width == 0:
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (_resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(_Upscale):

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "image": ("IMAGE",), "upscale_method": (UPSCALE_METHODS,),
            "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[torch.Tensor]:
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_resize_image(image, width, height, upscale_method, "disabled"),)


class ImageBatch(_CoreNode):
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    def batch(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        if image1.shape[1:] != image2.shape[1:]:
            image2 = _resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2), dim=0),)


CORE_NODES = {cls.__name__: cls for cls in (LoadImage, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageBatch)}
