"""Upscaler models users have — ESRGAN / Real-ESRGAN RRDBNets (R-ESRGAN 4x+, 4x+ Anime6B, x2plus, 4x-AnimeSharp,
4x-UltraSharp, BSRGAN, ...) and Real-ESRGAN's compact SRVGGNets (realesr-animevideov3, general-x4v3) — from
`.safetensors` or, under the pickle policy, `.pth`; tiled so large images fit in memory. The built-in
"Lanczos", "Nearest" and "None" are the PIL upscalers of `generate.upscale`. Which upscalers exist (the
built-ins plus the model files of the upscaler folders, by file stem) is `listing.list_upscalers`.

Contract of `upscale_image(image, upscaler, scale, *, tile=192, overlap=8, allow_pickle=False, device=None)`
(A1111 1.10's `Upscaler.upscale` for one upscaler):

- `upscaler` is a built-in name (any case) or the path of a weights file. The target is
  (side * scale) // 8 * 8 on each side. Built-ins are `generate.upscale.upscaler_upscale`.
- A model runs on the RGB pixels in [0, 1] (one pass per x`net.scale`, tiled by `tiling.tiled_forward`),
  repeated while the result is still smaller than the target (at most 3 passes, as A1111), clamped,
  rounded to 8 bits; when that is not the target size, a Lanczos resize reaches it (so scale 2 with a 4x
  model is the 4x result resized down, as in A1111).
- Architectures are a registry (`architectures`: one module per architecture behind one contract), detected
  from the state dict's keys and shapes alone: `rrdb` (ESRGAN old `model.N` layout, Real-ESRGAN new layout,
  BSRGAN layout; scale 1/2/4/8 incl. Real-ESRGAN's pixel-unshuffled x2/x1 input) and `srvgg`. An unknown
  layout is an `UpscalerFormatError` naming the keys found and the supported architectures.

Why our own architectures: spandrel (the well-kept library A1111 and ComfyUI use) declares `torchvision` in
its Requires-Dist (checked: spandrel 0.4.2), and torchvision must not become a dependency here (its wheel in
this environment is CUDA-linked and fails to import on CPU torch). The networks are written from the papers
and the reference sources' semantics (BasicSR `rrdbnet_arch.py`, Real-ESRGAN `srvgg_arch.py`, spandrel's key
detection), and tested against forwards written from the equations.

Where we differ from A1111: A1111 1.10 feeds ESRGAN models BGR (`pil_image_to_torch_bgr`); the released
models were trained on RGB (Real-ESRGAN converts cv2's BGR to RGB before its network), so we feed RGB, as
spandrel's own callers and Real-ESRGAN do. Tiles keep context instead of blending (see `tiling`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.models.upscalers import architectures
from animegen.models.upscalers.contract import UpscalerFormatError, UpscalerNet
from animegen.models.upscalers.listing import UpscalerEntry, list_upscalers, model_upscalers, upscaler_folders
from animegen.models.upscalers.loading import load_upscaler, read_upscaler_weights, upscaler_from_state_dict
from animegen.models.upscalers.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, tiled_forward

#: A1111 runs a model at most this many times to reach the target (`Upscaler.upscale`).
MAX_PASSES = 3


def builtin_upscaler(name: object) -> str | None:
    """The canonical built-in upscaler called `name` (any case), or None for anything else (e.g. a path)."""
    from animegen.generate.upscale import UPSCALERS

    return {n.lower(): n for n in UPSCALERS}.get(str(name).strip().lower())


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.clamp(0, 1) * 255).round_().to(torch.uint8)


def run_network(net: UpscalerNet, image: Image.Image, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                device: str | torch.device | None = None) -> Image.Image:
    """One pass of `net` over an image: RGB in [0, 1], tiled forward, clamped and rounded to 8-bit RGB."""
    device = torch.device(device) if device is not None else _default_device()
    net = net.to(device)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device)
        y = tiled_forward(net, x, tile=tile, overlap=overlap, finish=_to_uint8)
        out = y[0].permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out, "RGB")


def upscale_image(image: Image.Image, upscaler: str | os.PathLike, scale: float, *, tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, allow_pickle: bool = False,
                  device: str | torch.device | None = None) -> Image.Image:
    """`image` upscaled by `scale` with a built-in or a model upscaler (see the module docstring)."""
    from animegen.generate.upscale import UPSCALERS, upscaler_upscale

    if not scale > 0:
        raise UpscalerFormatError(f"the upscale factor must be > 0, got {scale}")
    dest = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
    if min(dest) < 1:
        raise UpscalerFormatError(f"a {image.width}x{image.height} image scaled by {scale} is smaller than 8 pixels "
                                  "on a side (targets are rounded down to multiples of 8); use a larger scale")
    name = builtin_upscaler(upscaler)
    if name is not None:
        return upscaler_upscale(image, scale, name)
    path = Path(upscaler)
    if not path.is_file():
        raise UpscalerFormatError(f"upscaler {str(upscaler)!r} is neither a built-in ({', '.join(UPSCALERS)}) nor a "
                                  "file; give the path of an ESRGAN-family .safetensors (or, with allow_pickle, .pth)")
    net = load_upscaler(path, allow_pickle=allow_pickle)
    image = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if image.width >= dest[0] and image.height >= dest[1]:
            break
        image = run_network(net, image, tile=tile, overlap=overlap, device=device)
    return image if image.size == dest else image.resize(dest, resample=Image.LANCZOS)


__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "MAX_PASSES", "UpscalerEntry", "UpscalerFormatError", "UpscalerNet",
           "architectures", "builtin_upscaler", "list_upscalers", "load_upscaler", "model_upscalers",
           "read_upscaler_weights", "run_network", "tiled_forward", "upscale_image", "upscaler_folders",
           "upscaler_from_state_dict"]
