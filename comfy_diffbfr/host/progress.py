"""Per-step progress with a preview of the current x0 estimate.

Inside ComfyUI: ``comfy.utils.ProgressBar`` with a JPEG preview (its hook also honours Cancel);
within ``overall(stages)`` (the pipeline: DiffBFR Restore) the stages share one bar that runs
from 0 to 100 % across all of them instead of restarting at each stage. Outside: an optional callback ``(step, total, preview IMAGE)``, else a tqdm bar when tqdm is
installed and ``COMFY_DIFFBFR_PROGRESS`` is not ``0``, else nothing. ``ByteProgress`` does the same
for a download, without previews.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Iterator, Optional

import torch

PreviewCallback = Callable[[int, int, torch.Tensor], None]
PREVIEW_MAX_SIZE = 512


def preview_image(x0: torch.Tensor) -> torch.Tensor:
    """The first face of an x0 estimate ``[B,3,H,W]`` in [-1,1] as an IMAGE ``[1,H,W,3]``."""
    return ((x0[:1].detach().float().cpu() + 1) / 2).clamp(0, 1).movedim(1, -1)


def _to_pil(image: torch.Tensor):
    import numpy as np
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


class OverallProgress:
    """One ComfyUI bar over ``stages`` stages: step s of n in stage k shows as (k + s / n) / stages."""

    RESOLUTION = 1000  # bar units per stage

    def __init__(self, stages: int, bar) -> None:
        self.stages, self.bar, self.stage = max(int(stages), 1), bar, -1

    def next_stage(self) -> None:
        self.stage = min(self.stage + 1, self.stages - 1)

    def update(self, step: int, total: int, preview) -> None:
        done = round((self.stage + step / max(total, 1)) * self.RESOLUTION)
        self.bar.update_absolute(done, self.stages * self.RESOLUTION, preview)


_OVERALL: contextvars.ContextVar[Optional[OverallProgress]] = contextvars.ContextVar("diffbfr_overall", default=None)


@contextlib.contextmanager
def overall(stages: int) -> Iterator[None]:
    """Inside ComfyUI, the stages run in this block share one progress bar; elsewhere nothing changes."""
    try:
        import comfy.utils  # ComfyUI's module; absent outside ComfyUI
    except ImportError:
        yield
        return
    token = _OVERALL.set(OverallProgress(stages, comfy.utils.ProgressBar(max(int(stages), 1) * OverallProgress.RESOLUTION)))
    try:
        yield
    finally:
        _OVERALL.reset(token)


class StageProgress:
    """Reports each sampling step of one stage."""

    def __init__(self, total: int, label: str, callback: Optional[PreviewCallback] = None) -> None:
        self.total = total
        self.callback = callback
        self._comfy_bar = None
        self._tqdm = None
        self._overall = _OVERALL.get() if callback is None else None
        if self._overall is not None:
            self._overall.next_stage()
        elif callback is None:
            try:
                import comfy.utils  # ComfyUI's module; absent outside ComfyUI

                self._comfy_bar = comfy.utils.ProgressBar(total)
            except ImportError:
                self._tqdm = _tqdm_bar(total, label)

    def update(self, step: int, total: int, x0: torch.Tensor) -> None:
        """After step ``step`` of ``total`` (the sampler's count, which may differ from the request)."""
        self.total = total
        if self.callback is not None:
            self.callback(step, self.total, preview_image(x0))
        elif self._overall is not None:
            self._overall.update(step, total, ("JPEG", _to_pil(preview_image(x0)), PREVIEW_MAX_SIZE))
        elif self._comfy_bar is not None:
            preview = ("JPEG", _to_pil(preview_image(x0)), PREVIEW_MAX_SIZE)
            self._comfy_bar.update_absolute(step, self.total, preview)
        elif self._tqdm is not None:
            self._tqdm.total = total
            self._tqdm.update(1)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


class ByteProgress:
    """Reports a download: on the running node's bar inside ComfyUI, and as a tqdm bar in bytes on
    the console (ComfyUI's too) when tqdm is installed."""

    def __init__(self, total: int, label: str) -> None:
        self.total = max(int(total), 1)
        self._tqdm = _tqdm_bar(self.total, label, unit="B", unit_scale=True, unit_divisor=1024)
        try:
            import comfy.utils  # ComfyUI's module; absent outside ComfyUI

            self._comfy_bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            self._comfy_bar = None
        self._done = 0

    def update(self, done: int) -> None:
        """``done`` bytes of ``total`` have arrived."""
        if self._comfy_bar is not None:
            self._comfy_bar.update_absolute(min(done, self.total), self.total)
        if self._tqdm is not None:
            self._tqdm.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def _tqdm_bar(total: int, label: str, **options):
    if os.environ.get("COMFY_DIFFBFR_PROGRESS", "1") == "0":
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, leave=False, **options)
