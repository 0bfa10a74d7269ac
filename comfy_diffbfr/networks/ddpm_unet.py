"""The original DDPM (TensorFlow) UNet: ermongroup/ddim ``Model`` and diffusers ``UNet2DModel``.

Both public implementations are ports of the same network. This one uses ermongroup's module
names (``temb.dense``, ``down.L.block.B``, ``down.L.attn.B.{q,k,v,proj_out}`` as 1x1 convs,
``mid.block_1``, ``norm_out`` ...); the ``ddpm`` format spec renames diffusers checkpoints onto it.
The config also covers the knobs diffusers adds for this family: GroupNorm groups and eps, the
timestep embedding's frequency shift and sin/cos order, symmetric or asymmetric downsampling
padding, multi-head attention, scale-shift time conditioning and the mid-block output scale.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import sinusoidal_embedding, spatial_attention


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv, plus the time embedding (added, or as GroupNorm scale/shift), GN -> SiLU -> conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float,
        scale_shift: bool,
        output_scale: float = 1.0,
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.output_scale = output_scale
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        t = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        out = skip + h
        return out if self.output_scale == 1 else out / self.output_scale


class AttnBlock(nn.Module):
    """Self-attention over pixels with a residual; ``heads`` contiguous channel slices, scale head_dim^-0.5.

    ``groups=None`` leaves out the GroupNorm (diffusers' scale-shift mid block does that).
    """

    def __init__(self, channels: int, *, heads: int, groups: int | None, eps: float, output_scale: float = 1.0):
        super().__init__()
        self.heads = heads
        self.output_scale = output_scale
        self.norm = nn.GroupNorm(groups, channels, eps=eps) if groups else None
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = x if self.norm is None else self.norm(x)
        q, k, v = (proj(h).reshape(b, c, height * width) for proj in (self.q, self.k, self.v))
        h = self.proj_out(spatial_attention(q, k, v, self.heads).reshape(b, c, height, width))
        out = x + h
        return out if self.output_scale == 1 else out / self.output_scale


class Downsample(nn.Module):
    """Stride-2 3x3 conv: ``padding=0`` pads (0, 1, 0, 1) first, the DDPM-TF convention; without a conv, 2x2 average pooling."""

    def __init__(self, channels: int, *, with_conv: bool, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2, 2)
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, *, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class DDPMUNet(nn.Module):
    """``forward(x, t)``: x [B, in_channels, H, W], t real-valued timesteps [B] (or one value for the batch).

    Levels are numbered from the full resolution (0) down; ``down_attention[i]`` / ``up_attention[i]``
    say whether level i's down / up res blocks are followed by attention. ``base_channels`` is the
    width of ``conv_in`` and of the timestep sinusoid (ermongroup's ``ch``; diffusers'
    ``block_out_channels[0]``). ``attention_head_dim=None`` means one head per attention block.
    Any input size divisible by 2**(levels-1) works: the reference's size assertion is dropped.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        down_attention: Sequence[bool],
        up_attention: Sequence[bool],
        mid_attention: bool = True,
        time_embedding_dim: int | None = None,
        freq_shift: float = 1.0,
        flip_sin_to_cos: bool = False,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-6,
        downsample_padding: int = 0,
        resample_with_conv: bool = True,
        attention_head_dim: int | None = None,
        resnet_time_scale_shift: str = "default",
        mid_block_scale_factor: float = 1.0,
        center_input_sample: bool = False,
        dropout: float = 0.0,
        sample_size: int | None = None,
    ):
        super().__init__()
        self.base_channels = base_channels
        self.freq_shift = freq_shift
        self.flip_sin_to_cos = flip_sin_to_cos
        self.center_input_sample = center_input_sample
        self.sample_size = sample_size
        temb_channels = time_embedding_dim or 4 * base_channels
        scale_shift = resnet_time_scale_shift == "scale_shift"

        def res(cin: int, cout: int, scale: float = 1.0) -> ResnetBlock:
            return ResnetBlock(cin, cout, temb_channels=temb_channels, groups=norm_num_groups, eps=norm_eps,
                               dropout=dropout, scale_shift=scale_shift, output_scale=scale)

        def attn(channels: int, groups: int | None = norm_num_groups, scale: float = 1.0) -> AttnBlock:
            heads = channels // attention_head_dim if attention_head_dim else 1
            return AttnBlock(channels, heads=heads, groups=groups, eps=norm_eps, output_scale=scale)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(base_channels, temb_channels), nn.Linear(temb_channels, temb_channels)])
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        num_levels = len(block_out_channels)
        skip_channels = [base_channels]
        width = base_channels
        self.down = nn.ModuleList()
        for level, out in enumerate(block_out_channels):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(layers_per_block):
                stage.block.append(res(width, out))
                width = out
                if down_attention[level]:
                    stage.attn.append(attn(width))
                skip_channels.append(width)
            stage.downsample = None
            if level != num_levels - 1:
                stage.downsample = Downsample(width, with_conv=resample_with_conv, padding=downsample_padding)
                skip_channels.append(width)
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = res(width, width, mid_block_scale_factor)
        # diffusers' mid attention has no GroupNorm under scale-shift unless attn_norm_num_groups says so.
        mid_groups = attn_norm_num_groups or (norm_num_groups if not scale_shift else None)
        self.mid.attn_1 = attn(width, mid_groups, mid_block_scale_factor) if mid_attention else None
        self.mid.block_2 = res(width, width, mid_block_scale_factor)

        up_stages: list[nn.Module] = []
        for level in reversed(range(num_levels)):
            out = block_out_channels[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                stage.block.append(res(width + skip_channels.pop(), out))
                width = out
                if up_attention[level]:
                    stage.attn.append(attn(width))
            stage.upsample = Upsample(width, with_conv=resample_with_conv) if level != 0 else None
            up_stages.insert(0, stage)
        self.up = nn.ModuleList(up_stages)

        self.norm_out = nn.GroupNorm(norm_num_groups, width, eps=norm_eps)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if self.center_input_sample:
            x = 2 * x - 1.0
        temb = sinusoidal_embedding(t, self.base_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
        # The sinusoid is float32 (as in diffusers); a half- or double-precision network needs its own dtype.
        dense = self.temb.dense
        temb = dense[1](F.silu(dense[0](temb.to(dense[0].weight.dtype))))

        hs = [self.conv_in(x)]
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(hs[-1], temb)
                hs.append(stage.attn[i](h) if len(stage.attn) else h)
            if stage.downsample is not None:
                hs.append(stage.downsample(hs[-1]))

        h = self.mid.block_1(hs[-1], temb)
        if self.mid.attn_1 is not None:
            h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
