"""LoRA / LoCon math (kohya, A1111, peft): ΔW = up · down · alpha / rank.

Conv layers (LoCon) store a k×k `down` and a 1×1 `up`; an optional `lora_mid` is the Tucker core
(`down` and `up` are then 1×1 and `mid` holds the k×k kernel), contracted as in A1111's
`rebuild_cp_decomposition`.
"""

from __future__ import annotations

import torch

KIND = "lora"
REQUIRED = frozenset({"lora_down.weight", "lora_up.weight"})
KEYS = REQUIRED | {"lora_mid.weight"}


def rank(tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors["lora_down.weight"].shape[0])


def delta(tensors: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
    down = tensors["lora_down.weight"].float()
    up = tensors["lora_up.weight"].float()
    scale = 1.0 if alpha is None else alpha / rank(tensors)
    if "lora_mid.weight" in tensors:
        mid = tensors["lora_mid.weight"].float()
        updown = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
    else:
        updown = up.flatten(1) @ down.flatten(1)
        if down.dim() == 4:  # conv: [out, rank] x [rank, in*k*k] -> [out, in, k, k]
            updown = updown.reshape(up.shape[0], *down.shape[1:])
    return updown.reshape(shape) * scale
