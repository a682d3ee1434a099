"""`animegen serve` takes generate's --model (hub ids too), --device and --dtype words, checked before loading."""

from __future__ import annotations

from typer.testing import CliRunner

from animegen.cli.main import app

runner = CliRunner()


def _capture(monkeypatch):
    import uvicorn

    import animegen.serve.app as serve_app

    seen = {}
    monkeypatch.setattr(serve_app, "create_app", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    return seen


def test_serve_takes_a_hub_id_and_the_same_words(monkeypatch):
    seen = _capture(monkeypatch)
    r = runner.invoke(app, ["serve", "--model", "cagliostrolab/animagine-xl-3.1", "--device", "auto",
                            "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert (seen["cfg"].model, seen["cfg"].device, seen["cfg"].dtype) == ("cagliostrolab/animagine-xl-3.1", None,
                                                                          "float32")


def test_serve_reports_every_problem_before_loading(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    r = runner.invoke(app, ["serve", "--model", str(tmp_path / "m.safetensors"), "--dtype", "half",
                            "--lora-dir", str(tmp_path / "loras"), "--vae", str(tmp_path / "v.safetensors")])
    assert r.exit_code == 2 and "cfg" not in seen
    line = r.output.strip().splitlines()[-1]
    for part in ("m.safetensors", "--dtype half", "--lora-dir", "--vae"):
        assert part in line, (part, line)


def test_help_names_hub_ids_and_the_shared_words():
    r = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "400"})
    assert "hub id" in r.output and "cuda:N" in r.output and "bfloat16" in r.output


def test_the_model_folders_reach_the_config_and_missing_ones_are_named(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    folders = {flag: tmp_path / flag.strip("-") for flag in ("--controlnet-dir", "--adetailer-dir", "--outputs-dir")}
    args = ["serve", "--model", "cagliostrolab/animagine-xl-3.1"]
    r = runner.invoke(app, [*args, *(x for flag, path in folders.items() for x in (flag, str(path)))])
    assert r.exit_code == 2 and "cfg" not in seen
    line = r.output.strip().splitlines()[-1]
    assert "--controlnet-dir" in line and "--adetailer-dir" in line and "--outputs-dir" not in line, line
    for path in folders.values():
        path.mkdir()
    r = runner.invoke(app, [*args, *(x for flag, path in folders.items() for x in (flag, str(path)))])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.controlnet_dir, cfg.adetailer_dir, cfg.outputs_dir) == tuple(folders.values())
