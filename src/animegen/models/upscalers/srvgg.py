"""SRVGGNetCompact: Real-ESRGAN's compact networks (realesr-animevideov3, realesr-general-x4v3, and the
community's "Compact" models).

Forward (Real-ESRGAN `srvgg_arch.py`): `body.0` 3x3 conv, then `convs` times [PReLU, 3x3 conv] with one
PReLU slope per feature (`body.1`, `body.3`, ...), a last PReLU and a 3x3 conv to 3 * scale ** 2 channels,
pixel shuffle by `scale`, plus the input upsampled by `scale` with nearest. The keys are `body.N.weight`
(4-d for convs, 1-d for PReLU slopes) and `body.N.bias` for convs.

Detected from the tensors: features = `body.0`'s outputs, convs = (last index - 2) / 2, scale =
sqrt(last conv's outputs / 3). Upstream also allows ReLU / LeakyReLU activations, which leave no tensor
behind; files store PReLU slopes for every released model, and a file without them is refused by
`load_exact` (its keys differ).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from animegen.models.upscalers.contract import UpscalerFormatError, UpscalerNet, load_exact

NAME = "SRVGGNetCompact"
DESCRIPTION = "Real-ESRGAN compact SRVGGNet (body.N.weight, PReLU, pixel shuffle)"

_BODY = re.compile(r"body\.(\d+)\.(weight|bias)$")


def matches(keys) -> bool:
    keys = set(keys)
    return {"body.0.weight", "body.0.bias", "body.1.weight"} <= keys and all(_BODY.match(k) for k in keys)


class SRVGGNetCompact(UpscalerNet):
    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, features: int = 64, convs: int = 16,
                 scale: int = 4):
        super().__init__(scale, 1, architecture=NAME, convs=convs, features=features)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, 1, 1)]
        for i in range(convs + 1):
            layers.append(nn.PReLU(features))
            layers.append(nn.Conv2d(features, features if i < convs else out_channels * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=float(self.scale),
                                                                         mode="nearest")


def build(state: Mapping[str, torch.Tensor]) -> SRVGGNetCompact:
    """The SRVGGNetCompact `state` describes, with `state` loaded."""
    last = max(int(m.group(1)) for k in state if (m := _BODY.match(k)))
    first, final = state["body.0.weight"], state.get(f"body.{last}.weight")
    in_channels, features = int(first.shape[1]), int(first.shape[0])
    scale = math.isqrt(int(final.shape[0]) // in_channels) if final is not None and final.ndim == 4 else 0
    if last % 2 or last < 2 or scale < 1 or scale * scale * in_channels != final.shape[0]:
        raise UpscalerFormatError(
            f"this looks like a {NAME} but its last layer body.{last} is not a conv to 3 * scale ** 2 channels "
            f"(found {tuple(final.shape) if final is not None else 'no weight'}); the file is damaged or another "
            "architecture")
    convs = (last - 2) // 2
    net = SRVGGNetCompact(in_channels=in_channels, out_channels=in_channels, features=features, convs=convs,
                          scale=scale)
    return load_exact(net, state, f"a {NAME} ({convs} convs, {features} features, x{scale})")


__all__ = ["DESCRIPTION", "NAME", "SRVGGNetCompact", "build", "matches"]
