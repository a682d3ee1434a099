"""The hires fix's geometry and upscalers, as A1111 1.10's `StableDiffusionProcessingTxt2Img` computes them.

Contract (A1111 `processing.calculate_target_resolution`, `sample_hr_pass`, `shared.latent_upscale_modes`,
`images.resize_image`, `upscaler.Upscaler.upscale`):

- `hires_target(width, height, scale, resize_x, resize_y)`: with no resize the pass upscales to
  int(width * scale) x int(height * scale). With "Hires resize" WxH, one side 0 keeps the aspect ratio; both
  set, the image is upscaled to cover WxH (the other side by integer division) and the latents are then
  centre-cropped by `truncate` latent pixels ((upscaled - target) // 8, the odd one from the bottom/right).
- Latent upscalers interpolate the first pass's latents to (height // 8, width // 8) with
  `torch.nn.functional.interpolate` and A1111's mode table: Latent = bilinear, (antialiased) = bilinear with
  antialias, (bicubic), (bicubic antialiased), (nearest), (nearest-exact).
- Pixel upscalers get the first pass as 8-bit pixels (A1111 truncates, `astype(uint8)`): "Lanczos" / "Nearest"
  resize to int(side * s) with s = max(W / w, H / h), then Lanczos to (side * s) // 8 * 8, then Lanczos to W x H
  (A1111's Upscaler.upscale then resize_image); "None" is one Lanczos resize. The result is VAE-encoded at its
  own size (not rounded to 8), as A1111 encodes it.
- Model upscalers (ESRGAN / Real-ESRGAN / SRVGG files, `models.upscalers`) are pixel upscalers too: the 8-bit
  first pass is upscaled by s with the network (`models.upscalers.upscale_image`: passes until it covers
  (side * s) // 8 * 8, then Lanczos to that) and Lanczos-resized to W x H, as A1111's resize_image with an
  ESRGAN upscaler (decode -> upscale -> encode).

Names: `hires_upscaler(name)` is the request-level check: a built-in (any case) comes back canonical, any other
non-empty name is kept as given, since only the generator knows its upscaler folders.
`find_hires_upscaler(name, folders, ...)` resolves a name where the folders are known (the engine before any
sampling, the CLI and the server before queueing): a built-in, a model file's stem in the folders
(`models.upscalers.listing`; exact, else ignoring case), or (`allow_path`, for trusted callers) a file's path;
anything else is an error listing every valid name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from animegen.core.errors import AnimegenError

LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {  # A1111's shared.latent_upscale_modes: (mode, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("Lanczos", "Nearest", "None")
HIRES_UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)
DEFAULT_HIRES_UPSCALER = "Latent"  # A1111's UI default, and what its API uses when hr_upscaler is unset
_LOOKUP = {name.lower(): name for name in HIRES_UPSCALERS}


def hires_upscaler(name: object, field: str = "hires_upscaler") -> str:
    """A built-in's canonical name (any case), else `name` as given: a model upscaler, resolved by the generator."""
    text = str(name).strip() if isinstance(name, str | os.PathLike) else ""
    if not text:
        raise AnimegenError(f"{field} {name!r} is not an upscaler name; use one of: {', '.join(HIRES_UPSCALERS)}, "
                            "or a model upscaler's name")
    return _LOOKUP.get(text.lower(), text)


def find_hires_upscaler(name: object, folders: Iterable[str | os.PathLike | None] = (), *,
                        known: Mapping[str, Path] | None = None, allow_pickle: bool = False,
                        allow_path: bool = True, field: str = "hires_upscaler") -> tuple[str, Path | None]:
    """(name, model file or None for a built-in) of a hires upscaler (see the module docstring); `known` names
    (files the caller was given by path before) win over the folders'. Unknown names are an error listing the
    valid ones."""
    text = hires_upscaler(name, field)
    if text in HIRES_UPSCALERS:
        return text, None
    folders = [Path(f) for f in folders if f is not None]
    from animegen.models.upscalers.listing import model_upscalers

    models = {**model_upscalers(folders, allow_pickle=allow_pickle), **(known or {})}  # known names win
    for candidate in (text, *(n for n in models if n.lower() == text.lower())):
        if candidate in models:
            return candidate, models[candidate]
    path = Path(text).expanduser()
    if allow_path and path.is_file():
        from animegen.core.files import refuse_pickle_unless_allowed

        refuse_pickle_unless_allowed(path, allow_pickle)
        return path.stem, path
    where = ", ".join(str(f) for f in folders) or "no upscaler folder given"
    listed = ", ".join(models) or "none"
    raise AnimegenError(f"{field} {text!r} is not an upscaler animegen has; use one of: {', '.join(HIRES_UPSCALERS)}"
                        f", or a model upscaler in the upscaler folders ({where}): {listed}")


@dataclass(frozen=True)
class HiresTarget:
    """Where the hires pass upscales to (A1111's hr_upscale_to_x/y) and the latent crop after it."""

    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0


def hires_target(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> HiresTarget:
    """A1111's `calculate_target_resolution` (without its "old hires fix" option)."""
    if not resize_x and not resize_y:
        return HiresTarget(int(width * scale), int(height * scale))
    if not resize_y:
        return HiresTarget(resize_x, resize_x * height // width)
    if not resize_x:
        return HiresTarget(resize_y * width // height, resize_y)
    if width / height < resize_x / resize_y:
        up_x, up_y = resize_x, resize_x * height // width
    else:
        up_x, up_y = resize_y * width // height, resize_y
    return HiresTarget(up_x, up_y, (up_x - resize_x) // 8, (up_y - resize_y) // 8)


def upscale_latents(latents, target: HiresTarget, upscaler: str):
    """Latents interpolated to the target's latent size with the upscaler's mode (A1111's latent hires)."""
    import torch

    mode, antialias = LATENT_UPSCALERS[upscaler]
    return torch.nn.functional.interpolate(latents, size=(target.height // 8, target.width // 8), mode=mode,
                                           antialias=antialias)


def crop_latents(latents, target: HiresTarget):
    """A1111's centre crop after a cover-resize: truncate // 2 from the top/left, the rest from the bottom/right."""
    tx, ty = target.truncate_x, target.truncate_y
    return latents[:, :, ty // 2:latents.shape[2] - (ty + 1) // 2, tx // 2:latents.shape[3] - (tx + 1) // 2]


def upscale_image(image, target: HiresTarget, upscaler: str | os.PathLike, *, allow_pickle: bool = False,
                  device=None):
    """One 8-bit PIL image resized to the target by a pixel upscaler: a built-in name or a model file's path
    (A1111's resize_image, mode 0)."""
    from PIL import Image

    from animegen.generate.upscale import upscaler_upscale  # its home; upscale imports this module

    w, h = target.width, target.height
    if upscaler != "None":
        scale = max(w / image.width, h / image.height)
        if scale > 1.0 and isinstance(upscaler, str) and upscaler in PIXEL_UPSCALERS:
            image = upscaler_upscale(image, scale, upscaler)
        elif scale > 1.0:
            from animegen.models.upscalers import upscale_image as model_upscale

            image = model_upscale(image, upscaler, scale, allow_pickle=allow_pickle, device=device)
    if image.size != (w, h):
        image = image.resize((w, h), resample=Image.LANCZOS)
    return image
