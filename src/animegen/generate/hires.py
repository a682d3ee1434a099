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

Where we differ: ESRGAN-type model upscalers (R-ESRGAN, 4x-UltraSharp, SwinIR, LDSR, ...) are refused naming
the field: animegen ships no upscaler networks.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """The canonical upscaler name for `name` (any case), or an error naming `field` and the choices."""
    found = _LOOKUP.get(str(name).strip().lower())
    if found is None:
        raise AnimegenError(f"{field} {name!r} is not an upscaler animegen has (model upscalers such as ESRGAN are "
                            f"not shipped); use one of: {', '.join(HIRES_UPSCALERS)}")
    return found


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


def upscale_image(image, target: HiresTarget, upscaler: str):
    """One 8-bit PIL image resized to the target by a pixel upscaler (A1111's resize_image, mode 0)."""
    from PIL import Image

    w, h = target.width, target.height
    if upscaler != "None":
        scale = max(w / image.width, h / image.height)
        if scale > 1.0:
            resample = Image.LANCZOS if upscaler == "Lanczos" else Image.NEAREST
            dest_w, dest_h = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
            # Upscaler.upscale repeats its step until the image covers dest: one resize by `scale` always does
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
            if image.size != (dest_w, dest_h):
                image = image.resize((dest_w, dest_h), resample=Image.LANCZOS)
    if image.size != (w, h):
        image = image.resize((w, h), resample=Image.LANCZOS)
    return image
