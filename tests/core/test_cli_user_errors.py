"""Every user-caused problem ends a command with one line `error: ...` and exit code 2, never a traceback.

Tests run as root here, and root may write into a chmod'ed read-only folder; an unwritable folder is
simulated as a path under an existing regular file, which fails for every user (ENOTDIR).
"""

from __future__ import annotations

import errno
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from animegen.cli.main import app

runner = CliRunner()
TINY = ["--steps", "1", "--width", "64", "--height", "64", "--device", "cpu"]


def one_error_line(result, *needles: str) -> str:
    """The command failed as a user error: exit 2, exactly one `error:` line holding every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line[line.index("error: "):] for line in lines if "error: " in line]  # after any progress bar
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture
def blocked(tmp_path):
    """A folder path nobody can create: its parent is a regular file."""
    block = tmp_path / "a_file"
    block.write_text("not a folder")
    return block / "out"


def test_generate_init_image_missing_or_empty(tmp_path, tiny_sd15_dir):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for image in (tmp_path / "missing.png", empty):
        r = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd15_dir), "--init-image", str(image),
                                "--out", str(tmp_path / "o"), *TINY])
        one_error_line(r, image.name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_generate_on_cuda_without_cuda_names_the_fix_before_loading(tmp_path, tiny_sd15_dir, monkeypatch):
    import animegen.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(loading, "_load_folder", no_loading)
    r = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd15_dir), "--device", "cuda",
                            "--out", str(tmp_path / "o")])
    one_error_line(r, "'cuda'", "--device cpu")


def test_generate_into_an_unwritable_out(blocked, tiny_sd15_dir, monkeypatch):
    import animegen.models.loading as loading

    monkeypatch.setattr(loading, "_load_folder", lambda *a, **k: pytest.fail("loaded before --out was checked"))
    r = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd15_dir), "--out", str(blocked), *TINY])
    one_error_line(r, str(blocked.parent))


def test_train_init_and_models_tiny_into_an_unwritable_out(blocked):
    one_error_line(runner.invoke(app, ["train", "init", "--preset", "style-lora", "--out", str(blocked / "c.toml")]),
                   str(blocked.parent))
    one_error_line(runner.invoke(app, ["models", "tiny", "--out", str(blocked)]), str(blocked.parent))


def _config(tmp_path, base, out, **extra) -> str:
    data = tmp_path / "data" / "1_red"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(data / f"r{i}.png")
        (data / f"r{i}.txt").write_text("zxq, red")
    sections = {
        "model": {"base": str(base)},
        "adapter": {"kind": "lora", "rank": 2, "alpha": 2.0},
        "optimizer": {"name": "adamw", "lr": 1e-3, "scheduler": "constant"},
        "data": {"resolution": 64, "min_bucket_side": 64, "max_bucket_side": 64},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 1, "device": "cpu", "seed": 0},
        "log": {"progress": False, "tensorboard": False},
        "export": {"formats": ["kohya"], "dtype": "fp32"},
        **extra,
    }
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in sections.items())
    text += f"[[data.datasets]]\npath = {json.dumps(str(tmp_path / 'data'))}\n"
    path = tmp_path / "train.toml"
    path.write_text(text)
    return str(path)


def test_train_into_an_unwritable_output_dir(tmp_path, blocked, tiny_sd15_dir):
    r = runner.invoke(app, ["train", _config(tmp_path, tiny_sd15_dir, blocked)])
    one_error_line(r, str(blocked.parent))


@pytest.mark.parametrize("base", ["./models/x", "models/x.safetensors", "/nonexistent/models/x", "models/x"])
def test_a_local_looking_base_that_does_not_exist_is_a_missing_path(tmp_path, base, monkeypatch):
    (tmp_path / "models").mkdir()  # so `models/x` is a local folder's child, not a hub id
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", _config(tmp_path, base, tmp_path / "run")])
    line = one_error_line(r, base, "not found")
    assert "hub" not in line.split("not found", 1)[0]


def test_disk_full_during_a_checkpoint_names_the_folder_and_keeps_the_previous_one(tmp_path, tiny_sd15_dir,
                                                                                    monkeypatch, one_torch_thread):
    import animegen.train.checkpoint as checkpoint

    real, calls = checkpoint.save_file, {"n": 0}

    def full_disk_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk_on_second)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", _config(tmp_path, tiny_sd15_dir, out,
                                             checkpoint={"every_steps": 1, "keep_last": 3})])
    one_error_line(r, str(out / "checkpoints" / "step-00000002"), "No space left")
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-00000001"]
    assert checkpoint.load_checkpoint(out / "checkpoints" / "step-00000001")["step"] == 1
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]  # no temp folder left


def test_read_lora_pickles_through_the_cli(tmp_path, tiny_sd15_dir):
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    lora = {f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2),
            f"{name}.alpha": torch.tensor(2.0)}
    save_file(lora, str(tmp_path / "ok.safetensors"))
    torch.save(lora, tmp_path / "l.pt")
    args = ["generate", "x", "--model", str(tiny_sd15_dir), "--lora", str(tmp_path / "l.pt"), *TINY]
    one_error_line(runner.invoke(app, [*args, "--out", str(tmp_path / "a")]), "--allow-pickle")
    r = runner.invoke(app, [*args, "--allow-pickle", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
