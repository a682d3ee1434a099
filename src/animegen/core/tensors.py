"""Tensor checks every layer asks: which tensors of a state dict hold NaN or inf.

One home because three places need the same answer with different consequences: a LoRA file is refused
(`models.lora.formats`), a training checkpoint is not "good" (`train.checkpoint`), a NaN image names the
damaged weights (`generate.nan_check`). Weights can overflow to inf steps before any loss or pixel is NaN,
so each of them checks the weights themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """Names (in the mapping's order) of the floating-point tensors holding NaN or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
