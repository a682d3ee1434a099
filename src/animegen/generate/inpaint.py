"""Inpainting and outpainting as A1111 1.10 does them: the mask maths, as small pure functions over PIL images.

Contract. A mask is white (255) where the image is regenerated and black (0) where it is kept. `plan_inpaint`
turns (init image, mask, settings) into an `InpaintPlan`, A1111's `StableDiffusionProcessingImg2Img.init`
step by step:

1. `binary_mask`: the mask's alpha channel when it has transparency, else its luminance, thresholded at > 128
   (A1111's `create_binary_mask` with its default rounding); `inpainting_mask_invert` swaps the two.
2. `blur_mask`: a separable Gaussian of sigma `mask_blur` in x and in y, kernel 2 * int(2.5 * sigma + 0.5) + 1
   taps, reflected borders (cv2's default), rounded back to 8 bits (A1111 blurs with `cv2.GaussianBlur`, whose
   fixed-point 8-bit arithmetic can differ from ours by one level).
3. Whole picture: mask and image resized to width x height (Lanczos, A1111's resize mode 0); the overlay mask is
   min(255, 2 * blurred mask). Only masked (`inpaint_full_res`): the blurred mask's bounding box grown by the
   padding (`crop_region`), widened or heightened to width : height (`expand_crop_region`), cropped out of image
   and mask and resized to width x height (A1111's resize mode 2, `resize_and_fill`); the overlay mask is the
   blurred mask itself, and the result is pasted back at the box (`paste_back`). A blank mask there has no box:
   A1111 then runs plain img2img, and so do we (`InpaintPlan.mask` None).
4. Masked content (`inpainting_fill`, A1111's 0..3 as `INPAINTING_FILLS`): "fill" paints the masked area with
   the image's blurred colours (`fill_masked`, A1111's `masking.fill`); "original" keeps the pixels; "latent
   noise" and "latent nothing" replace the masked latents (the engine: init*(1-m) + noise*m, or init*(1-m)).
5. `latent_mask`: the processing mask resized to the latent size (bicubic, as PIL's default), scaled to [0, 1]
   and rounded: 1 = regenerate. The sampler blends every denoised prediction with the init latents,
   denoised*m + init*(1-m) (`samplers.sample_img2img(latent_mask=)`), and the final latents once more.
6. After decoding, `paste_back`: the original image (alpha = 255 - overlay mask) is composited over the
   result, so pixels where the blurred mask is 0 are exactly the original's.

9-channel inpainting models get `conditioning_mask` (the processing mask rounded to {0, 1}) and the VAE latents
of image * (1 - mask) (pixels in [-1, 1]) concatenated to the UNet input, as A1111's
`inpainting_image_conditioning` (mask weight 1); with no mask (txt2img, img2img) a full mask and a gray image.

`outpaint_canvas(image, left, right, top, bottom)` enlarges the canvas and returns it with the mask of the new
border, for `GenerationRequest(init_image=canvas, mask=mask, inpainting_fill="fill")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from animegen.core.errors import AnimegenError

InpaintingFill = Literal["fill", "original", "latent noise", "latent nothing"]
INPAINTING_FILLS: tuple[InpaintingFill, ...] = ("fill", "original", "latent noise", "latent nothing")
"""A1111's "Masked content" names, in the order of its `inpainting_fill` numbers 0..3."""
Box = tuple[int, int, int, int]  # (x1, y1, x2, y2), x2 and y2 exclusive


def inpainting_fill_name(value: str | int, field: str = "inpainting_fill") -> InpaintingFill:
    """A1111's masked-content mode by name ("latent noise") or by its API number (0..3)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and 0 <= value < len(INPAINTING_FILLS):
        return INPAINTING_FILLS[value]
    if isinstance(value, str) and value.strip().lower() in INPAINTING_FILLS:
        return value.strip().lower()  # type: ignore[return-value]
    choices = ", ".join(f"{i} or {name!r}" for i, name in enumerate(INPAINTING_FILLS))
    raise AnimegenError(f"{field} {value!r} is not an A1111 masked-content mode; use {choices}")


# ---- the mask -----------------------------------------------------------------------------------------------
def binary_mask(mask: Image.Image, *, invert: bool = False) -> Image.Image:
    """The mask as 8-bit L of 0 / 255: its alpha where transparent somewhere, else its luminance; > 128 is 255."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1]
    binary = mask.convert("L").point(lambda v: 255 if v > 128 else 0)
    return ImageOps.invert(binary) if invert else binary


def _gaussian_taps(sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(2 * int(2.5 * sigma + 0.5) + 1, sigma): exp(-(i - c)^2 / (2 sigma^2)), normalised."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(offsets ** 2) / (2 * sigma * sigma))
    return taps / taps.sum()


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    taps = _gaussian_taps(sigma)
    half = len(taps) // 2
    if values.shape[axis] < 2:
        return values
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(values, pad, mode="reflect")  # cv2's BORDER_REFLECT_101
    out = np.zeros_like(values)
    for i, tap in enumerate(taps):
        out += tap * np.take(padded, range(i, i + values.shape[axis]), axis=axis)
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float | None = None) -> Image.Image:
    """A1111's mask blur: Gaussian of sigma `blur_x` along x, then `blur_y` (default: the same) along y."""
    blur_y = blur_x if blur_y is None else blur_y
    values = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        values = np.clip(np.rint(_blur_axis(values, blur_x, axis=1)), 0, 255)
    if blur_y > 0:
        values = np.clip(np.rint(_blur_axis(values, blur_y, axis=0)), 0, 255)
    return Image.fromarray(values.astype(np.uint8), "L")


def crop_region(mask: Image.Image, padding: int = 0) -> Box | None:
    """The box around every non-zero mask pixel, grown by `padding` on each side and clipped to the image;
    None for a blank mask (A1111's `get_crop_region_v2`)."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, grow: int, limit: int) -> tuple[int, int]:
    """One side of `expand_crop_region`: grow // 2 before, the rest after, shifted back inside [0, limit]."""
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """Grow `box` to the processing aspect width : height (A1111's `expand_crop_region`): the short side grows
    by d = int(long side / ratio - short side) (or * ratio), d // 2 before and the rest after, shifted back
    inside the image where it overflows and clipped to it."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), image_height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), image_width)
    return x1, y1, x2, y2


# ---- resizing as A1111's resize modes ------------------------------------------------------------------------
def resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize mode 2: fit inside width x height (Lanczos), centred; the uncovered bands are the image's
    edge rows / columns stretched. Returns RGB (as A1111, also for a mask)."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        band = height // 2 - src_h // 2
        if band > 0:
            out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                      box=(0, band + src_h))
    elif ratio > src_ratio:
        band = width // 2 - src_w // 2
        if band > 0:
            out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                      box=(band + src_w, 0))
    return out


def crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize mode 1: cover width x height (Lanczos), centred, the overflow cropped."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    out = Image.new("RGB", (width, height))
    out.paste(image.resize((src_w, src_h), Image.LANCZOS), box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


# ---- pixels --------------------------------------------------------------------------------------------------
def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's `masking.fill`: the kept pixels (premultiplied by 1 - mask) blurred at radii 256, 64, 16 (x2), 4 (x4),
    2 (x2) and 0, each alpha-composited over the last, so the masked area takes the colours around it."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def overlay_image(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original as an RGBA layer, alpha = 255 - overlay mask (A1111's `overlay_images`)."""
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask.convert("L")))
    return layer.convert("RGBA")


def paste_back(generated: Image.Image, overlay: Image.Image, paste_to: tuple[int, int, int, int] | None) -> Image.Image:
    """A1111's `apply_overlay`: a crop's result resized into its box (x, y, w, h; resize mode 1) on a canvas of
    the overlay's size, then the overlay composited on top. RGB."""
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(crop_and_resize(generated, w, h), (x, y))
        generated = canvas
    out = generated.convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int) -> np.ndarray:
    """The regenerate mask at latent size, (H, W) float32 of 0 / 1: bicubic resize, / 255, rounded (A1111)."""
    small = mask.convert("RGB").resize((latent_width, latent_height), Image.BICUBIC)
    return np.around(np.asarray(small, dtype=np.float32)[..., 0] / 255)


def conditioning_mask(mask: Image.Image | None, width: int, height: int) -> np.ndarray:
    """A 9-channel model's mask, (H, W) float32 of 0 / 1 at pixel size: round(mask / 255); all 1 without a mask."""
    if mask is None:
        return np.ones((height, width), dtype=np.float32)
    return np.round(np.asarray(mask.convert("L"), dtype=np.float32) / 255)


# ---- the plan ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InpaintPlan:
    """What the engine samples from and pastes back; see the module docstring.

    Attributes:
        image: the init image at width x height (cropped for only-masked, filled for "fill").
        mask: the processing mask at width x height (blurred); None when only-masked found a blank mask
            (plain img2img, as A1111).
        overlay: the original with alpha 255 - overlay mask, at the output size; None with `mask` None.
        paste_to: (x, y, w, h) where an only-masked result goes back; None for the whole picture.
        fill: the masked-content mode.
        crop: the only-masked crop box (x1, y1, x2, y2), else None.
    """

    image: Image.Image
    mask: Image.Image | None
    overlay: Image.Image | None
    paste_to: tuple[int, int, int, int] | None
    fill: InpaintingFill
    crop: Box | None = None

    def latent_mask(self, latent_width: int, latent_height: int) -> np.ndarray | None:
        return None if self.mask is None else latent_mask(self.mask, latent_width, latent_height)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The output image: the original pasted over the result where the mask keeps it."""
        return generated if self.overlay is None else paste_back(generated, self.overlay, self.paste_to)


def plan_inpaint(init_image: Image.Image, mask: Image.Image, *, width: int, height: int, mask_blur: float = 4,
                 inpainting_fill: InpaintingFill = "original", inpaint_full_res: bool = False,
                 inpaint_full_res_padding: int = 32, inpainting_mask_invert: bool = False) -> InpaintPlan:
    """A1111's img2img init with a mask (the module docstring's steps 1-4). A mask of another size than the image
    is first resized to it (Lanczos)."""
    image = init_image.convert("RGB")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.LANCZOS)
    fill = inpainting_fill_name(inpainting_fill)
    blurred = blur_mask(binary_mask(mask, invert=inpainting_mask_invert), mask_blur)
    crop = None
    if inpaint_full_res:
        crop = crop_region(blurred, inpaint_full_res_padding)
        if crop is None:
            import logging

            logging.getLogger(__name__).warning("the mask is blank: 'only masked' inpainting has nothing to crop; "
                                                "running plain img2img, as A1111 does")
            return InpaintPlan(image.resize((width, height), Image.LANCZOS), None, None, None, fill)
        crop = expand_crop_region(crop, width, height, image.width, image.height)
        x1, y1, x2, y2 = crop
        overlay = overlay_image(image, blurred)
        processing_mask = resize_and_fill(blurred.crop(crop), width, height).convert("L")
        processed = resize_and_fill(image.crop(crop), width, height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:
        processing_mask = blurred.resize((width, height), Image.LANCZOS)
        doubled = np.clip(np.asarray(processing_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
        processed = image.resize((width, height), Image.LANCZOS)
        overlay = overlay_image(processed, Image.fromarray(doubled, "L"))
        paste_to = None
    if fill != "original":
        processed = fill_masked(processed, processing_mask)
    return InpaintPlan(processed, processing_mask, overlay, paste_to, fill, crop)


# ---- outpainting ---------------------------------------------------------------------------------------------
def outpaint_canvas(image: Image.Image, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, *,
                    fill: str | tuple[int, int, int] = "edge") -> tuple[Image.Image, Image.Image]:
    """(bigger image, mask) for outpainting: the image on a canvas `left`/`right`/`top`/`bottom` pixels larger,
    the new border filled with the image's edge pixels repeated (`fill="edge"`) or a colour (an RGB tuple), and
    an L mask that is 255 on the new border and 0 over the original. Inpaint the pair to fill the border."""
    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    bad = [f"{k}={v}" for k, v in sides.items() if int(v) != v or v < 0]
    if bad or not any(sides.values()):
        raise AnimegenError(f"outpaint_canvas needs whole numbers ≥ 0 of pixels to add, at least one > 0; got "
                            f"{', '.join(bad) or 'nothing to add'}")
    rgb = np.asarray(image.convert("RGB"))
    pad = ((top, bottom), (left, right), (0, 0))
    if fill == "edge":
        canvas = np.pad(rgb, pad, mode="edge")
    elif isinstance(fill, tuple) and len(fill) == 3:
        canvas = np.stack([np.pad(rgb[..., c], pad[:2], constant_values=fill[c]) for c in range(3)], axis=-1)
    else:
        raise AnimegenError(f"outpaint_canvas fill {fill!r}: use 'edge' or an (r, g, b) colour")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top:top + rgb.shape[0], left:left + rgb.shape[1]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask, "L")
