"""SR3 checkpoints (Janspiry/Image-Super-Resolution-via-Iterative-Refinement ``I*_gen.pth``).

The spec sees the UNet's keys with ``denoise_fn.`` stripped and the schedule buffers split off.
Everything but the GroupNorm group count, the dropout rate and the image size is read from the
key names and shapes:

- ``inner_channel``, ``in_channel``: ``downs.0.weight`` [inner, in, 3, 3]; ``out_channel``:
  ``final_conv.block.3.weight``.
- Walking ``downs.1..``: res blocks (``downs.N.res_block``, width = ``block1.block.3`` output)
  until a Downsample (``downs.N.conv``) closes the level; ``channel_mults`` = widths / inner,
  ``res_blocks`` = blocks per level, ``attn_levels`` = levels whose blocks have ``attn.qkv``.

Hints (the config's own names, plus the reference's ``channel_multiplier``/``attn_res``):

- ``norm_groups``: not stored in the weights. Default: the largest of 32, 16, 8, ... that divides
  every GroupNorm's channel count; that is right for the 16->128 model (32) but NOT for the public
  64->512 model, which needs ``norm_groups=16`` (the loader supplies it when it recognises the file).
- ``image_size`` (informational) and ``attn_res`` (checked against the attention levels when
  ``image_size`` is given), ``dropout`` (training only).
- Any other config entry is checked against the weights.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...errors import CheckpointError, WrongModelKindError
from ...networks.layers import largest_dividing_group_count
from ...networks.sr3_unet import SR3UNet
from .base import FormatSpec, StateDict

_INFERRED = ("in_channel", "out_channel", "inner_channel", "channel_mults", "attn_levels", "res_blocks")
_ALIASES = {"channel_multiplier": "channel_mults"}
_REQUIRED_KEYS = ("noise_level_mlp.1.weight", "downs.0.weight", "final_conv.block.3.weight")


class SR3Format(FormatSpec):
    name = "sr3"

    def matches(self, state_dict: StateDict) -> bool:
        return all(k in state_dict for k in _REQUIRED_KEYS)

    def infer_config(self, state_dict: StateDict, hints: Mapping[str, Any]) -> dict[str, Any]:
        config = _config_from_weights(state_dict)
        hints = {_ALIASES.get(k, k): v for k, v in hints.items()}
        for key in hints:
            if key not in _INFERRED + ("norm_groups", "dropout", "image_size", "attn_res", "with_noise_level_emb"):
                raise CheckpointError(
                    f"unknown SR3 hint {key!r}; known: norm_groups, image_size, attn_res, dropout, {', '.join(_INFERRED)}"
                )
        for key in _INFERRED:
            if key in hints and _read(key, hints[key], _normalised) != config[key]:
                raise CheckpointError(
                    f"SR3 hint {key}={hints[key]!r} contradicts the weights, which give {key}={config[key]!r}; drop the hint"
                )
        if "with_noise_level_emb" in hints and not hints["with_noise_level_emb"]:
            raise CheckpointError("SR3 hint with_noise_level_emb=False contradicts the weights (they have noise_level_mlp)")

        norm_channels = sorted({int(v.shape[0]) for k, v in state_dict.items() if _is_group_norm_weight(k)})
        groups = _read("norm_groups", hints.get("norm_groups", largest_dividing_group_count(norm_channels)), int)
        bad = [c for c in norm_channels if groups <= 0 or c % groups]
        if bad:
            raise CheckpointError(
                f"SR3 hint norm_groups={groups} does not divide the GroupNorm channel counts {bad} of the weights; "
                "the public SR3 models use 32 (16->128) or 16 (64->512)"
            )
        config["norm_groups"] = groups
        config["dropout"] = _read("dropout", hints.get("dropout", 0.0), float)
        image_size = hints.get("image_size")
        config["image_size"] = None if image_size is None else _read("image_size", image_size, int)
        if "attn_res" in hints and config["image_size"] is not None:
            # The reference puts attention at level i when image_size // 2**i is in attn_res (an int is one size).
            attn_res = _read("attn_res", hints["attn_res"], lambda v: [int(v)] if isinstance(v, (int, float)) else _normalised(v))
            sizes = [config["image_size"] // 2**level for level in range(len(config["channel_mults"]))]
            if [i for i, size in enumerate(sizes) if size in attn_res] != config["attn_levels"]:
                raise CheckpointError(
                    f"SR3 hint attn_res={hints['attn_res']!r} contradicts the weights, which have attention at "
                    f"resolutions {[sizes[i] for i in config['attn_levels']]} for image_size {config['image_size']}"
                )
        return config

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return SR3UNet(**config)

    def prepare_state_dict(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        return dict(state_dict)

    def call(self, net: nn.Module, x_t: torch.Tensor, t_net: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """SR3 takes cat(condition, x_t) and the noise level gamma (``t_net``)."""
        if cond is not None:
            x_t = torch.cat([cond.to(x_t.dtype), x_t], dim=1)
        expected = net.downs[0].in_channels
        if x_t.shape[1] != expected:
            raise WrongModelKindError(
                f"this SR3 model takes {expected} input channels (condition + x_t) but got {x_t.shape[1]}: "
                "give it the condition image its stage expects"
            )
        return net(x_t, t_net)

    def io(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "in_channels": config["in_channel"],
            "out_channels": config["out_channel"],
            "cond_channels": config["in_channel"] - config["out_channel"],
            "learned_sigma": False,
            "resolution": config.get("image_size"),
        }


def _config_from_weights(sd: StateDict) -> dict[str, Any]:
    missing = [k for k in _REQUIRED_KEYS if k not in sd]
    if missing:
        raise CheckpointError(f"not an SR3 UNet state dict: keys {missing} are missing")
    inner, in_channel = (int(s) for s in sd["downs.0.weight"].shape[:2])
    levels: list[list[tuple[int, bool]]] = [[]]
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"downs\.(\d+)\.", k))} - {0})
    for n in indices:
        if f"downs.{n}.conv.weight" in sd:
            levels.append([])
        elif f"downs.{n}.res_block.block1.block.3.weight" in sd:
            width = int(sd[f"downs.{n}.res_block.block1.block.3.weight"].shape[0])
            levels[-1].append((width, f"downs.{n}.attn.qkv.weight" in sd))
        else:
            raise CheckpointError(f"SR3 state dict: downs.{n} is neither a res block nor a downsample")
    if any(not level for level in levels) or len({len(level) for level in levels}) != 1:
        raise CheckpointError(f"SR3 state dict: every level must hold the same number of res blocks, found {levels}")
    mults, attn_levels = [], []
    for index, level in enumerate(levels):
        widths, attns = {w for w, _ in level}, {a for _, a in level}
        if len(widths) != 1 or len(attns) != 1 or next(iter(widths)) % inner:
            raise CheckpointError(f"SR3 state dict: level {index} has blocks {level}, not one multiple of {inner} channels")
        mults.append(next(iter(widths)) // inner)
        if attns == {True}:
            attn_levels.append(index)
    return {
        "in_channel": in_channel,
        "out_channel": int(sd["final_conv.block.3.weight"].shape[0]),
        "inner_channel": inner,
        "channel_mults": mults,
        "attn_levels": attn_levels,
        "res_blocks": len(levels[0]),
    }


def _is_group_norm_weight(key: str) -> bool:
    return key.endswith((".block.0.weight", ".attn.norm.weight"))


def _normalised(value: Any) -> Any:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)


def _read(name: str, value: Any, read: Callable[[Any], Any]) -> Any:
    try:
        return read(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"SR3 hint {name}={value!r} is not valid: {exc}") from exc


SPEC = SR3Format()
