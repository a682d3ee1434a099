"""The registry of LoRA-family algorithms: one module per algorithm, one contract (as LyCORIS does).

Detection, merging, the file readers' suffix lists and the kohya header are loops over `ALGORITHMS`,
so a new algorithm is one new module plus `register(module)`; nothing else names algorithms.

The contract every algorithm module fulfils (tensor names are the kohya/LyCORIS suffixes):

- ``KIND``: the name `LoraModule.kind` uses.
- ``REQUIRED`` / ``OPTIONAL``: frozensets of the tensor suffixes it reads.
- ``matches(keys) -> bool``: whether one module's suffix set (without the shared ``alpha`` /
  ``dora_scale``) is this algorithm's.
- ``rank(tensors) -> int | None``: the rank alpha is divided by (None: no rank).
- ``scale(tensors, alpha) -> float``: the factor `delta` includes (alpha/rank, or 1).
- ``delta(tensors, alpha, base_weight) -> Tensor``: ΔW at multiplier 1, float32, shaped like
  `base_weight` (most algorithms read only its shape; (IA)^3 scales it).
- ``delta_bias(tensors, base_bias) -> Tensor | None``: Δb at multiplier 1 (None: bias untouched).
- ``with_defaults(tensors) -> dict``: the tensors with omitted optional flags filled in, so a file
  written back says what was applied.
- ``NETWORK_MODULE`` / ``LYCORIS_ALGO``: what kohya's ``ss_network_module`` and LyCORIS's ``algo``
  network argument call it.

`contract.py` holds the common implementations (keys matcher, alpha/rank scale, no rank, …).
"""

from __future__ import annotations

from types import ModuleType

from animegen.core.registry import register_module
from animegen.models.lora import full, ia3, loha, lokr, lora, norm

# per-module keys next to any algorithm's tensors (alpha: kohya's scale; dora_scale: DoRA's magnitude,
# applied by `LoraModule.delta_weight` through `dora.py`)
SHARED_SUFFIXES = frozenset({"alpha", "dora_scale"})

CONTRACT = ("KIND", "REQUIRED", "OPTIONAL", "NETWORK_MODULE", "LYCORIS_ALGO",
            "matches", "rank", "scale", "delta", "delta_bias", "with_defaults")

ALGORITHMS: dict[str, ModuleType] = {}


def register(algorithm: ModuleType) -> ModuleType:
    """Add an algorithm module (TypeError naming what it lacks; ValueError if its KIND is taken)."""
    return register_module(ALGORITHMS, algorithm, key="KIND", contract=CONTRACT, what="LoRA algorithm")


def unregister(kind: str) -> None:
    ALGORITHMS.pop(kind, None)


def kinds() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def tensor_suffixes() -> frozenset[str]:
    """Every per-module tensor suffix some registered algorithm reads, plus the shared ones."""
    out = set(SHARED_SUFFIXES)
    for algorithm in ALGORITHMS.values():
        out |= algorithm.REQUIRED | algorithm.OPTIONAL
    return frozenset(out)


def matching_kinds(keys) -> list[str]:
    """The kinds whose `matches` accepts this module's suffixes (normally one, or none)."""
    keys = frozenset(keys) - SHARED_SUFFIXES
    return [kind for kind, algorithm in ALGORITHMS.items() if keys and algorithm.matches(keys)]


for _algorithm in (lora, loha, lokr, ia3, full, norm):
    register(_algorithm)

__all__ = ["ALGORITHMS", "SHARED_SUFFIXES", "kinds", "matching_kinds", "register", "tensor_suffixes",
           "unregister"]
