"""Base64 image coding for the API: PNGs out (with infotext), validated images in (size-checked first)."""

from __future__ import annotations

import base64
import binascii
import io
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from animegen.core.errors import AnimegenError
from animegen.generate.infotext import png_with_infotext


class BadImageError(AnimegenError):
    """An uploaded image could not be decoded or is too large; `field` names the request field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Base64 PNG with the infotext in its `parameters` chunk, as A1111 returns images."""
    buffer = io.BytesIO()
    pnginfo = png_with_infotext(image, infotext) if infotext else None
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, *, field: str, max_pixels: int) -> Image.Image:
    """Decode a base64 (or `data:image/...;base64,`) image; reject bombs before decoding pixels.

    The returned image is fully loaded and keeps its PNG text chunks in `.info`.
    """
    text = data.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise BadImageError(field, "is not valid base64") from None
    if not raw:
        raise BadImageError(field, "is empty")
    return open_image(io.BytesIO(raw), field=field, max_pixels=max_pixels)


def open_image(source: BinaryIO, *, field: str, max_pixels: int) -> Image.Image:
    """Open an uploaded image (API body or UI upload) and refuse it by its header when over `max_pixels`.

    The returned image is fully loaded and keeps its PNG text chunks in `.info`.
    """
    try:
        image = Image.open(source)
        width, height = image.size
        if width * height > max_pixels:
            raise BadImageError(field, f"image is {width}x{height}; the server accepts at most {max_pixels} pixels")
        image.load()
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise BadImageError(field, f"is not a readable image ({exc})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy, compositing transparency onto white (what a model expects as an init image)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
