"""Reading an upscaler file into its network: `.safetensors` always, `.pth` / `.pt` only under the pickle policy.

- `.safetensors` files are read with `core.files.read_safetensors`; `.pth`/`.pt`/`.ckpt`/`.bin` with
  `core.files.load_torch_file` (refused unless `allow_pickle`, then `weights_only=True`): never `torch.load`
  directly.
- Real-ESRGAN's releases wrap the tensors: `{"params_ema": {...}}` (the EMA weights, which it ships for
  inference) and/or `{"params": {...}}`; `params_ema` wins when both are present, as in Real-ESRGAN's
  `RealESRGANer`. A `state_dict` wrapper is unwrapped too.
- The architecture, scale, block count and widths are detected from the tensors (`architectures`); an
  unknown layout names the keys found and the supported architectures.
- `load_upscaler` keeps the last few networks in memory, keyed by the file's resolved path, size and mtime, so
  upscaling many images with one model reads it once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from animegen.core.files import (
    PICKLE_SUFFIXES,
    load_torch_file,
    read_safetensors,
    refuse_pickle_unless_allowed,
)
from animegen.models.upscalers.architectures import build_network
from animegen.models.upscalers.contract import UpscalerFormatError, UpscalerNet

WRAPPERS = ("params_ema", "params", "state_dict")


def unwrap(obj: object, path: str | os.PathLike = "the file") -> dict[str, torch.Tensor]:
    """The tensors of a loaded upscaler object, without Real-ESRGAN's / Lightning's wrapper dicts."""
    if isinstance(obj, Mapping):
        for wrapper in WRAPPERS:
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise UpscalerFormatError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; give an "
                                  "ESRGAN-family .safetensors or .pth state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_upscaler_weights(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The unwrapped tensors of an upscaler file (see the module docstring)."""
    path = Path(path)
    refuse_pickle_unless_allowed(path, allow_pickle)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return unwrap(load_torch_file(path, allow_pickle=allow_pickle), path)
    tensors, _ = read_safetensors(path)
    return unwrap(tensors, path)


def upscaler_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> UpscalerNet:
    """The network (eval mode, float32, CPU) that `state_dict` holds, its architecture detected from the keys."""
    return build_network(unwrap(state_dict))


@functools.lru_cache(maxsize=2)
def _cached(resolved: str, size: int, mtime_ns: int, allow_pickle: bool) -> UpscalerNet:
    net = upscaler_from_state_dict(read_upscaler_weights(resolved, allow_pickle=allow_pickle))
    return net


def load_upscaler(path: str | os.PathLike, *, allow_pickle: bool = False) -> UpscalerNet:
    """The network in the upscaler file at `path` (cached; see the module docstring)."""
    path = Path(path)
    refuse_pickle_unless_allowed(path, allow_pickle)
    stat = path.stat()
    try:
        return _cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, allow_pickle)
    except UpscalerFormatError as exc:
        message = str(exc)
        raise UpscalerFormatError(message if str(path) in message else f"{path}: {message}") from None


__all__ = ["WRAPPERS", "load_upscaler", "read_upscaler_weights", "unwrap", "upscaler_from_state_dict"]
