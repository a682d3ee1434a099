"""DoRA's weight decomposition (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
arXiv:2402.09353), for any algorithm's module that carries a ``dora_scale`` magnitude.

    V = W + ΔW,   W' = m ⊙ V / ‖V‖,   merged delta = W' − W   (the multiplier scales W' − W)

as A1111 (`NetworkModule.apply_weight_decompose`) and ComfyUI (`weight_decompose`) merge it. The norm
runs along the magnitude's axis, told by its shape as ComfyUI does: ``(1, in, …)`` is kohya/A1111's
one magnitude per input channel (norm over the output and kernel dims of each input column),
``(out, 1, …)`` LyCORIS' ``wd_on_out`` / peft's one per output row. Where they differ we follow the
paper: ComfyUI divides by ‖W‖ instead of ‖V‖ in the per-output case, A1111 has no per-output case.
An epsilon (float32's, as ComfyUI) keeps an all-zero slice finite.
"""

from __future__ import annotations

import torch

_EPS = torch.finfo(torch.float32).eps


def weight_decomposed_delta(base_weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' − W for base weight W, the algorithm's ΔW (scaled, multiplier 1) and DoRA's magnitude m."""
    base = base_weight.float()
    v = base + delta.to(base.device, torch.float32)
    m = magnitude.to(base.device, torch.float32)
    on_output = m.shape[0] == v.shape[0] and m.shape[0] != 1
    axis = 0 if on_output else 1
    if m.numel() != v.shape[axis]:
        side = "outputs" if on_output else "inputs"
        raise ValueError(f"dora_scale has {m.numel()} values (shape {tuple(m.shape)}), the layer has "
                         f"{v.shape[axis]} {side}")
    norm = v.transpose(0, axis).reshape(v.shape[axis], -1).norm(dim=1)
    shape = [1] * v.dim()
    shape[axis] = v.shape[axis]
    return v * (m.reshape(shape) / (norm.reshape(shape) + _EPS)) - base
