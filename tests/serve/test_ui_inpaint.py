"""The web UI's img2img inpainting (issue #15), as A1111 1.10's inpaint tab: a mask painted in the editor (any
painted pixel) or uploaded, Mask blur / Mask mode / Masked content / Inpaint area / padding mapped to the request
through `ui_form`, and the handler run on the tiny SD1.5 without a browser: pixels outside the mask are kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_ui_handlers import _event  # the wired handler of a component's event

from animegen.generate import request_from_infotext
from animegen.serve import ui_form, ui_run
from animegen.serve.config import ServeConfig
from animegen.serve.service import ServeService
from animegen.serve.ui import build_parts

REACH = 10  # mask blur 4: 21 taps, nothing beyond 10 pixels


@pytest.fixture(scope="module")
def real_ui(tiny_sd15_dir, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    service = ServeService(ServeConfig(model=str(tiny_sd15_dir), outputs_dir=outputs))
    try:
        yield service, build_parts(service)
    finally:
        service.close()


def _noise(path, width=64, height=64, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _painted(width, height, box) -> Image.Image:
    """An editor layer: transparent, with a (red) brush stroke over `box`."""
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    x1, y1, x2, y2 = box
    layer[y1:y2, x1:x2] = (255, 0, 0, 255)
    return Image.fromarray(layer, "RGBA")


def _generate(parts, **changes):
    tab = parts.img2img
    fn = _event(parts, tab["generate"])
    names = {comp: name for name, comp in tab.items()}
    values = {names[comp]: comp.value for comp in fn.inputs}
    values.update(prompt="1girl", steps=3, sampler="Euler", width=64, height=64, strength=0.9, seed=3, **changes)
    _, images, infotext, _, _ = fn.fn(*[values[names[comp]] for comp in fn.inputs],
                                      progress=lambda *a, **k: None)
    return np.asarray(images[0].image).astype(int), infotext


def test_a_painted_mask_regenerates_only_under_the_brush(real_ui, tmp_path, one_torch_thread):
    _, parts = real_ui
    init = _noise(tmp_path / "init.png")
    editor = {"background": Image.open(init).convert("RGBA"), "layers": [_painted(64, 64, (24, 24, 40, 40))],
              "composite": None}
    pixels, infotext = _generate(parts, init_image=str(init), inpaint_mask=editor, mask_blur=4)
    original = np.asarray(Image.open(init)).astype(int)
    kept = np.ones((64, 64), bool)
    kept[24 - REACH:40 + REACH, 24 - REACH:40 + REACH] = False
    assert (pixels[kept] == original[kept]).all()
    assert np.abs(pixels[28:36, 28:36] - original[28:36, 28:36]).mean() > 10
    assert "Mask blur: 4" in infotext


def test_an_uploaded_mask_with_inpaint_not_masked_keeps_the_white_part(real_ui, tmp_path, one_torch_thread):
    _, parts = real_ui
    init = _noise(tmp_path / "init.png", seed=1)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    pixels, infotext = _generate(parts, init_image=str(init), inpaint_mask_upload=str(tmp_path / "mask.png"),
                                 mask_blur=0, inpainting_mask_invert="Inpaint not masked",
                                 inpainting_fill="latent nothing")
    original = np.asarray(Image.open(init)).astype(int)
    assert (pixels[16:48, 16:48] == original[16:48, 16:48]).all()
    assert np.abs(pixels[:8] - original[:8]).mean() > 10
    assert "Mask mode: Inpaint not masked" in infotext and "Masked content: latent nothing" in infotext


def test_without_a_mask_no_inpaint_field_is_sent_and_the_controls_map_onto_the_request(real_ui):
    service, parts = real_ui
    values = {name: comp.value for name, comp in parts.img2img.items() if name in ui_form.names(ui_form.IMG2IMG)}
    values.update(prompt="x", mask_blur=9, inpainting_fill="fill", inpaint_full_res="Only masked")
    assert "inpainting" not in ui_form.request_kwargs(ui_form.IMG2IMG, values)  # A1111 ignores them without one
    mask = Image.new("L", (64, 64), 255)
    kwargs = ui_form.request_kwargs(ui_form.IMG2IMG, {**values, "mask": mask, "inpaint_full_res_padding": 12})
    assert kwargs["inpainting"] == {"mask": mask, "mask_blur": 9, "inpainting_fill": "fill",
                                    "inpaint_full_res": True, "inpaint_full_res_padding": 12,
                                    "inpainting_mask_invert": False}
    request = service.build_request(**kwargs, init_image=Image.new("RGB", (64, 64)))
    assert (request.inpainting_fill, request.inpaint_full_res, request.mask is mask) == ("fill", True, True)
    with pytest.raises(ui_form.FormError, match="inpaint_full_res"):
        ui_form.request_kwargs(ui_form.IMG2IMG, {**values, "mask": mask, "inpaint_full_res": "Everywhere"})


def test_an_inpainting_infotext_fills_the_inpaint_controls(real_ui):
    _, parts = real_ui
    text = ("x\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.5, "
            "Mask blur: 6, Mask mode: Inpaint not masked, Masked content: latent noise, Inpaint area: Only masked, "
            "Masked area padding: 20")
    got = ui_form.form_values(ui_form.IMG2IMG, request_from_infotext(text))
    assert {k: got[k] for k in ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                                "inpaint_full_res_padding")} == {
        "mask_blur": 6, "inpainting_mask_invert": "Inpaint not masked", "inpainting_fill": "latent noise",
        "inpaint_full_res": "Only masked", "inpaint_full_res_padding": 20}
    controls = {name: parts.img2img[name] for name in got}
    assert all(got[name] in [value for _, value in controls[name].choices] for name in
               ("inpainting_mask_invert", "inpainting_fill", "inpaint_full_res"))


def test_the_mask_is_any_painted_pixel_or_the_upload_and_the_init_image_becomes_the_canvas(real_ui, tmp_path):
    service, parts = real_ui
    background = Image.new("RGBA", (32, 16), (9, 9, 9, 255))
    layer = _painted(32, 16, (2, 3, 5, 7))
    layer.putpixel((20, 10), (0, 0, 0, 1))  # a faint stroke counts too
    mask = np.asarray(ui_run.inpaint_mask({"background": background, "layers": [layer], "composite": None}, None,
                                          service))
    expected = np.zeros((16, 32), dtype=np.uint8)
    expected[3:7, 2:5] = 255
    expected[10, 20] = 255
    assert mask.tolist() == expected.tolist()
    assert ui_run.inpaint_mask({"background": background, "layers": [_painted(32, 16, (0, 0, 0, 0))],
                                "composite": None}, None, service) is None  # nothing painted: plain img2img
    assert ui_run.inpaint_mask(None, None, service) is None
    upload = tmp_path / "m.png"
    Image.new("L", (8, 8), 255).save(upload)
    assert ui_run.inpaint_mask({"background": background, "layers": [layer]}, str(upload), service).size == (8, 8)

    init = _noise(tmp_path / "init.png")
    canvas = _event(parts, parts.img2img["init_image"], "change").fn(str(init))
    assert canvas["background"] == str(init) and canvas["layers"] == []
