"""T2I-Adapters (TencentARC) from the files users have, as sd-webui-controlnet serves them (issue #15).

Contract. `load_adapter(path)` reads a diffusers `T2IAdapter` folder (config.json + weights), a diffusers-layout
`.safetensors` file (`adapter.conv_in.*`, `adapter.body.<i>.resnets.<r>.*`) or a file in TencentARC's original
layout (`conv_in.*`, `body.<i * nums_rb + r>.{in_conv,block1,block2}.*`, e.g. `t2iadapter_canny_sd15v2.pth`;
`.pth` only through `models.loading`'s pickle policy: weights_only) and returns diffusers' `T2IAdapter`.
`adapter_features(adapter, hint, weight)` is the adapter run once on the hint (RGB in [0, 1], N x 3 x H x W),
every feature times `weight`: the list the UNet gets as `down_intrablock_additional_residuals` (one feature per
down block, added after the block's last layer, before its downsampler: the extension's input blocks 2, 5, 8, 11).

The original layout maps onto diffusers' `FullAdapter` (SD1: pixel-unshuffle 8, a downsample at levels 1..3)
or `FullAdapterXL` (unshuffle 16, a width change without downsampling at level 1, a downsample at level 2),
decided by conv_in's input width (64 * c for SD1, 256 * c for SDXL). A 1-channel adapter (conv_in input 64 or
256: canny, sketch) takes the hint's first channel, as the extension's `PlugableAdapter`. Where we differ: the
first-generation v1 adapters with `skep` shortcut convolutions (sk=False) are refused with a message, since
diffusers' adapter has no such shortcut; convert them with diffusers' script first.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from animegen.core.errors import AnimegenError

ADAPTER_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_adapter_state(state: dict) -> bool:
    """Whether a state dict is a T2I-Adapter's (original or diffusers layout)."""
    return ("conv_in.weight" in state and any(k.startswith("body.") for k in state)) or \
        "adapter.conv_in.weight" in state or "adapter.body.0.in_conv.weight" in state


def original_to_diffusers(state: dict, source: str = "adapter") -> tuple[dict, dict]:
    """(diffusers state dict, T2IAdapter config) of TencentARC's original layout; see the module docstring.

    body.<i*n + r>.block1/2 -> adapter.body.<i>.resnets.<r>.block1/2; body.<i*n>.in_conv -> adapter.body.<i>.in_conv.
    """
    if any(".skep." in k for k in state):
        raise AnimegenError(f"T2I-Adapter {source} is a first-generation adapter with skep shortcuts, which is not "
                            "supported; use a v2 adapter (t2iadapter_*_sd15v2) or a diffusers T2IAdapter folder")
    cin = state["conv_in.weight"].shape[1]
    xl = cin % 256 == 0 and cin // 256 in (1, 3)
    unshuffle = 16 if xl else 8
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
    widths: list[int] = []
    nums_rb = len(blocks) // 4  # four levels, as every released adapter
    if nums_rb == 0 or nums_rb * 4 != len(blocks):
        raise AnimegenError(f"T2I-Adapter {source}: {len(blocks)} body blocks do not split into 4 levels")
    out = {"adapter.conv_in.weight": state["conv_in.weight"], "adapter.conv_in.bias": state["conv_in.bias"]}
    for b in blocks:
        i, r = divmod(b, nums_rb)
        for name in ("block1", "block2"):
            for p in ("weight", "bias"):
                out[f"adapter.body.{i}.resnets.{r}.{name}.{p}"] = state[f"body.{b}.{name}.{p}"]
        if f"body.{b}.in_conv.weight" in state:
            for p in ("weight", "bias"):
                out[f"adapter.body.{i}.in_conv.{p}"] = state[f"body.{b}.in_conv.{p}"]
        if r == 0:
            widths.append(int(state[f"body.{b}.block1.weight"].shape[0]))
    config = {"in_channels": cin // unshuffle ** 2, "channels": widths, "num_res_blocks": nums_rb,
              "downscale_factor": unshuffle, "adapter_type": "full_adapter_xl" if xl else "full_adapter"}
    return out, config


def _diffusers_config(state: dict) -> dict:
    """A T2IAdapter config read from a diffusers-layout state dict (full, full_xl or light adapter)."""
    if "adapter.conv_in.weight" not in state:  # light adapter: no conv_in, body.<i>.in_conv/out_conv
        cin = state["adapter.body.0.in_conv.weight"].shape[1]
        n = len({k.split(".")[2] for k in state if k.startswith("adapter.body.")})
        widths = [int(state[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in range(n - 1)]
        rb = len({k.split(".")[4] for k in state if k.startswith("adapter.body.0.resnets.")})
        return {"in_channels": cin // 64, "channels": widths, "num_res_blocks": rb, "downscale_factor": 8,
                "adapter_type": "light_adapter"}
    cin = state["adapter.conv_in.weight"].shape[1]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("adapter.body.")})
    widths = [int(state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in levels]
    rb = len({k.split(".")[4] for k in state if k.startswith("adapter.body.0.resnets.")})
    xl = len(widths) == 4 and widths[1] != widths[0] and "adapter.body.1.in_conv.weight" in state \
        and cin % 256 == 0 and cin // 256 in (1, 3)
    unshuffle = 16 if xl else 8
    return {"in_channels": cin // unshuffle ** 2, "channels": widths, "num_res_blocks": rb,
            "downscale_factor": unshuffle, "adapter_type": "full_adapter_xl" if xl else "full_adapter"}


def load_adapter(path: str | os.PathLike):
    """diffusers' `T2IAdapter` from a folder or a weights file; see the module docstring."""
    from diffusers import T2IAdapter

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AnimegenError(f"T2I-Adapter folder {path} has no config.json; give a diffusers T2IAdapter folder")
        return T2IAdapter.from_pretrained(path, local_files_only=True).eval()
    if path.suffix.lower() not in ADAPTER_SUFFIXES:
        raise AnimegenError(f"T2I-Adapter {path}: expected a .safetensors or .pth file or a diffusers folder")
    from animegen.core.files import read_weights

    state, _ = read_weights(path, allow_pickle=path.suffix.lower() != ".safetensors")
    return adapter_from_state(state, str(path))


def adapter_from_state(state: dict, source: str = "adapter"):
    """diffusers' `T2IAdapter` holding `state` (original or diffusers layout)."""
    from diffusers import T2IAdapter

    if not is_adapter_state(state):
        raise AnimegenError(f"{source} is not a T2I-Adapter (no conv_in.* / body.* or adapter.* keys)")
    if "conv_in.weight" in state:
        state, config = original_to_diffusers(state, source)
    else:
        config = _diffusers_config(state)
    model = T2IAdapter(**config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AnimegenError(f"T2I-Adapter {source} does not match its detected layout {config}: "
                            f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def adapter_features(adapter, hint: torch.Tensor, weight: float = 1.0) -> list[torch.Tensor]:
    """The adapter's features of `hint` (N x 3 x H x W in [0, 1]) times `weight`; a 1-channel adapter sees
    channel 0 (the extension's `PlugableAdapter`)."""
    if adapter.config.in_channels == 1:
        hint = hint[:, :1]
    with torch.no_grad():
        features = adapter(hint.to(adapter.dtype))
    return [f * weight for f in features]


def is_adapter_path(path: str | os.PathLike) -> bool:
    """Whether `path` holds a T2I-Adapter (a diffusers folder whose config names T2IAdapter, or a weights file with
    adapter keys), read without loading the tensors of a safetensors file."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("_class_name") == "T2IAdapter"
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        return is_adapter_state(dict.fromkeys(keys))
    return path.suffix.lower() in (".pth", ".pt", ".bin")
