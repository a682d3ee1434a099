"""`animegen generate` end to end: PNG infotext, --from-png gives the identical image, clear errors."""

from datetime import date

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.generate.infotext import parse_infotext, read_png_infotext

runner = CliRunner()
ARGS = ["--steps", "3", "--width", "64", "--height", "64", "--device", "cpu"]


def test_generate_then_from_png_is_identical(tiny_sd15_dir, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "1girl, (red hair:1.3), smile", "--model", str(tiny_sd15_dir),
                            "--negative-prompt", "lowres", "--sampler", "DPM++ 2M Karras", "--seed", "77",
                            "--batch-count", "2", "--grid", "--out", str(out), *ARGS])
    assert r.exit_code == 0, r.output
    day = date.today().isoformat()
    first = out / "txt2img-images" / day / "00000-77.png"
    assert (out / "txt2img-images" / day / "00001-78.png").is_file()
    assert (out / "txt2img-grids" / day / "grid-0000.png").is_file()
    params = parse_infotext(read_png_infotext(first))
    assert params["Prompt"] == "1girl, (red hair:1.3), smile" and params["Seed"] == "77"
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras")  # as A1111 1.10 writes it
    assert params["Negative prompt"] == "lowres"

    rerun = tmp_path / "rerun"
    r = runner.invoke(app, ["generate", "--from-png", str(first), "--model", str(tiny_sd15_dir),
                            "--device", "cpu", "--out", str(rerun)])
    assert r.exit_code == 0, r.output
    again = rerun / "txt2img-images" / day / "00000-77.png"
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert read_png_infotext(again) == read_png_infotext(first)


def test_user_errors_are_one_line_not_tracebacks(tiny_sd15_dir, tmp_path):
    r = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd15_dir), "--steps", "1", "--width", "60",
                            "--height", "64", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "multiple of 8" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["generate", "x", "--model", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not found" in r.output
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    r = runner.invoke(app, ["generate", "x", "--model", str(ckpt), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--allow-pickle" in r.output
    r = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd15_dir), "--lora", str(tmp_path / "no.safetensors"),
                            "--out", str(tmp_path), *ARGS])
    assert r.exit_code == 2 and "no.safetensors" in r.output


def test_samplers_command_lists_a1111_names():
    r = runner.invoke(app, ["samplers"])
    assert r.exit_code == 0
    for name in ("Euler a", "DPM++ 2M ", "DPM++ SDE ", "UniPC", "LMS", "Automatic = Karras", "Align Your Steps"):
        assert name in r.output
