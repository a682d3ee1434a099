"""The web UI's forms as data: which controls a tab has, how their values become a request, and back.

Contract:
- A form is a tuple of `Field`s; each field's `name` is the `ServeService.build_request` keyword it fills and
  the key of its control in the UI, so the UI never maps positions by hand.
- `request_kwargs(form, values)` turns the controls' values into `build_request` keywords. An empty (or 0)
  control of an `unset_when_empty` field (sampler, steps, CFG, size, style) is *not sent*, so the preset and then the model
  family decide (`animegen.generate.request.resolve`): the UI holds no copy of those defaults. With the
  "Hires. fix" box off no hires field is sent, whatever the hires controls show (A1111's `enable_hr`).
  Likewise the img2img inpaint controls (`INPAINT`: Mask blur, Mask mode, Masked content, Inpaint area, Only
  masked padding; the radios' labels are A1111's, as its infotext writes them) are sent, as `build_request`'s
  `inpainting` dict, only with a mask: `values["mask"]`, the image `ui_run.inpaint_mask` made of the editor or
  the upload (no control of its own, like the init image). Without one, A1111 ignores them, and so do we.
- The "ControlNet" and "ADetailer" accordions of both tabs (`CONTROLNET`, `ADETAILER`: one unit each) are sent
  only with their Enable box ticked, and then as the API's `alwayson_scripts` (the extensions' own field names:
  `controlnet.args`, `ADetailer.args`), which `ui_run.run_generation` turns into `build_request`'s
  `controlnet_units` / `detailers` the way the API does (`ServeService.controlnet_units` / `detailer_units`:
  names found in the server's folders only). The control image is `values["control_image"]`, read by the UI
  like the init image; without one, img2img's init image is used (the extension's rule).
- `form_values(form, request, image_size=None)` is the inverse used by every "Send to ..." and PNG Info: the
  values to put in the controls for a `GenerationRequest` (usually `request_from_infotext` of an image). It
  carries every setting the form has; the sampler is split into sampler + schedule type as A1111 1.10 shows
  them; settings the form has no control for (RNG, ENSD, emphasis, CFG rescale) travel as A1111's
  "Override settings" entries ("RNG: CPU"), which `request_kwargs` reads back. With `image_size` (the image
  being sent) width and height are the image's, as A1111's "send size" does. Fields it does not return (batch
  count and size, hires controls of a request without hires fix) are left as the user set them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from animegen.generate.infotext import _INPAINT_AREAS as INPAINT_AREAS  # the labels' one home: the infotext's
from animegen.generate.infotext import _MASK_MODES as MASK_MODES
from animegen.generate.inpaint import inpainting_fill_name
from animegen.generate.request import GenerationRequest


@dataclass(frozen=True)
class Field:
    """One form control: `name` is the `build_request` keyword it fills."""

    name: str
    kind: Callable[[Any], Any]
    unset_when_empty: bool = False  # "" / None means "not set": the preset, then the model family decides


def _bool(value: Any) -> bool:
    return bool(value)


class _Labels:
    """A radio whose labels stand for a request's bool (A1111's "Inpaint area": "Only masked" = True)."""

    def __init__(self, labels: dict[str, bool]):
        self.labels = labels
        self.__name__ = "choice (" + " or ".join(repr(label) for label in labels) + ")"

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if value not in self.labels:
            raise ValueError(value)
        return self.labels[value]

    def label(self, value: bool) -> str:
        return next(label for label, meant in self.labels.items() if meant == value)


COMMON = (
    Field("prompt", str), Field("negative_prompt", str), Field("preset", str, True),
    Field("sampler", str, True), Field("schedule_type", str, True), Field("steps", int, True),
    Field("cfg_scale", float, True), Field("width", int, True), Field("height", int, True),
    Field("seed", int), Field("subseed", int), Field("subseed_strength", float),
    Field("n_iter", int), Field("batch_size", int), Field("clip_skip", int), Field("overrides", list),
)
HIRES = (
    Field("hires", _bool), Field("hires_upscaler", str), Field("hires_steps", int), Field("hires_denoise", float),
    Field("hires_scale", float), Field("hires_resize_x", int), Field("hires_resize_y", int),
    Field("hires_sampler", str, True), Field("hires_schedule_type", str, True), Field("hires_prompt", str),
    Field("hires_negative_prompt", str),
)
MASK_MODE, INPAINT_AREA = _Labels(MASK_MODES), _Labels(INPAINT_AREAS)
INPAINT = (
    Field("mask_blur", int), Field("inpainting_mask_invert", MASK_MODE), Field("inpainting_fill", str),
    Field("inpaint_full_res", INPAINT_AREA), Field("inpaint_full_res_padding", int),
)
# one ControlNet unit; the fields after cn_enable are the extension's API fields under these names
CONTROLNET = (
    Field("cn_enable", _bool), Field("cn_module", str), Field("cn_model", str, True), Field("cn_weight", float),
    Field("cn_start", float), Field("cn_end", float), Field("cn_control_mode", str),
)
CONTROLNET_API = {"cn_module": "module", "cn_model": "model", "cn_weight": "weight", "cn_start": "guidance_start",
                  "cn_end": "guidance_end", "cn_control_mode": "control_mode"}
# one ADetailer unit, likewise under ADetailer's ad_* names
ADETAILER = (
    Field("ad_enable", _bool), Field("ad_model", str, True), Field("ad_prompt", str),
    Field("ad_negative_prompt", str), Field("ad_confidence", float), Field("ad_denoise", float),
)
ADETAILER_API = {"ad_model": "ad_model", "ad_prompt": "ad_prompt", "ad_negative_prompt": "ad_negative_prompt",
                 "ad_confidence": "ad_confidence", "ad_denoise": "ad_denoising_strength"}
UNITS = CONTROLNET + ADETAILER
TXT2IMG = COMMON + HIRES + UNITS
IMG2IMG = COMMON + (Field("strength", float),) + INPAINT + UNITS

SAME_SAMPLER = "Use same sampler"  # A1111's hires sampler entry meaning "the first pass's"
SAME_SCHEDULE = "Use same scheduler"
# What an unset_when_empty control shows when unset: empty, or 0 in a number box (A1111's "0 = automatic", as
# its hires steps and resize boxes), "Automatic" schedule (the sampler's own, as None), "Use same ...".
UNSET_VALUES = (None, "", 0, SAME_SAMPLER, SAME_SCHEDULE, "Automatic")

# "Override settings": request fields without a control of their own, under their infotext names.
OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "RNG": ("rng", str), "ENSD": ("eta_noise_seed_delta", int), "Emphasis": ("emphasis", str),
    "Rescale CFG": ("guidance_rescale", float),
}


class FormError(ValueError):
    """A control holds a value that cannot be sent; the message names the control."""


def names(form: Iterable[Field]) -> list[str]:
    return [f.name for f in form]


def _convert(field: Field, value: Any) -> Any:
    if field.unset_when_empty and value in UNSET_VALUES:
        return None
    if value is None:
        return {"seed": -1, "subseed": -1}.get(field.name, value)
    try:
        return field.kind(value)
    except (TypeError, ValueError):
        raise FormError(f"{field.name}: {value!r} is not a valid {field.kind.__name__}") from None


def parse_overrides(entries: Iterable[str]) -> dict[str, Any]:
    """`["RNG: CPU", "ENSD: 31337"]` -> build_request keywords; an unknown entry names the known ones."""
    out: dict[str, Any] = {}
    for entry in entries or ():
        key, sep, value = str(entry).partition(":")
        if not sep or key.strip() not in OVERRIDES:
            raise FormError(f"override setting {entry!r} is not one of: {', '.join(OVERRIDES)} (write 'RNG: CPU')")
        name, kind = OVERRIDES[key.strip()]
        try:
            out[name] = kind(value.strip())
        except ValueError:
            raise FormError(f"override setting {entry!r}: {value.strip()!r} is not a valid value") from None
    return out


def request_kwargs(form: Iterable[Field], values: dict[str, Any]) -> dict[str, Any]:
    """The controls' values as `ServeService.build_request` keywords (empty = unset, see the module contract)."""
    fields = {f.name: f for f in form}
    kwargs = {name: _convert(fields[name], values[name]) for name in fields if name != "overrides"}
    if "hires" in kwargs and not kwargs["hires"]:
        for name in names(HIRES):
            kwargs.pop(name)
    inpainting = {name: kwargs.pop(name) for name in names(INPAINT) if name in kwargs}
    if inpainting and values.get("mask") is not None:
        kwargs["inpainting"] = {"mask": values["mask"], **inpainting}
    scripts = _unit_scripts(kwargs)
    if scripts:
        kwargs["alwayson_scripts"] = scripts
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.setdefault("prompt", "")
    if "overrides" in fields:
        kwargs.update(parse_overrides(values.get("overrides") or ()))
    return kwargs


def _unit_scripts(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The enabled accordions' units, taken out of `kwargs`, as the API's `alwayson_scripts` (see the contract)."""
    units = {name: kwargs.pop(name) for name in names(UNITS) if name in kwargs}
    scripts: dict[str, Any] = {}
    if units.get("cn_enable"):
        if not units.get("cn_model"):
            raise FormError("ControlNet: pick a model (from the server's controlnet_dir), or untick Enable")
        scripts["controlnet"] = {"args": [{key: units[name] for name, key in CONTROLNET_API.items()
                                           if units.get(name) is not None}]}
    if units.get("ad_enable"):
        if not units.get("ad_model"):
            raise FormError("ADetailer: pick a detector (from the server's adetailer_dir), or untick Enable")
        scripts["ADetailer"] = {"args": [{key: units[name] for name, key in ADETAILER_API.items()
                                          if units.get(name) is not None}]}
    return scripts


def _split_sampler(name: str | None, schedule: str | None) -> tuple[str, str]:
    """A request's sampler as the form's two controls: (sampler, schedule type label)."""
    from animegen.generate.samplers import resolve_sampler

    if not name:
        return "", schedule or "Automatic"
    choice = resolve_sampler(name, schedule)
    return choice.sampler.name, choice.schedule.label


def _round_size(side: int) -> int:
    return max(64, side // 8 * 8)


def form_values(form: Iterable[Field], request: GenerationRequest,
                image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The control values that reproduce `request` in `form` (see the module contract for what is left alone)."""
    wanted = set(names(form))
    sampler, schedule = _split_sampler(request.sampler, request.schedule_type)
    values: dict[str, Any] = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "preset": request.preset,
        "sampler": sampler, "schedule_type": schedule, "steps": request.steps, "cfg_scale": request.cfg_scale,
        "width": request.width, "height": request.height, "seed": request.seed, "clip_skip": request.clip_skip,
        "subseed": request.subseed if request.subseed_strength else -1, "subseed_strength": request.subseed_strength,
        "strength": request.strength, "mask_blur": request.mask_blur,
        "inpainting_mask_invert": MASK_MODE.label(request.inpainting_mask_invert),
        "inpainting_fill": inpainting_fill_name(request.inpainting_fill),
        "inpaint_full_res": INPAINT_AREA.label(request.inpaint_full_res),
        "inpaint_full_res_padding": request.inpaint_full_res_padding,
    }
    if image_size is not None:
        values["width"], values["height"] = (_round_size(side) for side in image_size)
    values["overrides"] = [f"{key}: {getattr(request, name)}" for key, (name, _) in OVERRIDES.items()
                           if getattr(request, name) != GenerationRequest.__dataclass_fields__[name].default]
    if request.hires or request.hires_scale > 1 or request.hires_resize_x or request.hires_resize_y:
        hires_sampler, hires_schedule = SAME_SAMPLER, SAME_SCHEDULE
        if request.hires_sampler or request.hires_schedule_type:
            hires_sampler, hires_schedule = _split_sampler(request.hires_sampler or request.sampler,
                                                           request.hires_schedule_type)
        values.update(
            hires=True, hires_upscaler=request.hires_upscaler, hires_steps=request.hires_steps,
            hires_denoise=request.hires_denoise, hires_scale=request.hires_scale,
            hires_resize_x=request.hires_resize_x, hires_resize_y=request.hires_resize_y,
            hires_sampler=hires_sampler, hires_schedule_type=hires_schedule, hires_prompt=request.hires_prompt,
            hires_negative_prompt=request.hires_negative_prompt,
        )
        if "strength" in wanted:  # A1111 pastes the hires pass's denoising into img2img's slider
            values["strength"] = request.hires_denoise
    elif "hires" in wanted:
        values["hires"] = False
    return {k: v for k, v in values.items() if k in wanted}


def seed_of(infotext: str) -> int:
    """The seed an image's infotext records (A1111's ♻️ "reuse seed"); -1 when it records none."""
    from animegen.generate.infotext import parse_infotext

    try:
        return int(parse_infotext(infotext).get("Seed", -1))
    except ValueError:
        return -1


def add_to_prompt(prompt: str, text: str) -> str:
    """`prompt` with `text` appended after a space, as A1111's extra-network cards insert their tag."""
    prompt = (prompt or "").rstrip()
    return f"{prompt} {text}".strip()
