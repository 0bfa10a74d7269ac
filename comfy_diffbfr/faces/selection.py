"""Which of the detected faces of one photo to keep."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DiffBFRError

MODES = ("all", "largest", "center", "index")


@dataclass(frozen=True)
class Selection:
    """Faces are first filtered by ``score_threshold`` (the detector's own scale: a probability for
    RetinaFace, a margin for dlib; None = the detector's default) and ``min_size`` (shorter box side,
    in pixels of the photo), then numbered left to right (by box centre). ``mode`` keeps all of them,
    the largest, the one closest to the photo's centre, or those numbered in ``indices``;
    ``max_count`` finally keeps at most that many, largest first, in left-to-right order."""

    mode: str = "all"
    indices: tuple[int, ...] = ()
    min_size: float = 0.0
    score_threshold: float | None = None
    max_count: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DiffBFRError(f"unknown face selection {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode == "index" and not self.indices:
            raise DiffBFRError("face selection 'index' needs a list of face numbers (0 = leftmost face)")
        if self.max_count is not None and self.max_count < 1:
            raise DiffBFRError(f"max_count must be at least 1, got {self.max_count}")

    def numbered(self, boxes: np.ndarray, scores: np.ndarray) -> list[int]:
        """Indices (into ``boxes [N, 4]``) of the faces that pass the score and size filters, in
        left-to-right order: position k in this list is face number k."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sizes = _sizes(boxes)
        keep = [i for i in range(len(boxes)) if sizes[i] >= self.min_size
                and (self.score_threshold is None or scores[i] >= self.score_threshold)]
        keep.sort(key=lambda i: (boxes[i, 0] + boxes[i, 2], boxes[i, 1] + boxes[i, 3]))
        return keep

    def apply(self, boxes: np.ndarray, scores: np.ndarray, image_size: tuple[int, int]) -> list[int]:
        """Indices (into ``boxes [N, 4]``) of the kept faces, in left-to-right order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sizes = _sizes(boxes)
        keep = self.numbered(boxes, scores)
        if not keep:
            return []
        if self.mode == "largest":
            keep = [max(keep, key=lambda i: sizes[i])]
        elif self.mode == "center":
            h, w = image_size
            centre = np.array([w, h]) / 2.0
            keep = [min(keep, key=lambda i: np.hypot(*((boxes[i, :2] + boxes[i, 2:]) / 2.0 - centre)))]
        elif self.mode == "index":
            keep = [keep[k] for k in self.indices if -len(keep) <= k < len(keep)]
        if self.max_count is not None and len(keep) > self.max_count:
            largest = set(sorted(keep, key=lambda i: -sizes[i])[: self.max_count])
            keep = [i for i in keep if i in largest]
        return keep


def _sizes(boxes: np.ndarray) -> np.ndarray:
    """Shorter box side of each ``[N, 4]`` box."""
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def parse_indices(text: str, what: str = "indices") -> tuple[int, ...]:
    """Face numbers from text such as ``"0, 2"`` (0 = leftmost); raises ``DiffBFRError`` naming ``what``
    (the node input or the flag it came from) on anything else."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise DiffBFRError(f"{what} takes comma-separated face numbers such as 0,2; got {text!r}") from None
