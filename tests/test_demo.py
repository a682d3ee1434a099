"""`animegen demo`: the whole loop, offline, on a tiny model."""

import json

from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.generate.infotext import parse_infotext, read_png_infotext
from animegen.models.lora import lora_hash, read_lora


def test_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--steps", "6"])
    assert r.exit_code == 0, r.output
    # data: every synthetic image ingested and tagged
    rows = [json.loads(line) for line in (out / "dataset" / "manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(rows) == 16 and len(ok) >= 8  # near-identical discs may be set aside as near duplicates
    assert all(row["tags"] is not None for row in ok)
    # train: a kohya LoRA with training metadata
    lora = out / "train" / "export" / "zxq.safetensors"
    lf = read_lora(lora)
    assert lf.modules and lf.metadata.get("ss_network_dim") == "4"
    # generate + evaluate: the LoRA run really used the LoRA, metrics are labelled as test-mode
    png = sorted((out / "eval-lora" / "images").glob("*.png"))[0]
    params = parse_infotext(read_png_infotext(png))
    assert params["Lora hashes"] == f"zxq: {lora_hash(lora)}"
    for run in ("eval-base", "eval-lora"):
        metrics = json.loads((out / run / "metrics.json").read_text())["metrics"]
        assert metrics["fid"]["comparable"] is False and metrics["fid"]["value"] > 0
        assert (out / run / "report.html").stat().st_size > 10_000
    html = (out / "compare" / "compare.html").read_text()
    assert "eval-base" in html and "eval-lora" in html
