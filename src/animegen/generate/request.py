"""What a user asks for: one typed request shared by the CLI, the Python API, the REST API and the UI.

Fields left as None are filled from the chosen preset (sampler, steps, CFG, size), then from the
defaults below (size: the model family's, `ModelFamily.default_size`). `resolve` is the one home of
these defaults: the CLI, the library, the REST API and the web UI all leave what the user did not set
as None and let it decide, so a preset's settings apply the same way through every front end.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.core.keywords import checked_keywords
from animegen.generate.detailer import DetailerUnit
from animegen.generate.hires import DEFAULT_HIRES_UPSCALER
from animegen.generate.infotext import request_fields
from animegen.generate.inpaint import InpaintingFill, inpainting_fill_name

if TYPE_CHECKING:
    from animegen.generate.controlnet import ControlUnit

DEFAULT_SAMPLER = "Euler a"
DEFAULT_STEPS = 28
DEFAULT_CFG = 7.0
# A1111's default noise source. animegen drew CPU noise before; GPU (NV off CUDA, the same numbers) makes a seed
# typed from an A1111/Civitai image give that image, on any device. `rng="CPU"` is the old behaviour, and
# animegen PNGs from before still reproduce: their infotext is read as CPU (`infotext.parse_noise_fields`).
DEFAULT_RNG = "GPU"
MAX_SEED = 2**32 - 1


REQUEST_ALIASES = {
    "guidance_scale": "cfg_scale", "num_inference_steps": "steps", "num_images_per_prompt": "n", "n_iter": "n",
    "sampler_name": "sampler", "scheduler": "schedule_type", "image": "init_image", "init_images": "init_image",
    "denoising_strength": "strength", "enable_hr": "hires", "hr_scale": "hires_scale",
    "hr_second_pass_steps": "hires_steps", "hr_upscaler": "hires_upscaler", "hr_sampler_name": "hires_sampler",
    "hr_scheduler": "hires_schedule_type", "hr_prompt": "hires_prompt", "hr_negative_prompt": "hires_negative_prompt",
    "hr_cfg": "hires_cfg_scale", "ensd": "eta_noise_seed_delta", "variation_seed": "subseed",
    "variation_seed_strength": "subseed_strength", "cfg_rescale": "guidance_rescale",
    "CLIP_stop_at_last_layers": "clip_skip",
}
"""diffusers' and A1111's API names for request fields, so a keyword spelled their way suggests ours."""


@checked_keywords(aliases=REQUEST_ALIASES)
@dataclass
class GenerationRequest:
    """One generation job; None means "the preset's setting, else the default" (`resolve`).

    A keyword that is not a field raises `UnknownKeywordError` (a TypeError) naming the nearest field.
    `validate()` checks the values; `resolve` (the engine calls it) fills the gaps.

    Attributes:
        prompt: the prompt, in A1111 syntax: `(word:1.2)` emphasis, `[a:b:0.5]` editing, `AND`, `BREAK`,
            `<lora:name:0.8>` tags and textual-inversion names.
        negative_prompt: what to steer away from; "" takes the preset's negative prompt.
        preset: prompt template applied to the prompt (`animegen presets`: animagine, dashanime, danbooru, none,
            or one from the generator's preset file; "auto": the model's own, e.g. pony-v6); it also recommends
            sampler, steps, CFG, size, clip skip and CFG rescale.
        sampler: an A1111 sampler name (`animegen samplers`), e.g. "Euler a", "DPM++ 2M" or "DPM++ 2M Karras";
            None: the preset's, else "Euler a".
        schedule_type: A1111's "Schedule type" (Karras, Exponential, ...); None or "Automatic": the sampler's own.
        steps: sampling steps; None: the preset's, else 28.
        cfg_scale: classifier-free guidance scale; None: the preset's, else 7.
        seed: the first image's seed, 0..2**32-1; image k uses seed + k; -1 picks one at random.
        width: image width in pixels, a multiple of 8 and at least 64; None: the preset's, else the model's.
        height: image height, as `width`.
        clip_skip: A1111's "Clip skip" (1 = the last layer, or the preset's); SDXL and SD2 always use their fixed layer.
        loras: LoRAs to merge, as (file path or name in the generator's `lora_dir`, multiplier); the multiplier is
            a float or A1111's te/unet split {"text_encoder": te, "unet": unet}. Same as `<lora:...>` tags.
        n: number of images; image k has seed + k.
        batch_size: images denoised together (memory vs speed); does not change any image.
        init_image: a PIL image for img2img (resized to width x height); None: txt2img.
        strength: img2img denoising strength in (0, 1]: how far from `init_image` the result may go.
        hires: run A1111's hires fix (enable_hr); also on when `hires_scale` > 1 or a hires resize is set.
        hires_scale: hires fix upscale factor (≥ 1; 1 = none unless `hires`).
        hires_steps: steps of the hires pass; 0: the same as `steps`.
        hires_denoise: denoising strength of the hires pass, in (0, 1].
        hires_upscaler: how the first pass is enlarged: "Latent" and its variants, "Lanczos", "Nearest", "None",
            or a model upscaler: a file's stem in the generator's `upscaler_dir`, or its path (`generate.hires`).
        hires_resize_x: A1111's hr_resize_x ("Hires resize: WxH"): resize to this width instead of
            `hires_scale`; 0: unset.
        hires_resize_y: the same for the height.
        hires_sampler: the hires pass's sampler; None: the first pass's (A1111's "Use same sampler").
        hires_schedule_type: the hires pass's schedule type; None: the first pass's.
        hires_prompt: the hires pass's prompt (A1111's hr_prompt); "": the prompt.
        hires_negative_prompt: the hires pass's negative prompt; "": the negative prompt.
        hires_cfg_scale: the hires pass's CFG scale (Forge's "Hires CFG Scale"); None: `cfg_scale`.
        rng: the noise source, A1111's "RNG": "GPU" (default; matches A1111 images on any device), "CPU" or "NV"
            (`generate.rng`).
        eta_noise_seed_delta: A1111's ENSD: ancestral and SDE noise are seeded with seed + this.
        subseed: A1111's variation seed; image k uses subseed + k; -1 picks one.
        subseed_strength: how much of the variation seed's noise to blend in, in [0, 1]; 0 = no variation.
        guidance_rescale: CFG rescale phi in [0, 1] (Lin et al. 2023; Forge's "Rescale CFG"); 0 = off (or the preset's).
        emphasis: A1111's emphasis mode: "Original", "No norm", "Ignore" or "None".
        mask: an inpainting mask for `init_image` (white = regenerate, black = keep; an RGBA mask's alpha where
            it has transparency), resized to the image's size when it differs; None: plain img2img.
            `generate.inpaint` has the maths and `outpaint_canvas` makes a mask for outpainting.
        mask_blur: A1111's "Mask blur": Gaussian sigma in pixels applied to the mask's edges (≥ 0; 0 = none).
        inpainting_fill: A1111's "Masked content": "fill" (the surrounding colours), "original", "latent noise"
            or "latent nothing" (A1111's API numbers 0..3).
        inpaint_full_res: A1111's "Inpaint area: Only masked": sample only the mask's box (plus the padding),
            enlarged to width x height, and paste it back; False: the whole picture.
        inpaint_full_res_padding: "Masked area padding": pixels added around the mask's box (only masked).
        inpainting_mask_invert: A1111's "Mask mode: Inpaint not masked": regenerate the black part instead.
        detailers: ADetailer units run on each finished image, in order (`generate.detailer.DetailerUnit`: a
            face/hand ONNX detector, then each detection inpainted again with its own prompt and denoise).
        controlnet_units: ControlNet units (`generate.controlnet.ControlUnit`: model, control image, weight, guidance
            range, control mode, preprocessor), applied to every pass (the hires one too, as A1111); () = none.
    """

    prompt: str
    negative_prompt: str = ""
    preset: str = "none"
    sampler: str | None = None
    schedule_type: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int = -1
    width: int | None = None
    height: int | None = None
    clip_skip: int = 1
    loras: list[tuple[str, float | dict[str, float]]] = field(default_factory=list)
    n: int = 1
    batch_size: int = 1
    init_image: Image.Image | None = None
    strength: float = 0.75
    hires: bool = False
    hires_scale: float = 1.0
    hires_steps: int = 0
    hires_denoise: float = 0.5
    hires_upscaler: str = DEFAULT_HIRES_UPSCALER
    hires_resize_x: int = 0
    hires_resize_y: int = 0
    hires_sampler: str | None = None
    hires_schedule_type: str | None = None
    hires_prompt: str = ""
    hires_negative_prompt: str = ""
    hires_cfg_scale: float | None = None
    rng: str = DEFAULT_RNG
    eta_noise_seed_delta: int = 0
    subseed: int = -1
    subseed_strength: float = 0.0
    guidance_rescale: float = 0.0
    emphasis: str = "Original"
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpainting_fill: InpaintingFill = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    detailers: tuple[DetailerUnit, ...] = ()
    controlnet_units: tuple[ControlUnit, ...] = ()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and a value that would work."""
        from animegen.generate.hires import hires_upscaler
        from animegen.generate.rng import ensd_value, rng_source
        from animegen.prompts.encode import EMPHASIS_MODES

        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 8):
                lower, upper = max(64, value // 8 * 8), max(64, (value + 7) // 8 * 8)
                raise ValueError(f"{name} {value} must be a multiple of 8 and at least 64 (try {lower} or {upper})")
        checks = [
            (self.steps is None or self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.cfg_scale is None or self.cfg_scale >= 0, f"cfg_scale must be ≥ 0, got {self.cfg_scale}"),
            (-1 <= self.seed <= MAX_SEED, f"seed must be -1 (random) or 0..{MAX_SEED}, got {self.seed}"),
            (self.clip_skip >= 1, f"clip_skip must be ≥ 1 (1 = no skip, A1111's meaning), got {self.clip_skip}"),
            (self.n >= 1, f"n (number of images) must be ≥ 1, got {self.n}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (0 < self.strength <= 1, f"strength must be in (0, 1], got {self.strength}"),
            (self.hires_scale >= 1, f"hires_scale must be ≥ 1 (1 = no hires fix), got {self.hires_scale}"),
            (self.hires_steps >= 0, f"hires_steps must be ≥ 0 (0 = same as steps), got {self.hires_steps}"),
            (0 < self.hires_denoise <= 1, f"hires_denoise must be in (0, 1], got {self.hires_denoise}"),
            (self.hires_resize_x == 0 or self.hires_resize_x >= 64,
             f"hires_resize_x must be 0 (unset) or at least 64, got {self.hires_resize_x}"),
            (self.hires_resize_y == 0 or self.hires_resize_y >= 64,
             f"hires_resize_y must be 0 (unset) or at least 64, got {self.hires_resize_y}"),
            (self.hires_cfg_scale is None or self.hires_cfg_scale >= 0,
             f"hires_cfg_scale must be ≥ 0 (unset = cfg_scale), got {self.hires_cfg_scale}"),
            (-1 <= self.subseed <= MAX_SEED, f"subseed must be -1 (random) or 0..{MAX_SEED}, got {self.subseed}"),
            (0 <= self.subseed_strength <= 1, f"subseed_strength must be in [0, 1], got {self.subseed_strength}"),
            (0 <= self.guidance_rescale <= 1, f"guidance_rescale must be in [0, 1] (0 = off), got {self.guidance_rescale}"),
            (self.mask is None or self.init_image is not None,
             "mask needs an init_image to inpaint: give init_image too (or drop mask for txt2img)"),
            (self.mask is None or not (self.hires or self.hires_scale > 1 or self.hires_resize_x or self.hires_resize_y),
             "mask (inpainting) and hires (the hires fix) cannot be combined, as in A1111: drop one of them"),
            (self.mask_blur >= 0, f"mask_blur must be ≥ 0 (0 = a hard edge), got {self.mask_blur}"),
            (self.inpaint_full_res_padding >= 0,
             f"inpaint_full_res_padding must be ≥ 0 pixels, got {self.inpaint_full_res_padding}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for unit in self.controlnet_units:
            try:
                unit.validate()
            except AnimegenError as exc:
                raise ValueError(str(exc)) from None
        rng_source(self.rng, "rng")
        ensd_value(self.eta_noise_seed_delta, "eta_noise_seed_delta")
        hires_upscaler(self.hires_upscaler, "hires_upscaler")
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis {self.emphasis!r} is not an A1111 emphasis mode; use one of: "
                             f"{', '.join(EMPHASIS_MODES)}")
        for name, weight in self.loras:
            lora_multiplier(name, weight)
        try:
            inpainting_fill_name(self.inpainting_fill)
        except AnimegenError as exc:
            raise ValueError(str(exc)) from None
        for unit in self.detailers:
            if not isinstance(unit, DetailerUnit):
                raise ValueError(f"detailers must hold DetailerUnit(model, ...) values, got {unit!r}")
            unit.validate()


def lora_multiplier(name: str, weight) -> float | dict[str, float]:
    """A request's LoRA multiplier, checked by the merge's own rule (`models.lora.apply.check_multiplier`)."""
    from animegen.models.lora.apply import check_multiplier

    try:
        return check_multiplier(weight)
    except AnimegenError as exc:
        raise AnimegenError(f"LoRA {name!r}: {exc}") from None


def lora_tag_text(name: str, weight: float | dict[str, float]) -> str:
    """How a LoRA is written into the recorded prompt, as A1111 reads it: `<lora:name:w>` or `<lora:name:te:unet>`."""
    if isinstance(weight, dict):
        return f"<lora:{name}:{weight.get('text_encoder', 0.0):g}:{weight.get('unet', 0.0):g}>"
    return f"<lora:{name}:{weight:g}>"


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`PATH_OR_NAME[:WEIGHT]` -> (path or name, weight); no weight is 1.0, as A1111's `<lora:name>`.

    The weight is what follows the last `:` unless a `/` or `\\` follows it, as after a Windows
    drive (`C:\\loras\\x.safetensors`, `C:\\loras\\x.safetensors:0.8`). A weight that is not a finite
    number is an error, not silently part of the file name.
    """
    head, sep, tail = spec.rpartition(":")
    if not sep or "/" in tail or "\\" in tail:
        path, weight = spec, 1.0
    else:
        path = head
        try:
            weight = float(tail)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise AnimegenError(f"LoRA {spec!r}: weight {tail!r} is not a number; write PATH[:WEIGHT], "
                                "e.g. style.safetensors:0.8")
    if not path:
        raise AnimegenError(f"LoRA {spec!r} names no file; write PATH[:WEIGHT], e.g. style.safetensors:0.8")
    return path, weight


@dataclass(frozen=True)
class ResolvedRequest:
    """A request with every default filled in; what the engine runs and the infotext records."""

    prompt: str  # final prompt text as recorded (preset applied, LoRA tags kept)
    negative_prompt: str
    sampler: str
    schedule_type: str | None
    steps: int
    cfg_scale: float
    seeds: tuple[int, ...]
    width: int
    height: int
    clip_skip: int
    loras: tuple[tuple[str, float | dict[str, float]], ...]
    batch_size: int
    init_image: Image.Image | None
    strength: float
    hires: bool  # the hires pass runs
    hires_scale: float
    hires_steps: int
    hires_denoise: float
    hires_upscaler: str  # canonical name
    hires_resize_x: int
    hires_resize_y: int
    hires_sampler: str | None
    hires_schedule_type: str | None
    hires_prompt: str  # "" = the prompt
    hires_negative_prompt: str  # "" = the negative prompt
    hires_cfg_scale: float
    rng: str  # canonical: GPU, CPU or NV
    eta_noise_seed_delta: int
    subseeds: tuple[int, ...]  # one per image, like seeds
    subseed_strength: float
    guidance_rescale: float
    emphasis: str
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpainting_fill: InpaintingFill = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    detailers: tuple[DetailerUnit, ...] = ()
    controlnet_units: tuple[ControlUnit, ...] = ()


def resolve(request: GenerationRequest, default_size: int, preset_file=None, model=None) -> ResolvedRequest:
    """Fill a request's gaps from its preset and the model family's default size.

    `model` (path or hub id) is what `preset="auto"` recognises its preset from (`prompts.presets.detect_preset`).
    """
    from animegen.generate.hires import hires_upscaler
    from animegen.generate.rng import ensd_value, rng_source
    from animegen.prompts.presets import build_prompt, get_preset

    request.validate()
    preset = get_preset(request.preset, preset_file, model=model) if request.preset not in ("", None) else None
    prompt = build_prompt(preset, request.prompt) if preset is not None else request.prompt
    negative = request.negative_prompt or (preset.negative if preset is not None else "")
    base_seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED - request.n)
    base_subseed = request.subseed  # A1111 picks one for -1; it only matters when it has a strength
    if base_subseed < 0:
        base_subseed = secrets.randbelow(MAX_SEED - request.n) if request.subseed_strength > 0 else base_seed

    def setting(name: str, default):
        """The request's value, else the preset's recommendation, else the default."""
        for value in (getattr(request, name), getattr(preset, name, None)):
            if value not in (None, ""):
                return value
        return default

    def unless_default(name: str, default):
        """Fields whose unset value is their default (clip skip 1, CFG rescale 0): else the preset's value."""
        value = getattr(request, name)
        return value if value != default else (getattr(preset, name, None) or default)

    cfg_scale = setting("cfg_scale", DEFAULT_CFG)
    return ResolvedRequest(
        prompt=prompt,
        negative_prompt=negative,
        sampler=setting("sampler", DEFAULT_SAMPLER),
        schedule_type=request.schedule_type,
        steps=setting("steps", DEFAULT_STEPS),
        cfg_scale=cfg_scale,
        seeds=tuple(range(base_seed, base_seed + request.n)),
        width=setting("width", default_size),
        height=setting("height", default_size),
        clip_skip=unless_default("clip_skip", 1),
        loras=tuple((str(p), lora_multiplier(str(p), w)) for p, w in request.loras),
        batch_size=request.batch_size,
        init_image=request.init_image,
        strength=request.strength,
        hires=request.hires or request.hires_scale > 1 or bool(request.hires_resize_x or request.hires_resize_y),
        hires_scale=request.hires_scale,
        hires_steps=request.hires_steps,
        hires_denoise=request.hires_denoise,
        hires_upscaler=hires_upscaler(request.hires_upscaler),
        hires_resize_x=request.hires_resize_x,
        hires_resize_y=request.hires_resize_y,
        hires_sampler=request.hires_sampler or None,
        hires_schedule_type=request.hires_schedule_type or None,
        hires_prompt=request.hires_prompt,
        hires_negative_prompt=request.hires_negative_prompt,
        hires_cfg_scale=cfg_scale if request.hires_cfg_scale is None else request.hires_cfg_scale,
        rng=rng_source(request.rng),
        eta_noise_seed_delta=ensd_value(request.eta_noise_seed_delta),
        subseeds=tuple(range(base_subseed, base_subseed + request.n)),
        subseed_strength=request.subseed_strength,
        guidance_rescale=unless_default("guidance_rescale", 0.0),
        emphasis=request.emphasis,
        mask=request.mask,
        mask_blur=request.mask_blur,
        inpainting_fill=inpainting_fill_name(request.inpainting_fill),
        inpaint_full_res=request.inpaint_full_res,
        inpaint_full_res_padding=request.inpaint_full_res_padding,
        inpainting_mask_invert=request.inpainting_mask_invert,
        detailers=tuple(request.detailers),
        controlnet_units=tuple(request.controlnet_units),
    )


def request_from_infotext(text: str, **overrides: Any) -> GenerationRequest:
    """Rebuild the request that produced an image from its infotext (A1111's or ours), then apply `overrides`.

    What each field means, and which are refused or ignored, is `infotext.request_fields`'s contract. The
    recorded prompt already has the preset applied, so the preset is `none`; LoRAs travel as `<lora:...>` tags.
    """
    return replace(GenerationRequest(preset="none", **request_fields(text)), **overrides)
