"""`animegen eval run` speaks generate's vocabulary: --batch-count x --batch-size, --seed -1, checks first."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from animegen.cli.main import app

runner = CliRunner()


def test_eval_run_checks_before_loading(monkeypatch, tmp_path):
    import animegen.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["eval", "run", "--model", str(tmp_path / "m.safetensors"), "--prompts",
                            str(tmp_path / "p.txt"), "--out", str(tmp_path / "file"), "--sampler", "Eulr a",
                            "--dtype", "half"])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    for part in ("m.safetensors", "--prompts", "--out", "is a file", "did you mean 'Euler a'", "--dtype half"):
        assert part in line, (part, line)


def test_eval_run_batch_count_times_size_and_random_seed(tiny_sd15_dir, tmp_path, one_torch_thread):
    prompts = tmp_path / "p.txt"
    prompts.write_text("1girl, smile\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["eval", "run", "--model", str(tiny_sd15_dir), "--prompts", str(prompts), "--out", str(out),
                            "--batch-count", "1", "--batch-size", "2", "--seed", "-1", "--steps", "1", "--width", "64",
                            "--height", "64", "--device", "cpu", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    seeds = sorted(image["seed"] for image in data["images"])
    assert len(seeds) == 2 and seeds[0] >= 0 and seeds[1] == seeds[0] + 1
    assert f"using seed {seeds[0]}" in r.output
