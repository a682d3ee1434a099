"""`animegen generate --controlnet MODEL:IMAGE[:WEIGHT]` (issue #15): ControlNet units from the command line on the
tiny SD1.5 with a tiny random ControlNet: weight 0 is bit-exact with no unit, weight 1 changes the image and is
recorded in the infotext; a model, image or preprocessor that is not there is found before loading, on one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_adetailer_cli import FAST, _run, _written  # the same tiny-run helpers
from test_generate_cli import no_model_load  # noqa: F401  (a fixture: tests/cli/test_generate_cli.py)


@pytest.fixture(scope="module")
def controlnets(tiny_sd15_dir, tmp_path_factory):
    """A folder with one tiny ControlNet of the tiny UNet (random zero convolutions: it adds something), as one
    diffusers-layout .safetensors file, and a random control image."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cn_cli")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_dir / "unet")
    torch.manual_seed(1)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
    (root / "models").mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, root / "models" / "cn_tiny.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "control.png")
    return root


def test_weight_zero_is_no_controlnet_and_weight_one_changes_the_image(tiny_sd15_dir, controlnets, tmp_path,
                                                                        one_torch_thread):
    plain, zero, one = tmp_path / "plain", tmp_path / "zero", tmp_path / "one"
    control = controlnets / "control.png"
    assert _run("1girl", "--model", str(tiny_sd15_dir), "--out", str(plain), *FAST).exit_code == 0
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--out", str(zero), "--controlnet", f"cn_tiny:{control}:0",
             "--controlnet-dir", str(controlnets / "models"), *FAST)
    assert r.exit_code == 0, r.output
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--out", str(one), "--controlnet",
             f"{controlnets / 'models' / 'cn_tiny.safetensors'}:{control}", "--control-mode",
             "My prompt is more important", "--controlnet-end", "0.8", *FAST)
    assert r.exit_code == 0, r.output
    (before, _), (at_zero, _), (at_one, params) = _written(plain), _written(zero), _written(one)
    assert (at_zero == before).all()
    assert np.abs(at_one - before).mean() > 1
    recorded = params["ControlNet 0"]
    assert "cn_tiny" in recorded and "My prompt is more important" in recorded and "0.8" in recorded, recorded


def test_missing_model_image_and_module_are_found_before_loading(no_model_load, controlnets, tmp_path):  # noqa: F811
    r = _run("1girl", "--model", "test/unused", "--out", str(tmp_path / "o"),
             "--controlnet", f"cn_tinny:{controlnets / 'control.png'}",
             "--controlnet", f"cn_tiny:{tmp_path / 'nothing.png'}:0.5",
             "--controlnet-dir", str(controlnets / "models"), "--controlnet-module", "cany", *FAST)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    line = lines[0]
    assert "--controlnet cn_tinny:" in line and "did you mean 'cn_tiny'" in line, line
    assert "nothing.png" in line and "no such file" in line, line
    assert "--controlnet-module cany" in line and "did you mean 'canny'" in line, line


def test_a_bad_spec_and_range_are_named(no_model_load, controlnets, tmp_path):  # noqa: F811
    r = _run("1girl", "--model", "test/unused", "--out", str(tmp_path / "o"), "--controlnet", "cn_tiny",
             "--controlnet", f"cn_tiny:{controlnets / 'control.png'}", "--controlnet-dir", str(controlnets / "models"),
             "--controlnet-start", "0.9", "--controlnet-end", "0.2", "--control-mode", "Balance", *FAST)
    assert r.exit_code == 2
    (line,) = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert "--controlnet cn_tiny:" in line and "MODEL:IMAGE[:WEIGHT]" in line, line
    assert line.count("guidance_start 0.9") == 1, line  # once for all units, not again by each unit
    assert "--control-mode Balance" in line and "'Balanced'" in line, line
