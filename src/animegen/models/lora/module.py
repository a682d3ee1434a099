"""The in-memory LoRA model: `LoraFile` holds `LoraModule`s keyed by target module path.

Tensors are kept under their kohya/LyCORIS suffix names (`lora_down.weight`, `hada_w1_a`,
`lokr_w1`, `weight`/`on_input`, `diff`/`diff_b`) whatever format they were read from, so one
`delta_weight` serves every file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from animegen.models.lora import full, ia3, loha, lokr, lora
from animegen.models.lora.names import split_target

ALGORITHMS = {m.KIND: m for m in (lora, loha, lokr, ia3, full)}
KINDS = tuple(ALGORITHMS)


class LoraFormatError(ValueError):
    """A LoRA file (or LoraModule) whose keys or tensors cannot be understood."""


def detect_kind(keys) -> str:
    """The algorithm a set of per-module tensor suffixes belongs to (LoraFormatError if none)."""
    keys = set(keys) - {"alpha", "dora_scale"}
    if keys and keys <= lora.KEYS and lora.REQUIRED <= keys:
        return "lora"
    if keys and keys <= loha.KEYS and loha.REQUIRED <= keys:
        return "loha"
    if keys and keys <= lokr.KEYS and lokr.is_complete(keys):
        return "lokr"
    if keys and keys <= ia3.KEYS and ia3.REQUIRED <= keys:
        return "ia3"
    if keys and keys <= full.KEYS and full.REQUIRED <= keys:
        return "full"
    raise LoraFormatError(f"tensor names {sorted(keys)} match no LoRA algorithm ({', '.join(KINDS)})")


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
            raise LoraFormatError(f"{self.target}: unknown kind {self.kind!r}; choose one of {KINDS}")
        detected = detect_kind(self.tensors)
        if detected != self.kind:
            raise LoraFormatError(f"{self.target}: tensors {sorted(self.tensors)} are {detected}, not {self.kind}")
        if "dora_scale" in self.tensors:
            raise LoraFormatError(f"{self.target}: DoRA (dora_scale) LoRAs are not supported yet")
        if self.kind == "ia3" and "on_input" not in self.tensors:  # LyCORIS default: scale outputs
            self.tensors = {**self.tensors, "on_input": torch.tensor(False)}
        self.alpha = _float32(self.alpha)

    @property
    def component(self) -> str:
        return split_target(self.target)[0]

    @property
    def module_path(self) -> str:
        return split_target(self.target)[1]

    @property
    def rank(self) -> int | None:
        algo = ALGORITHMS[self.kind]
        return algo.rank(self.tensors) if hasattr(algo, "rank") else None

    @property
    def scale(self) -> float:
        """The alpha/rank factor this module's delta is multiplied by (1.0 if none applies)."""
        rank = self.rank
        if self.kind == "lokr":
            return self.alpha / rank if self.alpha is not None and rank is not None else 1.0
        if self.alpha is None or rank is None:
            return 1.0
        return self.alpha / rank

    def delta_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        """ΔW at multiplier 1, float32, shaped like `base_weight` (which IA3 needs as input)."""
        shape = base_weight.shape
        try:
            if self.kind == "ia3":
                return ia3.delta(self.tensors, base_weight)
            if self.kind == "full":
                return full.delta(self.tensors, shape)
            return ALGORITHMS[self.kind].delta(self.tensors, self.alpha, shape)
        except RuntimeError as exc:  # reshape / matmul size mismatch
            raise LoraFormatError(
                f"{self.target}: {self.kind} tensors "
                f"{ {k: tuple(v.shape) for k, v in self.tensors.items()} } do not fit a layer "
                f"weight of shape {tuple(shape)} ({exc})") from exc

    def delta_bias(self, base_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Δb at multiplier 1 (only full-diff modules carry one)."""
        diff_b = self.tensors.get("diff_b")
        if diff_b is None:
            return None
        if base_bias is None:
            raise LoraFormatError(f"{self.target}: the file has a bias difference but the layer has no bias")
        return diff_b.float().reshape(base_bias.shape)

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

    @property
    def is_sdxl(self) -> bool:
        """Best guess from the content: a second text encoder or SDXL-only UNet parts/metadata."""
        if self.metadata.get("ss_base_model_version", "").startswith("sdxl"):
            return True
        return any(t.startswith(("text_encoder_2.", "unet.add_embedding.")) for t in self.modules)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoraFile):
            return NotImplemented
        return self.modules.keys() == other.modules.keys() and all(
            self.modules[k] == other.modules[k] for k in self.modules)
