"""LyCORIS (IA)^3 math: ΔW = W ⊙ w, with `w` scaling output rows or, if `on_input`, input columns.

Applied with multiplier m this gives W·(1 + m·w), exactly how LyCORIS/A1111 merge it.
"""

from __future__ import annotations

import torch

KIND = "ia3"
REQUIRED = frozenset({"weight"})
KEYS = REQUIRED | {"on_input"}


def on_input(tensors: dict[str, torch.Tensor]) -> bool:
    flag = tensors.get("on_input")
    return bool(flag.item()) if flag is not None else False


def delta(tensors: dict[str, torch.Tensor], base_weight: torch.Tensor) -> torch.Tensor:
    w = tensors["weight"].float().flatten()
    base = base_weight.float()
    if on_input(tensors):
        if w.numel() != base.shape[1]:
            raise ValueError(f"IA3 input scale has {w.numel()} values, layer has {base.shape[1]} inputs")
        return base * w.view(1, -1, *[1] * (base.dim() - 2))
    if w.numel() != base.shape[0]:
        raise ValueError(f"IA3 output scale has {w.numel()} values, layer has {base.shape[0]} outputs")
    return base * w.view(-1, *[1] * (base.dim() - 1))
