"""Every shipped preset trains a few steps on CPU exactly as shipped.

Only what cannot ship is replaced: `model.base` (the tiny model of the preset's family: SDXL for presets
at 1024 px, SD1.5 otherwise), the data (a tiny kohya folder at 64 px), and the step counts and
sample / validation / checkpoint intervals (small, but on where the preset has them on). Everything
else — mixed precision, adapter kind, text-encoder training, optimizer, gradient checkpointing,
export formats — is the preset's own. The list comes from the preset files, so a new preset is
tested automatically.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files

import pytest
from train_helpers import RED, write_kohya
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.train.config import validate_config
from animegen.train.trainer import train

SHIPPED = sorted(p.name.removesuffix(".toml") for p in files("animegen.train.presets").iterdir()
                 if p.name.endswith(".toml"))


def _small(section: dict, keys: dict) -> dict:
    """Intervals that the preset turns on become 1 (every step); those it leaves off stay off."""
    return {**section, **{k: (v if section.get(k, 0) else 0) for k, v in keys.items()}}


def shrink(data: dict, base, dataset, out) -> dict:
    """The preset's own config with only base, data, step counts and intervals made tiny."""
    data = dict(data)
    data["model"] = {**data.get("model", {}), "base": str(base)}
    data["data"] = {**data.get("data", {}), "datasets": [{"path": str(dataset)}], "resolution": 64,
                    "min_bucket_side": 64, "max_bucket_side": 128}
    data["train"] = {**data.get("train", {}), "output_dir": str(out), "max_steps": 2, "device": "cpu"}
    data["sample"] = {**_small(data.get("sample", {}), {"every_steps": 1}), "steps": 1, "width": 64, "height": 64}
    data["validation"] = _small(data.get("validation", {}), {"every_steps": 1})
    data["checkpoint"] = _small(data.get("checkpoint", {}), {"every_steps": 1})
    data["stages"] = [{**stage, **({"train": {**stage["train"], "max_steps": 2}} if "train" in stage else {}),
                       **({"data": {**stage["data"], "datasets": [{"path": str(dataset)}]}} if "data" in stage else {})}
                      for stage in data.get("stages", [])]
    return data


def test_the_shipped_list_is_the_presets_init_offers():
    from animegen.train.presets import PRESETS

    assert sorted(PRESETS) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_trains_on_cpu(name, tmp_path, tiny_sd15_dir, tiny_sdxl_dir):
    written = tmp_path / f"{name}.toml"
    assert CliRunner().invoke(app, ["train", "init", "--preset", name, "--out", str(written)]).exit_code == 0
    shipped = tomllib.loads(written.read_text())
    base = tiny_sdxl_dir if shipped.get("data", {}).get("resolution", 512) >= 1024 else tiny_sd15_dir
    dataset = write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=4)
    cfg = validate_config(shrink(shipped, base, dataset, tmp_path / "run"))
    result = train(cfg)
    assert result.finished and result.step == 2 and result.exported
    assert all(path.exists() for path in result.exported.values())
    if cfg.sample.every_steps and not cfg.stages:
        assert len(result.samples) == 2 * len(cfg.sample.prompts)  # previews written, not skipped
