"""LyCORIS (IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning", arXiv:2205.05638).

    ΔW = W ⊙ w,   `w` scaling output rows or, if `on_input`, input columns; no rank, no alpha

Applied with multiplier m this gives W·(1 + m·w), exactly how LyCORIS/A1111 merge it. The only
algorithm that reads the base weight's values; it is computed on the base weight's device.
"""

from __future__ import annotations

import torch

from animegen.models.lora.contract import keys_matcher, no_bias, no_rank, unit_scale

KIND = "ia3"
REQUIRED = frozenset({"weight"})
OPTIONAL = frozenset({"on_input"})
NETWORK_MODULE = "lycoris.kohya"
LYCORIS_ALGO = "ia3"
matches = keys_matcher(REQUIRED, OPTIONAL)
rank = no_rank
scale = unit_scale
delta_bias = no_bias


def with_defaults(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LyCORIS' default is to scale outputs; the flag is written out so readers agree."""
    return tensors if "on_input" in tensors else {**tensors, "on_input": torch.tensor(False)}


def on_input(tensors: dict[str, torch.Tensor]) -> bool:
    flag = tensors.get("on_input")
    return bool(flag.item()) if flag is not None else False


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, base_weight: torch.Tensor) -> torch.Tensor:
    base = base_weight.float()
    w = tensors["weight"].to(base.device, torch.float32).flatten()
    if on_input(tensors):
        if w.numel() != base.shape[1]:
            raise ValueError(f"IA3 input scale has {w.numel()} values, layer has {base.shape[1]} inputs")
        return base * w.view(1, -1, *[1] * (base.dim() - 2))
    if w.numel() != base.shape[0]:
        raise ValueError(f"IA3 output scale has {w.numel()} values, layer has {base.shape[0]} outputs")
    return base * w.view(-1, *[1] * (base.dim() - 1))
