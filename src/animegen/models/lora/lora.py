"""LoRA / LoCon (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685; LoCon is kohya's/LyCORIS's extension to conv layers).

    ΔW = up · down · alpha / rank,   rank = rows of `down`

Conv layers store a k×k `down` and a 1×1 `up`; an optional `lora_mid` is the Tucker core
(`down` and `up` are then 1×1 and `mid` holds the k×k kernel), contracted as in A1111's
`rebuild_cp_decomposition`. Without alpha the scale is 1 (A1111, kohya).
"""

from __future__ import annotations

import torch

from animegen.models.lora.contract import alpha_over_rank, as_stored, keys_matcher, no_bias

KIND = "lora"
REQUIRED = frozenset({"lora_down.weight", "lora_up.weight"})
OPTIONAL = frozenset({"lora_mid.weight"})
NETWORK_MODULE = "networks.lora"  # kohya's own LoRA/LoCon network
LYCORIS_ALGO = "locon"
matches = keys_matcher(REQUIRED, OPTIONAL)
with_defaults = as_stored
delta_bias = no_bias


def rank(tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors["lora_down.weight"].shape[0])


scale = alpha_over_rank(rank)


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, base_weight: torch.Tensor) -> torch.Tensor:
    down = tensors["lora_down.weight"].float()
    up = tensors["lora_up.weight"].float()
    if "lora_mid.weight" in tensors:
        mid = tensors["lora_mid.weight"].float()
        updown = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
    else:
        updown = up.flatten(1) @ down.flatten(1)
        if down.dim() == 4:  # conv: [out, rank] x [rank, in*k*k] -> [out, in, k, k]
            updown = updown.reshape(up.shape[0], *down.shape[1:])
    return updown.reshape(base_weight.shape) * scale(tensors, alpha)
