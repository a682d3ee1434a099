"""LyCORIS LoHa (Hyeon-Woo et al. 2022, "FedPara: Low-Rank Hadamard Product for
Communication-Efficient Federated Learning", ICLR 2022, arXiv:2108.06098).

    ΔW = (w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / rank,   rank = rows of `w1_b`

With Tucker cores (`hada_t1`/`hada_t2`, conv layers) each factor is rebuilt as
t ×₁ w_a ×₂ w_b, where `w_a` is [rank, out] and `w_b` is [rank, in] (LyCORIS layout).
"""

from __future__ import annotations

import torch

from animegen.models.lora.contract import alpha_over_rank, as_stored, keys_matcher, no_bias

KIND = "loha"
REQUIRED = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
OPTIONAL = frozenset({"hada_t1", "hada_t2"})
NETWORK_MODULE = "lycoris.kohya"
LYCORIS_ALGO = "loha"
matches = keys_matcher(REQUIRED, OPTIONAL)
with_defaults = as_stored
delta_bias = no_bias


def rank(tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors["hada_w1_b"].shape[0])


scale = alpha_over_rank(rank)


def _factor(tensors, n: int) -> torch.Tensor:
    a = tensors[f"hada_w{n}_a"].float()
    b = tensors[f"hada_w{n}_b"].float()
    t = tensors.get(f"hada_t{n}")
    if t is not None:
        return torch.einsum("ijkl,jr,ip->prkl", t.float(), b, a)
    return a @ b


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, base_weight: torch.Tensor) -> torch.Tensor:
    return (_factor(tensors, 1) * _factor(tensors, 2)).reshape(base_weight.shape) * scale(tensors, alpha)
