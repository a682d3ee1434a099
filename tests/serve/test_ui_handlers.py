"""The web UI's handlers, called the way Gradio calls them (the wired event's function, inputs and outputs),
without a browser: send-to carries every setting, images are saved with infotext, progress shows steps and
ETA, the upload limit holds, and user errors are pop-ups without a traceback in the server log."""

from __future__ import annotations

import threading
from datetime import date

import gradio as gr
import pytest
from PIL import Image

from animegen.generate import GeneratedImage, format_infotext, read_png_infotext, request_from_infotext
from animegen.serve import ui_form
from animegen.serve.config import ServeConfig
from animegen.serve.service import ServeService
from animegen.serve.ui import build_parts

A1111_HIRES = (
    "1girl, silver hair\nNegative prompt: lowres\nSteps: 13, Sampler: DPM++ 2M, Schedule type: Exponential, "
    "CFG scale: 5.5, Seed: 1234, Size: 64x80, Clip skip: 2, RNG: CPU, ENSD: 31337, Variation seed: 99, "
    "Variation seed strength: 0.25, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 4, "
    "Hires upscaler: Latent (nearest), Hires sampler: Euler, Version: v1.10.1"
)


@pytest.fixture
def ui(serve_dirs, fake_backend_cls, tmp_path):
    service = ServeService(ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), model_dir=serve_dirs["models"],
                                       lora_dir=serve_dirs["loras"], outputs_dir=tmp_path / "outputs"),
                           backend=fake_backend_cls())
    try:
        yield service, build_parts(service)
    finally:
        service.close()


def _event(parts, component, event: str = "click"):
    """The function Gradio runs for `component`'s `event`, with its input and output components."""
    for fn in parts.demo.fns.values():
        if any(block_id == component._id and name == event for block_id, name in fn.targets):
            return fn
    raise AssertionError(f"no {event} event on {component.elem_id}")


def _call(parts, component, *values, event: str = "click"):
    """Run the wired handler; returns {output component: value}."""
    fn = _event(parts, component, event)
    result = fn.fn(*values)
    result = result if isinstance(result, (list, tuple)) else [result]
    return dict(zip(fn.outputs, result, strict=True))


def _left_alone(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def _by_name(controls, outputs) -> dict[str, object]:
    """The form controls a send-to set, by name (those it left as they were left out)."""
    return {name: outputs[comp] for name, comp in controls.items() if name in ui_form.names(ui_form.TXT2IMG)
            + ["strength", "init_image"] and comp in outputs and not _left_alone(outputs[comp])}


def test_send_to_img2img_carries_every_setting_of_the_selected_image(ui):
    service, parts = ui
    first = GeneratedImage(Image.new("RGB", (96, 120)), 1233, "other image\nSteps: 3, Sampler: Euler, "
                           "CFG scale: 7, Seed: 1233, Size: 96x120")
    chosen = GeneratedImage(Image.new("RGB", (96, 120), (9, 9, 9)), 1234, A1111_HIRES)
    out = _call(parts, parts.txt2img["send_to_img2img"], [first, chosen], 1)
    got = _by_name(parts.img2img, out)
    assert got["init_image"] is chosen.image
    assert got | {"init_image": None} == got | {
        "prompt": "1girl, silver hair", "negative_prompt": "lowres", "preset": "none", "sampler": "DPM++ 2M",
        "schedule_type": "Exponential", "steps": 13, "cfg_scale": 5.5, "seed": 1234, "clip_skip": 2,
        "width": 96, "height": 120,  # the image's own size, as A1111's "send size"
        "subseed": 99, "subseed_strength": 0.25, "strength": 0.45, "overrides": ["RNG: CPU", "ENSD: 31337"],
        "init_image": None}
    assert _left_alone(out[parts.img2img["n_iter"]])  # batch count is left as the user set it
    # and what the img2img form now holds builds the same request as the infotext, size aside
    values = {name: comp.value for name, comp in parts.img2img.items() if name in ui_form.names(ui_form.IMG2IMG)}
    values.update({k: v for k, v in got.items() if k != "init_image"})
    request = service.build_request(**ui_form.request_kwargs(ui_form.IMG2IMG, values))
    original = request_from_infotext(A1111_HIRES)
    for name in ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "clip_skip", "rng",
                 "eta_noise_seed_delta", "subseed", "subseed_strength"):
        assert getattr(request, name) == getattr(original, name), name
    assert (request.sampler, request.strength) == ("DPM++ 2M Exponential", 0.45)


def test_png_info_to_txt2img_fills_the_hires_fix_and_a_rerun_reproduces_the_request(ui):
    service, parts = ui
    send = next(c for c in parts.demo.blocks.values() if getattr(c, "elem_id", None) == "pnginfo_send_to_txt2img")
    got = _by_name(parts.txt2img, _call(parts, send, A1111_HIRES))
    assert {k: got[k] for k in ("hires", "hires_scale", "hires_steps", "hires_upscaler", "hires_denoise",
                                "hires_sampler", "hires_schedule_type", "width", "height")} == {
        "hires": True, "hires_scale": 1.5, "hires_steps": 4, "hires_upscaler": "Latent (nearest)",
        "hires_denoise": 0.45, "hires_sampler": "Euler", "hires_schedule_type": "Exponential", "width": 64,
        "height": 80}
    values = {name: comp.value for name, comp in parts.txt2img.items() if name in ui_form.names(ui_form.TXT2IMG)}
    values.update(got)
    request = service.build_request(**ui_form.request_kwargs(ui_form.TXT2IMG, values))
    original = request_from_infotext(A1111_HIRES)
    for name in ("hires", "hires_scale", "hires_steps", "hires_upscaler", "hires_denoise", "hires_sampler",
                 "width", "height", "seed", "steps", "rng", "eta_noise_seed_delta"):
        assert getattr(request, name) == getattr(original, name), name


def test_hires_controls_are_not_sent_while_the_hires_fix_box_is_off(ui):
    service, parts = ui
    values = {name: comp.value for name, comp in parts.txt2img.items() if name in ui_form.names(ui_form.TXT2IMG)}
    values.update(prompt="x", hires=False, hires_scale=2.0, hires_resize_x=512)
    request = service.build_request(**ui_form.request_kwargs(ui_form.TXT2IMG, values))
    assert (request.hires, request.hires_scale, request.hires_resize_x) == (False, 1.0, 0)
    values.update(hires=True)
    request = service.build_request(**ui_form.request_kwargs(ui_form.TXT2IMG, values))
    assert (request.hires, request.hires_scale, request.hires_resize_x) == (True, 2.0, 512)


def _generate_values(parts, **changes):
    fn = _event(parts, parts.txt2img["generate"])
    names = {comp: name for name, comp in parts.txt2img.items()}
    values = {names[comp]: comp.value for comp in fn.inputs}
    values.update(changes)
    return fn, [values[names[comp]] for comp in fn.inputs]


def test_generated_images_are_saved_to_the_outputs_folder_with_infotext(ui, tmp_path):
    _, parts = ui
    fn, values = _generate_values(parts, prompt="saved cat", seed=7, width=64, height=64)
    for _ in range(2):  # the stand-in backend makes one image per job
        gallery, _, infotext, _, note = fn.fn(*values, progress=lambda *a, **k: None)
    folder = tmp_path / "outputs" / "txt2img-images" / date.today().isoformat()
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == ["00000-7.png", "00001-7.png"]  # A1111's NNNNN-SEED.png, numbered on
    assert [read_png_infotext(f) for f in files] == [infotext] * 2 == ["saved cat"] * 2
    assert str(folder) in note
    assert gallery[0][0].info["parameters"] == "saved cat"  # the gallery's own PNG carries it too


def test_progress_shows_the_step_count_and_an_eta_while_the_job_runs(serve_dirs, fake_backend_cls, tmp_path):
    gate = threading.Event()
    backend = fake_backend_cls(steps=4, gate=gate)
    service = ServeService(ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), outputs_dir=tmp_path),
                           backend=backend)
    try:
        parts = build_parts(service)
        fn, values = _generate_values(parts, prompt="slow")
        shown: list[str] = []

        def progress(steps, desc="", unit=""):
            shown.append(desc)
            if len(shown) == 3:
                gate.set()

        fn.fn(*values, progress=progress)
    finally:
        service.close()
    assert any(text.startswith("step 1/4, ETA ") and text.endswith("s") for text in shown), shown


def test_skip_and_interrupt_are_on_both_tabs_and_end_the_running_image(serve_dirs, fake_backend_cls, tmp_path):
    gate = threading.Event()
    backend = fake_backend_cls(steps=4, gate=gate)
    backend.skip_event = threading.Event()  # what the real backend hands the engine for A1111's Skip
    service = ServeService(ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), outputs_dir=tmp_path),
                           backend=backend)
    try:
        parts = build_parts(service)
        for tab in (parts.txt2img, parts.img2img):
            backend.skip_event.clear()
            _event(parts, tab["skip"]).fn()
            assert backend.skip_event.is_set()  # the same skip as the API's POST /sdapi/v1/skip
        fn, values = _generate_values(parts, prompt="stopped")
        shown: list[str] = []

        def progress(steps, desc="", unit=""):
            shown.append(desc)
            if desc.startswith("step"):
                _event(parts, parts.img2img["interrupt"]).fn()

        with pytest.raises(gr.Error, match="interrupted"):
            fn.fn(*values, progress=progress)
    finally:
        service.close()


def test_a_12000_pixel_square_upload_is_refused_by_the_api_limit_before_decoding(ui, tmp_path):
    service, parts = ui
    big = tmp_path / "big.png"
    Image.new("1", (12000, 12000)).save(big)  # 18 MB in memory, a few kB as PNG
    fn = _event(parts, parts.img2img["generate"])
    names = {comp: name for name, comp in parts.img2img.items()}
    values = {names[comp]: comp.value for comp in fn.inputs}
    values.update(prompt="x", init_image=str(big))
    with pytest.raises(gr.Error, match=r"12000x12000.*at most 16777216 pixels"):
        fn.fn(*[values[names[comp]] for comp in fn.inputs], progress=lambda *a, **k: None)
    assert service.queue.snapshot().job_no == 0  # nothing was queued


def test_a_user_error_is_a_popup_without_a_traceback_in_the_server_log(serve_dirs, fake_backend_cls, tmp_path,
                                                                        server_runner, capfd):
    from gradio_client import Client

    from animegen.serve.app import create_app

    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), outputs_dir=tmp_path)
    with server_runner(create_app(config, backend=fake_backend_cls())) as url:
        client = Client(url + "/", verbose=False)
        info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img_generate"]
        values = [p.get("parameter_default") for p in info["parameters"]]
        values[0], values[ui_form.names(ui_form.TXT2IMG).index("width")] = "x", 4000
        capfd.readouterr()
        with pytest.raises(Exception, match="width 4000 exceeds the server limit 2048"):
            client.predict(*values, api_name="/txt2img_generate")
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out


def test_the_checkpoint_picker_switches_the_model_through_the_queue_and_lists_the_model_folder(ui, serve_dirs):
    service, parts = ui
    picker = next(c for c in parts.demo.blocks.values() if getattr(c, "elem_id", None) == "setting_sd_model_checkpoint")
    titles = [value for _, value in picker.choices]
    assert titles[0].startswith("tiny-a") and "tiny-b" in titles and "evil.ckpt" not in titles
    out = _call(parts, picker, "tiny-b", event="input")
    assert out[picker] == "tiny-b" == service.queue.selected.name
    assert service.backend.loads[-1] == "tiny-b"
    with pytest.raises(gr.Error, match="not found"):
        _call(parts, picker, "no-such-model", event="input")


def test_refresh_lists_a_lora_added_after_start_and_add_puts_its_tag_in_the_prompt(ui, serve_dirs):
    _, parts = ui
    tab = parts.txt2img
    assert "fresh" not in [value for _, value in tab["lora"].choices]
    fresh = serve_dirs["loras"] / "fresh.safetensors"
    fresh.write_bytes((serve_dirs["loras"] / "sub" / "strong.safetensors").read_bytes())
    try:
        update = _call(parts, tab["refresh_loras"])[tab["lora"]]
        assert "fresh" in [value for _, value in update.choices]
    finally:
        fresh.unlink()
    assert _call(parts, tab["add_lora"], "1girl", "strong", 0.6)[tab["prompt"]] == "1girl <lora:strong:0.6>"
    with pytest.raises(gr.Error, match="pick a LoRA first"):
        _call(parts, tab["add_lora"], "1girl", None, 1.0)


def test_the_reuse_button_puts_the_selected_images_seed_in_the_seed_box(ui):
    _, parts = ui
    images = [GeneratedImage(Image.new("RGB", (8, 8)), seed, format_infotext("x", "", {
        "Steps": 2, "Sampler": "Euler", "CFG scale": 7, "Seed": seed, "Size": "8x8"})) for seed in (10, 11)]
    tab = parts.txt2img
    assert _call(parts, tab["reuse_seed"], images, 1)[tab["seed"]] == 11
    assert _call(parts, tab["random_seed"])[tab["seed"]] == -1
