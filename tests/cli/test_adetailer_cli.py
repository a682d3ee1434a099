"""`animegen generate --adetailer MODEL[:PROMPT]` (issue #15): the ADetailer pass from the command line on the tiny
SD1.5 with a tiny ONNX detector whose one box is known: pixels outside the box's blurred, padded mask are the first
pass's, the box is regenerated, the infotext records the unit; a detector that is not there is found before
loading, on one line."""

from __future__ import annotations

from datetime import date

import numpy as np
from detector_testutils import tiny_detector, yolo_output
from PIL import Image
from test_generate_cli import no_model_load  # noqa: F401  (a fixture: tests/cli/test_generate_cli.py)
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.generate.infotext import parse_infotext, read_png_infotext

runner = CliRunner()
FAST = ["--steps", "3", "--sampler", "Euler", "--seed", "5", "--device", "cpu", "--width", "64", "--height", "64"]


def _run(*args):
    return runner.invoke(app, ["generate", *args], terminal_width=400)


def _written(out):
    (png,) = (out / "txt2img-images" / date.today().isoformat()).glob("*.png")
    return np.asarray(Image.open(png).convert("RGB")).astype(int), parse_infotext(read_png_infotext(png))


def test_adetailer_regenerates_the_detected_box_only(tiny_sd15_dir, tmp_path, one_torch_thread):
    detectors = tmp_path / "adetailer"
    detectors.mkdir()
    tiny_detector(detectors / "face_tiny.onnx", yolo_output([(24, 24, 16, 16, [0.9])]))  # the box 16..32
    plain, detailed = tmp_path / "plain", tmp_path / "detailed"
    assert _run("1girl", "--model", str(tiny_sd15_dir), "--out", str(plain), *FAST).exit_code == 0
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--out", str(detailed), "--adetailer", "face_tiny:smile",
             "--adetailer-dir", str(detectors), "--ad-denoise", "0.9", *FAST)
    assert r.exit_code == 0, r.output
    before, _ = _written(plain)
    after, params = _written(detailed)
    reach = 4 + 10  # the mask is the box dilated by 4 (the default), blurred by 4 (nothing beyond 10 pixels)
    outside = np.ones((64, 64), bool)
    outside[16 - reach:33 + reach, 16 - reach:33 + reach] = False
    assert (after[outside] == before[outside]).all()
    assert np.abs(after[18:31, 18:31] - before[18:31, 18:31]).mean() > 5  # the box was inpainted again
    assert params["ADetailer model"] == "face_tiny" and params["ADetailer prompt"] == "smile"


def test_a_missing_detector_is_found_before_loading(no_model_load, tmp_path):  # noqa: F811
    r = _run("1girl", "--model", "test/unused", "--out", str(tmp_path / "o"), "--adetailer", "face_yolov8n",
             "--adetailer-dir", str(tmp_path), *FAST)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--adetailer face_yolov8n" in lines[0] and "face_yolov8n.onnx" in lines[0], r.output
