"""LyCORIS LoKr (Kronecker product; Edalati et al. 2022, "KronA: Parameter Efficient Tuning with
Kronecker Adapter", arXiv:2212.10650; Yeh et al. 2023, "Navigating Text-To-Image Customization:
From LyCORIS Fine-Tuning to Model Evaluation", arXiv:2309.14859).

    ΔW = w1 ⊗ w2 · scale

Each factor is stored full (`lokr_w1`, `lokr_w2`) or low-rank (`lokr_w*_a` · `lokr_w*_b`, with an
optional Tucker core `lokr_t2`). scale = alpha / rank of the factorised part; with both factors
full there is no rank and no scaling (A1111 / LyCORIS convention). For conv weights the 2-D `w1`
is broadcast over the kernel dims of `w2` before the Kronecker product.
"""

from __future__ import annotations

import torch

from animegen.models.lora.contract import alpha_over_rank, as_stored, no_bias

KIND = "lokr"
REQUIRED = frozenset()  # one of each pair below: a full factor or its two low-rank halves
OPTIONAL = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
NETWORK_MODULE = "lycoris.kohya"
LYCORIS_ALGO = "lokr"
with_defaults = as_stored
delta_bias = no_bias


def matches(keys) -> bool:
    has_1 = "lokr_w1" in keys or {"lokr_w1_a", "lokr_w1_b"} <= keys
    has_2 = "lokr_w2" in keys or {"lokr_w2_a", "lokr_w2_b"} <= keys
    return keys <= OPTIONAL and has_1 and has_2


def rank(tensors: dict[str, torch.Tensor]) -> int | None:
    if "lokr_w1_b" in tensors:
        return int(tensors["lokr_w1_b"].shape[0])
    if "lokr_w2_b" in tensors:
        return int(tensors["lokr_w2_b"].shape[0])
    return None


scale = alpha_over_rank(rank)  # both factors full: no rank, no scaling


def _w1(tensors) -> torch.Tensor:
    if "lokr_w1" in tensors:
        return tensors["lokr_w1"].float()
    return tensors["lokr_w1_a"].float() @ tensors["lokr_w1_b"].float()


def _w2(tensors) -> torch.Tensor:
    if "lokr_w2" in tensors:
        return tensors["lokr_w2"].float()
    a, b = tensors["lokr_w2_a"].float(), tensors["lokr_w2_b"].float()
    if "lokr_t2" in tensors:  # einsum returns a permuted view, which torch.kron cannot take
        return torch.einsum("ijkl,jr,ip->prkl", tensors["lokr_t2"].float(), b, a).contiguous()
    return a @ b


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, base_weight: torch.Tensor) -> torch.Tensor:
    w1, w2 = _w1(tensors), _w2(tensors)
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(base_weight.shape) * scale(tensors, alpha)
