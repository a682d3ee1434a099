"""`animegen generate`: A1111's option names and batch semantics, checks before the model loads, A1111's
output layout."""

from __future__ import annotations

from datetime import date

import pytest
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.generate.infotext import parse_infotext, read_png_infotext

runner = CliRunner()
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything starts loading a model: these problems must be found before."""
    import animegen.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


def _run(*args):
    return runner.invoke(app, ["generate", *args], terminal_width=400)


def _day_folder(out, kind="txt2img-images"):
    return out / kind / date.today().isoformat()


def test_near_miss_names_are_all_reported_before_loading(no_model_load, tiny_sd15_dir, tmp_path):
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--sampler", "Eulr a", "--schedule-type", "Karas",
             "--hires-sampler", "Foo", "--preset", "animagin", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert "--sampler Eulr a" in line and "did you mean 'Euler a'" in line
    assert "--schedule-type Karas" in line and "did you mean 'Karras'" in line
    assert "--hires-sampler Foo" in line and "valid samplers" in line
    assert "--preset animagin" in line and "did you mean 'animagine'" in line


def test_a1111_spellings_are_accepted(no_model_load, tmp_path):
    # the names pass the checks; the (deliberately) missing model is then the only problem
    for sampler in ("DPM++ 2M karras", "k_euler_a", "euler_a", "dpmpp_2m_sde", "DPM++ 2M SDE Exponential"):
        r = _run("x", "--model", str(tmp_path / "none.safetensors"), "--sampler", sampler, "--out", str(tmp_path))
        assert r.exit_code == 2 and "sampler" not in r.output and "none.safetensors" in r.output, (sampler, r.output)


def test_missing_files_and_folders_are_named(no_model_load, tiny_sd15_dir, tmp_path):
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "silver_hair.safetensors").write_bytes(b"")
    r = _run("1girl <lora:silver_hiar:0.8>", "--model", str(tmp_path / "nope"), "--vae", str(tmp_path / "v.safetensors"),
             "--lora", str(tmp_path / "style.safetensors:0.5"), "--lora-dir", str(lora_dir),
             "--embeddings-dir", str(tmp_path / "emb"), "--init-image", str(tmp_path / "init.png"),
             "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    for part in ("--model", "nope", "--vae", "v.safetensors", "--lora", "style.safetensors", "--embeddings-dir",
                 "--init-image", "init.png", "<lora:silver_hiar>", "did you mean 'silver_hair'"):
        assert part in line, (part, line)


def test_out_that_is_a_file_names_out(no_model_load, tiny_sd15_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1girl\n")
    for out in (prompts, prompts / "sub"):
        r = _run("x", "--model", str(tiny_sd15_dir), "--out", str(out))
        assert r.exit_code == 2 and "--out" in r.output and "prompts.txt" in r.output and "is a file" in r.output
        assert "File exists" not in r.output


def test_unwritable_out_fails_before_loading(no_model_load, tiny_sd15_dir, tmp_path, monkeypatch):
    import animegen.core.files as files

    def read_only(target):
        raise OSError(30, "Read-only file system", str(target))

    monkeypatch.setattr(files, "_create_temp_file", read_only)
    r = _run("x", "--model", str(tiny_sd15_dir), "--out", str(tmp_path / "ro"))
    assert r.exit_code == 2 and "--out" in r.output and "read-only" in r.output.lower()


def test_bad_dtype_and_layout_words(no_model_load, tiny_sd15_dir, tmp_path):
    r = _run("x", "--model", str(tiny_sd15_dir), "--dtype", "half", "--layout", "dated", "--out", str(tmp_path))
    assert r.exit_code == 2
    assert "--dtype half" in r.output and "fp32, fp16, bf16" in r.output
    assert "--layout dated" in r.output and "a1111, flat" in r.output


def test_batch_count_times_batch_size_in_a1111_layout(tiny_sd15_dir, tmp_path, one_torch_thread):
    out = tmp_path / "outputs"
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--seed", "10", "--batch-count", "2", "--batch-size", "2",
             "--cfg-scale", "5", "--negative-prompt", "lowres", "--grid", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    images = sorted(p.name for p in _day_folder(out).iterdir())
    assert images == ["00000-10.png", "00001-11.png", "00002-12.png", "00003-13.png"]
    assert [p.name for p in _day_folder(out, "txt2img-grids").iterdir()] == ["grid-0000.png"]
    params = parse_infotext(read_png_infotext(_day_folder(out) / "00003-13.png"))
    assert params["CFG scale"] == "5" and params["Negative prompt"] == "lowres" and params["Seed"] == "13"

    # numbering continues; an img2img run goes to img2img-images
    r = _run("--from-png", str(_day_folder(out) / "00000-10.png"), "--model", str(tiny_sd15_dir),
             "--out", str(out), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (_day_folder(out) / "00004-10.png").is_file()
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--seed", "3", "--init-image",
             str(_day_folder(out) / "00000-10.png"), "--strength", "0.5", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    assert [p.name for p in _day_folder(out, "img2img-images").iterdir()] == ["00000-3.png"]


def test_old_names_still_work_and_flat_layout(tiny_sd15_dir, tmp_path, one_torch_thread):
    out = tmp_path / "flat"
    r = _run("1girl", "--model", str(tiny_sd15_dir), "--seed", "5", "--n", "3", "--batch-size", "2", "--cfg", "4",
             "--negative", "bad", "--layout", "flat", "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    assert "--cfg is now --cfg-scale" in r.output and "--n is now --batch-count" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["00000-5.png", "00001-6.png", "00002-7.png"]  # --n: the total
    params = parse_infotext(read_png_infotext(out / "00002-7.png"))
    assert params["CFG scale"] == "4" and params["Negative prompt"] == "bad"


def test_old_and_new_name_together_are_refused(no_model_load, tiny_sd15_dir, tmp_path):
    r = _run("x", "--model", str(tiny_sd15_dir), "--cfg", "4", "--cfg-scale", "5", "--n", "2", "--batch-count", "2",
             "--out", str(tmp_path))
    assert r.exit_code == 2 and "--cfg: is the old name of --cfg-scale" in r.output and "--n: " in r.output


def test_help_shows_canonical_names_only():
    r = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    for name in ("--cfg-scale", "--negative-prompt", "--batch-count", "--batch-size", "--layout"):
        assert name in r.output
    for old in ("--cfg ", "--negative ", "--n "):
        assert old not in r.output


def test_an_old_flat_folder_gets_a_note(no_model_load, tiny_sd15_dir, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "00007-1.png").write_bytes(b"")
    r = _run("x", "--model", str(tiny_sd15_dir), "--out", str(out), "--device", "cpu")
    assert "old flat layout" in r.output and "--layout flat" in r.output  # then the (refused) load
    r = _run("x", "--model", str(tiny_sd15_dir), "--out", str(out), "--device", "cpu", "--layout", "flat")
    assert "old flat layout" not in r.output
