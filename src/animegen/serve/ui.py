"""The Gradio web UI: txt2img, img2img and PNG Info tabs, running on the same job queue as the API.

Every UI action goes through `ServeService.build_request` and the shared queue, so the UI obeys the
same limits and LoRA folder rules as the REST API and never runs concurrently with API jobs.
Sampler, steps, CFG and size start empty and an empty field is sent as unset, so the preset's values
and then the model family's defaults apply (`animegen.generate.request.resolve`), as on the CLI; the
UI holds no copy of those defaults.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import gradio as gr

from animegen.generate import (
    SAMPLERS,
    GenerationRequest,
    parse_infotext,
    read_png_infotext,
    request_from_infotext,
)
from animegen.serve.codec import to_rgb
from animegen.serve.jobs import QueueFullError, ServerClosedError
from animegen.serve.service import RequestError, ServeService


def _wait(future: Future, service: ServeService, progress: gr.Progress):
    """Block until the job is done, mirroring the worker's step counter into Gradio's progress bar."""
    while True:
        try:
            return future.result(timeout=0.25)
        except TimeoutError:
            snap = service.queue.snapshot()
            if snap.sampling_steps:
                progress((snap.sampling_step, snap.sampling_steps), desc="sampling", unit="steps")
            else:
                progress(None, desc=f"queued ({snap.queued} waiting)")


def _run(service: ServeService, label: str, progress: gr.Progress, **fields) -> tuple[list, list[str]]:
    """Validate, queue and wait; user errors become `gr.Error` pop-ups instead of tracebacks."""
    try:
        request = service.build_request(**fields)
        future = service.submit(request, label=label)
    except RequestError as exc:
        raise gr.Error(f"{exc.field}: {exc.message}") from None
    except (QueueFullError, ServerClosedError) as exc:
        raise gr.Error(str(exc)) from None
    try:
        result = _wait(future, service, progress)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    gallery = [(im.image, im.infotext) for im in result.images]
    return gallery, [im.infotext for im in result.images]


def _preset_names() -> list[str]:
    from animegen.prompts.presets import list_presets

    return [p.name for p in list_presets()]


def _optional(value, kind):
    """An empty UI field (None / "") is "not set": the preset or the model family decides."""
    return None if value in (None, "") else kind(value)


def settings_fields(sampler, steps, cfg, width, height) -> dict[str, Any]:
    """The generation settings of a UI form, empty ones left unset."""
    return {"sampler": _optional(sampler, str), "steps": _optional(steps, int),
            "cfg_scale": _optional(cfg, float), "width": _optional(width, int), "height": _optional(height, int)}


def txt2img_fields(prompt, negative, preset, sampler, steps, cfg, width, height, seed, count) -> dict[str, Any]:
    """The txt2img form's values as `ServeService.build_request` keywords."""
    return {"prompt": prompt, "negative_prompt": negative, "preset": preset,
            **settings_fields(sampler, steps, cfg, width, height),
            "seed": int(seed if seed is not None else -1), "n_iter": int(count)}


def _settings_row(samplers: list[str], lim, prefix: str) -> tuple:
    """Sampler, steps, CFG, width, height inputs; all start empty (= the preset's, else the default)."""
    unset = "preset's, else default"
    ids = {name: f"{prefix}_{name}" for name in ("sampler", "steps", "cfg", "width", "height")}
    sampler = gr.Dropdown([(f"({unset})", ""), *samplers], value="", label="Sampler", elem_id=ids["sampler"])
    steps = gr.Number(None, minimum=1, maximum=lim.max_steps, precision=0, label="Steps", placeholder=unset,
                      elem_id=ids["steps"])
    cfg = gr.Number(None, minimum=0, maximum=30, step=0.5, label="CFG scale", placeholder=unset,
                    elem_id=ids["cfg"])
    width = gr.Number(None, minimum=64, maximum=lim.max_width, step=8, precision=0, label="Width",
                      placeholder="preset's, else the model's", elem_id=ids["width"])
    height = gr.Number(None, minimum=64, maximum=lim.max_height, step=8, precision=0, label="Height",
                       placeholder="preset's, else the model's", elem_id=ids["height"])
    return sampler, steps, cfg, width, height


def _add_lora(prompt: str, name: str | None, weight: float) -> str:
    if not name:
        raise gr.Error("pick a LoRA first")
    tag = f"<lora:{name}:{weight:g}>"
    return f"{prompt.rstrip()} {tag}".strip()


def _selected_infotext(infotexts: list[str], evt: gr.SelectData) -> tuple[str, int]:
    index = evt.index if isinstance(evt.index, int) else 0
    return (infotexts[index] if 0 <= index < len(infotexts) else ""), index


def build_ui(service: ServeService) -> gr.Blocks:
    """The Blocks app `create_app` mounts at `/`."""
    lim = service.limits
    lora_names = [entry.name for entry in service.catalog.loras()]
    samplers = list(SAMPLERS)

    with gr.Blocks(title="animegen") as demo:
        gr.Markdown("## animegen — anime image generation")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------- txt2img
            with gr.Tab("txt2img", id="txt2img"):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_negative")
                with gr.Row():
                    preset = gr.Dropdown(_preset_names(), value=GenerationRequest.preset, label="Preset",
                                         elem_id="txt2img_preset")
                    sampler, steps, cfg, width, height = _settings_row(samplers, lim, "txt2img")
                with gr.Row():
                    seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="txt2img_seed")
                    count = gr.Slider(1, lim.max_images, value=1, step=1, label="Images", elem_id="txt2img_count")
                with gr.Row():
                    lora = gr.Dropdown(lora_names, value=None, label="LoRA", elem_id="txt2img_lora")
                    lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight",
                                            elem_id="txt2img_lora_weight")
                    add_lora = gr.Button("Add LoRA to prompt", elem_id="txt2img_add_lora")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                    interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
                gallery = gr.Gallery(label="Images", format="png", columns=2, elem_id="txt2img_gallery")
                infotext = gr.Textbox(label="Infotext of the selected image", lines=4, interactive=False,
                                      elem_id="txt2img_infotext")
                send_to_img2img = gr.Button("Send to img2img", elem_id="txt2img_send_to_img2img")
                infotexts = gr.State([])
                selected = gr.State(0)

            # ---------------------------------------------------------------- img2img
            with gr.Tab("img2img", id="img2img"):
                init_image = gr.Image(type="pil", label="Init image", elem_id="img2img_init")
                prompt2 = gr.Textbox(label="Prompt", lines=3, elem_id="img2img_prompt")
                negative2 = gr.Textbox(label="Negative prompt", lines=2, elem_id="img2img_negative")
                with gr.Row():
                    sampler2, steps2, cfg2, width2, height2 = _settings_row(samplers, lim, "img2img")
                with gr.Row():
                    strength = gr.Slider(0.01, 1.0, value=GenerationRequest.strength, step=0.01,
                                         label="Denoising strength")
                    seed2 = gr.Number(-1, precision=0, label="Seed (-1: random)")
                generate2 = gr.Button("Generate", variant="primary", elem_id="img2img_generate")
                gallery2 = gr.Gallery(label="Images", format="png", columns=2, elem_id="img2img_gallery")
                infotext2 = gr.Textbox(label="Infotext", lines=4, interactive=False, elem_id="img2img_infotext")

            # ---------------------------------------------------------------- PNG Info
            with gr.Tab("PNG Info", id="pnginfo"):
                png_file = gr.File(label="PNG file", file_types=[".png"], type="filepath", elem_id="pnginfo_file")
                png_text = gr.Textbox(label="Parameters", lines=5, interactive=False, elem_id="pnginfo_text")
                png_fields = gr.JSON(label="Parsed")
                with gr.Row():
                    send_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                    rerun = gr.Button("Re-run", variant="primary", elem_id="pnginfo_rerun")

        # -------------------------------------------------------------------- events
        txt2img_inputs = [prompt, negative, preset, sampler, steps, cfg, width, height, seed, count]

        def run_txt2img(prompt_, negative_, preset_, sampler_, steps_, cfg_, width_, height_, seed_, count_,
                        progress=gr.Progress()):
            images, texts = _run(service, "txt2img (ui)", progress,
                                 **txt2img_fields(prompt_, negative_, preset_, sampler_, steps_, cfg_, width_,
                                                  height_, seed_, count_))
            return images, texts, (texts[0] if texts else ""), 0

        generate.click(run_txt2img, txt2img_inputs, [gallery, infotexts, infotext, selected],
                       concurrency_limit=None)
        interrupt.click(lambda: service.queue.interrupt() and None, None, None, queue=False)
        add_lora.click(_add_lora, [prompt, lora, lora_weight], prompt)
        gallery.select(_selected_infotext, infotexts, [infotext, selected])

        def to_img2img(gallery_value, index, texts):
            if not gallery_value:
                raise gr.Error("generate an image first")
            index = index if 0 <= index < len(gallery_value) else 0
            image = gallery_value[index][0]
            fields = parse_infotext(texts[index]) if index < len(texts) else {}
            return (image, fields.get("Prompt", ""), fields.get("Negative prompt", ""),
                    gr.Tabs(selected="img2img"))

        send_to_img2img.click(to_img2img, [gallery, selected, infotexts],
                              [init_image, prompt2, negative2, tabs])

        def run_img2img(image, prompt_, negative_, sampler_, steps_, cfg_, strength_, width_, height_, seed_,
                        progress=gr.Progress()):
            if image is None:
                raise gr.Error("upload an init image (or use 'Send to img2img')")
            if isinstance(image, str):
                from PIL import Image

                image = Image.open(image)
            image = to_rgb(image)  # the engine resizes it to the resolved width x height
            images, texts = _run(service, "img2img (ui)", progress, prompt=prompt_, negative_prompt=negative_,
                                 **settings_fields(sampler_, steps_, cfg_, width_, height_),
                                 seed=int(seed_ if seed_ is not None else -1), init_image=image,
                                 strength=float(strength_))
            return images, "\n\n".join(texts)

        generate2.click(run_img2img, [init_image, prompt2, negative2, sampler2, steps2, cfg2, strength, width2,
                                      height2, seed2], [gallery2, infotext2], concurrency_limit=None)

        def read_png(path: str | None):
            if not path:
                return "", {}
            try:
                text = read_png_infotext(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable upload is a user error
                raise gr.Error(f"cannot read {path}: {exc}") from None
            if not text:
                return "", {"error": "this PNG has no generation parameters"}
            return text, parse_infotext(text)

        png_file.change(read_png, png_file, [png_text, png_fields])

        def to_txt2img(text: str):
            if not text:
                raise gr.Error("drop a PNG with generation parameters first")
            try:
                req = request_from_infotext(text)
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
            return (req.prompt, req.negative_prompt, req.preset, req.sampler or "", req.steps, req.cfg_scale,
                    req.width, req.height, req.seed, gr.Tabs(selected="txt2img"))

        fill_outputs = [prompt, negative, preset, sampler, steps, cfg, width, height, seed, tabs]
        send_to_txt2img.click(to_txt2img, png_text, fill_outputs)
        rerun.click(to_txt2img, png_text, fill_outputs).then(
            _rerun_with_count_one(run_txt2img), txt2img_inputs, [gallery, infotexts, infotext, selected])
    return demo


def _rerun_with_count_one(run) -> Any:
    """Re-running a PNG's parameters makes exactly that one image again (same seed)."""

    def rerun(*values, progress=gr.Progress()):
        values = list(values)
        values[-1] = 1
        return run(*values, progress=progress)

    return rerun
