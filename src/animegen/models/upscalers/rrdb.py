"""RRDBNet: ESRGAN, Real-ESRGAN (x4plus, x4plus_anime_6B = "R-ESRGAN 4x+ Anime6B", x2plus), BSRGAN/RealSR and
the community's ESRGAN models (4x-AnimeSharp, 4x-UltraSharp, ...), in any of their three key layouts.

Forward (Wang et al. 2018, ESRGAN; BasicSR `rrdbnet_arch.py` as Real-ESRGAN uses it): `conv_first`; a trunk
of RRDB blocks, each three residual dense blocks (five 3x3 convs, each seeing the block input and every
earlier output, LeakyReLU 0.2 after the first four, residual scaled by 0.2), the block's residual scaled
by 0.2 again; `conv_body` added to the trunk input; then per `conv_upN` a nearest x2 upsample, the conv and
LeakyReLU; `conv_hr` + LeakyReLU, `conv_last`. Real-ESRGAN's x2 / x1 models first pixel-unshuffle the
input by 2 / 4 (detected from `conv_first`'s input channels = 3 * 4 or 3 * 16).

Layouts, all converted to the Real-ESRGAN ("new") names this module's network uses:

- new (Real-ESRGAN / BasicSR): `conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_up1/2[/3]`, `conv_hr`,
  `conv_last`;
- old (original ESRGAN, most community models): `model.0` (first conv), `model.1.sub.N.RDBK.convJ.0`,
  `model.1.sub.<blocks>` (trunk conv), then a flattened sequence of [upsample, conv, LeakyReLU] per x2,
  the HR conv and the last conv: the `model.I` convs after index 1 are the upsampling convs in order, then
  `conv_hr`, then `conv_last`;
- BSRGAN / RealSR: `RRDB_trunk.N.RDBK.convJ`, `trunk_conv`, `upconvN`, `HRconv`, `conv_last`.

Scale = 2 ** (number of upsampling convs) / unshuffle factor; blocks, feature width (`conv_first`'s
outputs) and growth channels (`rdb1.conv1`'s outputs) come from the tensors. Variants with other layers
(ESRGAN+ `conv1x1`, scale-3 upsamplers, ...) fail `load_exact` naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from animegen.models.upscalers.contract import UpscalerFormatError, UpscalerNet, load_exact

NAME = "RRDBNet"
DESCRIPTION = "ESRGAN / Real-ESRGAN / BSRGAN RRDBNet (model.N..., conv_first/body.N.rdbK, RRDB_trunk)"

_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)$")
_BSR_BLOCK = re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.(.+)$")
_BSR_RENAMES = {"trunk_conv.": "conv_body.", "upconv": "conv_up", "HRconv.": "conv_hr."}


def layout(keys) -> str | None:
    """Which RRDBNet key layout `keys` is in ("new", "old", "bsrgan"), or None."""
    keys = set(keys)
    if {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight"} <= keys:
        return "new"
    if {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"} <= keys:
        return "old"
    if {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight", "conv_last.weight"} <= keys:
        return "bsrgan"
    return None


def matches(keys) -> bool:
    return layout(keys) is not None


def _from_old(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    blocks = {int(m.group(1)) for k in state if (m := _OLD_BLOCK.match(k))}
    trunk_index = max(blocks) + 1
    out: dict[str, torch.Tensor] = {}
    top = sorted({int(m.group(1)) for k in state if (m := _OLD_TOP.match(k)) and m.group(1) not in ("0", "1")})
    tail = {i: f"conv_up{n + 1}" for n, i in enumerate(top[:-2])}
    if len(top) >= 2:
        tail[top[-2]], tail[top[-1]] = "conv_hr", "conv_last"
    for key, value in state.items():
        if m := _OLD_BLOCK.match(key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}.{m.group(4)}"] = value
        elif (m := _OLD_TRUNK.match(key)) and int(m.group(1)) == trunk_index:
            out[f"conv_body.{m.group(2)}"] = value
        elif (m := _OLD_TOP.match(key)) and m.group(1) == "0":
            out[f"conv_first.{m.group(2)}"] = value
        elif (m := _OLD_TOP.match(key)) and int(m.group(1)) in tail:
            out[f"{tail[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            out[key] = value  # not part of the layout: load_exact names it
    return out


def _from_bsrgan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _BSR_BLOCK.match(key):
            key = f"body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}"
        for old, new in _BSR_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def to_new_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` under the Real-ESRGAN names (keys outside the recognised layout are kept as they are)."""
    kind = layout(state)
    if kind == "old":
        return _from_old(state)
    if kind == "bsrgan":
        return _from_bsrgan(state)
    return dict(state)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        for j in range(1, 6):
            self.add_module(f"conv{j}", _conv(features + (j - 1) * growth, growth if j < 5 else features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for j in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{j}")(torch.cat(seen, 1)), 0.2))
        return self.conv5(torch.cat(seen, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(features, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(UpscalerNet):
    """ESRGAN's generator, with Real-ESRGAN's pixel-unshuffled input for its x2 / x1 models."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, features: int = 64, blocks: int = 23,
                 growth: int = 32, upsamples: int = 2, unshuffle: int = 1):
        scale, remainder = divmod(2 ** upsamples, unshuffle)
        if remainder:
            raise UpscalerFormatError(f"an RRDBNet with {upsamples} x2 upsamples cannot undo a pixel unshuffle by "
                                      f"{unshuffle}; supported: unshuffle 1, 2 or 4 with scale >= 1")
        super().__init__(scale, unshuffle, architecture=NAME, blocks=blocks, features=features, growth=growth,
                         unshuffle=unshuffle)
        self.unshuffle = unshuffle
        self.conv_first = _conv(in_channels * unshuffle * unshuffle, features)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = _conv(features, features)
        self.upsamples = upsamples
        for n in range(1, upsamples + 1):
            self.add_module(f"conv_up{n}", _conv(features, features))
        self.conv_hr = _conv(features, features)
        self.conv_last = _conv(features, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for n in range(1, self.upsamples + 1):
            feat = F.leaky_relu(getattr(self, f"conv_up{n}")(F.interpolate(feat, scale_factor=2.0, mode="nearest")),
                                0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def build(state: Mapping[str, torch.Tensor]) -> RRDBNet:
    """The RRDBNet `state` describes (its shape read from the tensors), with `state` loaded."""
    kind = layout(state)
    sd = to_new_layout(state)
    first, last = sd["conv_first.weight"], sd["conv_last.weight"]
    in_channels, out_channels = int(first.shape[1]), int(last.shape[0])
    unshuffle = next((r for r in (4, 2) if in_channels == out_channels * r * r), 1)
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body.") and k.split(".")[1].isdigit())
    upsamples = sum(1 for k in sd if re.fullmatch(r"conv_up\d+\.weight", k))
    growth = int(sd["body.0.rdb1.conv1.weight"].shape[0])
    net = RRDBNet(in_channels=in_channels // (unshuffle * unshuffle), out_channels=out_channels,
                  features=int(first.shape[0]), blocks=blocks, growth=growth, upsamples=upsamples,
                  unshuffle=unshuffle)
    found = f"an {NAME} ({kind} layout, {blocks} blocks, {int(first.shape[0])} features, x{net.scale})"
    return load_exact(net, sd, found)


__all__ = ["DESCRIPTION", "NAME", "RRDBNet", "build", "layout", "matches", "to_new_layout"]
