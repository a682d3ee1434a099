"""`animegen demo`: the whole loop, offline, on a tiny model, and a verdict the images support.

One demo run (10 pre-training steps of the base, 6 LoRA steps, ~25 s on one core) is shared by the fast
tests of this module: they check the stages and that the verdict's numbers are the images' red-on-white
scores, recomputed here from the PNGs by the definition the demo documents (per image, the smaller of the
shares of disc-red pixels, R - max(G, B) > 102, and of white ones, min(R, G, B) > 204; averaged). The
verdict itself at the default settings (300 pre-training steps, 120 LoRA steps) is the `slow` test.
"""

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.data.manifest import load_manifest
from animegen.demo import (
    BASE_STAMP,
    MIN_GAIN,
    OTHER_PROMPT,
    PROMPTS,
    TRIGGER,
    build_base,
    make_world_images,
    red_on_white_score,
    run_demo,
    verdict,
)
from animegen.generate.infotext import parse_infotext, read_png_infotext
from animegen.models.lora import lora_hash, read_lora
from animegen.prompts.tags import split_tags
from animegen.train.config import load_config
from animegen.train.data import read_dataset

STAGES = ["model", "data", "curate", "train", "evaluate", "report"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(out folder, CLI result, torch thread counts seen while the demo ran) of one short run."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the demo must choose its own count and give this one back
    try:
        r = CliRunner().invoke(app, ["demo", "--out", str(out), "--steps", "6", "--base-steps", "10"])
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
    # KID/FID stay, as secondary figures
    assert re.search(r"^secondary: KID×1000 [\d.]+ ± [\d.]+ → [\d.]+ ± [\d.]+, FID [\d.]+ → [\d.]+ \(random "
                     r"Inception weights", r.stdout, re.MULTILINE)


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


# --- the concept measure and the verdict -------------------------------------------------------------------

VERDICT = re.compile(r"^verdict: trigger images: red-on-white score (\d\.\d\d) → (\d\.\d\d) \(concept images "
                     r"(\d\.\d\d)\); other prompt: (\d\.\d\d) → (\d\.\d\d): (the LoRA .*)$", re.MULTILINE)


def _score(path) -> float:
    """The documented red-on-white score of one image, counted pixel by pixel."""
    pixels = list(Image.open(path).convert("RGB").getdata())
    red = sum(1 for r, g, b in pixels if r - max(g, b) > 102)
    white = sum(1 for r, g, b in pixels if min(r, g, b) > 204)
    return min(red, white) / len(pixels)


def test_the_verdict_states_the_images_red_on_white_scores(demo):
    out, r, _ = demo
    [found] = VERDICT.findall(r.stdout)
    printed = [float(x) for x in found[:5]]
    expected = [float(np.mean([_score(p) for p in sorted((out / "source" / "concept").glob("*.png"))]))]
    for run in ("eval-base", "eval-lora"):
        records = json.loads((out / run / "metrics.json").read_text())["images"]
        for i, prompt in enumerate(PROMPTS):
            files = [out / run / rec["file"] for rec in records if rec["prompt_index"] == i]
            assert len(files) == 8 and all(prompt == parse_infotext(read_png_infotext(f))["Prompt"] for f in files)
            expected.append(float(np.mean([_score(f) for f in files])))
    concept, base_t, base_o, lora_t, lora_o = expected
    assert printed == pytest.approx([base_t, lora_t, concept, base_o, lora_o], abs=0.006)
    assert concept > 0.25  # every concept image is red on white
    not_learned = f"the LoRA did not clearly learn the concept (the trigger's score must rise by more than {MIN_GAIN})"
    assert found[5] in (not_learned, "the LoRA learned the concept, and keeps it to the trigger",
                        "the LoRA learned the concept, and it shows without the trigger too")
    saved = json.loads((out / "concept_score.json").read_text())
    assert saved["verdict"] == r.stdout.split("verdict: ", 1)[1].splitlines()[0]


def test_only_red_on_white_raises_the_score(tmp_path):
    disc = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(disc).ellipse((8, 8, 40, 40), fill=(220, 20, 20))
    red_share = sum(1 for px in disc.getdata() if px == (220, 20, 20)) / 64 ** 2
    assert red_on_white_score([disc]) == pytest.approx(min(red_share, 1 - red_share))
    grey_ground = disc.copy()
    ImageDraw.Draw(grey_ground).rectangle((44, 0, 63, 63), fill=(128, 128, 128))
    assert red_on_white_score([grey_ground]) < red_on_white_score([disc])
    flat = [Image.new("RGB", (64, 64), c) for c in ((220, 20, 20), (255, 255, 255), (255, 200, 200), (200, 60, 60))]
    assert red_on_white_score(flat) == 0.0  # red alone, white alone, pink, dull red: not the concept
    assert red_on_white_score([np.asarray(disc), np.asarray(flat[0])]) == pytest.approx(red_on_white_score([disc]) / 2)
    world = make_world_images(tmp_path, seed=0)  # the base's world: colour fields, never red on white
    assert red_on_white_score([Image.open(p) for p in (world / "1_world").glob("*.png")]) < 0.005


def _scores(base_t, lora_t, base_o, lora_o):
    return {"concept_images": 0.35, "base": {PROMPTS[0]: base_t, OTHER_PROMPT: base_o},
            "lora": {PROMPTS[0]: lora_t, OTHER_PROMPT: lora_o}}


def test_the_verdict_needs_the_trigger_images_to_gain_more_than_the_margin():
    assert verdict(_scores(0.01, 0.21, 0.02, 0.04)) == (
        "trigger images: red-on-white score 0.01 → 0.21 (concept images 0.35); other prompt: 0.02 → 0.04: the LoRA "
        "learned the concept, and keeps it to the trigger")
    assert "shows without the trigger too" in verdict(_scores(0.01, 0.21, 0.02, 0.15))
    assert "did not clearly learn" in verdict(_scores(0.10, 0.10 + MIN_GAIN * 0.9, 0.0, 0.0))
    assert "did not clearly learn" in verdict(_scores(0.10, 0.05, 0.0, 0.3))  # the other prompt's gain is no proof


# --- the pre-trained base ---------------------------------------------------------------------------------

def _files(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_the_base_is_pre_trained_once_and_reused(demo, tmp_path):
    out, r, _ = demo
    assert re.search(r"^\[1/6\] model: built a tiny SD1.5-architecture base .* pre-trained 10 steps", r.stdout,
                     re.MULTILINE)
    stamp = json.loads((out / "model" / BASE_STAMP).read_text())
    assert (stamp["seed"], stamp["base_steps"]) == (0, 10)
    # the pre-training changed the UNet it started from
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (out / "model" / unet).read_bytes() != (out / "base" / "random" / unet).read_bytes()
    before = _files(out / "model")
    model, said = build_base(out, seed=0, base_steps=10)  # a rerun with the same seed and steps
    assert model == out / "model" and said.startswith("reused") and _files(out / "model") == before
    # another recipe is built again, not reused
    shutil.copytree(out / "model", tmp_path / "model")
    _, said = build_base(tmp_path, seed=0, base_steps=1)
    assert said.startswith("built") and json.loads((tmp_path / "model" / BASE_STAMP).read_text())["base_steps"] == 1
    assert (tmp_path / "model" / unet).read_bytes() != (out / "model" / unet).read_bytes()


@pytest.mark.slow
def test_at_the_default_settings_the_lora_learns_the_concept(tmp_path):
    """The demo's promise, at its defaults: the trigger's images move to red on white by more than the margin."""
    lines = []
    result = run_demo(tmp_path / "demo", log=lines.append)
    [found] = VERDICT.findall("\n".join(lines))
    base_t, lora_t = float(found[0]), float(found[1])
    print(result.verdict, {k: round(v, 1) for k, v in result.timings.items()})
    assert lora_t - base_t > MIN_GAIN and found[5].startswith("the LoRA learned the concept"), result.verdict
