"""CPU half-precision attention does not depend on the process-wide SDPA reduction switch that
ComfyUI turns on at start-up, so a graph gives the same bits inside ComfyUI and outside it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from comfy_diffbfr.networks.layers import spatial_attention


@pytest.fixture
def restore_switch():
    before = torch._C._get_math_sdp_allow_fp16_bf16_reduction()
    yield
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(before)


def _under_both_switch_states(fn):
    outs = []
    for allowed in (False, True):
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(fn())
    return outs


@pytest.mark.parametrize("channels,tokens,heads", [(64, 256, 2), (128, 64, 1), (256, 256, 4)])
def test_bf16_attention_ignores_the_switch(channels, tokens, heads, restore_switch):
    g = torch.Generator().manual_seed(channels + tokens)
    q, k, v = (torch.randn(1, channels, tokens, generator=g) for _ in range(3))
    plain = _under_both_switch_states(lambda: F.scaled_dot_product_attention(
        *(rearrange(x, "b (h d) n -> b h n d", h=heads) for x in (q, k, v))))
    assert not torch.equal(*plain)  # torch's own kernel does depend on it: the test can fail
    ours = _under_both_switch_states(lambda: spatial_attention(q, k, v, heads))
    assert torch.equal(*ours) and ours[0].dtype == torch.bfloat16
    reference = rearrange(F.scaled_dot_product_attention(
        *(rearrange(x, "b (h d) n -> b h n d", h=heads) for x in (q, k, v))), "b h n d -> b (h d) n")
    assert torch.allclose(ours[0].float(), reference, atol=2e-2)  # float32 attention, rounded to bf16
