"""Upscaling finished images with the built-in PIL upscalers, as A1111 1.10's "Extras" tab does it.

Contract (A1111 `modules/upscaler.py` `Upscaler.upscale`, `scripts/postprocessing_upscale.py`,
`modules/postprocessing.py`):

- The built-in upscalers are hires.PIXEL_UPSCALERS: "Lanczos" and "Nearest" (PIL resampling) and "None". Model
  upscalers (ESRGAN / Real-ESRGAN / SRVGG files) are named by the caller's `models` {name: file} (the listing
  is `models.upscalers.list_upscalers`) and run by `models.upscalers.upscale_image`, which is A1111's
  `Upscaler.upscale` for a model. Any other name is an `UpscaleError` listing the valid names.
- `upscaler_upscale(image, scale, name)` is A1111's `Upscaler.upscale`: the target is
  (side * scale) // 8 * 8; "Lanczos"/"Nearest" first resize to int(side * scale) with their filter, then a
  Lanczos resize reaches the target when it differs ("None" is that Lanczos resize alone). The hires fix's pixel
  upscalers (`hires.upscale_image`) call it too.
- `postprocess_upscale(image, settings)` is the Upscale step of A1111's postprocessing: the image is converted to
  RGB; resize_mode 0 scales by `scale`, resize_mode 1 scales by max(width / w, height / h) and, with `crop`,
  pastes the result centred on a black width x height canvas. `upscaler_1` "None" leaves the image as it is (A1111
  skips the step); `upscaler_2` at `upscaler_2_visibility` > 0 is blended over the first result
  (`Image.blend`). The returned `info` holds A1111's "Postprocess ..." fields in its order, and
  `postprocess_infotext(info)` writes them as A1111's `postprocessing` PNG text.

`output_size(...)` says how big the result will be before any pixel is resized, so a server can refuse a
request that would exceed its limits.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.generate.hires import PIXEL_UPSCALERS
from animegen.generate.infotext import quote

# A1111 lists "None" first (shared.sd_upscalers), then the built-in resamplers
UPSCALERS: tuple[str, ...] = ("None", *(name for name in PIXEL_UPSCALERS if name != "None"))
_FILTERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
_LOOKUP = {name.lower(): name for name in UPSCALERS}


class UpscaleError(AnimegenError):
    """An upscale setting animegen cannot honour; `field` names the setting (A1111's API field name)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def find_upscaler(name: object, field: str = "upscaler_1", models: Iterable[str] = ()) -> str:
    """The canonical name of a built-in upscaler (any case) or of one of `models` (exact, else ignoring case),
    or an UpscaleError naming `field` and the choices."""
    text = str(name).strip()
    models = list(models)
    found = _LOOKUP.get(text.lower()) or (text if text in models else None) or next(
        (m for m in models if m.lower() == text.lower()), None)
    if found is None:
        raise UpscaleError(field, f"{field} {name!r} is not an upscaler animegen has; use one of: "
                                  f"{', '.join([*UPSCALERS, *models])} (model upscalers: .safetensors files in the "
                                  "upscaler folders, by name)")
    return found


def upscaler_upscale(image: Image.Image, scale: float, name: str) -> Image.Image:
    """A1111's `Upscaler.upscale` for a built-in upscaler: `image` scaled by `scale` to a multiple of 8."""
    dest = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
    if name != "None":  # one filter step always covers dest, so A1111's up-to-3 repeats stop after it
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=_FILTERS[name])
    if image.size != dest:
        image = image.resize(dest, resample=Image.LANCZOS)
    return image


@dataclass(frozen=True)
class UpscaleSettings:
    """A1111's Extras upscale fields (`ExtrasBaseRequest`), with its defaults."""

    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    resize_mode: int = 0  # 0: scale by `scale`; 1: scale to width x height
    scale: float = 2.0  # upscaling_resize
    width: int = 512  # upscaling_resize_w
    height: int = 512  # upscaling_resize_h
    crop: bool = True  # upscaling_crop

    def checked(self, models: Iterable[str] = ()) -> UpscaleSettings:
        """These settings with canonical upscaler names (built-ins or `models`); an UpscaleError names the first
        bad field."""
        if self.resize_mode not in (0, 1):
            raise UpscaleError("resize_mode", f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if self.resize_mode == 0 and not self.scale > 0:
            raise UpscaleError("upscaling_resize", f"upscaling_resize must be > 0, got {self.scale}")
        if self.resize_mode == 1 and (self.width < 1 or self.height < 1):
            raise UpscaleError("upscaling_resize_w", f"upscaling_resize_w/h must be >= 1, got {self.width}x{self.height}")
        if not 0.0 <= self.upscaler_2_visibility <= 1.0:
            raise UpscaleError("extras_upscaler_2_visibility",
                               f"extras_upscaler_2_visibility must be in [0, 1], got {self.upscaler_2_visibility}")
        models = list(models)
        return UpscaleSettings(find_upscaler(self.upscaler_1, "upscaler_1", models),
                               find_upscaler(self.upscaler_2, "upscaler_2", models),
                               self.upscaler_2_visibility, self.resize_mode, self.scale, self.width, self.height,
                               self.crop)

    def factor(self, width: int, height: int) -> float:
        """The scale applied to a width x height image (A1111's upscale_by)."""
        return max(self.width / width, self.height / height) if self.resize_mode == 1 else self.scale


def output_size(width: int, height: int, settings: UpscaleSettings,
                models: Mapping[str, os.PathLike] | None = None) -> tuple[int, int]:
    """The size `postprocess_upscale` returns for a width x height image, computed without resizing anything."""
    s = settings.checked(models or {})
    if s.upscaler_1 == "None":
        return width, height
    if s.resize_mode == 1 and s.crop:
        return s.width, s.height
    factor = s.factor(width, height)
    return int(width * factor // 8 * 8), int(height * factor // 8 * 8)


def postprocess_upscale(image: Image.Image, settings: UpscaleSettings, models: Mapping[str, os.PathLike] | None = None,
                        *, allow_pickle: bool = False) -> tuple[Image.Image, dict[str, Any]]:
    """A1111's Extras upscale of one image with built-in or `models` ({name: file}) upscalers: (the RGB result,
    its "Postprocess ..." info fields)."""
    models = models or {}
    s = settings.checked(models)
    image = image.convert("RGB")
    info: dict[str, Any] = {}
    if s.upscaler_1 == "None":
        return image, info
    run = functools.partial(_upscale_once, models=models, allow_pickle=allow_pickle)
    result = run(image, s, s.upscaler_1, info)
    info["Postprocess upscaler"] = s.upscaler_1
    if s.upscaler_2 != "None" and s.upscaler_2_visibility > 0:
        second = run(image, s, s.upscaler_2, info)
        result = Image.blend(result, second.convert(result.mode), s.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = s.upscaler_2
    return result, info


def _upscale_once(image: Image.Image, s: UpscaleSettings, name: str, info: dict[str, Any], *,
                  models: Mapping[str, os.PathLike], allow_pickle: bool) -> Image.Image:
    """`ScriptPostprocessingUpscale.upscale`: one upscaler's pass, then the crop of resize mode 1."""
    if s.resize_mode == 1:
        info["Postprocess upscale to"] = f"{s.width}x{s.height}"
    else:
        info["Postprocess upscale by"] = s.scale
    factor = s.factor(image.width, image.height)
    if name not in UPSCALERS:  # a model's name (a built-in's name always means the built-in)
        from animegen.models.upscalers import upscale_image

        result = upscale_image(image, models[name], factor, allow_pickle=allow_pickle)
    else:
        result = upscaler_upscale(image, factor, name)
    if s.resize_mode == 1 and s.crop:
        canvas = Image.new("RGB", (s.width, s.height))
        canvas.paste(result, box=(s.width // 2 - result.width // 2, s.height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def postprocess_infotext(info: dict[str, Any]) -> str:
    """The `postprocessing` PNG text A1111 writes for these fields ("Key: value, ...", quoted as its infotext)."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


__all__ = ["UPSCALERS", "UpscaleError", "UpscaleSettings", "find_upscaler", "output_size", "postprocess_infotext",
           "postprocess_upscale", "upscaler_upscale"]
