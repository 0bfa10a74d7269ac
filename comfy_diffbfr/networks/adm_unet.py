"""The ADM UNet (Dhariwal & Nichol 2021, arXiv 2105.05233) as used by openai/guided-diffusion,
openai/improved-diffusion and DifFace, written for this project.

Module and parameter names equal the reference's, so their state dicts load with ``strict=True``.
One class covers the reference ``UNetModel`` and ``SuperResModel`` and DifFace's variant:

- ``num_res_blocks`` per level (DifFace) or one int for all levels;
- attention placement as one boolean per level (``attention_levels``, and ``attention_levels_up``
  for the up path): the references' ``image_size`` / ``attention_resolutions`` conventions
  (downsample factors in guided/improved, absolute sizes in DifFace) are resolved when the config is
  inferred (``models/formats/adm.py``). The two paths differ only in DifFace when an odd feature size
  is halved (its down path floors ``ds //= 2``, its up path doubles the deepest ``ds``);
- DifFace builds its up-path attention with one head but ``num_head_channels``: that is
  ``num_heads_upsample=1`` here;
- super-resolution (``super_res``): ``low_res`` is bilinearly resized to x's size and concatenated
  *after* x; ``in_channels`` then counts both.

Build from a plain JSON-serialisable dict with :func:`adm_config` / :meth:`ADMUNet.from_config`;
``net.config`` gives that dict back.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from einops import rearrange
import torch.nn.functional as F
from torch import nn

from .layers import sinusoidal_embedding, spatial_attention

#: Every config key with its default. ``in_channels`` counts the network's whole input (x plus the
#: concatenated ``low_res`` for super-resolution); ``channel_mult`` entries may be fractional
#: (guided's 512 preset uses 0.5); ``num_res_blocks`` and ``attention_levels`` have one entry per
#: level; a head count of -1 means "not used" as in the reference (``num_head_channels=-1``: use
#: ``num_heads``; ``num_heads_upsample=-1``: same as ``num_heads``); ``learn_sigma`` says the output
#: holds eps and the variance values (2x the image channels); ``attention_levels=None`` means
#: attention only in the middle block; ``attention_levels_up=None`` means the up path mirrors
#: ``attention_levels`` (every reference layout except DifFace's odd sizes); ``image_size`` is the native
#: resolution if known (informational: the network is fully convolutional).
DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "model_channels": 128,
    "channel_mult": [1, 1, 2, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_levels": None,
    "attention_levels_up": None,
    "dropout": 0.0,
    "conv_resample": True,
    "num_classes": None,
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "norm_groups": 32,
    "super_res": False,
    "learn_sigma": False,
    "image_size": None,
}


def adm_config(**overrides: Any) -> dict[str, Any]:
    """A complete, validated, JSON-serialisable config: ``DEFAULT_CONFIG`` updated with ``overrides``.

    ``num_res_blocks`` may be given as one int. Raises ``ValueError`` naming a bad key or value.
    """
    unknown = sorted(set(overrides) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown ADM UNet config key(s) {unknown}; known keys: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **overrides}
    levels = len(cfg["channel_mult"])
    if levels < 1:
        raise ValueError("channel_mult must have at least one level")
    cfg["channel_mult"] = [int(m) if float(m).is_integer() else float(m) for m in cfg["channel_mult"]]
    nrb = cfg["num_res_blocks"]
    cfg["num_res_blocks"] = [int(nrb)] * levels if isinstance(nrb, int) else [int(n) for n in nrb]
    att = cfg["attention_levels"]
    cfg["attention_levels"] = [False] * levels if att is None else list(att)
    up = cfg["attention_levels_up"]
    cfg["attention_levels_up"] = list(cfg["attention_levels"]) if up is None else list(up)
    for key in ("attention_levels", "attention_levels_up"):
        if not all(isinstance(a, bool) for a in cfg[key]):
            raise ValueError(f"{key} must be one boolean per level, got {cfg[key]}")
    for key in ("num_res_blocks", "attention_levels", "attention_levels_up"):
        if len(cfg[key]) != levels:
            raise ValueError(f"{key} has {len(cfg[key])} entries but channel_mult has {levels} levels")
    if min(cfg["num_res_blocks"]) < 1:
        raise ValueError(f"num_res_blocks must be >= 1 per level, got {cfg['num_res_blocks']}")
    image_channels = cfg["out_channels"] // 2 if cfg["learn_sigma"] else cfg["out_channels"]
    if cfg["learn_sigma"] and cfg["out_channels"] % 2:
        raise ValueError(f"learn_sigma needs an even out_channels, got {cfg['out_channels']}")
    if cfg["super_res"] and cfg["in_channels"] <= image_channels:
        raise ValueError(
            f"a super-resolution net needs in_channels > the {image_channels} image channels, got {cfg['in_channels']}"
        )
    level_ch = _level_channels(cfg)
    if cfg["norm_groups"] < 1:
        raise ValueError(f"norm_groups must be at least 1, got {cfg['norm_groups']}")
    if any(ch % cfg["norm_groups"] for ch in level_ch):
        raise ValueError(f"level widths {level_ch} must all be multiples of norm_groups={cfg['norm_groups']}")
    nhc = cfg["num_head_channels"]
    # Attention runs at the flagged levels of each path and in the middle block.
    down = [c for c, a in zip(level_ch, cfg["attention_levels"]) if a]
    up = [c for c, a in zip(level_ch, cfg["attention_levels_up"]) if a]
    uses = [(c, False) for c in [*down, level_ch[-1]]] + [(c, True) for c in up]
    for ch, upsample in uses:
        heads = _heads(cfg, ch, upsample=upsample)
        if heads < 1 or ch % heads or (nhc != -1 and ch % nhc):
            raise ValueError(f"{ch} attention channels cannot be split into {heads} heads (num_head_channels {nhc})")
    return cfg


def _level_channels(cfg: Mapping[str, Any]) -> list[int]:
    return [int(m * cfg["model_channels"]) for m in cfg["channel_mult"]]


def _heads(cfg: Mapping[str, Any], channels: int, *, upsample: bool) -> int:
    """The reference's rule: a fixed width per head wins over a head count."""
    if cfg["num_head_channels"] != -1:
        return channels // cfg["num_head_channels"]
    if upsample and cfg["num_heads_upsample"] != -1:
        return cfg["num_heads_upsample"]
    return cfg["num_heads"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input dtype, as the reference does; this
    keeps half-precision and autocast runs stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 conv (``op``) or, without ``use_conv``, 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest), then an optional 3x3 ``conv``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class ResBlock(nn.Module):
    """Residual block with timestep conditioning: added bias, or FiLM scale/shift after the second
    norm (``use_scale_shift_norm``); optionally resamples both paths (``up`` / ``down``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        dropout: float,
        groups: int,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        # Parameter-free resampling applied between the first norm and conv, to h and skip alike.
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            h = self.in_layers[2](self.resample(self.in_layers[1](self.in_layers[0](x))))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, residual.

    ``qkv`` is one 1x1 conv producing 3C channels. The legacy order (every public checkpoint) packs
    them per head as [q_h, k_h, v_h]; the new order packs [q, k, v], each head-major. Both are
    regrouped into head-major q, k, v for ``spatial_attention`` (scale = head_dim ** -0.5, the
    same as the reference's split scale on q and k).
    """

    def __init__(self, channels: int, heads: int, *, groups: int, new_order: bool) -> None:
        super().__init__()
        self.heads = heads
        self.new_order = new_order
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        # new order: [q | k | v], each head-major; legacy order: per head [q_h | k_h | v_h]
        layout = "b (qkv heads d) n -> qkv b (heads d) n" if self.new_order else "b (heads qkv d) n -> qkv b (heads d) n"
        q, k, v = rearrange(qkv, layout, qkv=3, heads=self.heads)
        h = self.proj_out(spatial_attention(q, k, v, self.heads))
        return (x + h).reshape(b, c, *spatial)


class ADMUNet(nn.Module):
    """guided-diffusion / improved-diffusion / DifFace UNet; keyword arguments are the config keys
    (see ``DEFAULT_CONFIG``). ``forward(x, timesteps, low_res=None, y=None)`` as the reference's
    ``UNetModel`` / ``SuperResModel``; timesteps may be real-valued."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg = adm_config(**config)
        self.config = cfg
        mc, groups = cfg["model_channels"], cfg["norm_groups"]
        emb_ch = 4 * mc
        level_ch = _level_channels(cfg)

        def res(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_ch,
                ch_out,
                dropout=cfg["dropout"],
                groups=groups,
                use_scale_shift_norm=cfg["use_scale_shift_norm"],
                **updown,
            )

        def attn(ch: int, *, upsample: bool = False) -> AttentionBlock:
            heads = _heads(cfg, ch, upsample=upsample)
            return AttentionBlock(ch, heads, groups=groups, new_order=cfg["use_new_attention_order"])

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if cfg["num_classes"] is not None:
            self.label_emb = nn.Embedding(cfg["num_classes"], emb_ch)

        ch = level_ch[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg["in_channels"], ch, 3, padding=1))])
        skip_ch = [ch]
        last = len(level_ch) - 1
        for level, out_ch in enumerate(level_ch):
            for _ in range(cfg["num_res_blocks"][level]):
                layers: list[nn.Module] = [res(ch, out_ch)]
                ch = out_ch
                if cfg["attention_levels"][level]:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_ch.append(ch)
            if level != last:
                down = res(ch, ch, down=True) if cfg["resblock_updown"] else Downsample(ch, cfg["conv_resample"])
                self.input_blocks.append(EmbedSequential(down))
                skip_ch.append(ch)

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(level_ch))):
            out_ch = level_ch[level]
            for i in range(cfg["num_res_blocks"][level] + 1):
                layers = [res(ch + skip_ch.pop(), out_ch)]
                ch = out_ch
                if cfg["attention_levels_up"][level]:
                    layers.append(attn(ch, upsample=True))
                if level and i == cfg["num_res_blocks"][level]:
                    layers.append(res(ch, ch, up=True) if cfg["resblock_updown"] else Upsample(ch, cfg["conv_resample"]))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(ch, cfg["out_channels"], 3, padding=1))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ADMUNet":
        """Build from a plain dict such as ``net.config`` or one stored in a native model file."""
        return cls(**dict(config))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        low_res: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        if cfg["super_res"] != (low_res is not None):
            raise ValueError("pass low_res if and only if the network is a super-resolution model")
        if (cfg["num_classes"] is not None) != (y is not None):
            raise ValueError("pass class labels y if and only if the network is class-conditional")
        if low_res is not None:
            if low_res.shape[-2:] != x.shape[-2:]:
                low_res = F.interpolate(low_res, x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, low_res.to(x.dtype)], dim=1)

        emb = self.time_embed(sinusoidal_embedding(timesteps, cfg["model_channels"], flip_sin_to_cos=True))
        if y is not None:
            emb = emb + self.label_emb(y)

        skips: list[torch.Tensor] = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

