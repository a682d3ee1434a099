"""A1111's sd-webui-controlnet API shape: `alwayson_scripts.controlnet.args` and the `/controlnet/*` routes.

Contract. `units_from_api_args(args, image=..., find_model=...)` maps the extension's unit dicts onto
`generate.controlnet.ControlUnit`s, with the extension's field names and defaults: `enabled` (default true;
false units are dropped), `image` (base64, or the old `{"image": ..., "mask": ...}` dict) or `input_image`
(no image: the img2img init image, as the extension), `module` ("none"), `model` (required; resolved by name in
the server's `controlnet_dir`, the bracketed hash ignored: never a path), `weight` (1), `guidance_start` (0),
`guidance_end` (1), `control_mode` (0/1/2 or its name), `processor_res` (512; -1 = 512), `threshold_a` and
`threshold_b` (-1 = the module's default), `resize_mode` (0/1/2 or its name; default "Crop and Resize"),
`pixel_perfect` (false). `low_vram`, `guessmode` and the like are accepted and ignored; any other key, a bad
value, or an unknown model or module is an AnimegenError naming it (the service answers 422 naming
`alwayson_scripts`). `GET /controlnet/model_list` lists the models by the extension's names (`stem [hash]`), `GET /controlnet/module_list` the
preprocessors, `GET /controlnet/version` the extension API version clients check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from animegen.core.errors import AnimegenError
from animegen.generate.controlnet import (
    ControlUnit,
    available_controlnets,
    control_mode_name,
    controlnet_name,
    resize_mode_name,
)
from animegen.generate.preprocessors import PREPROCESSORS, is_ip_adapter_module, preprocessor_spec

API_VERSION = 2  # what the extension's GET /controlnet/version answers
_IGNORED = {"low_vram", "lowvram", "guessmode", "is_ui", "input_mode", "batch_images", "output_dir",
            "loopback", "mask", "mask_image", "save_detected_map", "hr_option", "advanced_weighting",
            "inpaint_crop_input_image", "effective_region_mask", "union_control_type", "ipadapter_input",
            "pulid_mode", "image_fidelity"}
_FIELDS = {"enabled", "image", "input_image", "module", "model", "weight", "guidance_start", "guidance_end",
           "control_mode", "processor_res", "threshold_a", "threshold_b", "resize_mode", "pixel_perfect"}


def units_from_api_args(args: Any, *, image: Callable[[Any, str], Any], find_model: Callable[[str], Any],
                        init_image=None) -> tuple[ControlUnit, ...]:
    """The extension's `args` list as ControlUnits; `image(data, field)` decodes a base64 image and
    `find_model(name)` resolves a model name to its path; see the module docstring."""
    if isinstance(args, dict):
        args = [args]
    if not isinstance(args, list):
        raise AnimegenError(f"controlnet args must be a list of unit objects, got {type(args).__name__}")
    units = []
    for k, arg in enumerate(args):
        where = f"controlnet unit {k}"
        if not isinstance(arg, dict):
            raise AnimegenError(f"{where} must be an object with the extension's fields (module, model, ...)")
        unknown = sorted(set(arg) - _FIELDS - _IGNORED)
        if unknown:
            raise AnimegenError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        if not arg.get("enabled", True):
            continue
        units.append(_unit(arg, where, image, find_model, init_image))
    return tuple(units)


def _unit(arg: dict, where: str, image, find_model, init_image) -> ControlUnit:
    data = arg.get("image") or arg.get("input_image")
    if isinstance(data, dict):
        data = data.get("image")
    if data:
        picture = image(data, f"{where} image")
    elif init_image is not None:
        picture = init_image
    else:
        raise AnimegenError(f"{where} has no image: send image (base64) or input_image")
    model = arg.get("model")
    if not model or str(model).strip().lower() == "none":
        raise AnimegenError(f"{where} needs a model (a name from /controlnet/model_list)")

    def number(name: str, default: float, unset_below: float | None = None) -> float:
        value = arg.get(name, default)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            raise AnimegenError(f"{where}: {name} must be a number, got {value!r}")
        return default if unset_below is not None and value < unset_below else float(value)

    try:
        module = str(arg.get("module") or "none").strip()  # an ip-adapter_clip_* module is kept as sent
        module = module if is_ip_adapter_module(module) else preprocessor_spec(module).name
    except AnimegenError as exc:
        raise AnimegenError(f"{where}: module: {exc} (GET /controlnet/module_list)") from None
    try:
        control_mode = control_mode_name(arg.get("control_mode", 0))
        resize_mode = resize_mode_name(arg.get("resize_mode", "Crop and Resize"))
    except AnimegenError as exc:
        raise AnimegenError(f"{where}: {exc}") from None
    unit = ControlUnit(
        model=find_model(str(model)), image=picture, weight=number("weight", 1.0),
        guidance_start=number("guidance_start", 0.0), guidance_end=number("guidance_end", 1.0),
        control_mode=control_mode, preprocessor=module, resize_mode=resize_mode,
        processor_res=int(number("processor_res", 512, unset_below=0)),
        threshold_a=number("threshold_a", -1.0), threshold_b=number("threshold_b", -1.0),
        pixel_perfect=bool(arg.get("pixel_perfect", False)))
    try:
        unit.validate()
    except AnimegenError as exc:
        raise AnimegenError(f"{where}: {exc}") from None
    return unit


def build_controlnet_router(service) -> APIRouter:
    """`/controlnet/model_list`, `/controlnet/module_list` and `/controlnet/version` over `service`'s config."""
    router = APIRouter(prefix="/controlnet", tags=["controlnet"])

    @router.get("/model_list")
    def model_list() -> dict[str, list[str]]:
        """The ControlNets in controlnet_dir as the extension names them (`name [hash]`; the model field takes it,
        with or without the hash)."""
        found = available_controlnets(service.config.controlnet_dir)
        return {"model_list": [controlnet_name(found[stem]) for stem in sorted(found)]}

    @router.get("/module_list")
    def module_list() -> dict[str, list[str]]:
        """The preprocessors (`module`); model-based ones need their annotator file."""
        return {"module_list": list(PREPROCESSORS)}

    @router.get("/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    return router
