"""The web UI's ControlNet and ADetailer accordions (issue #15), without a browser: the Generate handler with a
unit enabled hands `build_request` one unit, its model found by name in the server's folder (the API's path);
disabled, none, whatever the controls show; the pickers list the server's folders."""

from __future__ import annotations

import numpy as np
import pytest
from detector_testutils import tiny_detector, yolo_output
from PIL import Image
from test_ui_handlers import _event  # the wired handler of a component's event

from animegen.generate.controlnet import ControlUnit, controlnet_name
from animegen.generate.detailer import DetailerUnit
from animegen.serve import ui_form
from animegen.serve.config import ServeConfig
from animegen.serve.service import RequestError, ServeService
from animegen.serve.ui import build_parts


@pytest.fixture
def ui(serve_dirs, fake_backend_cls, tmp_path):
    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "cn_tiny.safetensors").write_bytes(b"\0" * 64)  # found by name; never loaded here
    (tmp_path / "ad").mkdir()
    tiny_detector(tmp_path / "ad" / "face_tiny.onnx", yolo_output([(24, 24, 16, 16, [0.9])]))
    service = ServeService(ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), model_dir=serve_dirs["models"],
                                       outputs_dir=tmp_path / "outputs", controlnet_dir=tmp_path / "cn",
                                       adetailer_dir=tmp_path / "ad"), backend=fake_backend_cls())
    try:
        yield service, build_parts(service), tmp_path
    finally:
        service.close()


def _built_with(service, parts, kind, monkeypatch, **changes) -> dict:
    """The keywords the tab's Generate handler passes to `build_request` (the job itself is not run)."""
    seen = {}

    def record(**kwargs):
        seen.update(kwargs)
        raise RequestError("prompt", "stopped by the test")

    monkeypatch.setattr(service, "build_request", record)
    tab = getattr(parts, kind)
    fn = _event(parts, tab["generate"])
    names = {comp: name for name, comp in tab.items()}
    values = {names[comp]: comp.value for comp in fn.inputs}
    values.update(prompt="1girl", **changes)
    with pytest.raises(Exception, match="stopped by the test"):
        fn.fn(*[values[names[comp]] for comp in fn.inputs], progress=lambda *a, **k: None)
    return seen


def _noise(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_an_enabled_controlnet_unit_reaches_build_request(ui, monkeypatch, kind):
    service, parts, root = ui
    control = _noise(root / "control.png")
    tab = getattr(parts, kind)
    model = controlnet_name(root / "cn" / "cn_tiny.safetensors")
    assert model in [value for _, value in tab["cn_model"].choices]
    extra = {"init_image": str(_noise(root / "init.png", 1))} if kind == "img2img" else {}
    kwargs = _built_with(service, parts, kind, monkeypatch, cn_enable=True, cn_image=str(control), cn_model=model,
                         cn_module="invert", cn_weight=0.6, cn_start=0.1, cn_end=0.7,
                         cn_control_mode="ControlNet is more important", **extra)
    (unit,) = kwargs["controlnet_units"]
    assert isinstance(unit, ControlUnit)
    assert unit.model == root / "cn" / "cn_tiny.safetensors"
    assert (unit.weight, unit.guidance_start, unit.guidance_end) == (0.6, 0.1, 0.7)
    assert (unit.preprocessor, unit.control_mode) == ("invert", "ControlNet is more important")
    assert np.array_equal(np.asarray(unit.image.convert("RGB")), np.asarray(Image.open(control).convert("RGB")))
    assert not kwargs.get("detailers")


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_disabled_units_pass_none_whatever_the_controls_show(ui, monkeypatch, kind):
    service, parts, root = ui
    extra = {"init_image": str(_noise(root / "init.png", 1))} if kind == "img2img" else {}
    kwargs = _built_with(service, parts, kind, monkeypatch, cn_enable=False, cn_image=str(_noise(root / "c.png")),
                         cn_model="cn_tiny", ad_enable=False, ad_model="face_tiny", **extra)
    assert not kwargs.get("controlnet_units") and not kwargs.get("detailers")


def test_img2img_controlnet_without_an_image_uses_the_init_image(ui, monkeypatch):
    service, parts, root = ui
    init = _noise(root / "init.png", 2)
    kwargs = _built_with(service, parts, "img2img", monkeypatch, init_image=str(init), cn_enable=True,
                         cn_model="cn_tiny")
    (unit,) = kwargs["controlnet_units"]
    assert np.array_equal(np.asarray(unit.image.convert("RGB")), np.asarray(Image.open(init).convert("RGB")))


def test_an_enabled_adetailer_unit_reaches_build_request(ui, monkeypatch):
    service, parts, root = ui
    assert "face_tiny" in [value for _, value in parts.txt2img["ad_model"].choices]
    kwargs = _built_with(service, parts, "txt2img", monkeypatch, ad_enable=True, ad_model="face_tiny",
                         ad_prompt="smile", ad_negative_prompt="frown", ad_confidence=0.5, ad_denoise=0.35)
    (unit,) = kwargs["detailers"]
    assert isinstance(unit, DetailerUnit)
    assert unit.model == str(root / "ad" / "face_tiny.onnx")
    assert (unit.prompt, unit.negative_prompt, unit.confidence, unit.denoise) == ("smile", "frown", 0.5, 0.35)


def test_a_unit_without_its_model_or_image_is_a_pop_up_naming_it(ui):
    _, parts, _ = ui
    for changes, message in (({"cn_enable": True, "cn_model": None}, "ControlNet: pick a model"),
                             ({"cn_enable": True, "cn_model": "cn_tiny"}, "ControlNet: upload a control image"),
                             ({"ad_enable": True, "ad_model": None}, "ADetailer: pick a detector")):
        fn = _event(parts, parts.txt2img["generate"])
        names = {comp: name for name, comp in parts.txt2img.items()}
        values = {names[comp]: comp.value for comp in fn.inputs} | {"prompt": "x", **changes}
        with pytest.raises(Exception, match=message):
            fn.fn(*[values[names[comp]] for comp in fn.inputs], progress=lambda *a, **k: None)


def test_the_unit_fields_are_part_of_both_forms():
    for form in (ui_form.TXT2IMG, ui_form.IMG2IMG):
        assert set(ui_form.names(ui_form.CONTROLNET)) <= set(ui_form.names(form))
        assert set(ui_form.names(ui_form.ADETAILER)) <= set(ui_form.names(form))
