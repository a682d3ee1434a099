"""A1111 "infotext": the generation parameters stored in a PNG's `parameters` text chunk.

The format is A1111's, so its PNG Info tab and Civitai read our images and we read theirs:

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>
    Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, Model hash: 1a2b3c4d5e, ...

Values that contain `,`, `:` or a newline are JSON-quoted, exactly as A1111's `quote()` does. The noise
source ("RNG") and ENSD are written and read by `noise_fields` / `parse_noise_fields`, with A1111's meaning
of a missing field (GPU noise, ENSD 0). `request_fields` turns an infotext into a request, field by field:

Read, with A1111 1.10's meaning (`infotext_utils.parse_generation_parameters`, `sd_samplers`):
  Prompt, Negative prompt, Steps, Sampler (any A1111 name or alias, `k_euler_a`; a pre-1.9 name with its
  schedule as suffix, "DPM++ 2M Karras"), Schedule type (missing = Automatic: the sampler's default, so a bare
  "DPM++ 2M" is Karras, as 1.10 reads it), CFG scale, Seed, Size, Clip skip (missing = 1), Denoising strength
  (the hires pass's with a hires field, else img2img's), RNG (missing = GPU), ENSD / Eta noise seed delta,
  Emphasis (missing = Original), Variation seed, Variation seed strength, Hires upscale, Hires resize (WxH),
  Hires steps, Hires upscaler (missing = Latent, A1111's default mode), Hires sampler, Hires schedule type
  ("Use same ..." = unset), Hires prompt, Hires negative prompt, First pass size (the pre-1.0 hires fix, turned
  into Size + Hires resize as A1111 does), Hypernet (appended as a `<hypernet:...>` tag, as A1111 does; the
  engine then warns it ignores it); Forge's Hires CFG Scale and Rescale CFG (CFG rescale, `guidance_rescale`);
  the inpainting settings Mask blur, Mask mode ("Inpaint not masked" = inverted), Masked content (missing =
  original, which A1111 does not write), Inpaint area ("Only masked"; missing = whole picture), Masked area
  padding, and Conditional mask weight (a 9-channel model's; only A1111's default 1 is accepted). The mask
  itself is not in the infotext: give it (`mask=`) with the init image to inpaint again. ADetailer's fields
  ("ADetailer model", ... confidence, mask only top k largest, mask min/max ratio, dilate erode, mask blur,
  denoising strength, inpaint only masked, inpaint padding, use inpaint width height, separate steps / CFG scale;
  " 2nd", " 3rd", ... for later units) as `GenerationRequest.detailers` (`detailer.units_from_params`; the model
  by its file name, which a detector folder resolves; "ADetailer version" is informational).
Read, no effect on the request: Model hash, Model, VAE hash, VAE, Version, User, Lora hashes, TI hashes,
  Hashes, Init image hash, Hypernet hash, Hypernet strength (part of the Hypernet tag).
Ignored with a warning (small numeric or no effect here): FP8 weight, Cache FP16 weight for LoRA, Downcast
  alphas_cumprod, Old prompt editing timelines, Pad conds, Pad conds v0, Noise schedule (animegen follows the
  model's scheduler config), and every field A1111 1.10 does not write (extensions' fields), as A1111 ignores
  them. The backward-compatibility switches A1111 derives from an old "Version" (< 1.6: old prompt-editing
  timelines, DDIM/PLMS pad conds v0; < 1.7.0-225: downcast alphas_cumprod) are warned about the same way, and
  so is a pre-1.9 infotext whose bare sampler name meant the Uniform schedule then (read as 1.10 reads it).
Refused, naming the field (`REFUSED`): what would change the image and animegen cannot do (refiner, hires
  checkpoint, seed resize, tiling, face restoration, token merging, custom sigma range / rho / eta /
  churn / UniPC options, NGMS, skip early CFG, TAESD VAE, the CFG Rescale extension's x0 rescale, Forge's Flux
  fields), unless its value is the default (e.g. "VAE Decoder: Full").

Written (`Generator._parameters`): Steps, Sampler (canonical name), Schedule type (the label A1111 1.10's
`get_sigmas` writes: the sampler's effective schedule, "Automatic" where it uses the model's own sigmas), CFG
scale, Seed, Size, Model hash, Model, VAE, Denoising strength, Conditional mask weight (9-channel models), the
inpainting fields (`inpaint_fields`, as A1111 writes them), Clip skip, ENSD, RNG, Variation seed (+ strength),
Emphasis, Rescale CFG, the Hires fields, Lora hashes, the ADetailer fields (`detailer.detailer_fields`, as ADetailer
writes them), Version; each reads back to the same request.
Unlike A1111 we always write RNG (see `noise_fields`) and write ENSD for Restart and LCM, which draw from the
ENSD-reseeded generators although A1111 omits it for them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from animegen.core.errors import AnimegenError
from animegen.core.files import atomic_path
from animegen.generate.detailer import infotext_key, units_from_params

# A1111's own pattern for one `Key: value` pair on the parameters line.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    """Quote a value the way A1111 does: only when it would break the `Key: value, ...` line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Inverse of `quote`: JSON-decode a quoted value, leave anything else as it is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """Build infotext; `params` is ordered (A1111 order: Steps, Sampler, CFG scale, Seed, Size, ...).

    Entries whose value is None are left out, as A1111 leaves out unset fields.
    """
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    parts = [prompt]
    if negative_prompt:
        parts.append(f"Negative prompt: {negative_prompt}")
    parts.append(line)
    return "\n".join(parts)


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse infotext into a dict: `Prompt`, `Negative prompt`, every parameter, and `Size-1`/`Size-2`.

    Mirrors A1111's `parse_generation_parameters`: the last line holds the parameters when it has at
    least three `Key: value` pairs; lines before `Negative prompt:` are the prompt.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()  # A1111 strips every line
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in _PARAM_RE.findall(last):
        value = unquote(value.strip())
        size = _SIZE_RE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = int(size.group(1)), int(size.group(2))
        result[key] = value
    return result


def noise_fields(rng: str, eta_noise_seed_delta: int, *, sampler_uses_ensd: bool) -> dict[str, Any]:
    """The noise fields for `format_infotext`: "ENSD" as A1111 writes it (non-zero, and the sampler draws
    ancestral noise, A1111's `uses_ensd`: elsewhere it changes nothing), and "RNG".

    Unlike A1111 we also write "RNG: GPU", its default, which A1111 reads with the same meaning: animegen
    infotexts from before this field carry no "RNG" yet were drawn from CPU generators, and the explicit
    field is what tells the two apart (`parse_noise_fields`).
    """
    return {"ENSD": eta_noise_seed_delta if eta_noise_seed_delta and sampler_uses_ensd else None, "RNG": rng}


def parse_noise_fields(params: dict[str, Any]) -> tuple[str, int]:
    """(rng, eta_noise_seed_delta) of a parsed infotext, with A1111's meaning of what is absent.

    No "RNG" means GPU, A1111's default, except in an animegen infotext ("Version: animegen ..."), which
    lacks it only if written before animegen recorded it, when its noise came from CPU generators. ENSD is
    read from "ENSD" or from the setting's long name "Eta noise seed delta"; absent means 0.
    """
    from animegen.generate.rng import A1111_DEFAULT_SOURCE, ensd_value, rng_source

    if "RNG" in params:
        rng = rng_source(params["RNG"], "infotext RNG:")
    else:
        rng = "CPU" if str(params.get("Version", "")).startswith("animegen") else A1111_DEFAULT_SOURCE
    key = "ENSD" if "ENSD" in params else "Eta noise seed delta"
    return rng, ensd_value(params.get(key, 0), f"infotext {key}:")


# Fields that change the image in a way animegen cannot reproduce -> what they are, for the refusal.
REFUSED = {
    "Hires checkpoint": "a second checkpoint for the hires pass", "Refiner": "the SDXL refiner",
    "Refiner switch at": "the SDXL refiner", "Seed resize from": "seed resize", "Tiling": "seamless tiling",
    "Face restoration": "face restoration", "Image CFG scale": "instruct-pix2pix image guidance",
    "Token merging ratio": "token merging", "Token merging ratio hr": "token merging",
    "SGM noise multiplier": "the SGM noise multiplier", "Noise multiplier": "img2img's noise multiplier",
    "Extra noise": "hires extra noise", "Schedule max sigma": "a custom sigma range",
    "Schedule min sigma": "a custom sigma range", "Schedule rho": "a custom schedule rho", "Eta": "a custom eta",
    "Eta DDIM": "a custom DDIM eta", "Sigma churn": "sampler churn", "Sigma tmin": "sampler churn",
    "Sigma tmax": "sampler churn", "Sigma noise": "sampler churn", "Discard penultimate sigma":
    "the always-discard-penultimate-sigma option", "UniPC variant": "UniPC options", "UniPC skip type":
    "UniPC options", "UniPC order": "UniPC options", "UniPC lower order final": "UniPC options",
    "NGMS": "negative guidance minimum sigma", "NGMS all steps": "negative guidance minimum sigma",
    "Skip Early CFG": "skipping early CFG", "VAE Encoder": "the TAESD VAE approximation",
    "VAE Decoder": "the TAESD VAE approximation",
    "CFG Rescale": "the CFG Rescale extension, which rescales the denoised image (animegen's guidance_rescale "
                   "is Forge's Rescale CFG)",
    "DDIM Trailing": "the CFG Rescale extension's trailing DDIM", "Distilled CFG Scale": "Forge's Flux guidance",
    "Hires Distilled CFG Scale": "Forge's Flux guidance", "Module 1": "Forge's extra model modules",
    "Hires Module 1": "Forge's extra model modules",
}
# A refused field holding its default changes nothing.
_DEFAULTS = {"Hires checkpoint": "Use same checkpoint", "VAE Encoder": "Full", "VAE Decoder": "Full",
             "Schedule max sigma": "0", "Schedule min sigma": "0", "Schedule rho": "0", "Tiling": "False",
             "CFG Rescale": "0", "DDIM Trailing": "False", "Extra noise": "0", "Token merging ratio": "0",
             "Token merging ratio hr": "0", "NGMS": "0", "SGM noise multiplier": "False", "Refiner": "None"}
WARNED = {
    "FP8 weight": "fp8 weight storage (small numeric changes)", "Cache FP16 weight for LoRA": "fp8 weight storage",
    "Downcast alphas_cumprod": "A1111's pre-1.7 float16 alphas_cumprod (small numeric changes)",
    "Old prompt editing timelines": "A1111's pre-1.6 prompt-editing timing", "Pad conds": "cond padding "
    "(animegen pads as prompts.encode does)", "Pad conds v0": "A1111's pre-1.6 DDIM/PLMS cond padding",
    "Noise schedule": "animegen takes zero-terminal SNR from the model's scheduler config",
}
INFORMATIONAL = {"Model hash", "Model", "VAE hash", "VAE", "Version", "User", "Lora hashes", "TI hashes", "Hashes",
                 "Init image hash", "Hypernet hash", "Hypernet strength"}
_READ = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip",
         "Denoising strength", "RNG", "ENSD", "Eta noise seed delta", "Emphasis", "Variation seed",
         "Variation seed strength", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler",
         "Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt", "Hires CFG Scale",
         "Rescale CFG", "First pass size", "Hypernet", "Mask blur", "Mask mode", "Masked content", "Inpaint area",
         "Masked area padding", "Conditional mask weight"}
_MASK_MODES = {"Inpaint masked": False, "Inpaint not masked": True}
_INPAINT_AREAS = {"Whole picture": False, "Only masked": True}
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-(\d+))?")
log = logging.getLogger(__name__)


def schedule_type_label(choice) -> str:
    """The "Schedule type" A1111 1.10 writes for a `samplers.SamplerChoice`: its `get_sigmas` records the
    effective schedule of a sigma sampler (Automatic resolved to the sampler's default, "Karras" for DPM++ 2M),
    else the chosen label ("Automatic" where the sampler walks the model's own sigmas)."""
    if choice.sampler.kind == "timesteps" or choice.schedule.label != "Automatic":
        return choice.schedule.label
    return choice.effective_schedule.label if "scheduler" in choice.sampler.options else "Automatic"


def _a1111_version(text: Any) -> tuple[int, ...] | None:
    match = _VERSION_RE.match(str(text or ""))
    return None if match is None else tuple(int(g or 0) for g in match.groups())


def _number(params: dict[str, Any], key: str, kind, default=None):
    """`params[key]` as int or float, or an error naming the infotext field."""
    if key not in params:
        return default
    try:
        value = kind(str(params[key]).strip())
    except ValueError:
        raise AnimegenError(f"infotext {key}: {params[key]!r} is not a number") from None
    return value


def _sampler(name: str, schedule: str | None, field: str):
    from animegen.generate.samplers import resolve_sampler
    from animegen.generate.schedules import find_schedule_type

    if find_schedule_type(schedule) is None:
        field = "Hires schedule type" if field.startswith("Hires") else "Schedule type"
    try:
        return resolve_sampler(name, schedule)
    except ValueError as exc:
        raise AnimegenError(f"infotext {field}: {exc}") from None


def _emphasis(value: str) -> str:
    from animegen.prompts.encode import EMPHASIS_MODES

    if value not in EMPHASIS_MODES:
        raise AnimegenError(f"infotext Emphasis: {value!r} is not an A1111 emphasis mode; animegen has "
                            f"{', '.join(EMPHASIS_MODES)}")
    return value


def _check_fields(params: dict[str, Any]) -> None:
    """Refuse what animegen cannot honour; warn about what it ignores (see the module docstring)."""
    present = {key.rsplit("-", 1)[0] if key.endswith(("-1", "-2")) else key for key in params}
    for key in sorted(present & set(REFUSED)):
        value = str(params.get(key, params.get(f"{key}-1", ""))).strip()
        if value not in (_DEFAULTS.get(key), ""):
            raise AnimegenError(f"infotext {key}: {value!r} asks for {REFUSED[key]}, which animegen cannot "
                                f"reproduce; remove the field to generate without it")
    for key in sorted(present & set(WARNED)):
        log.warning("infotext %s: %r ignored: %s", key, params[key], WARNED[key])
    unknown = sorted(k for k in present - set(REFUSED) - set(WARNED) - INFORMATIONAL - _READ if infotext_key(k) is None)
    if unknown:
        log.warning("infotext fields ignored (not A1111 1.10's; A1111 ignores them too): %s", ", ".join(unknown))
    version = _a1111_version(params.get("Version"))
    if version is None:
        return
    if version < (1, 6, 0) and "[" in params.get("Prompt", ""):
        log.warning("infotext from A1111 %s: its prompt editing used pre-1.6 timelines; read with 1.10's",
                    params["Version"])
    if version < (1, 7, 0, 225):
        log.warning("infotext from A1111 %s: A1111 1.10 would downcast alphas_cumprod for it (small numeric "
                    "changes); animegen does not", params["Version"])
    choice = _sampler(params["Sampler"], params.get("Schedule type"), "Sampler")
    legacy = "scheduler" in choice.sampler.options and choice.sampler.name != "Restart"
    if version < (1, 9, 0) and "Schedule type" not in params and legacy and choice.name == choice.sampler.name:
        log.warning("infotext from A1111 %s: before 1.9 a bare %r meant the Uniform schedule; read as A1111 1.10 "
                    "reads it (%s); add 'Schedule type: Uniform' for the old meaning", params["Version"],
                    params["Sampler"], schedule_type_label(choice))


def _restore_old_hires_fix(params: dict[str, Any]) -> None:
    """A1111's `restore_old_hires_fix_params`: a pre-1.0 "First pass size" becomes Size + Hires resize."""
    if "First pass size-1" not in params:
        return
    first_w, first_h = int(params["First pass size-1"]), int(params["First pass size-2"])
    width, height = int(params.get("Size-1", 512)), int(params.get("Size-2", 512))
    if first_w == 0 or first_h == 0:  # A1111's old_hires_fix_first_pass_dimensions
        scale = (512 * 512 / (width * height)) ** 0.5
        first_w, first_h = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    params.update({"Size-1": first_w, "Size-2": first_h, "Hires resize-1": width, "Hires resize-2": height})


def request_fields(text: str) -> dict[str, Any]:
    """The `GenerationRequest` fields an infotext (A1111's, Forge's or ours) asks for; see the module docstring."""
    from animegen.generate.hires import hires_upscaler

    params = parse_infotext(text)
    missing = [k for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size-1") if k not in params]
    if missing:
        raise AnimegenError(f"infotext lacks {', '.join(missing)}; is this an A1111/animegen PNG?")
    _restore_old_hires_fix(params)
    _check_fields(params)
    choice = _sampler(params["Sampler"], params.get("Schedule type"), "Sampler")
    rng, eta_noise_seed_delta = parse_noise_fields(params)
    prompt = params["Prompt"]
    if "Hypernet" in params:  # A1111 turns it back into the tag it came from
        prompt += f"<hypernet:{params['Hypernet']}:{params.get('Hypernet strength', '1.0')}>"
    fields: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": params["Negative prompt"], "sampler": choice.name,
        "schedule_type": None, "steps": _number(params, "Steps", int), "cfg_scale": _number(params, "CFG scale", float),
        "seed": _number(params, "Seed", int), "width": int(params["Size-1"]), "height": int(params["Size-2"]),
        "clip_skip": _number(params, "Clip skip", int, 1), "rng": rng, "eta_noise_seed_delta": eta_noise_seed_delta,
        "emphasis": _emphasis(params.get("Emphasis", "Original")),
        "guidance_rescale": _number(params, "Rescale CFG", float, 0.0),
    }
    if "Variation seed" in params:
        fields.update(subseed=_number(params, "Variation seed", int),
                      subseed_strength=_number(params, "Variation seed strength", float, 0.0))
    fields.update(_inpaint_request_fields(params))
    detailers = units_from_params(params)
    if detailers:
        fields["detailers"] = detailers
    if "Hires upscale" not in params and "Hires resize-1" not in params:
        if "Denoising strength" in params:  # txt2img writes it only with the hires fix: an img2img infotext
            fields["strength"] = _number(params, "Denoising strength", float)
        return fields
    fields.update(
        hires=True, hires_scale=_number(params, "Hires upscale", float, 1.0),
        hires_resize_x=int(params.get("Hires resize-1", 0)), hires_resize_y=int(params.get("Hires resize-2", 0)),
        hires_steps=_number(params, "Hires steps", int, 0),
        hires_denoise=_number(params, "Denoising strength", float, 0.75),  # A1111's txt2img default
        hires_upscaler=hires_upscaler(params.get("Hires upscaler", "Latent"), "infotext Hires upscaler:"),
        hires_prompt=params.get("Hires prompt", ""), hires_negative_prompt=params.get("Hires negative prompt", ""),
        hires_cfg_scale=_number(params, "Hires CFG Scale", float),
    )
    hr_sampler = params.get("Hires sampler", "Use same sampler")
    hr_schedule = params.get("Hires schedule type", "Use same scheduler")
    if hr_sampler != "Use same sampler" or hr_schedule != "Use same scheduler":
        hires = _sampler(params["Sampler"] if hr_sampler == "Use same sampler" else hr_sampler,
                         params.get("Schedule type") if hr_schedule == "Use same scheduler" else hr_schedule,
                         "Hires sampler")
        fields.update(hires_sampler=hires.sampler.name, hires_schedule_type=hires.schedule.label)
    return fields


def inpaint_fields(r, plan) -> dict[str, Any]:
    """The inpainting fields of a `ResolvedRequest` run with an `inpaint.InpaintPlan`, as A1111's img2img writes
    them: Mask blur when > 0, Mask mode only when inverted, Inpaint area and Masked area padding only for "Only
    masked", Masked content except for "original"; nothing without a mask."""
    if plan is None:
        return {}
    only_masked = plan.paste_to is not None
    return {
        "Mask blur": r.mask_blur if r.mask_blur > 0 else None,
        "Mask mode": "Inpaint not masked" if r.inpainting_mask_invert else None,
        "Inpaint area": "Only masked" if only_masked else None,
        "Masked area padding": r.inpaint_full_res_padding if only_masked else None,
        "Masked content": r.inpainting_fill if r.inpainting_fill != "original" else None,
    }


def _choice(params: dict[str, Any], key: str, choices: dict[str, bool]) -> bool | None:
    if key not in params:
        return None
    if params[key] not in choices:
        raise AnimegenError(f"infotext {key}: {params[key]!r} is not A1111's; use {' or '.join(choices)}")
    return choices[params[key]]


def _inpaint_request_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The inpainting request fields an infotext holds (only those present; see the module docstring)."""
    from animegen.generate.inpaint import inpainting_fill_name

    weight = _number(params, "Conditional mask weight", float, 1.0)
    if weight != 1.0:
        raise AnimegenError(f"infotext Conditional mask weight: {params['Conditional mask weight']!r} asks for a "
                            "partial inpainting mask weight, which animegen cannot reproduce (it uses A1111's "
                            "default 1.0); remove the field to generate with 1.0")
    found = {
        "mask_blur": _number(params, "Mask blur", int),
        "inpainting_mask_invert": _choice(params, "Mask mode", _MASK_MODES),
        "inpaint_full_res": _choice(params, "Inpaint area", _INPAINT_AREAS),
        "inpaint_full_res_padding": _number(params, "Masked area padding", int),
        "inpainting_fill": (inpainting_fill_name(params["Masked content"], "infotext Masked content:")
                            if "Masked content" in params else None),
    }
    return {k: v for k, v in found.items() if v is not None}


def png_with_infotext(image: Image.Image, infotext: str) -> PngImagePlugin.PngInfo:
    """The PNG metadata block A1111 writes: a `parameters` tEXt (iTXt when not Latin-1) chunk."""
    info = PngImagePlugin.PngInfo()
    try:
        infotext.encode("latin-1")
        info.add_text("parameters", infotext)
    except UnicodeEncodeError:
        info.add_itxt("parameters", infotext)
    return info


def save_png(generated, path: str | os.PathLike) -> Path:
    """Write a `GeneratedImage` (or any object with `.image` and `.infotext`) as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        generated.image.save(tmp, format="PNG", pnginfo=png_with_infotext(generated.image, generated.infotext))
    return path


def read_png_infotext(path: str | os.PathLike) -> str | None:
    """The `parameters` text of a PNG written by A1111, animegen or anything compatible; None if absent."""
    with Image.open(path) as img:
        img.load()
        text = img.info.get("parameters")
        if text is None and hasattr(img, "text"):
            text = img.text.get("parameters")
    return text
