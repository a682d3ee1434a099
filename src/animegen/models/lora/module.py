"""The in-memory LoRA model: `LoraFile` holds `LoraModule`s keyed by target module path.

Tensors are kept under their kohya/LyCORIS suffix names (`lora_down.weight`, `hada_w1_a`,
`lokr_w1`, `weight`/`on_input`, `diff`/`diff_b`, `w_norm`/`b_norm`) whatever format they were read
from, so one `delta_weight` serves every file format. Each module's algorithm (`kind`) is a module in
the `algorithms` registry, which computes its delta; a ``dora_scale`` next to any algorithm's
tensors adds DoRA's weight decomposition (`dora.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from animegen.core.errors import AnimegenError
from animegen.models.lora.algorithms import ALGORITHMS, kinds, matching_kinds
from animegen.models.lora.dora import weight_decomposed_delta
from animegen.models.lora.names import split_target

KINDS = kinds()  # the built-in algorithms; `algorithms.kinds()` includes any registered later


class LoraFormatError(AnimegenError):
    """A LoRA file (or LoraModule) whose keys or tensors cannot be understood."""


def detect_kind(keys) -> str:
    """The algorithm a set of per-module tensor suffixes belongs to (LoraFormatError if none or several)."""
    found = matching_kinds(keys)
    if len(found) != 1:
        what = "match no LoRA algorithm" if not found else f"match several LoRA algorithms ({', '.join(found)})"
        raise LoraFormatError(f"tensor names {sorted(set(keys) - {'alpha'})} {what}; known: {', '.join(kinds())}")
    return found[0]


def _float32(value: float | None) -> float | None:
    """Alphas are stored as float32 tensors; rounding here makes write/read round trips exact."""
    return None if value is None else float(torch.tensor(float(value), dtype=torch.float32))


@dataclass(eq=False)
class LoraModule:
    """One adapted layer: `target` is e.g. ``unet.mid_block.attentions.0.proj_in``."""

    target: str
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None

    def __post_init__(self) -> None:
        split_target(self.target)
        if self.kind not in ALGORITHMS:
            raise LoraFormatError(f"{self.target}: unknown kind {self.kind!r}; choose one of {kinds()}")
        detected = detect_kind(self.tensors)
        if detected != self.kind:
            raise LoraFormatError(f"{self.target}: tensors {sorted(self.tensors)} are {detected}, not {self.kind}")
        self.tensors = self.algorithm.with_defaults(self.tensors)
        self.alpha = _float32(self.alpha)

    @property
    def component(self) -> str:
        return split_target(self.target)[0]

    @property
    def module_path(self) -> str:
        return split_target(self.target)[1]

    @property
    def algorithm(self):
        """The algorithm module (see `algorithms`) that computes this module's deltas."""
        return ALGORITHMS[self.kind]

    @property
    def rank(self) -> int | None:
        return self.algorithm.rank(self.tensors)

    @property
    def scale(self) -> float:
        """The alpha/rank factor this module's delta is multiplied by (1.0 if none applies)."""
        return self.algorithm.scale(self.tensors, self.alpha)

    def delta_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        """ΔW at multiplier 1, float32, shaped like `base_weight` (which IA3 and DoRA need as input)."""
        try:
            delta = self.algorithm.delta(self.tensors, self.alpha, base_weight)
            magnitude = self.tensors.get("dora_scale")
            return delta if magnitude is None else weight_decomposed_delta(base_weight, delta, magnitude)
        except (RuntimeError, ValueError) as exc:  # reshape / matmul size mismatch
            raise LoraFormatError(
                f"{self.target}: {self.kind} tensors "
                f"{ {k: tuple(v.shape) for k, v in self.tensors.items()} } do not fit a layer "
                f"weight of shape {tuple(base_weight.shape)} ({exc})") from exc

    def delta_bias(self, base_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Δb at multiplier 1 (None when the algorithm leaves the bias alone)."""
        try:
            return self.algorithm.delta_bias(self.tensors, base_bias)
        except (RuntimeError, ValueError) as exc:
            raise LoraFormatError(f"{self.target}: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoraModule):
            return NotImplemented
        return (self.target == other.target and self.kind == other.kind
                and self.tensors.keys() == other.tensors.keys()
                and all(self.tensors[k].dtype == other.tensors[k].dtype
                        and torch.equal(self.tensors[k], other.tensors[k]) for k in self.tensors)
                and self.scale == other.scale)


@dataclass(eq=False)
class LoraFile:
    """A whole LoRA: modules by target plus the file's string metadata header."""

    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, module in self.modules.items():
            if key != module.target:
                raise LoraFormatError(f"modules key {key!r} differs from its target {module.target!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoraFile):
            return NotImplemented
        return self.modules.keys() == other.modules.keys() and all(
            self.modules[k] == other.modules[k] for k in self.modules)
