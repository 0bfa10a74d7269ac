"""ADM UNet presets for the three trainable stages, from ``tiny`` (tests) to ``large`` (GPUs).

Each stage's input is the noisy image plus its conditions (3 channels each, concatenated after x as
the ADM SuperRes model does). Levels are chosen per working size so the lowest level is 8x8 (IRM 64)
or 16x16 (256 px stages): the middle block always attends over every pixel of the lowest level. The TEM presets carry no attention: the TEM is trained on patches and
run on whole faces, and attention over a patch is not attention over a face, while convolutions
and GroupNorm transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..networks.adm_unet import adm_config
from ..vocabulary import STAGE_NAMES

PRESETS = ("tiny", "small", "base", "large")


@dataclass(frozen=True)
class StageInfo:
    role: str
    size: int  # working size of the stage's images
    conditions: tuple[str, ...]
    default_prediction: str


STAGE_INFO = {
    "irm64": StageInfo("irm64", 64, ("lq",), "x0"),
    "irm256": StageInfo("irm256", 256, ("prev", "lq"), "x0"),
    "tem": StageInfo("tem", 256, (), "v"),
}

# preset -> stage -> (model_channels, channel_mult, num_res_blocks, attention level indices)
_SHAPES: dict[str, dict[str, tuple[int, list[float], int, list[int]]]] = {
    "tiny": {  # for tests: a few seconds per run on two CPU cores
        "irm64": (8, [1, 2], 1, [1]),
        "irm256": (8, [1, 1, 2, 2], 1, []),
        "tem": (8, [1, 1, 2, 2], 1, []),
    },
    "small": {
        "irm64": (64, [1, 2, 2, 3], 2, [2, 3]),
        "irm256": (32, [1, 2, 3, 4, 4], 2, [4]),
        "tem": (32, [1, 2, 3, 4], 2, []),
    },
    "base": {
        "irm64": (128, [1, 2, 3, 4], 2, [2, 3]),
        "irm256": (64, [1, 1, 2, 4, 4], 2, [3, 4]),
        "tem": (64, [1, 2, 4, 4], 2, []),
    },
    "large": {
        "irm64": (192, [1, 2, 3, 4], 3, [1, 2, 3]),
        "irm256": (128, [1, 1, 2, 2, 4], 2, [3, 4]),
        "tem": (128, [1, 1, 2, 2, 4], 2, []),
    },
}


def stage_config(stage: str, preset: str, prediction: str | None = None) -> dict[str, Any]:
    """The complete ADM UNet config of ``stage`` at ``preset`` (JSON-serialisable)."""
    if stage not in STAGE_INFO:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGE_NAMES}")
    if preset not in _SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    info = STAGE_INFO[stage]
    mc, mult, nrb, attn = _SHAPES[preset][stage]
    cond_channels = 3 * len(info.conditions)
    return adm_config(
        in_channels=3 + cond_channels,
        out_channels=3,
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=nrb,
        attention_levels=[level in attn for level in range(len(mult))],
        num_head_channels=32 if mc >= 32 else -1,
        norm_groups=32 if mc >= 32 else 8,
        use_scale_shift_norm=True,
        resblock_updown=preset in ("base", "large"),
        super_res=bool(cond_channels),
        image_size=info.size,
    )
