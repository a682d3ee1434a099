"""Tiny random-weight T2I-Adapters in TencentARC's original key layout (`conv_in.*`, `body.<i*n+r>.*`), for tests.

`tiny_t2i_adapter_state(channels, nums_rb, cin, seed)` is the state dict of the sd15v2 adapter architecture
(sk=True, ksize=1, avg-pool downsampling): conv_in 3x3 (cin -> channels[0]); per level i and block r, block1 3x3,
block2 1x1, and in_conv 1x1 on the first block of a level whose width changes.
"""

from __future__ import annotations

import torch


def tiny_t2i_adapter_state(channels=(8, 16, 32, 32), nums_rb: int = 2, cin: int = 64 * 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    state = {"conv_in.weight": rnd(channels[0], cin, 3, 3), "conv_in.bias": rnd(channels[0])}
    for i, c in enumerate(channels):
        for r in range(nums_rb):
            b = i * nums_rb + r
            if r == 0 and i > 0 and channels[i - 1] != c:
                state[f"body.{b}.in_conv.weight"] = rnd(c, channels[i - 1], 1, 1)
                state[f"body.{b}.in_conv.bias"] = rnd(c)
            state[f"body.{b}.block1.weight"], state[f"body.{b}.block1.bias"] = rnd(c, c, 3, 3), rnd(c)
            state[f"body.{b}.block2.weight"], state[f"body.{b}.block2.bias"] = rnd(c, c, 1, 1), rnd(c)
    return state
