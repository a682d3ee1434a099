"""Running the web UI's jobs: validate, queue, report progress, save, and turn user errors into pop-ups.

Contract:
- Every generation goes through `ServeService.build_request` and `ServeService.submit`, the API's path: the
  same limits, LoRA folder rules and single job queue.
- `wait_for` mirrors the worker's state into Gradio's progress bar while the job runs: "queued (N waiting)"
  before it starts, then "step i/n, ETA Ns" (the queue's `eta_relative`, as A1111's progress bar shows it).
- Generated images are saved where A1111 saves them (`generate.outputs.OutputLayout` under
  `ServeConfig.outputs_dir`: outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png, PNG with infotext); the
  gallery's PNGs carry the infotext too, so a download from the gallery reads back in PNG Info.
- A user error (bad value, over a limit, queue full, an unreadable or too large upload) is `user_error`: a
  `gr.Error` pop-up that does not print a traceback in the server log. Bugs keep their traceback.
- The ControlNet / ADetailer accordions arrive as the API's `alwayson_scripts` (`ui_form`); `run_generation`
  makes them units through the API's own `ServeService.controlnet_units` / `detailer_units` (models by name in
  the server's folders only, the same limits), the control image (`open_control_image`) standing in for the
  extension's `input_image`.
- `open_init_image` enforces the API's upload limit (`ServeLimits.max_input_pixels`, `codec.open_image`) on a
  gallery upload before its pixels are decoded; `inpaint_mask` does for an uploaded mask, and otherwise makes
  the mask of the editor's strokes: every pixel painted on any layer (alpha > 0) is 255 (inpaint), the rest 0.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.serve.codec import BadImageError, open_image, to_rgb
from animegen.serve.jobs import QueueFullError, ServerClosedError
from animegen.serve.service import RequestError, ServeService

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


def user_error(message: str) -> gr.Error:
    """A pop-up for a problem the user can fix; Gradio prints no traceback for it."""
    return gr.Error(message, print_exception=False)


def progress_text(snap) -> tuple[tuple[int, int] | None, str]:
    """What the progress bar shows for a `jobs.ProgressSnapshot`: (step, steps) or None, and its text."""
    if snap.sampling_steps:
        return ((snap.sampling_step, snap.sampling_steps),
                f"step {snap.sampling_step}/{snap.sampling_steps}, ETA {snap.eta_relative:.0f}s")
    return None, f"queued ({snap.queued} waiting)" if snap.queued else "starting"


def wait_for(future: Future, service: ServeService, progress) -> Any:
    """Block until `future` is done, mirroring the worker's step counter and ETA into `progress`."""
    while True:
        try:
            return future.result(timeout=POLL_SECONDS)
        except TimeoutError:
            steps, text = progress_text(service.queue.snapshot())
            progress(steps, desc=text, unit="steps")


def outputs_layout(service: ServeService):
    """Where the UI saves images: `outputs_dir` in A1111's layout (imported here: the module is torch-free)."""
    from animegen.generate.outputs import OutputLayout

    return OutputLayout(Path(service.config.outputs_dir))


def run_generation(service: ServeService, kind: str, fields: dict[str, Any], progress,
                   control_image=None) -> tuple[list, list[Path]]:
    """Validate, queue, wait and save; returns the generated images and the files they were saved to.

    `fields` may hold `alwayson_scripts` (the accordions' units; `control_image` is their ControlNet image).
    Each image keeps its infotext in `.info["parameters"]`, which Gradio writes into the PNG it serves.
    """
    try:
        request = service.build_request(**fields_with_units(service, fields, control_image))
        future = service.submit(request, label=f"{kind} (ui)")
    except RequestError as exc:
        raise user_error(f"{exc.field}: {exc.message}") from None
    except (QueueFullError, ServerClosedError, AnimegenError) as exc:
        raise user_error(str(exc)) from None
    try:
        result = wait_for(future, service, progress)
    except ValueError as exc:  # the engine's user errors (AnimegenError is one)
        raise user_error(str(exc)) from None
    if result.interrupted and not result.images:
        raise user_error("interrupted before the first image finished")
    layout = outputs_layout(service)
    saved = []
    for image in result.images:
        try:
            saved.append(layout.save(image, kind))
        except OSError as exc:
            raise user_error(f"could not save to outputs_dir {service.config.outputs_dir}: {exc}; set "
                             "outputs_dir in the [serve] config to a writable folder") from None
        image.image.info["parameters"] = image.infotext
    return result.images, saved


def fields_with_units(service: ServeService, fields: dict[str, Any], control_image) -> dict[str, Any]:
    """`fields` with its `alwayson_scripts` replaced by `build_request`'s `controlnet_units` and `detailers`."""
    scripts = fields.get("alwayson_scripts")
    if not scripts:
        return fields
    if "controlnet" in scripts and control_image is None:
        raise user_error("ControlNet: upload a control image (img2img uses its init image when none is given)")
    fields = {k: v for k, v in fields.items() if k != "alwayson_scripts"}
    fields["controlnet_units"] = service.controlnet_units(scripts, init_image=control_image)
    fields["detailers"] = service.detailer_units(scripts)
    return fields


def open_control_image(value, service: ServeService):
    """The ControlNet accordion's image (a path from the upload box, a PIL image, or None) as RGB, within the
    API's upload limit."""
    return None if value is None else to_rgb(_open_upload(value, "ControlNet image", service))


def _open_upload(value, field: str, service: ServeService):
    """An uploaded image (a path from an upload box, or a PIL image) as it is, within the API's upload limit."""
    if not isinstance(value, (str, Path)):
        return value
    try:
        with open(value, "rb") as handle:
            return open_image(handle, field=field, max_pixels=service.limits.max_input_pixels)
    except BadImageError as exc:
        raise user_error(str(exc)) from None
    except OSError as exc:
        raise user_error(f"{field}: cannot read the upload ({exc})") from None


def open_init_image(value, service: ServeService):
    """The img2img init image (a path from the upload box or a PIL image) as RGB, within the API's upload limit."""
    if value is None:
        raise user_error("upload an init image (or use 'Send to img2img')")
    return to_rgb(_open_upload(value, "init image", service))


def inpaint_mask(editor, upload, service: ServeService):
    """The img2img inpainting mask, or None (plain img2img): the uploaded mask as it is (white = inpaint, or its
    alpha: `generate.inpaint.binary_mask`), else an L image, 255 where any editor layer is painted."""
    if upload is not None:
        return _open_upload(upload, "inpaint mask", service)
    painted = None
    for layer in (editor or {}).get("layers") or ():
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha  # Gradio sizes every layer as the canvas
    if painted is None or not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, "L")


def switch_checkpoint(service: ServeService, title: str, progress) -> str:
    """Queue a switch to checkpoint `title` (after the jobs already queued) and wait for it; returns the title."""
    try:
        future = service.set_options({"sd_model_checkpoint": title})
    except RequestError as exc:
        raise user_error(f"checkpoint: {exc.message}") from None
    if future is not None:
        try:
            wait_for(future, service, progress)
        except (ValueError, OSError) as exc:
            raise user_error(f"could not load {title}: {exc}") from None
    return service.options()["sd_model_checkpoint"]
