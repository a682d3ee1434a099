"""ControlNet units (generate/controlnet.py) on the tiny SD1.5: weight, guidance range, modes, several units,
the two file layouts, and the built-in preprocessors (generate/preprocessors.py)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest
from animegen.generate.controlnet import SOFT_SCALE, ControlUnit, fit_image, load_controlnet
from animegen.generate.preprocessors import canny, preprocess

SIZE = 64


def _tiny_controlnet(unet, seed: int):
    """A ControlNet of the tiny UNet with random zero convolutions (a fresh one adds exactly nothing)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))  # 8x down, as the real ones
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def engine(tiny_sd15_dir):
    from animegen.generate import Generator

    return Generator(tiny_sd15_dir, device="cpu")


@pytest.fixture(scope="module")
def cn_dirs(engine, tmp_path_factory):
    """Two tiny ControlNets: A as a diffusers folder, B as one diffusers-layout .safetensors file."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("controlnet")
    a = _tiny_controlnet(engine.pipe.unet, 1)
    a.save_pretrained(root / "cn_a")
    b = _tiny_controlnet(engine.pipe.unet, 2)
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, root / "cn_b.safetensors")
    return root


def _to_original_layout(net, unet_config) -> dict:
    """A diffusers ControlNet's weights in the A1111 models' layout (`control_model.*`): the UNet-encoder part by
    our UNet name map, zero convs, the mid-block output and the hint encoder by hand."""
    from animegen.models.ldm_names import unet_state_dict_to_ldm

    state = net.state_dict()
    own = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.")
    out = unet_state_dict_to_ldm({k: v for k, v in state.items() if not k.startswith(own)}, unet_config)
    hint = {"conv_in": 0, **{f"blocks.{j}": 2 * j + 2 for j in range(6)}, "conv_out": 14}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if key.startswith("controlnet_down_blocks."):
            out[f"zero_convs.{module.split('.')[1]}.0.{param}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"middle_block_out.0.{param}"] = value
        elif key.startswith("controlnet_cond_embedding."):
            out[f"input_hint_block.{hint[module.split('.', 1)[1]]}.{param}"] = value
    return {f"control_model.{k}": v.contiguous() for k, v in out.items()}


def _control_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _image(engine, units=(), **kw) -> np.ndarray:
    request = GenerationRequest("1girl", seed=3, steps=4, width=SIZE, height=SIZE, sampler="Euler",
                                controlnet_units=tuple(units), **kw)
    return engine(request)[0].array


class _RecordingUNet(torch.nn.Module):
    """Wraps the UNet and records the residuals each call gets (None when it gets none)."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.calls = unet, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, *args, down_block_additional_residuals=None, mid_block_additional_residual=None, **kw):
        self.calls.append((down_block_additional_residuals, mid_block_additional_residual))
        return self.inner(*args, down_block_additional_residuals=down_block_additional_residuals,
                          mid_block_additional_residual=mid_block_additional_residual, **kw)


@pytest.fixture()
def recording(engine):
    unet = engine.pipe.unet
    engine.pipe.unet = _RecordingUNet(unet)
    try:
        yield engine.pipe.unet
    finally:
        engine.pipe.unet = unet


def _unit(cn_dirs, name="cn_a", **kw) -> ControlUnit:
    return ControlUnit(model=cn_dirs / name, image=_control_image(), **kw)


def test_weight_zero_equals_no_controlnet(engine, cn_dirs):
    plain = _image(engine)
    assert np.array_equal(_image(engine, [_unit(cn_dirs, weight=0.0)]), plain)


def test_weight_one_changes_the_image(engine, cn_dirs):
    plain = _image(engine)
    assert np.abs(_image(engine, [_unit(cn_dirs, weight=1.0)]) - plain).max() > 1e-3


def test_outside_the_guidance_range_the_unet_gets_no_residuals(engine, cn_dirs, recording):
    steps = 4
    _image(engine, [_unit(cn_dirs, guidance_start=0.5, guidance_end=1.0)])
    # A1111's sampling_step is the last callback's i: 0, 0, 1, 2 for the four Euler steps -> fractions 0, 0, .25, .5
    fractions = [0.0] + [i / steps for i in range(steps - 1)]
    active = [d is not None for d, _ in recording.calls]
    assert active == [0.5 <= f <= 1.0 for f in fractions]


def test_residuals_are_weighted_and_units_add(engine, cn_dirs, recording):
    """Two units: the UNet gets w_a * r_a + w_b * r_b (checked on the first call against each model alone)."""
    unet = recording.inner
    a, b = load_controlnet(cn_dirs / "cn_a", unet), load_controlnet(cn_dirs / "cn_b.safetensors", unet)
    _image(engine, [_unit(cn_dirs, weight=0.7), _unit(cn_dirs, "cn_b.safetensors", weight=0.3)])
    down, mid = recording.calls[0]
    recording.calls.clear()
    _image(engine, [_unit(cn_dirs, weight=1.0)])
    down_a, mid_a = recording.calls[0]
    recording.calls.clear()
    _image(engine, [_unit(cn_dirs, "cn_b.safetensors", weight=1.0)])
    down_b, mid_b = recording.calls[0]
    assert a is not b
    for got, ra, rb in zip([*down, mid], [*down_a, mid_a], [*down_b, mid_b]):
        torch.testing.assert_close(got, 0.7 * ra + 0.3 * rb, rtol=1e-5, atol=1e-6)


def test_infotext_records_each_unit_as_the_extension(engine, cn_dirs):
    unit = _unit(cn_dirs, "cn_b.safetensors", weight=0.5, preprocessor="canny", control_mode=2, guidance_end=0.9)
    request = GenerationRequest("1girl", seed=3, steps=2, width=SIZE, height=SIZE, controlnet_units=(unit,))
    params = engine(request)[0].parameters
    digest = hashlib.sha256((cn_dirs / "cn_b.safetensors").read_bytes()[0x100000:0x110000]).hexdigest()
    assert params["ControlNet 0"] == (
        f"Module: canny, Model: cn_b [{digest[:8]}], Weight: 0.5, Resize Mode: Crop and Resize, Processor Res: 512, "
        "Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 0.9, Pixel Perfect: False, "
        "Control Mode: ControlNet is more important")


def test_the_hires_pass_gets_the_units_at_its_size(engine, cn_dirs, recording):
    _image(engine, [_unit(cn_dirs)], hires=True, hires_scale=1.5, hires_steps=2, hires_upscaler="Latent")
    sizes = {tuple(mid.shape[-2:]) for _, mid in recording.calls}
    latent = recording.calls[-1][0][0].shape[-1]
    assert len(recording.calls) == 4 + 2 and all(d is not None for d, _ in recording.calls)
    assert len(sizes) == 2 and latent == SIZE * 3 // 2 // 8  # the first down residual is at the latent size


def test_control_modes(engine, cn_dirs, recording):
    """My prompt is more important: residual k times 0.825 ** (12 - k); ControlNet is more important: that, on the
    positive rows only (the negative half of the batch gets zeros)."""
    results = {}
    for mode in (0, 1, 2):
        recording.calls.clear()
        _image(engine, [_unit(cn_dirs, control_mode=mode)])
        results[mode] = recording.calls[0]
    balanced, soft, cfg = ([*d, m] for d, m in (results[0], results[1], results[2]))
    assert len(balanced) == 13  # SD1: 12 down residuals and the mid one, as the extension's 13 scales
    for k, (r0, r1, r2) in enumerate(zip(balanced, soft, cfg)):
        torch.testing.assert_close(r1, r0 * SOFT_SCALE ** (12 - k))
        half = r0.shape[0] // 2  # [positive, negative]
        torch.testing.assert_close(r2[:half], r1[:half])
        assert torch.count_nonzero(r2[half:]) == 0


def test_original_layout_file_loads_as_the_same_network(engine, cn_dirs, tmp_path):
    from safetensors.torch import save_file

    unet = engine.pipe.unet
    folder = load_controlnet(cn_dirs / "cn_a", unet)
    save_file(_to_original_layout(folder, unet.config), tmp_path / "control_v11p_sd15_canny.safetensors")
    single = load_controlnet(tmp_path / "control_v11p_sd15_canny.safetensors", unet)
    assert single.state_dict().keys() == folder.state_dict().keys()
    for key, value in folder.state_dict().items():
        assert torch.equal(single.state_dict()[key], value), key


def test_unit_for_another_family_names_the_file(tiny_sdxl_dir, cn_dirs):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet")
    with pytest.raises(AnimegenError, match="cn_b.safetensors"):
        load_controlnet(cn_dirs / "cn_b.safetensors", unet)


def test_bad_unit_values_are_refused(cn_dirs):
    with pytest.raises(ValueError, match="guidance_start"):
        GenerationRequest("x", controlnet_units=(_unit(cn_dirs, guidance_start=0.8, guidance_end=0.2),)).validate()
    with pytest.raises(ValueError, match="control_mode"):
        GenerationRequest("x", controlnet_units=(_unit(cn_dirs, control_mode=5),)).validate()


# ---- preprocessors ----------------------------------------------------------------------------------------
def test_canny_of_a_square_is_its_outline():
    """A white square (rows/cols 8..15) on black: OpenCV's tie rule keeps the outside pixel where the gradient
    points into the square (top, left: row/col 7) and the inside one where it points out (bottom, right: 15)."""
    gray = np.zeros((24, 24), np.uint8)
    gray[8:16, 8:16] = 255
    edges = canny(gray, 100, 200) > 0
    expected = np.zeros_like(edges)
    expected[7, 9:15] = expected[15, 9:15] = True  # the sides, away from the corners
    expected[9:15, 7] = expected[9:15, 15] = True
    sides = np.zeros_like(edges)
    sides[7, 9:15] = sides[15, 9:15] = sides[9:15, 7] = sides[9:15, 15] = True
    corners = np.zeros_like(edges)
    for r in (7, 15):
        for c in (7, 15):
            corners[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
    assert np.array_equal(edges & ~corners, expected & ~corners)
    assert not (edges & ~corners & ~sides).any()
    assert edges[corners].any()  # the outline goes round the corners


def test_canny_hysteresis_keeps_weak_edges_linked_to_strong_ones():
    gray = np.zeros((16, 32), np.uint8)
    gray[:, 8:] = 40  # a weak step: |gx| = 160, between the thresholds
    gray[:, 20:] = 255  # a strong step joined to nothing weak
    assert not canny(gray, 100, 200)[:, 7].any()  # weak, not linked to a strong edge
    assert canny(gray, 100, 200)[:, 19].all()
    assert canny(gray, 150, 200)[:, 19].all() and not canny(gray, 100, 2000).any()


def test_threshold_invert_and_tile():
    image = Image.fromarray(np.array([[[10] * 3, [200] * 3]] * 2, np.uint8))
    assert np.array_equal(np.asarray(preprocess("threshold", image, res=2))[..., 0], [[0, 255], [0, 255]])
    assert np.array_equal(np.asarray(preprocess("invert", image, res=2))[..., 0], [[245, 55], [245, 55]])
    big = Image.new("RGB", (64, 32), (9, 9, 9))
    assert preprocess("tile_resample", big, res=32, threshold_a=2).size == (32, 16)


def test_scribble_xdog_marks_the_dark_side_of_edges_only():
    gray = np.full((48, 48, 3), 255, np.uint8)
    gray[:, 24:] = 0  # white left, black right
    out = np.asarray(preprocess("scribble_xdog", Image.fromarray(gray), res=48))[..., 0] > 0
    assert not out[:, :16].any() and not out[:, 32:].any()  # flat regions: nothing
    assert out[:, 24].all()  # the first dark column: its blurred surround is brighter
    assert not preprocess("scribble_xdog", Image.fromarray(gray), res=48, threshold_a=600).getbbox()


def test_model_preprocessor_names_its_annotator_file(tmp_path):
    with pytest.raises(AnimegenError, match="netG.pth"):
        preprocess("lineart_anime", Image.new("RGB", (8, 8)), annotator_dir=tmp_path)
    with pytest.raises(AnimegenError, match="unknown"):
        preprocess("no_such_module", Image.new("RGB", (8, 8)))


def test_resize_modes():
    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    assert fit_image(wide, 20, 20, "Just Resize").size == (20, 20)
    assert np.asarray(fit_image(wide, 20, 20, "Crop and Resize")).min() == 255  # covered, cropped
    filled = np.asarray(fit_image(wide, 20, 20, "Resize and Fill"))
    assert filled[0].max() == 0 and filled[10].min() == 255  # fitted, black above and below


def test_sdxl_controlnet_single_file(tiny_sdxl_dir, tmp_path):
    """SDXL: a ControlNet file (diffusers layout, as most SDXL ones) with the text-time conditioning; weight 0 is
    bit-exact with none, weight 1 changes the image."""
    from safetensors.torch import save_file

    from animegen.generate import Generator

    engine = Generator(tiny_sdxl_dir, device="cpu")
    net = _tiny_controlnet(engine.pipe.unet, 3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "cn_xl.safetensors")
    unit = ControlUnit(model=tmp_path / "cn_xl.safetensors", image=_control_image())
    plain = _image(engine)
    assert np.array_equal(_image(engine, [replace(unit, weight=0.0)]), plain)
    assert np.abs(_image(engine, [unit]) - plain).max() > 1e-3


def test_inpainting_model_controlnet_sees_the_latent_channels(cn_dirs):
    """A 9-channel inpainting UNet with a (4-channel) ControlNet, inpainting an img2img: the unit works on the
    first four channels, and at weight 0 changes nothing."""
    from animegen.generate import Generator
    from animegen.models.tiny import build_tiny_pipeline

    engine = Generator(pipe=build_tiny_pipeline("sd15", inpainting=True), model_name="tiny-inpainting")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    kw = {"init_image": _control_image(), "mask": mask, "strength": 0.8}
    plain = _image(engine, **kw)
    assert np.array_equal(_image(engine, [_unit(cn_dirs, weight=0.0)], **kw), plain)
    assert np.abs(_image(engine, [_unit(cn_dirs)], **kw) - plain).max() > 1e-3


def test_pixel_perfect_resolution_is_the_hint_scale_of_the_short_side():
    from animegen.generate.controlnet import pixel_perfect_resolution

    image = Image.new("RGB", (400, 200))
    assert pixel_perfect_resolution(image, 512, 512, "Crop and Resize") == 512  # covers: x2.56 on the short side
    assert pixel_perfect_resolution(image, 512, 512, "Resize and Fill") == 256  # fits: x1.28
