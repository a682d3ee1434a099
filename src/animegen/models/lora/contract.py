"""The common implementations of the LoRA algorithm contract (described in `algorithms`), so an
algorithm module writes out only what is particular to it, as LyCORIS' base module does."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensors = dict[str, torch.Tensor]


def keys_matcher(required: frozenset[str], optional: frozenset[str]) -> Callable[[frozenset[str]], bool]:
    """`matches` for an algorithm whose modules hold all of `required` and any of `optional`."""
    allowed = required | optional
    return lambda keys: required <= keys <= allowed


def alpha_over_rank(rank: Callable[[Tensors], int | None]) -> Callable[[Tensors, float | None], float]:
    """`scale` = alpha / rank (kohya's rule); 1 without alpha or without a rank."""
    def scale(tensors: Tensors, alpha: float | None) -> float:
        dim = rank(tensors)
        return alpha / dim if alpha is not None and dim is not None else 1.0
    return scale


def no_rank(tensors: Tensors) -> None:
    return None


def unit_scale(tensors: Tensors, alpha: float | None) -> float:
    """For algorithms that ignore alpha."""
    return 1.0


def as_stored(tensors: Tensors) -> Tensors:
    """`with_defaults` for algorithms without optional flags."""
    return tensors


def no_bias(tensors: Tensors, base_bias: torch.Tensor | None) -> None:
    """`delta_bias` for algorithms that leave the layer's bias alone."""


def bias_difference(stored: torch.Tensor | None, base_bias: torch.Tensor | None) -> torch.Tensor | None:
    """`delta_bias` for algorithms that store Δb as a tensor (`diff_b`, `b_norm`)."""
    if stored is None:
        return None
    if base_bias is None:
        raise ValueError("the file has a bias difference but the layer has no bias")
    return stored.float().reshape(base_bias.shape)


def stored_difference(weight_key: str, bias_key: str):
    """(`delta`, `delta_bias`) for algorithms that store ΔW and Δb as they are (full diff, norm layers)."""
    def delta(tensors: Tensors, alpha: float | None, base_weight: torch.Tensor) -> torch.Tensor:
        return tensors[weight_key].float().reshape(base_weight.shape)

    def delta_bias(tensors: Tensors, base_bias: torch.Tensor | None) -> torch.Tensor | None:
        return bias_difference(tensors.get(bias_key), base_bias)
    return delta, delta_bias
