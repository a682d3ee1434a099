"""An output folder is never silently reused: `--resume` needs a checkpoint, a finished run needs `--overwrite`."""

from __future__ import annotations

import pytest
import tomli_w
from train_helpers import RED, tiny_config, write_kohya
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.core.errors import AnimegenError
from animegen.train.checkpoint import list_checkpoints
from animegen.train.trainer import train


@pytest.fixture
def one_step(tmp_path, tiny_sd15_dir):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    return lambda **train_section: tiny_config(
        tiny_sd15_dir, data, tmp_path / "run",
        train={"max_steps": 1, "batch_size": 1, "device": "cpu", **train_section})


def test_resume_without_a_checkpoint_says_so_instead_of_starting_fresh(one_step, tmp_path):
    with pytest.raises(AnimegenError, match=r"--resume.*no checkpoint.*without --resume"):
        train(one_step(), resume=True)
    assert not (tmp_path / "run" / "export").exists()  # nothing was trained


def test_a_second_run_refuses_to_replace_the_first_runs_export(one_step, tmp_path):
    first = train(one_step()).exported["kohya"]
    kept = first.read_bytes()
    with pytest.raises(AnimegenError, match=r"already holds.*--overwrite"):
        train(one_step(seed=1))
    assert first.read_bytes() == kept
    replaced = train(one_step(seed=1, overwrite=True)).exported["kohya"]
    assert replaced == first and replaced.read_bytes() != kept  # the new run's weights, asked for


def test_overwrite_clears_the_earlier_runs_checkpoints(one_step, tmp_path):
    """Else a later `--resume` would continue the earlier run's newer checkpoint."""
    part = train(one_step(max_steps=3), stop_at=2)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002"]
    with pytest.raises(AnimegenError, match=r"checkpoint.*--resume.*--overwrite"):
        train(one_step(max_steps=3))
    train(one_step(max_steps=1, overwrite=True))
    assert list_checkpoints(tmp_path / "run") == [] and part.step == 2


def test_cli_overwrite_flag_and_resume_error(one_step, tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(tomli_w.dumps(one_step().model_dump(mode="json", exclude_none=True)))
    runner = CliRunner()
    missing = runner.invoke(app, ["train", str(cfg_file), "--resume"])
    assert missing.exit_code == 2 and "no checkpoint" in missing.output
    assert runner.invoke(app, ["train", str(cfg_file)]).exit_code == 0
    again = runner.invoke(app, ["train", str(cfg_file)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["train", str(cfg_file), "--overwrite"]).exit_code == 0
