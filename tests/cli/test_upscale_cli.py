"""`animegen upscale`: registered on a Typer app of our own, run through CliRunner."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import typer
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from animegen.cli.upscale import register
from animegen.models.upscalers import upscale_image
from animegen.models.upscalers.srvgg import SRVGGNetCompact

runner = CliRunner()


def srvgg_state(convs: int = 2) -> dict[str, torch.Tensor]:
    """A tiny random-weight compact network's tensors (PyTorch's default init, seeded)."""
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in SRVGGNetCompact(features=8, convs=convs, scale=4).state_dict().items()}


def _save(tensors: dict[str, torch.Tensor], path):
    save_file(tensors, str(path))
    return path


@pytest.fixture
def app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as under `animegen`
        """test app"""

    register(app)
    return app


@pytest.fixture
def picture(tmp_path):
    g = torch.Generator().manual_seed(5)
    path = tmp_path / "in" / "cat.png"
    path.parent.mkdir()
    Image.fromarray((torch.rand(12, 20, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB").save(path)
    return path


def test_model_upscale_writes_the_library_result_with_postprocessing_text(app, tmp_path, picture):
    model = _save(srvgg_state(convs=1), tmp_path / "compact.safetensors")
    result = runner.invoke(app, ["upscale", str(picture), "--upscaler", str(model), "--scale", "4", "--out",
                                 str(tmp_path / "out"), "--tile", "8", "--overlap", "4"])
    assert result.exit_code == 0, result.output
    written = Image.open(tmp_path / "out" / "cat.png")
    want = upscale_image(Image.open(picture), model, 4, tile=8, overlap=4)
    assert written.size == (80, 48) and written.convert("RGB").tobytes() == want.tobytes()
    assert written.info["postprocessing"] == "Postprocess upscale by: 4.0, Postprocess upscaler: compact"
    assert "SRVGGNetCompact" in result.output


def test_built_in_upscaler_and_existing_output(app, tmp_path, picture):
    args = ["upscale", str(picture), "--upscaler", "lanczos", "--scale", "2", "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    assert Image.open(tmp_path / "out" / "cat.png").size == (40, 24)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--upscaler", "ESRGAN_4x"], "neither Lanczos"),
    (["--upscaler", "PTH"], "pickled"),
    (["--upscaler", "Lanczos", "--scale", "0"], "--scale"),
    (["--upscaler", "BROKEN"], "unknown upscaler architecture"),
])
def test_bad_input_is_one_line_and_exit_2(app, tmp_path, picture, extra, message):
    pth = tmp_path / "x4.pth"
    torch.save({"params_ema": srvgg_state()}, pth)
    broken = _save({"weird.weight": torch.zeros(2)}, tmp_path / "weird.safetensors")
    extra = [{"PTH": str(pth), "BROKEN": str(broken)}.get(a, a) for a in extra]
    result = runner.invoke(app, ["upscale", str(picture), "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out" / "cat.png").exists()


def test_pth_with_allow_pickle_works(app, tmp_path, picture):
    pth = tmp_path / "x4.pth"
    torch.save({"params_ema": srvgg_state()}, pth)
    result = runner.invoke(app, ["upscale", str(picture), "--upscaler", str(pth), "--allow-pickle", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "cat.png").size == (80, 48)


def test_importing_the_command_loads_no_torch():
    code = "import sys, animegen.cli.upscale; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
