"""What every upscaler network is, and the one strict check of a state dict against it.

An upscaler network (`UpscalerNet`) is a `torch.nn.Module` mapping an RGB batch in [0, 1], shape
(B, 3, H, W), to (B, 3, H * scale, W * scale), unclamped. It carries:

- ``scale``: the integer factor of one forward pass;
- ``input_multiple``: H and W must be multiples of it (2 or 4 for Real-ESRGAN's pixel-unshuffled x2 / x1
  RRDBNets, else 1); `tiling.tiled_forward` pads to it;
- ``info``: what the state dict said (architecture name, block count, feature width, ...), for messages
  and tests.

`load_exact(net, state_dict, found)` loads weights only when the key set and every shape match the built
network, so a file of a variant we do not implement (ESRGAN+ `conv1x1`, another activation, ...) is an
`UpscalerFormatError` naming the keys that differ, never a silently half-loaded network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from animegen.core.errors import AnimegenError


class UpscalerFormatError(AnimegenError):
    """An upscaler file or setting animegen cannot use; the message names what was found and what is supported."""


class UpscalerNet(torch.nn.Module):
    """The base of every upscaler architecture (see the module docstring)."""

    scale: int
    input_multiple: int
    info: dict[str, Any]

    def __init__(self, scale: int, input_multiple: int, **info: Any):
        super().__init__()
        self.scale, self.input_multiple = scale, input_multiple
        self.info = {"scale": scale, **info}

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.info.items())


def _listed(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_exact(net: UpscalerNet, state_dict: Mapping[str, torch.Tensor], found: str) -> UpscalerNet:
    """`net` with `state_dict` loaded (float32, eval mode), or an UpscalerFormatError naming every mismatch.

    `found` says which layout was recognised, e.g. "an ESRGAN (old layout) RRDBNet with 23 blocks".
    """
    expected = net.state_dict()
    unexpected, missing = set(state_dict) - set(expected), set(expected) - set(state_dict)
    problems = []
    if unexpected:
        problems.append(f"keys this architecture does not have: {_listed(unexpected)}")
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state_dict.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        problems.append(f"shapes that do not fit: {', '.join(wrong[:4])}")
    if problems:
        raise UpscalerFormatError(f"this looks like {found}, but its {'; '.join(problems)}; the file is a variant "
                                  "animegen does not implement, or it is damaged")
    net.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return net.eval().requires_grad_(False)


__all__ = ["UpscalerFormatError", "UpscalerNet", "load_exact"]
