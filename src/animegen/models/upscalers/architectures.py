"""The registry of upscaler architectures: one module per architecture, one contract (as `models.lora.algorithms`).

Detection is a loop over `ARCHITECTURES`, so a new architecture is one new module plus `register(module)`.
The contract every architecture module fulfils:

- ``NAME``: the architecture's name (`UpscalerNet.info["architecture"]`);
- ``DESCRIPTION``: one line naming the key layouts it reads (shown when nothing matches);
- ``matches(keys) -> bool``: whether a state dict with these keys is this architecture's;
- ``build(state_dict) -> UpscalerNet``: the network with its shape read from the tensors and the weights
  loaded through `contract.load_exact` (UpscalerFormatError naming the keys that do not fit).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import torch

from animegen.core.registry import register_module
from animegen.models.upscalers import rrdb, srvgg
from animegen.models.upscalers.contract import UpscalerFormatError, UpscalerNet

CONTRACT = ("NAME", "DESCRIPTION", "matches", "build")

ARCHITECTURES: dict[str, ModuleType] = {}


def register(architecture: ModuleType) -> ModuleType:
    """Add an architecture module (TypeError naming what it lacks; ValueError if its NAME is taken)."""
    return register_module(ARCHITECTURES, architecture, key="NAME", contract=CONTRACT, what="upscaler architecture")


def names() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def build_network(state_dict: Mapping[str, torch.Tensor]) -> UpscalerNet:
    """The network `state_dict` holds, detected from its keys and shapes alone."""
    if not state_dict:
        raise UpscalerFormatError("the upscaler file holds no tensors; give an ESRGAN-family .safetensors or .pth")
    for architecture in ARCHITECTURES.values():
        if architecture.matches(state_dict.keys()):
            return architecture.build(state_dict)
    keys = sorted(state_dict)
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    supported = "; ".join(f"{a.NAME}: {a.DESCRIPTION}" for a in ARCHITECTURES.values())
    raise UpscalerFormatError(f"unknown upscaler architecture (keys: {shown}); supported: {supported}")


for _architecture in (rrdb, srvgg):
    register(_architecture)

__all__ = ["ARCHITECTURES", "CONTRACT", "build_network", "names", "register"]
