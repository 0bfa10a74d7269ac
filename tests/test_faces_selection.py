"""Face selection: all, largest, closest to centre, by index; minimum size, score, maximum count."""

from __future__ import annotations

import numpy as np
import pytest

from comfy_diffbfr.errors import DiffBFRError
from comfy_diffbfr.faces import Selection

# three faces, given out of left-to-right order: (x0, y0, x1, y1)
BOXES = np.array([[300, 100, 340, 140], [10, 10, 110, 110], [180, 180, 240, 240]], dtype=float)
SCORES = np.array([0.95, 0.5, 0.99])
SIZE = (400, 400)


@pytest.mark.parametrize(
    "selection, expected",
    [
        (Selection(), [1, 2, 0]),  # left to right
        (Selection(mode="largest"), [1]),
        (Selection(mode="center"), [2]),
        (Selection(mode="index", indices=(0, 2)), [1, 0]),
        (Selection(mode="index", indices=(5,)), []),  # a number this photo does not have
        (Selection(min_size=50), [1, 2]),
        (Selection(score_threshold=0.9), [2, 0]),
        (Selection(max_count=2), [1, 2]),  # the two largest, still left to right
        (Selection(mode="largest", score_threshold=0.9), [2]),
    ],
)
def test_selection(selection, expected):
    assert selection.apply(BOXES, SCORES, SIZE) == expected


def test_no_faces_selects_nothing():
    assert Selection(mode="largest").apply(np.zeros((0, 4)), np.zeros(0), SIZE) == []


def test_bad_selections_are_refused():
    with pytest.raises(DiffBFRError, match="unknown face selection"):
        Selection(mode="biggest")
    with pytest.raises(DiffBFRError, match="face numbers"):
        Selection(mode="index")
    with pytest.raises(DiffBFRError, match="max_count"):
        Selection(max_count=0)
