"""`animegen demo`: the whole loop, offline, on a tiny model.

One demo run (6 training steps, ~15 s on one core) is shared by the tests of this module.
"""

import json
import re
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.data.manifest import load_manifest
from animegen.demo import TRIGGER, run_demo
from animegen.generate.infotext import parse_infotext, read_png_infotext
from animegen.models.lora import lora_hash, read_lora
from animegen.prompts.tags import split_tags
from animegen.train.config import load_config
from animegen.train.data import read_dataset

STAGES = ["model", "data", "curate", "train", "evaluate", "report"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(out folder, CLI result, torch thread counts seen while the demo ran) of one `--steps 6` run."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the demo must choose its own count and give this one back
    try:
        r = CliRunner().invoke(app, ["demo", "--out", str(out), "--steps", "6"])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return out, r, after


def test_demo_runs_the_whole_loop(demo):
    out, _, _ = demo
    # data: every file of the two source folders ingested; the re-downloaded copy set aside; ok rows tagged
    rows = load_manifest(out / "dataset")
    ok = [row for row in rows if row.ok]
    assert len(rows) == 17 and 8 <= len(ok) <= 16  # near-identical discs may be set aside as near duplicates
    assert all(row.tags is not None and row.caption for row in ok)
    # train: a kohya LoRA with training metadata
    lora = out / "train" / "export" / "zxq.safetensors"
    lf = read_lora(lora)
    assert lf.modules and lf.metadata.get("ss_network_dim") == "4"
    # generate + evaluate: the LoRA run really used the LoRA, metrics are labelled as test-mode
    png = min((out / "eval-lora" / "images").glob("*.png"))
    params = parse_infotext(read_png_infotext(png))
    assert params["Lora hashes"] == f"zxq: {lora_hash(lora)}"
    for run in ("eval-base", "eval-lora"):
        metrics = json.loads((out / run / "metrics.json").read_text())["metrics"]
        assert metrics["fid"]["comparable"] is False and metrics["fid"]["value"] > 0
        assert (out / run / "report.html").stat().st_size > 10_000
    html = (out / "compare" / "compare.html").read_text()
    assert "eval-base" in html and "eval-lora" in html


def test_demo_trains_from_its_curated_manifest(demo):
    out, _, _ = demo
    config = load_config(out / "train.toml")  # the config the demo trained with, runnable by `animegen train`
    [entry] = config.data.datasets
    assert entry.path == str((out / "dataset" / "manifest.jsonl").resolve())
    rows = load_manifest(out / "dataset")
    duplicates = [row for row in rows if row.status == "duplicate"]
    assert len(duplicates) == 1 and "downloads" in duplicates[0].path  # the copy in the second source folder
    trained = {item.source for item in read_dataset(entry)}
    assert trained == {row.path for row in rows if row.ok}
    assert duplicates[0].path not in trained
    # what the trainer counted: the curated captions of the ok rows, each image once (kohya's ss_tag_frequency)
    lf = read_lora(out / "train" / "export" / "zxq.safetensors")
    counted = json.loads(lf.metadata["ss_tag_frequency"])["dataset_0"]
    assert counted == dict(Counter(t for row in rows if row.ok for t in split_tags(row.caption)))


def test_demo_trains_the_trigger_word_on_every_image(demo):
    """The sidecar's trigger word survives tagging and captioning, so the LoRA ties the concept to it."""
    out, _, _ = demo
    ok = [row for row in load_manifest(out / "dataset") if row.ok]
    lf = read_lora(out / "train" / "export" / "zxq.safetensors")
    assert json.loads(lf.metadata["ss_tag_frequency"])["dataset_0"].get(TRIGGER) == len(ok)


def test_demo_prints_one_progress_line_per_stage(demo):
    _, r, _ = demo
    lines = [m.groups() for m in re.finditer(r"^\[(\d)/(\d)\] (\w+): .* done in (\d+\.\d) s$", r.stdout, re.MULTILINE)]
    assert [(int(i), int(n), name) for i, n, name, _ in lines] == [
        (i, len(STAGES), name) for i, name in enumerate(STAGES, 1)]
    # the verdict the report supports, whichever way it goes
    assert re.search(r"^verdict: the LoRA (moved|did not clearly move) the generated images toward the concept "
                     r"\(KID×1000 [\d.]+ ± [\d.]+ → [\d.]+ ± [\d.]+", r.stdout, re.MULTILINE)


def test_demo_runs_torch_on_one_thread_and_gives_the_count_back(tmp_path, demo):
    _, _, after = demo
    assert after == 2
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ZeroDivisionError):  # stop at the first line: only the thread count is under test
            run_demo(tmp_path / "d", steps=1, log=lambda msg: (seen.append(torch.get_num_threads()), 1 / 0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
