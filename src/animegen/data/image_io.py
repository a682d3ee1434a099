"""The one place that reads images from disk: validates, normalises, and explains every failure.

Datasets scraped from the web contain zero-byte downloads, HTML error pages saved as `.jpg`, truncated
transfers, decompression bombs, CMYK scans, palette GIFs and 16-bit PNGs. Every reader in animegen goes
through `open_image` so they all agree on what an image is and get a human reason when it is not one.

Hostile bytes: Pillow's plugins raise far more than OSError on corrupt input (TypeError from a TIFF
without dimensions, struct.error, ZeroDivisionError, ...); every exception a decode raises becomes an
`ImageError` with the reason. Only regular files within a byte limit are opened
(`core.files.open_regular_file`).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animegen.core.errors import AnimegenError
from animegen.core.files import FileTooLargeError, NotRegularFileError, open_regular_file

#: Default pixel limit (width * height): ~ 16k x 16k. Large enough for any real illustration, small enough
#: that a crafted file cannot make us allocate gigabytes.
DEFAULT_MAX_PIXELS = 256_000_000
#: Default byte limit of one file (1 GiB): a 16k x 16k RGBA image stored uncompressed, the largest honest
#: file under the pixel limit. A giant or endless file is refused before it is read to its end.
DEFAULT_MAX_BYTES = 1 << 30

# PIL format name -> extensions that honestly carry it.
_FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jfif", ".jpe"},
    "PNG": {".png"},
    "WEBP": {".webp"},
    "GIF": {".gif"},
    "BMP": {".bmp", ".dib"},
    "TIFF": {".tif", ".tiff"},
    "MPO": {".jpg", ".jpeg", ".mpo"},
    "AVIF": {".avif"},
    "HEIF": {".heic", ".heif"},
}


class ImageError(AnimegenError):
    """An image that cannot be used, with the path and a human-readable reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class LoadedImage:
    """An image normalised to 8-bit RGB plus what had to be done to get there."""

    image: Image.Image
    format: str  # what the content is (PIL format name), whatever the extension says
    source_mode: str  # PIL mode before normalisation (P, CMYK, I;16, RGBA ...)
    n_frames: int
    transposed: bool  # an EXIF orientation was applied
    extension_mismatch: bool  # e.g. a PNG saved as `.jpg`

    @property
    def normalized(self) -> bool:
        """True when the decoded pixels differ from a plain copy of the file (re-encode on export)."""
        return (
            self.transposed
            or self.n_frames > 1
            or self.source_mode != "RGB"
            or self.format not in ("JPEG", "PNG", "WEBP")
        )


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _high_bit_depth_to_rgb(im: Image.Image) -> Image.Image:
    """I;16 / I / F greyscale -> 8-bit RGB. PIL's own convert clips everything above 255 to white."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = arr * scale
    elif arr.size and arr.max() > 255:
        arr = arr / 257.0  # 16-bit range onto 8 bits: 65535 -> 255
    arr = np.nan_to_num(arr).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one (print scans look wrong with a naive formula)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except (OSError, ValueError, ImageCms.PyCMSError):
            return im.convert("RGB")  # broken or unsupported profile: PIL's formula
    return im.convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (what taggers and trainers expect)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        return _composite_on_white(im) if "transparency" in im.info else im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in im.info):
        return _composite_on_white(im)
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(im)
    return im.convert("RGB")


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> LoadedImage:
    """Decode `path` into an 8-bit RGB image; raise `ImageError` with the reason if it is not usable.

    Only a regular file of at most `max_bytes` is opened (a FIFO or `/dev/zero` named `.png` is refused,
    not read). Whatever the decoder raises on hostile bytes becomes an `ImageError`, never a crash.
    """
    path = Path(path)
    try:
        with open_regular_file(path, max_bytes=max_bytes) as f:
            return _decode(path, f, max_pixels)
    except NotRegularFileError as e:
        raise ImageError(path, e.reason) from None
    except FileTooLargeError as e:
        raise ImageError(path, too_large_reason(e)) from None
    except OSError as e:
        raise ImageError(path, f"cannot read file: {e.strerror or e}") from None


def too_large_reason(e: FileTooLargeError) -> str:
    """The reason recorded for a file above the byte limit, naming the option that raises it."""
    return f"{e.reason} (raise --max-bytes if the file is genuine)"


def _decode(path: Path, f: BinaryIO, max_pixels: int) -> LoadedImage:
    if os.fstat(f.fileno()).st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                fmt = im.format or "unknown"
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageError(path, f"invalid dimensions {w}x{h}")
                if max_pixels and w * h > max_pixels:
                    raise ImageError(
                        path,
                        f"too large: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the limit of "
                        f"{max_pixels / 1e6:.0f} MP (possible decompression bomb; raise --max-pixels "
                        "if the file is genuine)",
                    )
                n_frames = getattr(im, "n_frames", 1) or 1
                if n_frames > 1:
                    im.seek(0)
                source_mode = im.mode
                im.load()
                exif_orientation = im.getexif().get(0x0112, 1)
                transposed_im = ImageOps.exif_transpose(im) if exif_orientation not in (1, None) else im
                rgb = to_rgb(transposed_im)
                if rgb is im:
                    rgb = im.copy()  # detach from the file handle
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, f"not an image ({_describe_content(f)})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"too large (possible decompression bomb): {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageError(path, f"truncated or incomplete image data ({msg})") from None
        raise ImageError(path, f"corrupt image data ({msg})") from None
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as e:  # noqa: BLE001 (plugins raise TypeError, struct.error, ... on hostile bytes)
        raise ImageError(path, f"corrupt image data ({type(e).__name__}: {e})") from None
    ext = path.suffix.lower()
    mismatch = bool(ext) and fmt in _FORMAT_EXTENSIONS and ext not in _FORMAT_EXTENSIONS[fmt]
    return LoadedImage(
        image=rgb,
        format=fmt,
        source_mode=source_mode,
        n_frames=n_frames,
        transposed=exif_orientation not in (1, None),
        extension_mismatch=mismatch,
    )


def open_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> Image.Image:
    """The validated, EXIF-transposed, first-frame, 8-bit RGB image at `path` (alpha on white).

    Raises `ImageError(path, reason)` for empty, truncated, non-image, oversized, corrupt or special files.
    """
    return read_image(path, max_pixels=max_pixels, max_bytes=max_bytes).image


def _describe_content(f: BinaryIO) -> str:
    """A short guess at what a non-image file is, so the report says e.g. 'looks like HTML'."""
    try:
        f.seek(0)
        head = f.read(512)
    except OSError:
        return "unreadable"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page, probably a failed download"
    if stripped.startswith(b"<svg") or b"<svg" in stripped[:200]:
        return "looks like SVG vector graphics; rasterise it first"
    if stripped.startswith((b"{", b"[")):
        return "looks like JSON text"
    if head.startswith(b"PK\x03\x04"):
        return "looks like a ZIP archive"
    try:
        head.decode("utf-8")
        return "looks like a text file"
    except UnicodeDecodeError:
        return "unknown binary format"


def perceptual_hash(image: Image.Image, hash_size: int = 8) -> str:
    """DCT perceptual hash (imagehash.phash) as hex; near duplicates differ in only a few bits."""
    import imagehash

    return str(imagehash.phash(image, hash_size=hash_size))


def mean_color(image: Image.Image) -> str:
    """Average colour as 6 hex digits: flat pictures share a perceptual hash whatever their colour."""
    r, g, b = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return f"{r:02x}{g:02x}{b:02x}"


def color_distance(a: str, b: str) -> int:
    """Largest per-channel difference between two `mean_color` values (0..255)."""
    return max(abs(int(a[i:i + 2], 16) - int(b[i:i + 2], 16)) for i in (0, 2, 4))


def hash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
