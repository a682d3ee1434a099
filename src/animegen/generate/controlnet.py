"""ControlNet units, as A1111's sd-webui-controlnet extension applies them (issue #15).

Contract. A `ControlUnit` is one unit of the extension's `alwayson_scripts.controlnet.args`: a ControlNet
model (a diffusers folder, or one `.safetensors` file in the original `control_model.*` layout of the A1111
models or in diffusers' key layout), a control image run through a preprocessor (`generate.preprocessors`),
a weight, a guidance range and a control mode. `ControlRun(units, unet, width, height, total_steps)` is the
units prepared for one sampling pass: models loaded (cached per file, device and dtype), each hint resized
to the pass size by the unit's resize mode. `residuals(x, t, cond)` is what the UNet gets added
(`down_block_additional_residuals`, `mid_block_additional_residual`): the sum over the active units of
their ControlNet's residuals times the unit's scales. Per unit, as the extension's `hook.py`:

* active while `guidance_start <= sampling_step / total_steps <= guidance_end`, where `sampling_step` is
  A1111's `state.sampling_step`: the `i` of the sampler's last step callback (0 before the first), so it lags
  one step behind the step being sampled, as in A1111; `on_step` is that callback;
* "Balanced" (0): every residual times `weight`, on the positive and the negative rows alike;
* "My prompt is more important" (1): soft injection, residual k of n times `weight * 0.825 ** (12 - k)`
  (the extension's 13 SD1 scales; an SDXL ControlNet's 10 residuals take the first 10 of them, as its `zip`);
* "ControlNet is more important" (2): soft injection, and only the positive rows get the residuals (the
  extension's `cfg_injection`: the negative prediction is the plain UNet's).
A unit at weight 0, or outside its range, adds nothing: the UNet then gets no residuals at all (bit-exact with
no ControlNet). The negative rows are known from `cond["uncond_mark"]` (1 for a negative row), which
`KPipeline` adds to the denoiser's conditioning when there are units.

Models are named by path here; the REST API resolves A1111's names (`control_v11p_sd15_canny [d14c016b]`)
in its `controlnet_dir` (`find_controlnet`). Where we differ: a 9-channel inpainting UNet's ControlNet sees
the first four channels only (as the extension); the hires pass gets the units with the hint fitted to its
size (the extension's default "Both"), but without the extension's forced soft injection for canny / mlsd
there; "Resize and Fill" pads with black (the extension fills from the image's edges).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.core.errors import AnimegenError

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
SOFT_SCALE = 0.825  # the extension's soft-injection base: residual k of 13 gets SOFT_SCALE ** (12 - k)
CONTROLNET_SUFFIXES = (".safetensors",)
_CACHE_SIZE = 4


def _choice(value, names: tuple[str, ...], what: str) -> str:
    """A mode given by A1111 number (0, 1, 2) or name (case-insensitive) -> its canonical name."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    for name in names:
        if isinstance(value, str) and value.strip().lower() == name.lower():
            return name
    raise AnimegenError(f"{what} {value!r} is not one of: " + ", ".join(f"{i} = {n!r}" for i, n in enumerate(names)))


def control_mode_name(value) -> str:
    """A1111's control mode (0/1/2 or its name) -> canonical name."""
    return _choice(value, CONTROL_MODES, "control_mode")


def resize_mode_name(value) -> str:
    """A1111's resize mode (0/1/2 or its name; "Inner Fit"/"Outer Fit" are the extension's old names)."""
    aliases = {"inner fit (scale to fit)": "Crop and Resize", "outer fit (shrink to fit)": "Resize and Fill",
               "envelope (outer fit)": "Resize and Fill", "scale to fit (inner fit)": "Crop and Resize"}
    if isinstance(value, str) and value.strip().lower() in aliases:
        return aliases[value.strip().lower()]
    return _choice(value, RESIZE_MODES, "resize_mode")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit (the extension's `ControlNetUnit`).

    Attributes:
        model: the ControlNet: a diffusers folder or a `.safetensors` file (original or diffusers layout).
        image: the control image (RGB; an RGBA image's alpha is dropped).
        weight: the residuals' multiplier ("Control Weight"); 0 = the unit does nothing.
        guidance_start: the step fraction from which the unit acts ("Starting Control Step"), in [0, 1].
        guidance_end: the step fraction after which it stops ("Ending Control Step"), in [guidance_start, 1].
        control_mode: "Balanced", "My prompt is more important" or "ControlNet is more important" (or 0/1/2).
        preprocessor: the extension's module name ("none", "canny", "tile_resample", "threshold", "invert", ...;
            `preprocessors.PREPROCESSORS`).
        resize_mode: how the hint fits the image: "Just Resize", "Crop and Resize" (default) or "Resize and Fill".
        processor_res: the preprocessor's resolution (the short side it runs at).
        threshold_a: the preprocessor's first parameter (canny: low threshold); None = its default.
        threshold_b: the second (canny: high threshold); None = its default.
        pixel_perfect: run the preprocessor at the resolution the hint will have (the extension's rule).
    """

    model: str | os.PathLike
    image: Image.Image
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str | int = "Balanced"
    preprocessor: str = "none"
    resize_mode: str | int = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float | None = None
    threshold_b: float | None = None
    pixel_perfect: bool = False

    def validate(self) -> None:
        """Raise AnimegenError naming the first bad field and what would work."""
        from animegen.generate.preprocessors import is_ip_adapter_module, preprocessor_spec

        if not 0 <= self.guidance_start <= self.guidance_end <= 1:
            raise AnimegenError(f"ControlNet guidance_start {self.guidance_start} and guidance_end "
                                f"{self.guidance_end} must satisfy 0 <= start <= end <= 1")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise AnimegenError(f"ControlNet weight must be a finite number ≥ 0, got {self.weight}")
        if self.processor_res < 64:
            raise AnimegenError(f"ControlNet processor_res must be at least 64, got {self.processor_res}")
        control_mode_name(self.control_mode)
        resize_mode_name(self.resize_mode)
        if not is_ip_adapter_module(self.preprocessor):
            preprocessor_spec(self.preprocessor)


# ---- models ---------------------------------------------------------------------------------------------------
_cache: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
_cache_lock = threading.Lock()


def find_controlnet(name: str, folder: str | os.PathLike | None) -> Path:
    """A ControlNet named as A1111 names it (`control_v11p_sd15_canny [d14c016b]`: the file or folder stem, the
    bracketed hash ignored) in `folder` (searched recursively); AnimegenError naming the folder when absent."""
    stem = name.split(" [", 1)[0].strip()
    if folder is None:
        raise AnimegenError(f"ControlNet model {name!r}: no ControlNet folder is configured; set the server's "
                            "controlnet_dir (serve config) to your models/ControlNet folder")
    known = available_controlnets(folder)
    if stem in known:
        return known[stem]
    raise AnimegenError(f"ControlNet model {name!r} not found in {folder}; known: "
                        f"{', '.join(sorted(known)) or 'none'}")


def available_controlnets(folder: str | os.PathLike | None) -> dict[str, Path]:
    """{stem: path} of the ControlNets in `folder`: `.safetensors` files and diffusers folders (with config.json),
    links leading out of `folder` left out."""
    found: dict[str, Path] = {}
    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        return found
    inside = root.resolve()
    for path in sorted(root.rglob("*")):
        if not path.resolve().is_relative_to(inside):
            continue  # a link out of the folder: a name never reaches a file outside it
        if path.is_file() and path.suffix.lower() in CONTROLNET_SUFFIXES and not (path.parent / "config.json").is_file():
            found.setdefault(path.stem, path)
        elif path.is_dir() and (path / "config.json").is_file():
            found.setdefault(path.name, path)
    return found


def load_controlnet(path: str | os.PathLike, unet, *, device=None, dtype=None):
    """The ControlNet at `path` for the pipeline whose UNet is `unet` (cached: the last few loaded stay).

    A `.safetensors` file's architecture is the UNet's (`ControlNetModel.from_unet`: a ControlNet is a copy of
    its base model's encoder), its hint encoder's widths read from the file; the original layout is converted
    by diffusers' `convert_controlnet_checkpoint`. Nothing is fetched from the network.
    """
    path = Path(path)
    device = torch.device(device or unet.device)
    dtype = dtype or unet.dtype
    if not path.exists():
        raise AnimegenError(f"ControlNet model {path} not found: give a diffusers folder or a .safetensors file")
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device), str(dtype), id(unet.config))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = _read_controlnet(path, unet).to(device, dtype).eval()
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model


def _read_controlnet(path: Path, unet):
    from diffusers import ControlNetModel

    if path.is_dir():
        return ControlNetModel.from_pretrained(path, local_files_only=True)
    if path.suffix.lower() not in CONTROLNET_SUFFIXES:
        raise AnimegenError(f"ControlNet model {path}: only .safetensors files and diffusers folders are read "
                            "(pickled .pth files run code when loaded); convert it to .safetensors")
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from animegen.core.files import read_weights

    state, _ = read_weights(path, allow_pickle=False)
    state = convert_controlnet_checkpoint(state, dict(unet.config))
    state = {k: v for k, v in state.items() if v is not None}
    widths = _hint_widths(state)
    if widths is None:
        raise AnimegenError(f"{path} is not a ControlNet (no hint encoder: controlnet_cond_embedding.* / "
                            "control_model.input_hint_block.*); T2I-Adapters and IP-Adapters are not supported")
    with torch.device("meta"):
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths,
                                          load_weights_from_unet=False)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise AnimegenError(f"ControlNet {path} does not fit the loaded model ({type(unet).__name__} "
                            f"{unet.config.cross_attention_dim}-dim text): an SD1.5 ControlNet needs an SD1.5 "
                            f"model, an SDXL one an SDXL model. {' '.join(first)}") from None
    return model


def _hint_widths(state: dict) -> tuple[int, ...] | None:
    if "controlnet_cond_embedding.conv_in.weight" not in state:
        return None
    widths = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]]
    k = 1
    while f"controlnet_cond_embedding.blocks.{k}.weight" in state:
        widths.append(state[f"controlnet_cond_embedding.blocks.{k}.weight"].shape[0])
        k += 2
    return tuple(widths)


def controlnet_name(path: str | os.PathLike) -> str:
    """A ControlNet's name as the extension lists and records it: the stem and, for a file, A1111's legacy short
    hash (sha256 of the 64 KiB at 1 MiB, 8 hex digits), e.g. `control_v11p_sd15_canny [d14c016b]`."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return path.name
    with path.open("rb") as f:
        f.seek(0x100000)
        digest = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    return f"{path.stem} [{digest}]"


def controlnet_fields(units: Sequence[ControlUnit]) -> dict[str, str]:
    """The extension's infotext fields, one per unit: `ControlNet i: "Module: canny, Model: name [hash], ..."`
    (reading an infotext back ignores them, as A1111 without the extension)."""
    from animegen.generate.preprocessors import is_ip_adapter_module, preprocessor_spec

    fields = {}
    for i, unit in enumerate(units):
        if is_ip_adapter_module(unit.preprocessor):  # no preprocessor spec: the CLIP image encoder
            fields[f"ControlNet {i}"] = (f"Module: {unit.preprocessor}, Model: {controlnet_name(unit.model)}, "
                                         f"Weight: {unit.weight:g}, Guidance Start: {unit.guidance_start:g}, "
                                         f"Guidance End: {unit.guidance_end:g}")
            continue
        spec = preprocessor_spec(unit.preprocessor)
        a = spec.threshold_a if unit.threshold_a is None or unit.threshold_a < 0 else unit.threshold_a
        b = spec.threshold_b if unit.threshold_b is None or unit.threshold_b < 0 else unit.threshold_b
        values = {"Module": spec.name, "Model": controlnet_name(unit.model), "Weight": f"{unit.weight:g}",
                  "Resize Mode": resize_mode_name(unit.resize_mode), "Processor Res": unit.processor_res,
                  "Threshold A": "-1" if a is None else f"{a:g}", "Threshold B": "-1" if b is None else f"{b:g}",
                  "Guidance Start": f"{unit.guidance_start:g}", "Guidance End": f"{unit.guidance_end:g}",
                  "Pixel Perfect": unit.pixel_perfect, "Control Mode": control_mode_name(unit.control_mode)}
        fields[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in values.items())
    return fields


# ---- hints ----------------------------------------------------------------------------------------------------
def fit_image(image: Image.Image, width: int, height: int, resize_mode: str | int) -> Image.Image:
    """`image` at width x height by A1111's resize mode: stretched, scaled to cover and centre-cropped, or scaled
    to fit and centred on black."""
    mode = resize_mode_name(resize_mode)
    image = image.convert("RGB")
    if mode == "Just Resize" or image.size == (width, height):
        return image.resize((width, height), Image.LANCZOS)
    w, h = image.size
    k = max(width / w, height / h) if mode == "Crop and Resize" else min(width / w, height / h)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    scaled = image.resize(size, Image.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: str | int) -> int:
    """The extension's pixel-perfect preprocessor resolution: the image's short side scaled as the hint will be."""
    w, h = image.size
    k0, k1 = height / h, width / w
    k = min(k0, k1) if resize_mode_name(resize_mode) == "Resize and Fill" else max(k0, k1)
    return max(64, round(k * min(w, h)))


def unit_hint(unit: ControlUnit, width: int, height: int, *, annotator_dir=None) -> Image.Image:
    """The unit's control map at width x height: preprocessed at its resolution, then fitted by its resize mode."""
    from animegen.generate.preprocessors import preprocess

    res = pixel_perfect_resolution(unit.image, width, height, unit.resize_mode) if unit.pixel_perfect \
        else unit.processor_res
    detected = preprocess(unit.preprocessor, unit.image, res=res, threshold_a=unit.threshold_a,
                          threshold_b=unit.threshold_b, annotator_dir=annotator_dir)
    return fit_image(detected, width, height, unit.resize_mode)


# ---- one pass -------------------------------------------------------------------------------------------------
class ControlRun:
    """The units of one sampling pass; see the module docstring."""

    def __init__(self, units: Sequence[ControlUnit], unet, width: int, height: int, total_steps: int, *,
                 annotator_dir=None):
        self.total_steps = max(1, int(total_steps))
        self.sampling_step = 0
        self.ip_adapter = None  # the pass's IP-Adapter units (`generate.ip_adapter.IPAdapterRun`), set by KPipeline
        self.units = []
        for unit in units:
            unit.validate()
            model = load_controlnet(unit.model, unet)
            hint = np.asarray(unit_hint(unit, width, height, annotator_dir=annotator_dir), dtype=np.float32) / 255.0
            hint_t = torch.from_numpy(hint).permute(2, 0, 1)[None].to(unet.device, unet.dtype)
            self.units.append((unit, model, hint_t, control_mode_name(unit.control_mode)))

    def on_step(self, info: dict) -> None:
        """The sampler's step callback: A1111's `state.sampling_step = i`."""
        self.sampling_step = int(info.get("i", self.sampling_step))

    def active(self, unit: ControlUnit) -> bool:
        fraction = self.sampling_step / self.total_steps
        return unit.weight != 0 and unit.guidance_start <= fraction <= unit.guidance_end

    def residuals(self, x: torch.Tensor, t: torch.Tensor, cond: dict, extra: dict) -> dict:
        """The UNet's extra keyword arguments for this call: the summed residuals of the active units ({} if none).
        `x` is the UNet's input (its first four channels are the ControlNet's), `extra` its added_cond_kwargs."""
        down, mid = None, None
        for unit, model, hint, mode in self.units:
            if not self.active(unit):
                continue
            with torch.no_grad():
                d, m = model(x[:, :model.config.in_channels].to(model.dtype), t, cond["encoder_hidden_states"],
                             controlnet_cond=hint.expand(x.shape[0], -1, -1, -1), conditioning_scale=1.0,
                             return_dict=False, **extra)
            outs = list(d) + [m]
            scales = [unit.weight] * len(outs)
            if mode != "Balanced":
                scales = [unit.weight * SOFT_SCALE ** float(12 - k) for k in range(len(outs))]
            outs = [o * s for o, s in zip(outs, scales)]
            if mode == "ControlNet is more important":
                positive = (1.0 - cond["uncond_mark"].to(x.device, outs[0].dtype)).view(-1, 1, 1, 1)
                outs = [o * positive for o in outs]
            if down is None:
                down, mid = outs[:-1], outs[-1]
            else:
                down, mid = [a + b for a, b in zip(down, outs[:-1])], mid + outs[-1]
        if down is None:
            return {}
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


def mark_uncond(cond, negative: bool):
    """A denoiser cond (a dict, or a per-call function of dicts / [(dict, weight)]) with `uncond_mark` added."""
    def marked(d: dict) -> dict:
        rows = d["encoder_hidden_states"].shape[0]
        return {**d, "uncond_mark": torch.full((rows,), 1.0 if negative else 0.0, device=d["encoder_hidden_states"].device)}

    if not callable(cond):
        return marked(cond)
    if negative:
        return lambda step: marked(cond(step))
    return lambda step: [(marked(c), w) for c, w in cond(step)]
