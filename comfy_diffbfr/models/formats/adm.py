"""openai/guided-diffusion, openai/improved-diffusion and DifFace UNet checkpoints (one key layout).

The structure is read from key names and shapes only (the dict may live on the meta device):
levels and res blocks per level from the output blocks (a level ends at the block that carries an
upsampler; with parameter-free resampling, from the gaps the pooling layers leave among the input
blocks), channel multipliers from the ResBlock widths, attention levels of each path from ``qkv``
keys (DifFace's down and up paths can differ, see :func:`difface_attention_levels`),
``resblock_updown`` from ResBlock upsamplers, scale-shift from the width of ``emb_layers``,
``label_emb`` for class conditioning. The image is taken to be RGB when the output has 3 or 6
channels, so a 6-channel output is eps + learned variance and a 6-channel input is x + ``low_res``
(SuperResModel).

What the weights cannot reveal comes from hints (the loader supplies them for recognised public
files): ``num_heads``, ``num_head_channels``, ``num_heads_upsample``, ``use_new_attention_order``,
``dropout``, ``norm_groups`` (32 in every reference) and ``variant``: ``"guided"``,
``"improved"`` (no head width, up/down ResBlocks or new attention order) or ``"difface"`` (up-path
attention built with one head, i.e. ``num_heads_upsample=1``; ``attention_resolutions`` in
absolute pixels). Without a variant (or ``num_heads_upsample``) hint it is ``"difface"`` when the
weights show a layout only DifFace builds (res-block counts that differ between levels, or attention
placed differently on the two paths) and ``"guided"`` otherwise. Without head hints the reference
constructor's own defaults apply: ``num_heads=1``, ``num_head_channels=-1``.

The other reference constructor arguments are accepted as hints and checked against the weights:
``image_size`` (also recorded as the native resolution), ``attention_resolutions`` (downsample
factors, or absolute sizes for DifFace), ``num_res_blocks``, ``channel_mult``, ``model_channels``,
``in_channels`` (SuperResModel's image channels or the whole input), ``out_channels``,
``num_classes``, ``use_scale_shift_norm``, ``resblock_updown``, ``conv_resample``, ``learn_sigma``;
``dims`` must be 2; ``use_checkpoint`` and ``use_fp16`` do not change the weights and are ignored.
Lists may also be given as the reference scripts' comma-separated strings ("16,8"); an empty
``channel_mult`` (the scripts' per-size default) is not checked.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Mapping

import torch
from torch import nn

from ...errors import CheckpointError, WrongModelKindError
from ...networks.adm_unet import DEFAULT_CONFIG, ADMUNet, adm_config
from .base import FormatSpec, StateDict, shape_problems

_REQUIRED_KEYS = ("time_embed.0.weight", "input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight", "out.2.weight")
_BLOCK_KEY = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)")
_VARIANTS = ("guided", "improved", "difface")


def _kind(suffixes: set[str]) -> str:
    """What a sub-module of a block is, from its key suffixes."""
    if any(s.startswith("in_layers.") for s in suffixes):
        return "res"
    if any(s.startswith("qkv.") for s in suffixes):
        return "attn"
    if any(s.startswith("conv.") for s in suffixes):
        return "upsample"
    if any(s.startswith("op.") for s in suffixes):
        return "downsample"
    return "unknown"


def _block_layout(state_dict: StateDict, which: str) -> dict[int, dict[int, str]]:
    """block index -> sub-module index -> kind (stem conv: "conv")."""
    subs: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for key in state_dict:
        m = _BLOCK_KEY.fullmatch(key)
        if m and m.group(1) == which:
            subs[int(m.group(2))][int(m.group(3))].add(m.group(4))
    layout = {i: {j: _kind(s) for j, s in sorted(sub.items())} for i, sub in sorted(subs.items())}
    if which == "input_blocks" and 0 in layout:
        layout[0] = {0: "conv"}
    return layout


def _shape(state_dict: StateDict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"ADM UNet checkpoint lacks '{key}': the file is incomplete or of another format")
    return tuple(state_dict[key].shape)


def _levels(state_dict: StateDict) -> tuple[list[list[int]], bool, bool]:
    """Output-block indices per level (level 0 first), resblock_updown, conv_resample."""
    out = _block_layout(state_dict, "output_blocks")
    if not out or sorted(out) != list(range(len(out))) or any(b.get(0) != "res" for b in out.values()):
        raise CheckpointError("ADM UNet checkpoint: output_blocks are missing or not ResBlock-led; the file is damaged")
    up_kinds = {kind for b in out.values() for j, kind in b.items() if j > 0 and kind in ("res", "upsample")}
    if len(up_kinds) > 1:
        raise CheckpointError("ADM UNet checkpoint mixes ResBlock and conv upsamplers; no known variant does that")
    groups: list[list[int]] = [[]]  # deepest level first
    for i in range(len(out)):
        groups[-1].append(i)
        if any(j > 0 and kind in ("res", "upsample") for j, kind in out[i].items()):
            groups.append([])
    if up_kinds:
        if not groups[-1]:
            raise CheckpointError("ADM UNet checkpoint: the last output block carries an upsampler; the file is damaged")
        return groups[::-1], up_kinds == {"res"}, True
    # No upsampler keys: one level, or parameter-free resampling (conv_resample=False), whose
    # average pools leave key-less input blocks between levels.
    present = _block_layout(state_dict, "input_blocks")
    last = max(present)
    gaps = [i for i in range(1, last + 1) if i not in present]
    bounds = [0, *gaps, last + 1]
    end, groups = len(out), []
    for res_blocks in (b - a - 1 for a, b in zip(bounds, bounds[1:])):  # level 0 first
        groups.append(list(range(end - res_blocks - 1, end)))
        end -= res_blocks + 1
    if end != 0:
        raise CheckpointError("ADM UNet checkpoint: input and output blocks disagree on the levels; the file is damaged")
    return groups, False, not gaps


def difface_attention_levels(image_size: int, levels: int, resolutions: list[int]) -> tuple[list[bool], list[bool]]:
    """Which levels of each path DifFace's ``UNetModel`` gives attention: ``ds`` starts at
    ``image_size`` and is floor-halved after every level but the last on the way down, then doubled
    at every upsampler on the way up; a level has attention where its ``ds`` is in ``resolutions``.
    For sizes whose halvings stay even (every public file) both paths agree."""
    down = [image_size]
    for _ in range(levels - 1):
        down.append(down[-1] // 2)
    up = [down[-1] * 2 ** (levels - 1 - level) for level in range(levels)]
    wanted = set(resolutions)
    return [ds in wanted for ds in down], [ds in wanted for ds in up]


def _level_attention(layout: dict[int, dict[int, str]], blocks: list[int], path: str, level: int) -> bool:
    flags = {"attn" in layout.get(i, {}).values() for i in blocks}
    if len(flags) != 1:
        raise CheckpointError(f"ADM UNet checkpoint: the {path} blocks of level {level} disagree on attention")
    return flags.pop()


def _detect(state_dict: StateDict) -> dict[str, Any]:
    """Everything the weights reveal, as config entries."""
    mc = _shape(state_dict, "time_embed.0.weight")[1]
    in_ch = _shape(state_dict, "input_blocks.0.0.weight")[1]
    out_ch = _shape(state_dict, "out.2.weight")[0]
    groups, updown, conv_resample = _levels(state_dict)
    out_layout = _block_layout(state_dict, "output_blocks")
    in_layout = _block_layout(state_dict, "input_blocks")
    channel_mult, nrb, attention, attention_up = [], [], [], []
    first = 1  # input block of the level's first ResBlock (after the stem)
    for level, blocks in enumerate(groups):
        if len(blocks) < 2:
            raise CheckpointError(f"ADM UNet checkpoint: level {level} has no ResBlock on the input side")
        widths = {_shape(state_dict, f"output_blocks.{i}.0.in_layers.2.weight")[0] for i in blocks}
        if len(widths) != 1:
            raise CheckpointError(f"ADM UNet checkpoint: the blocks of level {level} disagree in width")
        width = widths.pop()
        mult = width / mc
        channel_mult.append(int(mult) if mult.is_integer() else mult)
        nrb.append(len(blocks) - 1)
        attention_up.append(_level_attention(out_layout, blocks, "output", level))
        attention.append(_level_attention(in_layout, list(range(first, first + nrb[-1])), "input", level))
        first += nrb[-1] + 1  # the level's ResBlocks, then its downsampler
    emb_width = _shape(state_dict, "middle_block.0.emb_layers.1.weight")[0]
    mid_width = _shape(state_dict, "middle_block.0.out_layers.3.weight")[0]
    if out_ch in (3, 6):
        image_ch = 3  # RGB; 6 outputs = eps + learned variance
    elif out_ch == 2 * in_ch:
        image_ch = in_ch
    else:
        image_ch = out_ch
    label = "label_emb.weight"
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "model_channels": mc,
        "channel_mult": channel_mult,
        "num_res_blocks": nrb,
        "attention_levels": attention,
        "attention_levels_up": attention_up,
        "conv_resample": conv_resample,
        "num_classes": _shape(state_dict, label)[0] if label in state_dict else None,
        "use_scale_shift_norm": emb_width == 2 * mid_width,
        "resblock_updown": updown,
        "super_res": in_ch > image_ch,
        "learn_sigma": out_ch == 2 * image_ch,
    }


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError("expected an integer")
    return int(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("expected true or false")


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError("expected a number") from None


def _as_variant(value: Any) -> str:
    if value not in _VARIANTS:
        raise ValueError(f"expected one of {list(_VARIANTS)}")
    return value


def _as_list(value: Any, item: Any) -> list:
    """A list, a single value or the reference scripts' comma-separated string ("16,8")."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [item(v) for v in value]


_HINT_TYPES: dict[str, Any] = {
    **dict.fromkeys(("num_heads", "num_head_channels", "num_heads_upsample", "norm_groups", "image_size", "model_channels",
                     "in_channels", "out_channels", "dims"), _as_int),
    **dict.fromkeys(("use_new_attention_order", "use_scale_shift_norm", "resblock_updown", "conv_resample",
                     "learn_sigma", "use_checkpoint", "use_fp16"), _as_bool),
    "dropout": _as_float,
    "num_classes": lambda v: None if v is None else _as_int(v),
    "attention_resolutions": lambda v: _as_list(v, _as_int),
    "num_res_blocks": lambda v: _as_list(v, _as_int),
    "channel_mult": lambda v: _as_list(v, _as_float),
    "variant": _as_variant,
}


def _typed_hints(hints: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(hints) - set(_HINT_TYPES))
    if unknown:
        raise CheckpointError(f"unknown ADM hint(s) {unknown}; known hints: {sorted(_HINT_TYPES)}")
    typed = {}
    for name, value in hints.items():
        try:
            typed[name] = _HINT_TYPES[name](value)
        except ValueError as exc:
            raise CheckpointError(f"ADM hint {name}={value!r} is not valid: {exc}") from exc
    return typed


def _implied_variant(cfg: Mapping[str, Any]) -> str:
    """guided and improved-diffusion take one res-block count and mirror their attention; only
    DifFace builds anything else, and then its up-path head rule applies."""
    only_difface = len(set(cfg["num_res_blocks"])) > 1 or cfg["attention_levels"] != cfg["attention_levels_up"]
    return "difface" if only_difface else "guided"


def _apply_hints(cfg: dict[str, Any], raw_hints: Mapping[str, Any]) -> None:
    """Set what only hints can say; check the rest against the weights. Raises CheckpointError."""
    hints = _typed_hints(raw_hints)
    # An up-path head count given outright is the guided rule; otherwise the layout may say DifFace.
    variant = hints.get("variant") or ("guided" if "num_heads_upsample" in hints else _implied_variant(cfg))

    def contradiction(name: str, weights_say: Any) -> CheckpointError:
        return CheckpointError(
            f"ADM hint {name}={raw_hints[name]!r} contradicts the weights, which show {weights_say}; "
            f"drop the hint or pick the matching model"
        )

    for name in ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order", "dropout", "norm_groups"):
        if name in hints:
            cfg[name] = hints[name]
    if variant == "improved":
        for name, absent in (("num_head_channels", -1), ("use_new_attention_order", False)):
            if hints.get(name, absent) != absent:
                raise CheckpointError(f"ADM hint {name} does not exist in variant 'improved' (improved-diffusion)")
        if cfg["resblock_updown"]:
            raise CheckpointError("ADM hint variant='improved' contradicts the weights, which use ResBlock up/downsampling")
    if variant == "difface":
        if hints.get("num_heads_upsample", 1) != 1:
            raise CheckpointError("ADM hint num_heads_upsample does not exist in variant 'difface' (its up path uses 1 head)")
        cfg["num_heads_upsample"] = 1

    for name in ("model_channels", "out_channels", "num_classes", "use_scale_shift_norm", "learn_sigma"):
        if name in hints and hints[name] != cfg[name]:
            raise contradiction(name, cfg[name])
    multi_level = len(cfg["channel_mult"]) > 1
    if hints.get("resblock_updown", cfg["resblock_updown"]) != cfg["resblock_updown"]:
        if multi_level:
            raise contradiction("resblock_updown", cfg["resblock_updown"])
        cfg["resblock_updown"] = hints["resblock_updown"]  # one level: nothing to resample
    if hints.get("conv_resample", cfg["conv_resample"]) != cfg["conv_resample"]:
        if multi_level and not cfg["resblock_updown"]:
            raise contradiction("conv_resample", cfg["conv_resample"])
        cfg["conv_resample"] = hints["conv_resample"]  # the weights do not use it: keep what was asked
    if hints.get("dims", 2) != 2:
        raise CheckpointError(f"ADM hint dims={raw_hints['dims']!r}: only 2-D networks are supported")
    if "in_channels" in hints:
        image_ch = cfg["out_channels"] // 2 if cfg["learn_sigma"] else cfg["out_channels"]
        # SuperResModel takes the image channels and doubles them itself.
        allowed = {cfg["in_channels"]} | ({image_ch} if cfg["super_res"] else set())
        if hints["in_channels"] not in allowed:
            raise contradiction("in_channels", f"{cfg['in_channels']} input channels")
    if "num_res_blocks" in hints:
        nrb = hints["num_res_blocks"]
        if (nrb * len(cfg["num_res_blocks"]) if len(nrb) == 1 else nrb) != cfg["num_res_blocks"]:
            raise contradiction("num_res_blocks", cfg["num_res_blocks"])
    if hints.get("channel_mult") and hints["channel_mult"] != [float(m) for m in cfg["channel_mult"]]:
        raise contradiction("channel_mult", cfg["channel_mult"])  # empty: the scripts' per-size default
    if "image_size" in hints:
        cfg["image_size"] = hints["image_size"]
    if "attention_resolutions" in hints:
        levels, wanted = len(cfg["channel_mult"]), hints["attention_resolutions"]
        if variant == "difface":
            if cfg["image_size"] is None:
                raise CheckpointError("ADM hint attention_resolutions of variant 'difface' are absolute sizes: give image_size too")
            expected = difface_attention_levels(cfg["image_size"], levels, wanted)
        else:  # downsample factors 1, 2, 4, ... on both paths
            flags = [2**level in wanted for level in range(levels)]
            expected = (flags, flags)
        if expected != (cfg["attention_levels"], cfg["attention_levels_up"]):
            raise contradiction(
                "attention_resolutions",
                f"attention at levels {cfg['attention_levels']} (down) / {cfg['attention_levels_up']} (up)",
            )


def _check_shapes(net: nn.Module, state_dict: StateDict) -> None:
    """The inferred network must have exactly the checkpoint's keys and shapes."""
    problems = shape_problems(net, state_dict)
    if problems:
        raise CheckpointError(
            f"ADM UNet checkpoint does not fit the structure inferred from it ({len(problems)} problems, e.g. "
            f"{problems[:3]}); the file is damaged or a variant this loader does not know"
        )


class ADMSpec(FormatSpec):
    name = "adm"

    def matches(self, state_dict: StateDict) -> bool:
        return all(k in state_dict for k in _REQUIRED_KEYS)

    def infer_config(self, state_dict: StateDict, hints: Mapping[str, Any]) -> dict[str, Any]:
        cfg = {**DEFAULT_CONFIG, **_detect(state_dict)}
        _apply_hints(cfg, hints)
        cfg = self._validated(cfg)
        with torch.device("meta"):
            _check_shapes(ADMUNet.from_config(cfg), state_dict)
        return cfg

    @staticmethod
    def _validated(config: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return adm_config(**config)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"invalid ADM UNet config: {exc}") from exc

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return ADMUNet.from_config(self._validated(config))

    def prepare_state_dict(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        return dict(state_dict)  # the network uses the reference's names

    def call(self, net: nn.Module, x_t: torch.Tensor, t_net: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        cfg = net.config
        if cfg["num_classes"] is not None:
            raise WrongModelKindError(
                "this ADM model is class-conditional (ImageNet labels); face restoration stages cannot supply labels"
            )
        if cfg["super_res"] and cond is None:
            raise WrongModelKindError("this ADM model is a super-resolution model: it needs a condition image")
        if not cfg["super_res"] and cond is not None:
            raise WrongModelKindError("this ADM model is unconditional: it cannot take a condition image")
        return net(x_t, t_net, low_res=cond)

    def io(self, config: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self._validated(config)
        image_ch = cfg["out_channels"] // 2 if cfg["learn_sigma"] else cfg["out_channels"]
        return {
            "in_channels": cfg["in_channels"],
            "out_channels": cfg["out_channels"],
            "cond_channels": cfg["in_channels"] - image_ch if cfg["super_res"] else 0,
            "learned_sigma": cfg["learn_sigma"],
            "resolution": cfg["image_size"],
        }


SPEC = ADMSpec()
