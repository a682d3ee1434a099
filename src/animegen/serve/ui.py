"""The Gradio web UI, laid out as A1111 1.10's txt2img / img2img tabs, running on the API's job queue.

Layout (A1111 1.10's `modules/ui.py` + `ui_toprow.py`): a quick-settings row on top (checkpoint with refresh,
VAE, clip skip); per tab a top row with the prompts on the left and Generate / Interrupt / Skip and the style
(our prompt presets) on the right; below it the extra-network pickers (LoRA, embeddings, each with refresh),
then the settings column (sampler, schedule type, steps; hires fix; size and batch; CFG; seed with 🎲 / ♻️ and
the variation seed; override settings) beside the output column (gallery, send-to buttons, infotext).

Every action goes through `ServeService` (`ui_run`), so the UI obeys the API's limits and queue: Interrupt is
the API's /interrupt (the running job stops), Skip its /skip (the current batch ends, the next one runs), the
checkpoint picker its `sd_model_checkpoint` option (a switch queued after the waiting jobs). The VAE is shown,
not switched: the server loads it at start (--vae). Images are saved to `outputs_dir` (`ui_run`). The forms are
data (`ui_form`): sampler, steps, CFG and size start empty and an empty field is sent as unset, so the preset's
values and then the model family's apply (`animegen.generate.request.resolve`); the UI holds no copy of those
defaults. Choices come from their homes: samplers (`generate.samplers`), schedule types (`generate.schedules`),
hires upscalers (`generate.hires`, then the model upscalers of `serve.catalog`), checkpoints and LoRAs
(`serve.catalog`), embeddings (the loaded model's library), styles (`prompts.presets`). img2img folds A1111's
inpaint tab under its init image (`_inpaint`: a mask painted or uploaded, `ui_run.inpaint_mask`). Both tabs
end their settings with a "ControlNet" and an "ADetailer" accordion (`_controlnet`, `_adetailer`: one unit each,
sent only when enabled; models from the server's controlnet_dir / adetailer_dir, as the API lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from animegen.generate import (
    SAMPLERS,
    GenerationRequest,
    parse_infotext,
    read_png_infotext,
    request_from_infotext,
)
from animegen.generate.controlnet import CONTROL_MODES, ControlUnit, available_controlnets, controlnet_name
from animegen.generate.detailer import DetailerUnit
from animegen.generate.hires import DEFAULT_HIRES_UPSCALER, HIRES_UPSCALERS
from animegen.generate.inpaint import INPAINTING_FILLS
from animegen.generate.preprocessors import PREPROCESSORS
from animegen.generate.request import lora_tag_text
from animegen.generate.schedules import SCHEDULE_TYPES
from animegen.serve import ui_form as form
from animegen.serve import ui_run as run
from animegen.serve.service import ServeService

# A1111's tool-button symbols, from fonts every browser has (its emoji show as boxes without an emoji font)
REFRESH, RANDOM, REUSE, SWITCH = "↻", "⚄", "♻", "⇅"
UNSET = "preset's, else the model's"
# Number fields carry no minimum/maximum: Gradio's own bound check would print a traceback for each refusal;
# the service checks them against the server limits, naming the field, as for the API.


def _preset_names() -> list[str]:
    from animegen.prompts.presets import list_presets

    return [p.name for p in list_presets()]


def _choices(service: ServeService) -> dict[str, list]:
    """The pickers' current choices, each from its home (re-read by the refresh buttons)."""
    return {
        "checkpoints": [entry.title for entry in service.catalog.checkpoints()],
        "loras": [entry.name for entry in service.catalog.loras()],
        "embeddings": sorted(service.embeddings()["loaded"]),
        "vaes": [entry.name for entry in service.catalog.vaes()],
        "hires_upscalers": [*HIRES_UPSCALERS, *(e.name for e in service.catalog.upscalers() if e.path is not None)],
        "controlnets": [controlnet_name(path) for _, path in sorted(available_controlnets(
            service.config.controlnet_dir).items())],  # as GET /controlnet/model_list names them
        "detectors": sorted(p.stem for p in Path(service.config.adetailer_dir).glob("*.onnx"))
        if service.config.adetailer_dir else [],  # the names `detailer.find_detector` finds
    }


def _tool(value: str, elem_id: str) -> gr.Button:
    return gr.Button(value, elem_id=elem_id, size="sm", scale=0, min_width=42)


# ------------------------------------------------------------------------------------------ layout pieces
def _toprow(kind: str, c: dict[str, Any]) -> None:
    """Prompts on the left; Generate with Interrupt / Skip and the style on the right (A1111's Toprow)."""
    with gr.Row(elem_id=f"{kind}_toprow", equal_height=False):
        with gr.Column(scale=6):
            c["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{kind}_prompt",
                                     placeholder="Prompt (A1111 syntax: (word:1.2), [from:to:when], <lora:name:w>)")
            c["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{kind}_neg_prompt",
                                              placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=220):
            c["generate"] = gr.Button("Generate", variant="primary", size="lg", elem_id=f"{kind}_generate")
            with gr.Row():
                c["interrupt"] = gr.Button("Interrupt", size="sm", elem_id=f"{kind}_interrupt")
                c["skip"] = gr.Button("Skip", size="sm", elem_id=f"{kind}_skip")
            c["preset"] = gr.Dropdown(_preset_names(), value=GenerationRequest.preset, label="Style (prompt preset)",
                                      elem_id=f"{kind}_styles")


def _networks(kind: str, c: dict[str, Any], choices: dict[str, list]) -> None:
    """LoRA and embedding pickers that insert their tag into the prompt, each with a refresh button."""
    with gr.Row(elem_id=f"{kind}_extra_networks", equal_height=False):
        c["lora"] = gr.Dropdown(choices["loras"], value=None, label="LoRA", elem_id=f"{kind}_lora", scale=3)
        c["refresh_loras"] = _tool(REFRESH, f"{kind}_refresh_loras")
        c["lora_weight"] = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight", elem_id=f"{kind}_lora_weight",
                                     scale=2)
        c["add_lora"] = gr.Button("Add LoRA", size="sm", elem_id=f"{kind}_add_lora", scale=1)
        c["embedding"] = gr.Dropdown(choices["embeddings"], value=None, label="Embedding",
                                     elem_id=f"{kind}_embedding", scale=3)
        c["refresh_embeddings"] = _tool(REFRESH, f"{kind}_refresh_embeddings")
        c["add_embedding"] = gr.Button("Add embedding", size="sm", elem_id=f"{kind}_add_embedding", scale=1)


def _sampler_rows(kind: str, c: dict[str, Any]) -> None:
    with gr.Row():
        c["sampler"] = gr.Dropdown([(f"({UNSET})", ""), *SAMPLERS], value="", label="Sampling method",
                                   elem_id=f"{kind}_sampling")
        c["schedule_type"] = gr.Dropdown(list(SCHEDULE_TYPES), value="Automatic", label="Schedule type",
                                         elem_id=f"{kind}_scheduler")
        c["steps"] = gr.Number(None, precision=0, label="Sampling steps",
                               placeholder=UNSET, elem_id=f"{kind}_steps")


def _hires(c: dict[str, Any], lim, upscalers: list[str]) -> None:
    """A1111's "Hires. fix" accordion: upscaler, steps, denoise, scale or resize-to, sampler, prompts."""
    c["hires"] = gr.Checkbox(False, label="Hires. fix", elem_id="txt2img_enable_hr")
    with gr.Accordion("Hires. fix settings", open=False, elem_id="txt2img_hr") as c["hires_panel"]:
        with gr.Row():
            c["hires_upscaler"] = gr.Dropdown(upscalers, value=DEFAULT_HIRES_UPSCALER, label="Upscaler",
                                              elem_id="txt2img_hr_upscaler")
            c["hires_steps"] = gr.Slider(0, lim.max_steps, value=0, step=1, label="Hires steps (0: same)",
                                         elem_id="txt2img_hires_steps")
            c["hires_denoise"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                           elem_id="txt2img_hr_denoise")
        with gr.Row():
            c["hires_scale"] = gr.Slider(1, 4, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            c["hires_resize_x"] = gr.Slider(0, lim.max_width, value=0, step=8, label="Resize width to",
                                            elem_id="txt2img_hr_resize_x")
            c["hires_resize_y"] = gr.Slider(0, lim.max_height, value=0, step=8, label="Resize height to",
                                            elem_id="txt2img_hr_resize_y")
        with gr.Row():
            c["hires_sampler"] = gr.Dropdown([form.SAME_SAMPLER, *SAMPLERS], value=form.SAME_SAMPLER,
                                             label="Hires sampling method", elem_id="hr_sampler")
            c["hires_schedule_type"] = gr.Dropdown([form.SAME_SCHEDULE, *SCHEDULE_TYPES], value=form.SAME_SCHEDULE,
                                                   label="Hires schedule type", elem_id="hr_scheduler")
        with gr.Row():
            c["hires_prompt"] = gr.Textbox(label="Hires prompt", lines=2, placeholder="(the prompt)",
                                           elem_id="hires_prompt")
            c["hires_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                                    placeholder="(the negative prompt)", elem_id="hires_neg_prompt")


def _inpaint(c: dict[str, Any]) -> None:
    """A1111's inpaint tab, folded under the init image: a mask painted on the image (any stroke = inpaint) or
    uploaded (white = inpaint), and its settings; with no mask the tab runs plain img2img."""
    with gr.Accordion("Inpaint", open=False, elem_id="img2img_inpaint_panel"):
        c["inpaint_mask"] = gr.ImageEditor(type="pil", image_mode="RGBA", format="png", layers=False, transforms=(),
                                           sources=["upload", "clipboard"], height=320,
                                           elem_id="img2img_inpaint_editor",
                                           brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                           label="Paint the mask (the init image is the canvas)")
        c["inpaint_mask_upload"] = gr.Image(type="filepath", image_mode=None, height=160, sources=["upload"],
                                            label="or upload a mask (white = inpaint; used instead of the strokes)",
                                            elem_id="img2img_mask_upload")
        c["mask_blur"] = gr.Slider(0, 64, value=GenerationRequest.mask_blur, step=1, label="Mask blur",
                                   elem_id="img2img_mask_blur")
        c["inpainting_mask_invert"] = gr.Radio(list(form.MASK_MODES), value=form.MASK_MODE.label(False),
                                               label="Mask mode", elem_id="img2img_mask_mode")
        c["inpainting_fill"] = gr.Radio(list(INPAINTING_FILLS), value=GenerationRequest.inpainting_fill,
                                        label="Masked content", elem_id="img2img_inpainting_fill")
        with gr.Row():
            c["inpaint_full_res"] = gr.Radio(list(form.INPAINT_AREAS), value=form.INPAINT_AREA.label(False),
                                             label="Inpaint area", elem_id="img2img_inpaint_full_res")
            c["inpaint_full_res_padding"] = gr.Slider(0, 256, value=GenerationRequest.inpaint_full_res_padding,
                                                      step=4, label="Only masked padding, pixels",
                                                      elem_id="img2img_inpaint_full_res_padding")


def _controlnet(kind: str, c: dict[str, Any], choices: dict[str, list]) -> None:
    """The sd-webui-controlnet extension's accordion with one unit: enable, control image (img2img: the init image
    when empty), preprocessor, model, weight, guidance range, control mode."""
    unit = ControlUnit.__dataclass_fields__
    with gr.Accordion("ControlNet", open=False, elem_id=f"{kind}_controlnet"):
        c["cn_enable"] = gr.Checkbox(False, label="Enable", elem_id=f"{kind}_controlnet_enable")
        c["cn_image"] = gr.Image(type="filepath", image_mode=None, height=200, sources=["upload", "clipboard"],
                                 label="Control image" + (" (empty: the init image)" if kind == "img2img" else ""),
                                 elem_id=f"{kind}_controlnet_image")
        with gr.Row():
            c["cn_module"] = gr.Dropdown(list(PREPROCESSORS), value=unit["preprocessor"].default,
                                         label="Preprocessor", elem_id=f"{kind}_controlnet_module")
            c["cn_model"] = gr.Dropdown(choices["controlnets"], value=None, label="Model",
                                        elem_id=f"{kind}_controlnet_model")
        with gr.Row():
            c["cn_weight"] = gr.Slider(0, 2, value=unit["weight"].default, step=0.05, label="Control Weight",
                                       elem_id=f"{kind}_controlnet_weight")
            c["cn_start"] = gr.Slider(0, 1, value=unit["guidance_start"].default, step=0.01,
                                      label="Starting Control Step", elem_id=f"{kind}_controlnet_start")
            c["cn_end"] = gr.Slider(0, 1, value=unit["guidance_end"].default, step=0.01, label="Ending Control Step",
                                    elem_id=f"{kind}_controlnet_end")
        c["cn_control_mode"] = gr.Radio(list(CONTROL_MODES), value=unit["control_mode"].default, label="Control Mode",
                                        elem_id=f"{kind}_controlnet_control_mode")


def _adetailer(kind: str, c: dict[str, Any], choices: dict[str, list]) -> None:
    """ADetailer's accordion with one unit: enable, detector, its prompts, confidence and inpaint denoising."""
    unit = DetailerUnit.__dataclass_fields__
    with gr.Accordion("ADetailer", open=False, elem_id=f"{kind}_adetailer"):
        with gr.Row():
            c["ad_enable"] = gr.Checkbox(False, label="Enable ADetailer", elem_id=f"{kind}_ad_enable")
            c["ad_model"] = gr.Dropdown(choices["detectors"], value=None, label="ADetailer model",
                                        elem_id=f"{kind}_ad_model")
        c["ad_prompt"] = gr.Textbox(label="ADetailer prompt", lines=2, placeholder="(the image's prompt)",
                                    elem_id=f"{kind}_ad_prompt")
        c["ad_negative_prompt"] = gr.Textbox(label="ADetailer negative prompt", lines=2,
                                             placeholder="(the image's negative prompt)",
                                             elem_id=f"{kind}_ad_negative_prompt")
        with gr.Row():
            c["ad_confidence"] = gr.Slider(0, 1, value=unit["confidence"].default, step=0.01,
                                           label="Detection model confidence threshold",
                                           elem_id=f"{kind}_ad_confidence")
            c["ad_denoise"] = gr.Slider(0, 1, value=unit["denoise"].default, step=0.01,
                                        label="Inpaint denoising strength", elem_id=f"{kind}_ad_denoise")


def _size_rows(kind: str, c: dict[str, Any], lim) -> None:
    with gr.Row(equal_height=True):
        c["width"] = gr.Number(None, step=8, precision=0, label="Width",
                               placeholder=UNSET, elem_id=f"{kind}_width")
        c["switch_size"] = _tool(SWITCH, f"{kind}_res_switch_btn")
        c["height"] = gr.Number(None, step=8, precision=0, label="Height",
                                placeholder=UNSET, elem_id=f"{kind}_height")
        c["n_iter"] = gr.Slider(1, lim.max_images, value=1, step=1, label="Batch count", elem_id=f"{kind}_batch_count")
        c["batch_size"] = gr.Slider(1, lim.max_images, value=1, step=1, label="Batch size",
                                    elem_id=f"{kind}_batch_size")
    c["cfg_scale"] = gr.Number(None, step=0.5, label="CFG Scale", placeholder=UNSET,
                               elem_id=f"{kind}_cfg_scale")


def _seed_rows(kind: str, c: dict[str, Any]) -> None:
    """Seed with 🎲 (random) and ♻️ (the selected image's), and A1111's "Extra" variation seed."""
    with gr.Row(equal_height=True):
        c["seed"] = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id=f"{kind}_seed", scale=4)
        c["random_seed"] = _tool(RANDOM, f"{kind}_random_seed")
        c["reuse_seed"] = _tool(REUSE, f"{kind}_reuse_seed")
        c["extra"] = gr.Checkbox(False, label="Extra", elem_id=f"{kind}_subseed_show", scale=1)
    with gr.Row(visible=False) as c["extra_row"]:
        c["subseed"] = gr.Number(-1, precision=0, label="Variation seed", elem_id=f"{kind}_subseed")
        c["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                          elem_id=f"{kind}_subseed_strength")
    c["overrides"] = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Override settings",
                                 info="settings pasted from an infotext that have no control here (RNG, ENSD, ...)",
                                 elem_id=f"{kind}_override_settings")


def _output_panel(kind: str, c: dict[str, Any]) -> None:
    """Gallery (output only: no upload box), send-to buttons, where the images went and their infotext."""
    c["gallery"] = gr.Gallery(label="Output", format="png", columns=2, height=560, interactive=False,
                              elem_id=f"{kind}_gallery", buttons=["download", "fullscreen"])
    with gr.Row():
        c["send_to_img2img"] = gr.Button("Send to img2img", size="sm", elem_id=f"{kind}_send_to_img2img")
        if kind == "img2img":
            c["send_to_txt2img"] = gr.Button("Send to txt2img", size="sm", elem_id="img2img_send_to_txt2img")
    c["saved"] = gr.Markdown("", elem_id=f"{kind}_saved")
    c["infotext"] = gr.Textbox(label="Generation parameters of the selected image", lines=4, interactive=False,
                               elem_id=f"{kind}_infotext")
    c["images"] = gr.State([])  # the GeneratedImages shown, for send-to and ♻️
    c["selected"] = gr.State(0)


def _generation_tab(kind: str, service: ServeService, choices: dict[str, list], clip_skip) -> dict[str, Any]:
    lim, c = service.limits, {"clip_skip": clip_skip}
    _toprow(kind, c)
    _networks(kind, c, choices)
    with gr.Row(equal_height=False, elem_id=f"{kind}_interface"):
        with gr.Column(scale=1, variant="compact", elem_id=f"{kind}_settings"):
            if kind == "img2img":
                c["init_image"] = gr.Image(type="filepath", image_mode=None, label="Image for img2img", height=320,
                                           sources=["upload", "clipboard"], elem_id="img2img_image")
                _inpaint(c)
            gr.Markdown("Empty or 0: the style's setting, else the model's default.", elem_id=f"{kind}_unset_note")
            _sampler_rows(kind, c)
            if kind == "txt2img":
                _hires(c, lim, choices["hires_upscalers"])
            _size_rows(kind, c, lim)
            if kind == "img2img":
                c["strength"] = gr.Slider(0.01, 1.0, value=GenerationRequest.strength, step=0.01,
                                          label="Denoising strength", elem_id="img2img_denoising_strength")
            _seed_rows(kind, c)
            _controlnet(kind, c, choices)
            _adetailer(kind, c, choices)
        with gr.Column(scale=1, elem_id=f"{kind}_results"):
            _output_panel(kind, c)
    return c


# ------------------------------------------------------------------------------------------ the app
@dataclass
class UiParts:
    """The built app and each generation tab's controls by name (`ui_form` field names, plus buttons)."""

    demo: gr.Blocks
    txt2img: dict[str, Any]
    img2img: dict[str, Any]


def build_ui(service: ServeService) -> gr.Blocks:
    """The Blocks app `create_app` mounts at `/`."""
    return build_parts(service).demo


def build_parts(service: ServeService) -> UiParts:
    """Build the app; the tabs' controls come back by name for tests and embedding apps."""
    choices = _choices(service)
    options = service.options()
    vae = service.config.vae
    with gr.Blocks(title="animegen", fill_width=True) as demo:
        with gr.Row(elem_id="quicksettings", equal_height=True):
            checkpoint = gr.Dropdown(choices["checkpoints"], value=options["sd_model_checkpoint"],
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                     scale=3)
            refresh_checkpoints = _tool(REFRESH, "refresh_sd_model_checkpoint")
            gr.Dropdown(["Automatic", *choices["vaes"]], value=vae or "Automatic", label="SD VAE", interactive=False,
                        allow_custom_value=True, scale=2, elem_id="setting_sd_vae",
                        info="set when the server starts (--vae); switching it here is not supported yet")
            clip_skip = gr.Slider(1, 12, value=options["CLIP_stop_at_last_layers"], step=1,
                                  label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", scale=2)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = _generation_tab("txt2img", service, choices, clip_skip)
            with gr.Tab("img2img", id="img2img"):
                i2i = _generation_tab("img2img", service, choices, clip_skip)
            with gr.Tab("PNG Info", id="pnginfo"), gr.Row(equal_height=False):
                with gr.Column():
                    png_file = gr.File(label="PNG file", file_types=[".png"], type="filepath", elem_id="pnginfo_file")
                with gr.Column():
                    png_text = gr.Textbox(label="Parameters", lines=5, interactive=False, elem_id="pnginfo_text")
                    png_fields = gr.JSON(label="Parsed")
                    with gr.Row():
                        png_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                        png_to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
                        rerun = gr.Button("Re-run", variant="primary", elem_id="pnginfo_rerun")

        # ------------------------------------------------------------------ quick settings
        def pick_checkpoint(title, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
            return run.switch_checkpoint(service, title, progress)

        checkpoint.input(pick_checkpoint, checkpoint, checkpoint)
        refresh_checkpoints.click(lambda: gr.Dropdown(choices=_choices(service)["checkpoints"]), None, checkpoint,
                                  queue=False)

        # ------------------------------------------------------------------ both generation tabs
        for kind, c, spec in (("txt2img", t2i, form.TXT2IMG), ("img2img", i2i, form.IMG2IMG)):
            _wire_tab(service, kind, c, spec)

        # ------------------------------------------------------------------ send to ...
        t2i_fields = [t2i[n] for n in form.names(form.TXT2IMG)]
        i2i_fields = [i2i[n] for n in form.names(form.IMG2IMG)]

        def to_img2img(images, index):
            if not images:
                raise run.user_error("generate an image first")
            chosen = images[index if 0 <= index < len(images) else 0]
            values = form.form_values(form.IMG2IMG, _request(chosen.infotext), chosen.image.size)
            return [chosen.image, *_fill(form.IMG2IMG, values), gr.Tabs(selected="img2img")]

        def to_txt2img(images, index):
            if not images:
                raise run.user_error("generate an image first")
            chosen = images[index if 0 <= index < len(images) else 0]
            return [*_fill(form.TXT2IMG, form.form_values(form.TXT2IMG, _request(chosen.infotext))),
                    gr.Tabs(selected="txt2img")]

        for c in (t2i, i2i):
            c["send_to_img2img"].click(to_img2img, [c["images"], c["selected"]],
                                       [i2i["init_image"], *i2i_fields, tabs])
        i2i["send_to_txt2img"].click(to_txt2img, [i2i["images"], i2i["selected"]], [*t2i_fields, tabs])

        # ------------------------------------------------------------------ PNG Info
        def read_png(path: str | None):
            if not path:
                return "", {}
            try:
                text = read_png_infotext(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable upload is a user error
                raise run.user_error(f"cannot read {path}: {exc}") from None
            if not text:
                return "", {"error": "this PNG has no generation parameters"}
            return text, parse_infotext(text)

        png_file.change(read_png, png_file, [png_text, png_fields])

        def png_txt2img(text: str):
            if not text:
                raise run.user_error("drop a PNG with generation parameters first")
            return [*_fill(form.TXT2IMG, form.form_values(form.TXT2IMG, _request(text))), gr.Tabs(selected="txt2img")]

        def png_img2img(text: str, path: str | None):
            if not text or not path:
                raise run.user_error("drop a PNG with generation parameters first")
            image = run.open_init_image(path, service)
            values = form.form_values(form.IMG2IMG, _request(text), image.size)
            return [image, *_fill(form.IMG2IMG, values), gr.Tabs(selected="img2img")]

        png_to_txt2img.click(png_txt2img, png_text, [*t2i_fields, tabs])
        png_to_img2img.click(png_img2img, [png_text, png_file], [i2i["init_image"], *i2i_fields, tabs])

        def rerun_one(*values, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
            """Re-running a PNG's parameters makes exactly that one image again (same seed)."""
            fields = dict(zip(form.names(form.TXT2IMG), values))
            fields.update(n_iter=1, batch_size=1)
            return _generate(service, "txt2img", form.TXT2IMG, fields, progress)

        rerun.click(png_txt2img, png_text, [*t2i_fields, tabs]).success(
            rerun_one, t2i_fields, _result_outputs(t2i))
    return UiParts(demo, t2i, i2i)


# ------------------------------------------------------------------------------------------ events
def _request(infotext: str) -> GenerationRequest:
    try:
        return request_from_infotext(infotext)
    except ValueError as exc:
        raise run.user_error(f"cannot use these parameters: {exc}") from None


def _fill(spec, values: dict[str, Any]) -> list:
    """One output per form control: the new value, or `gr.update()` (left as it is) where `values` has none."""
    return [values[name] if name in values else gr.update() for name in form.names(spec)]


def _result_outputs(c: dict[str, Any]) -> list:
    return [c["gallery"], c["images"], c["infotext"], c["selected"], c["saved"]]


def _generate(service: ServeService, kind: str, spec, fields: dict[str, Any], progress) -> tuple:
    if kind == "img2img":
        fields = {**fields, "mask": run.inpaint_mask(fields["inpaint_mask"], fields["inpaint_mask_upload"], service)}
    try:
        kwargs = form.request_kwargs(spec, fields)
    except form.FormError as exc:
        raise run.user_error(str(exc)) from None
    control = run.open_control_image(fields["cn_image"], service) if kwargs.get("alwayson_scripts") else None
    if kind == "img2img":
        kwargs["init_image"] = run.open_init_image(fields["init_image"], service)
        control = kwargs["init_image"] if control is None else control  # the extension's rule
    images, saved = run.run_generation(service, kind, kwargs, progress, control_image=control)
    where = sorted({str(path.parent) for path in saved})
    note = f"Saved {len(saved)} image(s) to `{', '.join(where)}`" if saved else ""
    return ([(im.image, im.infotext) for im in images], images, images[0].infotext if images else "", 0, note)


def _wire_tab(service: ServeService, kind: str, c: dict[str, Any], spec) -> None:
    images_in = ["cn_image", *(["init_image", "inpaint_mask", "inpaint_mask_upload"] if kind == "img2img" else [])]
    inputs = [c[n] for n in form.names(spec) + images_in]
    keys = form.names(spec) + images_in

    def generate(*values, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        return _generate(service, kind, spec, dict(zip(keys, values)), progress)

    c["generate"].click(generate, inputs, _result_outputs(c), concurrency_limit=None, api_name=f"{kind}_generate")
    c["interrupt"].click(lambda: service.queue.interrupt() and None, None, None, queue=False)
    c["skip"].click(service.skip, None, None, queue=False)  # A1111 Skip: this batch ends, the next runs

    def select(images, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return (images[index].infotext if 0 <= index < len(images) else ""), index

    c["gallery"].select(select, c["images"], [c["infotext"], c["selected"]])
    c["random_seed"].click(lambda: -1, None, c["seed"], queue=False)

    def reuse_seed(images, index):
        return form.seed_of(images[index].infotext) if 0 <= index < len(images) else -1

    c["reuse_seed"].click(reuse_seed, [c["images"], c["selected"]], c["seed"], queue=False)
    c["extra"].change(lambda show: gr.Row(visible=show), c["extra"], c["extra_row"], queue=False)
    if "hires" in c:  # ticking "Hires. fix" opens its settings, as A1111's InputAccordion
        c["hires"].input(lambda on: gr.Accordion(open=on), c["hires"], c["hires_panel"], queue=False)
    if kind == "img2img":  # the init image becomes the inpaint editor's canvas, its strokes cleared
        c["init_image"].change(lambda image: {"background": image, "layers": [], "composite": image} if image
                               is not None else None, c["init_image"], c["inpaint_mask"], queue=False)
    c["switch_size"].click(lambda w, h: (h, w), [c["width"], c["height"]], [c["width"], c["height"]], queue=False)

    def add_lora(prompt, name, weight):
        if not name:
            raise run.user_error("pick a LoRA first")
        return form.add_to_prompt(prompt, lora_tag_text(name, weight))

    def add_embedding(prompt, name):
        if not name:
            raise run.user_error("pick an embedding first")
        return form.add_to_prompt(prompt, name)

    c["add_lora"].click(add_lora, [c["prompt"], c["lora"], c["lora_weight"]], c["prompt"])
    c["add_embedding"].click(add_embedding, [c["prompt"], c["embedding"]], c["prompt"])
    c["refresh_loras"].click(lambda: gr.Dropdown(choices=_choices(service)["loras"]), None, c["lora"], queue=False)
    c["refresh_embeddings"].click(lambda: gr.Dropdown(choices=_choices(service)["embeddings"]), None,
                                  c["embedding"], queue=False)
