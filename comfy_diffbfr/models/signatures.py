"""Recognising the public checkpoints by a compact fingerprint of their key layout.

The weights do not say how many attention heads a network has, which noise schedule it was trained
with, or which image size it is for. For the public checkpoints we know those facts, so we
recognise the files by ``(num_keys, num_params, sha256 of the sorted "key shape" lines)`` of the
unwrapped state dict and apply the facts with no user hint. The table lives in
``public_checkpoints.json`` beside this module; download facts (URL, licence) are in the pack's
``weights/manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

DATA_FILE = Path(__file__).with_name("public_checkpoints.json")


@dataclass(frozen=True)
class Fingerprint:
    num_keys: int
    num_params: int
    sha256: str

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> "Fingerprint":
        """Works on meta tensors too: only names and shapes are read."""
        lines = sorted(f"{key} {tuple(t.shape)}" for key, t in state_dict.items())
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return cls(len(state_dict), sum(t.numel() for t in state_dict.values()), digest[:16])


@dataclass(frozen=True)
class PublicCheckpoint:
    names: tuple[str, ...]  # several when different releases share one layout (DPS and P2)
    format: str
    description: str
    #: Spec hints for what the weights cannot reveal (head counts, norm groups, variant ...).
    hints: Mapping[str, Any]
    #: num_timesteps, noise_schedule (+ beta_start/beta_end), rescale_timesteps, prediction.
    diffusion: Mapping[str, Any]
    resolution: int
    role: str | None
    conditions: tuple[str, ...]
    fingerprints: tuple[Fingerprint, ...]

    @property
    def name(self) -> str:
        return " or ".join(self.names)


@lru_cache(maxsize=1)
def public_checkpoints() -> tuple[PublicCheckpoint, ...]:
    entries = json.loads(DATA_FILE.read_text(encoding="utf-8"))["checkpoints"]
    return tuple(
        PublicCheckpoint(
            names=tuple(e["names"]),
            format=e["format"],
            description=e["description"],
            hints=e["hints"],
            diffusion=e["diffusion"],
            resolution=e["resolution"],
            role=e["role"],
            conditions=tuple(e["conditions"]),
            fingerprints=tuple(Fingerprint(**f) for f in e["fingerprints"]),
        )
        for e in entries
    )


def recognise(state_dict: Mapping[str, torch.Tensor]) -> PublicCheckpoint | None:
    """The public checkpoint whose layout this unwrapped state dict has, or None."""
    found = Fingerprint.of(state_dict)
    return next((c for c in public_checkpoints() if found in c.fingerprints), None)
