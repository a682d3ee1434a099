"""LyCORIS full-matrix difference: ΔW = diff, Δb = diff_b (no rank, no alpha)."""

from __future__ import annotations

import torch

KIND = "full"
REQUIRED = frozenset({"diff"})
KEYS = REQUIRED | {"diff_b"}


def delta(tensors: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    return tensors["diff"].float().reshape(shape)
