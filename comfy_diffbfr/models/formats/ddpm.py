"""The original DDPM network in its two public layouts: ermongroup/ddim ``Model`` (SDEdit/DDNM
``celeba_hq.ckpt``) and diffusers ``UNet2DModel`` (``google/ddpm-celebahq-256``).

``prepare_state_dict`` renames diffusers keys (current ``to_q/to_k/to_v/to_out.0`` and legacy
``query/key/value/proj_attn`` attention names alike) onto the network's ermongroup names and turns
the attention's Linear weights into the equivalent 1x1 convs. ``config["layout"]`` records which
layout the file had (``"ermongroup"`` or ``"diffusers"``).

Read from key names and shapes: ``in_channels``/``base_channels`` (``conv_in``), ``out_channels``,
``block_out_channels`` and ``layers_per_block`` (the res blocks of each level), ``down_attention``/
``up_attention``/``mid_attention`` (where attention blocks are), ``time_embedding_dim``,
``resnet_time_scale_shift`` (``temb_proj`` gives 2 x width for ``scale_shift``) and
``resample_with_conv``.

Not in the weights, so hints or the DDPM-TF defaults (what ermongroup hard-codes and
ddpm-celebahq's config.json says): ``freq_shift`` 1, ``flip_sin_to_cos`` False, ``norm_eps`` 1e-6,
``downsample_padding`` 0 (asymmetric), ``attention_head_dim`` None (one head),
``mid_block_scale_factor`` 1, ``center_input_sample`` False, ``norm_num_groups`` 32 (or, when 32
does not divide every GroupNorm width, the largest of 16, 8, ... that does), ``attn_norm_num_groups``
None, ``dropout`` 0, ``sample_size`` None.

Hint names are the config's own plus every diffusers ``UNet2DModel`` config.json entry
(``down_block_types``, ``add_attention``, ``act_fn``, ``time_embedding_type`` ...); entries that
describe what the weights show are checked against them, unsupported values are refused.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...errors import CheckpointError, WrongModelKindError
from ...networks.ddpm_unet import DDPMUNet
from ...networks.layers import largest_dividing_group_count
from .base import FormatSpec, StateDict

_ERMONGROUP_KEYS = ("temb.dense.0.weight", "conv_in.weight", "down.0.block.0.conv1.weight", "norm_out.weight")
_DIFFUSERS_KEYS = ("time_embedding.linear_1.weight", "conv_in.weight", "down_blocks.0.resnets.0.conv1.weight",
                   "conv_norm_out.weight")

#: Config entries that follow from the weights; a hint for one of them must agree.
_INFERRED = ("in_channels", "out_channels", "base_channels", "block_out_channels", "layers_per_block",
             "down_attention", "up_attention", "mid_attention", "time_embedding_dim", "resnet_time_scale_shift",
             "resample_with_conv")


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value in (True, False, 0, 1):
        return bool(value)
    raise ValueError("expected true or false")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _padding(value: Any) -> int:
    if int(value) not in (0, 1):
        raise ValueError("0 (pad right/bottom, the DDPM-TF convention) or 1 (symmetric) expected")
    return int(value)


def _square_size(size: Any) -> int | None:
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(set(size)) == 1 else None
    return _optional_int(size)


#: Config entries the weights do not determine: DDPM-TF default and how a hint value is read.
#: ``norm_num_groups=None`` stands for "derived from the widths" (see the module docstring).
_FREE: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "freq_shift": (1.0, float), "flip_sin_to_cos": (False, _flag), "norm_eps": (1e-6, float),
    "downsample_padding": (0, _padding), "attention_head_dim": (None, _optional_int),
    "mid_block_scale_factor": (1.0, float), "center_input_sample": (False, _flag),
    "norm_num_groups": (None, _optional_int), "attn_norm_num_groups": (None, _optional_int),
    "dropout": (0.0, float), "sample_size": (None, _square_size),
}
#: diffusers config.json entries that only state what this network always is.
_FIXED: dict[str, tuple[Any, ...]] = {
    "time_embedding_type": ("positional",), "act_fn": ("silu", "swish"), "mid_block_type": ("UNetMidBlock2D",),
    "downsample_type": ("conv",), "upsample_type": ("conv",), "class_embed_type": (None,),
    "num_class_embeds": (None,),
}
#: diffusers config.json entries with no effect on this network (a learned-embedding table size).
_IGNORED = ("num_train_timesteps",)

_RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2",
                 "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
                    "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}


class DDPMFormat(FormatSpec):
    name = "ddpm"

    def matches(self, state_dict: StateDict) -> bool:
        if all(k in state_dict for k in _ERMONGROUP_KEYS):
            return True
        if not all(k in state_dict for k in _DIFFUSERS_KEYS):
            return False
        try:  # a diffusers UNet of another family (cross-attention, ...) has keys this one lacks
            _from_diffusers(state_dict)
        except CheckpointError:
            return False
        return True

    def infer_config(self, state_dict: StateDict, hints: Mapping[str, Any]) -> dict[str, Any]:
        if not self.matches(state_dict):
            raise CheckpointError("not an ermongroup/ddim Model or diffusers UNet2DModel (DDPM) state dict")
        layout = "diffusers" if "time_embedding.linear_1.weight" in state_dict else "ermongroup"
        sd = self.prepare_state_dict(state_dict)
        config = {"layout": layout, **_structure_from_weights(sd)}
        hints = dict(hints)
        _apply_diffusers_only_hints(hints, config)

        for key, value in hints.items():
            if key in _INFERRED:
                if _comparable(key, value, config) != config[key]:
                    raise CheckpointError(
                        f"hint {key}={value!r} contradicts the weights, which give {key}={config[key]!r}; drop the hint"
                    )
            elif key not in _FREE:
                raise CheckpointError(
                    f"unknown hint {key!r} for a DDPM/diffusers UNet2DModel checkpoint; known: "
                    f"{', '.join(sorted((*_INFERRED, *_FREE, *_FIXED, *_IGNORED)))}"
                )
        for key, (default, read) in _FREE.items():
            try:
                config[key] = read(hints[key]) if key in hints else default
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"hint {key}={hints[key]!r} is not valid: {exc}") from exc

        norm_widths = [int(v.shape[0]) for k, v in sd.items() if _is_group_norm_weight(k) and not k.startswith("mid.attn_1.")]
        if config["norm_num_groups"] is None:
            config["norm_num_groups"] = largest_dividing_group_count(norm_widths)
        _check_divides("norm_num_groups", config["norm_num_groups"], norm_widths)
        _settle_mid_attention_norm(sd, config, "attn_norm_num_groups" in hints)
        attention_widths = [int(v.shape[0]) for k, v in sd.items() if k.endswith(".q.weight")]
        if config["attention_head_dim"] is not None:
            _check_divides("attention_head_dim", config["attention_head_dim"], attention_widths)
        return config

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return DDPMUNet(**{k: v for k, v in config.items() if k != "layout"})

    def prepare_state_dict(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        if "time_embedding.linear_1.weight" in state_dict:
            return _from_diffusers(state_dict)
        return dict(state_dict)

    def call(self, net: nn.Module, x_t: torch.Tensor, t_net: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``net(x_t, t)``. No public checkpoint of this family is conditional; a conditional one of
        ours (in_channels > out_channels) takes the condition after x_t, as ADM's super-resolution model."""
        if cond is not None:
            x_t = torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
        expected = net.conv_in.in_channels
        if x_t.shape[1] != expected:
            raise WrongModelKindError(
                f"this DDPM model takes {expected} input channels but got {x_t.shape[1]}"
                + (" (x_t + condition)" if cond is not None else ": it needs a condition image")
            )
        return net(x_t, t_net)

    def io(self, config: Mapping[str, Any]) -> dict[str, Any]:
        cond = max(config["in_channels"] - config["out_channels"], 0)
        return {
            "in_channels": config["in_channels"],
            "out_channels": config["out_channels"],
            "cond_channels": cond,
            "learned_sigma": config["out_channels"] == 2 * (config["in_channels"] - cond),
            "resolution": config.get("sample_size"),
        }


def _from_diffusers(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DModel keys -> the network's (ermongroup) keys; attention Linears -> 1x1 convs."""
    levels = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"down_blocks\.(\d+)\.", k))), default=-1)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = _rename_diffusers_key(key, levels)
        if new is None:
            raise CheckpointError(f"key {key!r} is not part of a DDPM-family diffusers UNet2DModel")
        if re.search(r"\.(q|k|v|proj_out)\.weight$", new) and tensor.dim() == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[new] = tensor
    return out


def _rename_diffusers_key(key: str, levels: int) -> str | None:
    simple = {"conv_in": "conv_in", "time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1",
              "conv_norm_out": "norm_out", "conv_out": "conv_out"}
    module, _, param = key.rpartition(".")
    if module in simple:
        return f"{simple[module]}.{param}"
    patterns: list[tuple[str, Callable[[re.Match], str | None]]] = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: _sub(f"down.{m[1]}.block.{m[2]}", _RESNET_NAMES, m[3])),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m: _sub(f"down.{m[1]}.attn.{m[2]}", _ATTENTION_NAMES, m[3])),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda m: f"down.{m[1]}.downsample.conv"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda m: _sub(f"up.{levels - 1 - int(m[1])}.block.{m[2]}", _RESNET_NAMES, m[3])),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda m: _sub(f"up.{levels - 1 - int(m[1])}.attn.{m[2]}", _ATTENTION_NAMES, m[3])),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.conv"),
        (r"mid_block\.resnets\.([01])\.(.+)", lambda m: _sub(f"mid.block_{int(m[1]) + 1}", _RESNET_NAMES, m[2])),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: _sub("mid.attn_1", _ATTENTION_NAMES, m[1])),
    ]
    for pattern, rename in patterns:
        if m := re.fullmatch(pattern, module):
            new = rename(m)
            return None if new is None else f"{new}.{param}"
    return None


def _sub(prefix: str, names: Mapping[str, str], rest: str) -> str | None:
    return f"{prefix}.{names[rest]}" if rest in names else None


def _structure_from_weights(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    try:
        return _read_structure(sd)
    except KeyError as exc:
        raise CheckpointError(f"DDPM state dict: key {exc} is missing (a damaged or unsupported layout)") from None


def _read_structure(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def count(pattern: str) -> int:
        return len({m.group(1) for k in sd if (m := re.match(pattern, k))})

    base, in_channels = (int(s) for s in sd["conv_in.weight"].shape[:2])
    levels, up_levels = count(r"down\.(\d+)\."), count(r"up\.(\d+)\.")
    if levels == 0 or up_levels != levels:
        raise CheckpointError(f"DDPM state dict: {levels} down levels but {up_levels} up levels")
    widths, down_attention, up_attention, blocks_per_level = [], [], [], set()
    for level in range(levels):
        blocks = count(rf"down\.{level}\.block\.(\d+)\.")
        level_widths = {int(sd[f"down.{level}.block.{b}.conv1.weight"].shape[0]) for b in range(blocks)}
        if len(level_widths) != 1:
            raise CheckpointError(f"DDPM state dict: down level {level} mixes widths {sorted(level_widths)}")
        widths.append(level_widths.pop())
        blocks_per_level.add(blocks)
        down_attention.append(_attention_flag(count(rf"down\.{level}\.attn\.(\d+)\."), blocks, f"down level {level}"))
        up_blocks = count(rf"up\.{level}\.block\.(\d+)\.")
        if up_blocks != blocks + 1:
            raise CheckpointError(f"DDPM state dict: up level {level} has {up_blocks} res blocks, expected {blocks + 1}")
        up_attention.append(_attention_flag(count(rf"up\.{level}\.attn\.(\d+)\."), up_blocks, f"up level {level}"))
    if len(blocks_per_level) != 1:
        raise CheckpointError(f"DDPM state dict: levels have different res block counts {sorted(blocks_per_level)}")
    temb_out = int(sd["down.0.block.0.temb_proj.weight"].shape[0])
    return {
        "in_channels": in_channels,
        "out_channels": int(sd["conv_out.weight"].shape[0]),
        "base_channels": base,
        "block_out_channels": widths,
        "layers_per_block": blocks_per_level.pop(),
        "down_attention": down_attention,
        "up_attention": up_attention,
        "mid_attention": "mid.attn_1.q.weight" in sd,
        "time_embedding_dim": int(sd["temb.dense.0.weight"].shape[0]),
        "resnet_time_scale_shift": "scale_shift" if temb_out == 2 * widths[0] else "default",
        # A one-level network has no resampler to tell; its setting is then irrelevant.
        "resample_with_conv": levels == 1 or "down.0.downsample.conv.weight" in sd,
    }


def _attention_flag(attentions: int, blocks: int, where: str) -> bool:
    if attentions not in (0, blocks):
        raise CheckpointError(f"DDPM state dict: {where} has {attentions} attention blocks for {blocks} res blocks")
    return attentions > 0


def _apply_diffusers_only_hints(hints: dict[str, Any], config: Mapping[str, Any]) -> None:
    """Check and remove the config.json entries that are not config entries of ours; map the
    block type lists and ``add_attention`` onto the attention flags."""
    for key, allowed in _FIXED.items():
        if key in hints and hints.pop(key) not in allowed:
            raise CheckpointError(f"hint {key}: this DDPM-family network supports only {list(allowed)}")
    for key in _IGNORED:
        hints.pop(key, None)
    if "add_attention" in hints:
        hints["mid_attention"] = bool(hints.pop("add_attention"))
    for key, direction, plain, attn in (("down_block_types", "down", "DownBlock2D", "AttnDownBlock2D"),
                                        ("up_block_types", "up", "UpBlock2D", "AttnUpBlock2D")):
        if key not in hints:
            continue
        types = list(hints.pop(key))
        unsupported = sorted({t for t in types if t not in (plain, attn)})
        if unsupported or len(types) != len(config["block_out_channels"]):
            raise CheckpointError(
                f"hint {key}={types!r}: expected {len(config['block_out_channels'])} entries of {plain} or {attn}"
            )
        flags = [t == attn for t in types]
        # diffusers lists up blocks from the lowest resolution up; levels count from the top.
        hints[f"{direction}_attention"] = flags if direction == "down" else flags[::-1]
    if hints.get("time_embedding_dim", 0) is None:
        hints["time_embedding_dim"] = 4 * config["base_channels"]


def _comparable(key: str, value: Any, config: Mapping[str, Any]) -> Any:
    """``value`` read as the type of ``config[key]`` (JSON hints may bring 1 for 1.0, lists for tuples)."""
    current = config[key]
    try:
        if isinstance(current, bool):
            return _flag(value)
        if isinstance(current, list):
            items = list(value)
            return [type(c)(v) for c, v in zip(current, items)] if len(items) == len(current) else items
        return type(current)(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"hint {key}={value!r} is not valid: {exc}") from exc


def _settle_mid_attention_norm(sd: Mapping[str, torch.Tensor], config: dict[str, Any], hinted: bool) -> None:
    """diffusers' mid attention has a GroupNorm unless scale-shift is on and attn_norm_num_groups is None."""
    if not config["mid_attention"]:
        return
    has_norm = "mid.attn_1.norm.weight" in sd
    scale_shift = config["resnet_time_scale_shift"] == "scale_shift"
    if has_norm and scale_shift and config["attn_norm_num_groups"] is None:
        if hinted:
            raise CheckpointError("hint attn_norm_num_groups=None contradicts the weights: the mid attention has a GroupNorm")
        config["attn_norm_num_groups"] = config["norm_num_groups"]
    elif not has_norm and (not scale_shift or config["attn_norm_num_groups"] is not None):
        raise CheckpointError(
            "the weights' mid attention has no GroupNorm, which only a scale-shift network with "
            "attn_norm_num_groups=None has; check hints resnet_time_scale_shift / attn_norm_num_groups"
        )
    if has_norm:
        groups = config["attn_norm_num_groups"] or config["norm_num_groups"]
        _check_divides("attn_norm_num_groups" if config["attn_norm_num_groups"] else "norm_num_groups", groups,
                       [int(sd["mid.attn_1.norm.weight"].shape[0])])


def _check_divides(name: str, value: Any, widths: list[int]) -> None:
    bad = sorted({w for w in widths if int(value) <= 0 or w % int(value)})
    if bad:
        raise CheckpointError(f"hint {name}={value!r} does not divide the channel counts {bad} of the weights")


def _is_group_norm_weight(key: str) -> bool:
    return key.endswith((".norm1.weight", ".norm2.weight", ".norm.weight")) or key == "norm_out.weight"


SPEC = DDPMFormat()
