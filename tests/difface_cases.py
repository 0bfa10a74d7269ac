"""The compact DifFace parity fixtures in ``tests/fixtures/difface/`` (see its README).

A case stores the reference network's state-dict signature (key -> shape, in order), a seed, the
reference constructor kwargs and the reference output; weights and inputs are regenerated from the
seed with NumPy's legacy ``RandomState``, whose streams are frozen across NumPy versions and
platforms. ``make.py`` (beside the fixtures) and the tests use these same functions, so the
tensors a test rebuilds are bit-identical to the ones the reference network saw.
"""

from __future__ import annotations

import gzip
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "difface"
CASES_FILE = FIXTURES / "cases.json.gz"
OUTPUTS_FILE = FIXTURES / "outputs.safetensors"
#: the two timesteps of every case: one of the reference's integer steps and a fractional one
TIMESTEPS = (7.0, 613.5)


def _normal(rs: np.random.RandomState, shape: list[int], std: float, mean: float = 0.0) -> torch.Tensor:
    return torch.from_numpy((mean + std * rs.standard_normal(shape)).astype(np.float32))


def seeded_state_dict(signature: list[tuple[str, list[int]]], seed: int) -> "OrderedDict[str, torch.Tensor]":
    """Weights for every key, drawn in signature order (the shared parity fixtures' convention):
    weight matrices N(0, 0.81 / fan_in), norm weights 1 + 0.1 N, biases 0.05 N. The layers the
    reference zero-initialises are therefore non-zero and exercised."""
    rs = np.random.RandomState(seed)
    tensors: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape in signature:
        if key.endswith("bias"):
            tensors[key] = _normal(rs, shape, 0.05)
        elif len(shape) == 1:
            tensors[key] = _normal(rs, shape, 0.1, mean=1.0)
        else:
            fan_in = int(np.prod(shape[1:]))
            tensors[key] = _normal(rs, shape, (0.81 / fan_in) ** 0.5)
    return tensors


def seeded_inputs(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``x`` [2, C, S, S], ``timesteps`` [2] and, for class-conditional cases, labels ``y``."""
    rs = np.random.RandomState(case["seed"] + 1)
    size = case["input_size"]
    inputs = {
        "x": _normal(rs, [2, case["kwargs"]["in_channels"], size, size], 1.0),
        "timesteps": torch.tensor(TIMESTEPS, dtype=torch.float32),
    }
    if case["kwargs"].get("num_classes"):
        inputs["y"] = torch.from_numpy(rs.randint(0, case["kwargs"]["num_classes"], size=2).astype(np.int64))
    return inputs


def load_cases() -> list[dict[str, Any]]:
    with gzip.open(CASES_FILE, "rt", encoding="utf-8") as f:
        return json.load(f)


def save_cases(cases: list[dict[str, Any]]) -> None:
    """Write atomically; ``mtime=0`` keeps the gzip bytes reproducible."""
    tmp = CASES_FILE.with_name(CASES_FILE.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(cases, separators=(",", ":")).encode("utf-8"))
    tmp.replace(CASES_FILE)
