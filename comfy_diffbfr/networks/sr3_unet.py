"""The SR3 UNet (Janspiry/Image-Super-Resolution-via-Iterative-Refinement, ``model/sr3_modules/unet.py``).

Module and parameter names equal the reference's, so its ``denoise_fn.*`` weights load with
``strict=True`` once the prefix is gone. The network is conditioned on the continuous noise level
gamma = sqrt(alpha_bar) in [0, 1], not on a timestep; the condition image is concatenated before
x_t by the caller, so ``in_channel`` counts both.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import sinusoidal_embedding, spatial_attention


class NoiseLevelEncoding(nn.Module):
    """[sin, cos] of gamma * 10000^(-k/(dim/2)): no flip, no shift, no scale on gamma."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(noise_level, self.dim, flip_sin_to_cos=False)


class FeatureWiseAffine(nn.Module):
    """Adds a projection of the noise embedding to every pixel (the reference never uses its affine mode)."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.noise_func(emb).view(emb.shape[0], -1, 1, 1)


class Block(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> Conv3x3; indices 0..3 as in the reference's Sequential."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.noise_func = FeatureWiseAffine(emb_dim, dim_out)
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.noise_func(self.block1(x), emb)
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head attention over pixels, scores scaled by 1/sqrt(C); bias-free fused qkv."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # One head: the fused output is [q; k; v] along channels.
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).chunk(3, dim=1)
        return self.out(spatial_attention(q, k, v, heads=1).reshape(b, c, h, w)) + x


class ResnetBlocWithAttn(nn.Module):
    def __init__(self, dim: int, dim_out: int, *, emb_dim: int, groups: int, dropout: float, with_attn: bool):
        super().__init__()
        self.res_block = ResnetBlock(dim, dim_out, emb_dim, groups, dropout)
        self.attn = SelfAttention(dim_out, groups) if with_attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, emb)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SR3UNet(nn.Module):
    """``forward(x, noise_level)``: x = cat(condition, x_t) [B, in_channel, H, W]; noise_level gamma [B] or [B, 1].

    ``attn_levels`` lists the resolution levels (0 = full size) whose res blocks carry attention,
    the reference's ``attn_res`` expressed without the image size; the middle always has one.
    ``image_size`` is informational (the network is fully convolutional).
    """

    def __init__(
        self,
        *,
        in_channel: int,
        out_channel: int,
        inner_channel: int,
        channel_mults: Sequence[int],
        attn_levels: Sequence[int],
        res_blocks: int,
        norm_groups: int,
        dropout: float = 0.0,
        image_size: int | None = None,
    ):
        super().__init__()
        self.image_size = image_size
        self.noise_level_mlp = nn.Sequential(
            NoiseLevelEncoding(inner_channel),
            nn.Linear(inner_channel, inner_channel * 4),
            nn.SiLU(),
            nn.Linear(inner_channel * 4, inner_channel),
        )
        block = dict(emb_dim=inner_channel, groups=norm_groups, dropout=dropout)

        pre = inner_channel
        skip_channels = [pre]
        downs: list[nn.Module] = [nn.Conv2d(in_channel, inner_channel, 3, padding=1)]
        for level, mult in enumerate(channel_mults):
            width = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(ResnetBlocWithAttn(pre, width, with_attn=level in attn_levels, **block))
                skip_channels.append(width)
                pre = width
            if level != len(channel_mults) - 1:
                downs.append(Downsample(pre))
                skip_channels.append(pre)
        self.downs = nn.ModuleList(downs)

        self.mid = nn.ModuleList(
            [
                ResnetBlocWithAttn(pre, pre, with_attn=True, **block),
                ResnetBlocWithAttn(pre, pre, with_attn=False, **block),
            ]
        )

        ups: list[nn.Module] = []
        for level in reversed(range(len(channel_mults))):
            width = inner_channel * channel_mults[level]
            for _ in range(res_blocks + 1):
                ups.append(ResnetBlocWithAttn(pre + skip_channels.pop(), width, with_attn=level in attn_levels, **block))
                pre = width
            if level != 0:
                ups.append(Upsample(pre))
        self.ups = nn.ModuleList(ups)

        self.final_conv = Block(pre, out_channel, norm_groups)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        encoding, *mlp = self.noise_level_mlp
        # The encoding is float32; a half- or double-precision network needs its own dtype.
        emb = encoding(noise_level).to(mlp[0].weight.dtype)
        for layer in mlp:
            emb = layer(emb)
        skips = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            skips.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            x = layer(torch.cat((x, skips.pop()), dim=1), emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
        return self.final_conv(x)
