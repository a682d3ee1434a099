"""`animegen generate --mask / --outpaint` (issue #15): inpainting and outpainting from the command line on the
tiny SD1.5, pixels outside the (blurred) mask kept in the written PNG, the settings in its infotext, `--from-png`
overrides, and every problem found before the model loads, on one line."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from PIL import Image
from test_generate_cli import no_model_load  # noqa: F401  (a fixture: tests/cli/test_generate_cli.py)
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.generate.infotext import parse_infotext, read_png_infotext

runner = CliRunner()
FAST = ["--steps", "3", "--sampler", "Euler", "--strength", "0.9", "--seed", "5", "--device", "cpu"]
REACH = 10  # mask blur 4: 2 * int(2.5 * 4 + 0.5) + 1 = 21 taps, nothing reaches beyond 10 pixels


def _run(*args):
    return runner.invoke(app, ["generate", *args], terminal_width=400)


def _noise(path, width, height, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _box_mask(path, width, height, box):
    values = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    values[y1:y2, x1:x2] = 255
    Image.fromarray(values, "L").save(path)
    return path


def _written(out):
    (png,) = (out / "img2img-images" / date.today().isoformat()).glob("*.png")
    return np.asarray(Image.open(png).convert("RGB")).astype(int), parse_infotext(read_png_infotext(png))


def test_pixels_outside_the_blurred_mask_are_the_init_images_in_the_written_png(tiny_sd15_dir, tmp_path,
                                                                                 one_torch_thread):
    init = _noise(tmp_path / "init.png", 64, 64)
    mask = _box_mask(tmp_path / "mask.png", 64, 64, (24, 24, 40, 40))
    out = tmp_path / "out"
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--init-image", str(init), "--mask", str(mask),
             "--mask-blur", "4", "--width", "64", "--height", "64", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    pixels, params = _written(out)
    original = np.asarray(Image.open(init)).astype(int)
    kept = np.ones((64, 64), bool)
    kept[24 - REACH:40 + REACH, 24 - REACH:40 + REACH] = False
    assert (pixels[kept] == original[kept]).all()
    assert np.abs(pixels[28:36, 28:36] - original[28:36, 28:36]).mean() > 10  # the inside was regenerated
    assert params["Mask blur"] == "4" and "Masked content" not in params  # "original", which A1111 leaves out


def test_the_inpaint_options_reach_the_infotext_and_from_png_overrides_them(tiny_sd15_dir, tmp_path,
                                                                             one_torch_thread):
    init = _noise(tmp_path / "init.png", 64, 64, seed=1)
    mask = _box_mask(tmp_path / "mask.png", 64, 64, (8, 8, 24, 24))
    out = tmp_path / "out"
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--init-image", str(init), "--mask", str(mask),
             "--mask-blur", "2", "--inpainting-fill", "2", "--inpaint-full-res", "--inpaint-full-res-padding", "8",
             "--inpainting-mask-invert", "--width", "64", "--height", "64", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    pixels, params = _written(out)
    assert {k: params.get(k) for k in ("Mask blur", "Masked content", "Inpaint area", "Masked area padding",
                                       "Mask mode")} == {
        "Mask blur": "2", "Masked content": "latent noise", "Inpaint area": "Only masked",
        "Masked area padding": "8", "Mask mode": "Inpaint not masked"}
    original = np.asarray(Image.open(init)).astype(int)
    assert (pixels[14:18, 14:18] == original[14:18, 14:18]).all()  # inverted: the white box is kept

    (first,) = (out / "img2img-images" / date.today().isoformat()).glob("*.png")
    again = tmp_path / "again"
    r = _run("--from-png", str(first), "--model", str(tiny_sd15_dir), "--init-image", str(init), "--mask",
             str(mask), "--inpainting-fill", "latent nothing", "--no-inpaint-full-res", "--out", str(again),
             "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "inpainting_fill='latent nothing'" in r.output and "inpaint_full_res=False" in r.output
    _, params = _written(again)
    assert params["Masked content"] == "latent nothing" and "Inpaint area" not in params
    assert params["Mask blur"] == "2" and params["Mask mode"] == "Inpaint not masked"  # from the infotext


def test_outpaint_grows_the_image_by_the_borders_and_keeps_the_original_region(tiny_sd15_dir, tmp_path,
                                                                              one_torch_thread):
    init = _noise(tmp_path / "init.png", 48, 64, seed=2)
    out = tmp_path / "out"
    left, right, top, bottom = 8, 8, 0, 16
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--init-image", str(init), "--outpaint",
             f"{left},{right},{top},{bottom}", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    pixels, params = _written(out)
    assert pixels.shape == (64 + top + bottom, 48 + left + right, 3) and params["Size"] == "64x80"
    original = np.asarray(Image.open(init)).astype(int)
    region = pixels[top:top + 64, left:left + 48]
    inner = (slice(0, 64 - REACH), slice(REACH, 48 - REACH))  # the top edge is the image's own: no blur from it
    assert (region[inner] == original[inner]).all()
    assert np.abs(pixels[-8:, left:left + 48] - original[-1]).mean() > 10  # not the repeated edge: generated
    assert params["Masked content"] == "fill"  # outpainting paints the border with the edge colours first


def _one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    return lines[0]


def test_inpainting_problems_are_found_before_loading_on_one_line(no_model_load, tiny_sd15_dir,  # noqa: F811
                                                                  tmp_path):
    mask = _box_mask(tmp_path / "mask.png", 64, 64, (0, 0, 8, 8))
    init = _noise(tmp_path / "init.png", 64, 64)
    base = ["x", "--model", str(tiny_sd15_dir), "--out", str(tmp_path / "o")]

    line = _one_error_line(_run(*base, "--mask", str(mask)))
    assert "--mask" in line and "--init-image" in line

    line = _one_error_line(_run(*base, "--init-image", str(init), "--mask", str(tmp_path / "none.png")))
    assert "--mask" in line and "none.png" in line and "no such file" in line
    text = tmp_path / "mask.txt"
    text.write_text("not an image")
    line = _one_error_line(_run(*base, "--init-image", str(init), "--mask", str(text)))
    assert "--mask" in line and "not an image" in line

    for bad in ("8,8", "a,b,c,d", "-8,0,0,0", "0,0,0,0"):
        line = _one_error_line(_run(*base, "--init-image", str(init), "--outpaint", bad))
        assert f"--outpaint {bad}" in line and "LEFT,RIGHT,TOP,BOTTOM" in line, line
    line = _one_error_line(_run(*base, "--outpaint", "8,8,8,8"))
    assert "--outpaint" in line and "--init-image" in line
    line = _one_error_line(_run(*base, "--init-image", str(init), "--outpaint", "8,8,8,8", "--mask", str(mask)))
    assert "--outpaint" in line and "--mask" in line

    line = _one_error_line(_run(*base, "--init-image", str(init), "--mask", str(mask), "--inpainting-fill", "blur"))
    assert "--inpainting-fill blur" in line and "'latent noise'" in line
    line = _one_error_line(_run(*base, "--init-image", str(init), "--mask", str(mask), "--hires-scale", "2"))
    assert "mask (inpainting) and hires" in line  # the request's own check


@pytest.mark.parametrize("option", ["--mask-blur", "--inpainting-fill", "--inpaint-full-res",
                                    "--inpaint-full-res-padding", "--inpainting-mask-invert", "--outpaint"])
def test_help_lists_the_inpaint_options(option):
    r = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "400"})
    assert option in r.output
