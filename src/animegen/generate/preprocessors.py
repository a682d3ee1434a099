"""ControlNet preprocessors ("modules" in A1111's sd-webui-controlnet), by the extension's names.

Contract. `preprocess(name, image, res=, threshold_a=, threshold_b=)` returns the control map (RGB PIL) of
`image`, run at resolution `res` (the image scaled so its short side is `res`, as the extension's
`resize_image_with_pad`, without the padding). Built in (numpy and PIL only; no OpenCV):

* "none": the image itself;
* "canny": OpenCV's `cv2.Canny(gray, low, high)`, which the extension calls (no pre-blur): 3x3 Sobel
  gradients, L1 magnitude |gx| + |gy|, non-maximum suppression along the gradient direction quantised to
  0/45/90/135 degrees (OpenCV's tie rule: strictly greater than the neighbour before, at least the one after;
  strictly both on diagonals), hysteresis: pixels over `high` (threshold_b, default 200) and the 8-connected
  pixels over `low` (threshold_a, default 100) linked to them; white edges on black;
* "tile_resample": the image downscaled by threshold_a ("Down Sampling Rate", default 1 = unchanged), box
  filtered (OpenCV's INTER_AREA);
* "threshold": white where the gray value is over threshold_a (default 127), else black (scribble input);
* "scribble_xdog": the extension's XDoG scribble: per channel Gaussians of sigma 0.5 and 5 (OpenCV's kernel:
  radius 4 sigma, mirrored borders), dog = 255 - min over channels of (g5 - g0.5) clipped to 8 bits, white where
  2 * (255 - dog) > threshold_a (default 32);
* "invert": 255 - image ("invert (from white bg & black line)": lineart drawn black on white).

Model-based preprocessors ("lineart_anime", "openpose", "depth_midas", ...) need the lllyasviel/Annotators
weights; `preprocess` raises an AnimegenError naming the file and the folder it looked in. Running those networks
is not built in yet: with the file present the error says so, and a control map made elsewhere can be given
with preprocessor "none".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animegen.core.errors import AnimegenError


@dataclass(frozen=True)
class PreprocessorSpec:
    """A preprocessor's name, its thresholds' defaults and, for a model-based one, its annotator file."""

    name: str
    threshold_a: float | None = None
    threshold_b: float | None = None
    annotator: str | None = None  # file in lllyasviel/Annotators a model-based preprocessor needs


PREPROCESSORS: dict[str, PreprocessorSpec] = {p.name: p for p in (
    PreprocessorSpec("none"),
    PreprocessorSpec("canny", 100.0, 200.0),
    PreprocessorSpec("tile_resample", 1.0),
    PreprocessorSpec("threshold", 127.0),
    PreprocessorSpec("invert"),
    PreprocessorSpec("scribble_xdog", 32.0),
    PreprocessorSpec("lineart_anime", annotator="netG.pth"),
    PreprocessorSpec("lineart_realistic", annotator="sk_model.pth"),
    PreprocessorSpec("openpose", annotator="body_pose_model.pth"),
    PreprocessorSpec("openpose_full", annotator="body_pose_model.pth"),
    PreprocessorSpec("depth_midas", annotator="dpt_hybrid-midas-501f0c75.pt"),
    PreprocessorSpec("softedge_hed", annotator="ControlNetHED.pth"),
)}
ALIASES = {"tile": "tile_resample", "scribble": "threshold", "scribble_threshold": "threshold",
           "lineart_anime_invert": "invert", "invert (from white bg & black line)": "invert",
           "depth": "depth_midas", "None": "none"}


def is_ip_adapter_module(name) -> bool:
    """The extension's `ip-adapter_clip_*` modules: no hint preprocessing here, the CLIP image encoder runs in
    `generate.ip_adapter` instead (so they have no `PreprocessorSpec`)."""
    return str(name or "").strip().lower().startswith("ip-adapter")


def preprocessor_spec(name: str) -> PreprocessorSpec:
    """The preprocessor called `name` (the extension's module names; a few short aliases)."""
    key = ALIASES.get(name, ALIASES.get(str(name).lower(), str(name).lower()))
    if key not in PREPROCESSORS:
        raise AnimegenError(f"ControlNet preprocessor {name!r} is unknown; use one of: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[key]


def preprocess(name: str, image: Image.Image, *, res: int = 512, threshold_a: float | None = None,
               threshold_b: float | None = None, annotator_dir: str | os.PathLike | None = None) -> Image.Image:
    """The control map of `image` by the preprocessor `name`; see the module docstring."""
    spec = preprocessor_spec(name)
    a = spec.threshold_a if threshold_a is None or threshold_a < 0 else float(threshold_a)
    b = spec.threshold_b if threshold_b is None or threshold_b < 0 else float(threshold_b)
    if spec.annotator is not None:
        _missing_annotator(spec, annotator_dir)
    rgb = image.convert("RGB")
    if spec.name == "none":
        return rgb
    rgb = _at_resolution(rgb, res)
    if spec.name == "canny":
        return _gray_to_rgb(canny(np.asarray(rgb.convert("L")), a, b))
    if spec.name == "tile_resample":
        rate = max(1.0, a)
        size = (max(1, int(rgb.width / rate)), max(1, int(rgb.height / rate)))
        return rgb if size == rgb.size else rgb.resize(size, Image.BOX)
    if spec.name == "scribble_xdog":
        return _gray_to_rgb(xdog(np.asarray(rgb), a))
    if spec.name == "threshold":
        return _gray_to_rgb(np.where(np.asarray(rgb.convert("L")) > a, 255, 0).astype(np.uint8))
    return Image.fromarray(255 - np.asarray(rgb))  # invert


def _missing_annotator(spec: PreprocessorSpec, annotator_dir) -> None:
    folder = Path(annotator_dir) if annotator_dir else None
    found = folder is not None and any(folder.rglob(spec.annotator))
    if not found:
        where = f"in {folder}" if folder else "(no annotator folder configured)"
        raise AnimegenError(f"ControlNet preprocessor {spec.name!r} needs {spec.annotator} from lllyasviel/Annotators "
                            f"{where}; put it there, or preprocess the image elsewhere and use preprocessor 'none'")
    raise AnimegenError(f"ControlNet preprocessor {spec.name!r}: {spec.annotator} is present but running it is not "
                        "built in yet; preprocess the image elsewhere and use preprocessor 'none'")


def _at_resolution(image: Image.Image, res: int) -> Image.Image:
    """`image` scaled so its short side is `res` (the extension's preprocessor resolution)."""
    k = res / min(image.size)
    size = (max(1, round(image.width * k)), max(1, round(image.height * k)))
    if size == image.size:
        return image
    return image.resize(size, Image.LANCZOS if k > 1 else Image.BOX)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))


def xdog(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """The extension's `scribble_xdog` of a uint8 HxWx3 image (uint8 0/255); see the module docstring."""
    from scipy.ndimage import gaussian_filter

    image = rgb.astype(np.float32)
    g1 = gaussian_filter(image, sigma=(0.5, 0.5, 0), mode="mirror", truncate=4.0)
    g2 = gaussian_filter(image, sigma=(5.0, 5.0, 0), mode="mirror", truncate=4.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    return np.where(2 * (255 - dog.astype(np.int32)) > threshold, 255, 0).astype(np.uint8)


# ---- Canny ------------------------------------------------------------------------------------------------
def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives (gx, gy) of a 2-D array, borders reflected as OpenCV's BORDER_REFLECT_101."""
    p = np.pad(gray.astype(np.float64), 1, mode="reflect")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def canny(gray: np.ndarray, low: float, high: float) -> np.ndarray:
    """Edges (uint8 0/255) of a uint8 gray image, as `cv2.Canny(gray, low, high)`; see the module docstring."""
    gx, gy = sobel(gray)
    mag = np.abs(gx) + np.abs(gy)
    m = np.pad(mag, 1)  # zero border: no edge is suppressed by the outside

    def at(dy: int, dx: int) -> np.ndarray:
        h, w = mag.shape
        return m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = np.abs(gx), np.abs(gy)
    tan22, tan67 = np.tan(np.pi / 8), np.tan(3 * np.pi / 8)
    horizontal = ay < ax * tan22
    vertical = ~horizontal & (ay > ax * tan67)
    diagonal = ~horizontal & ~vertical
    s = np.where(gx * gy < 0, -1, 1)  # which diagonal the gradient runs along
    keep = np.zeros(mag.shape, dtype=bool)
    keep |= horizontal & (mag > at(0, -1)) & (mag >= at(0, 1))
    keep |= vertical & (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep |= diagonal & (s > 0) & (mag > at(-1, -1)) & (mag > at(1, 1))
    keep |= diagonal & (s < 0) & (mag > at(-1, 1)) & (mag > at(1, -1))
    candidate = keep & (mag > low)
    edges = candidate & (mag > high)
    while True:  # hysteresis: grow the strong edges through 8-connected candidates
        grown = np.pad(edges, 1)
        near = np.zeros_like(edges)
        h, w = edges.shape
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= grown[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        new = candidate & near
        if (new == edges).all():
            break
        edges = new | edges
    return np.where(edges, 255, 0).astype(np.uint8)
