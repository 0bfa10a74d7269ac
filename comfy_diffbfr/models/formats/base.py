"""What every checkpoint format module provides to the loader.

A format module (``sr3.py``, ``adm.py``, ``ddpm.py``) exposes one ``FormatSpec`` instance named
``SPEC``. The loader (``comfy_diffbfr.models.loader``) unwraps the file, asks each spec whether the
state dict is its own, and lets the matching spec infer the config, build the network and say how
to call it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


class FormatSpec(ABC):
    #: "sr3", "adm" or "ddpm"; also the architecture name stored in native files.
    name: str

    @abstractmethod
    def matches(self, state_dict: StateDict) -> bool:
        """True when the (unwrapped) keys are this format's."""

    @abstractmethod
    def infer_config(self, state_dict: StateDict, hints: Mapping[str, Any]) -> dict[str, Any]:
        """The full constructor config, from key names and shapes plus ``hints`` for what the
        weights cannot reveal (head counts, norm groups, ...). A hint that contradicts the weights
        raises ``CheckpointError``; an unknown hint name too."""

    @abstractmethod
    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """An uninitialised network of ``config`` (``load_state_dict(strict=True)`` must then fit)."""

    @abstractmethod
    def prepare_state_dict(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        """Keys renamed to the network's own (legacy diffusers attention names, ...)."""

    @abstractmethod
    def call(self, net: nn.Module, x_t: torch.Tensor, t_net: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """One forward pass. ``t_net`` is what the reference network receives (a real-valued
        timestep, or SR3's noise level gamma); ``cond`` is joined the way this format does it
        (SR3: before x_t; ADM super-resolution: ``low_res`` after x_t)."""

    @abstractmethod
    def io(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What the network can serve: ``in_channels``, ``out_channels``, ``cond_channels``
        (0 = unconditional), ``learned_sigma`` and ``resolution`` (native size or None)."""


def shape_problems(net: nn.Module, state_dict: StateDict) -> list[str]:
    """How ``state_dict`` differs from ``net``'s own keys and shapes (empty: it fits exactly).
    Works on meta-device networks and state dicts, so a mismatch is found before any allocation."""
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"{k} only in the file" for k in sorted(set(theirs) - set(own))]
    problems += [f"{k} missing from the file" for k in sorted(set(own) - set(theirs))]
    problems += [f"{k}: file {theirs[k]} vs network {own[k]}" for k in sorted(set(own) & set(theirs)) if own[k] != theirs[k]]
    return problems
