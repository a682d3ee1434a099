"""LyCORIS LoHa math: ΔW = (w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / rank, rank = w1_b rows.

With Tucker cores (`hada_t1`/`hada_t2`, conv layers) each factor is rebuilt as
t ×₁ w_a ×₂ w_b, where `w_a` is [rank, out] and `w_b` is [rank, in] (LyCORIS layout).
"""

from __future__ import annotations

import torch

KIND = "loha"
REQUIRED = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
KEYS = REQUIRED | {"hada_t1", "hada_t2"}


def rank(tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors["hada_w1_b"].shape[0])


def _factor(tensors, n: int) -> torch.Tensor:
    a = tensors[f"hada_w{n}_a"].float()
    b = tensors[f"hada_w{n}_b"].float()
    t = tensors.get(f"hada_t{n}")
    if t is not None:
        return torch.einsum("ijkl,jr,ip->prkl", t.float(), b, a)
    return a @ b


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
    scale = 1.0 if alpha is None else alpha / rank(tensors)
    return (_factor(tensors, 1) * _factor(tensors, 2)).reshape(shape) * scale
