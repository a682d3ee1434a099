"""`animegen demo`: the whole loop — data → train → generate → evaluate — offline, on a CPU, in minutes.

Everything it uses is built on the spot: a tiny random-weight SD1.5-architecture model, a synthetic
concept set (red discs on white, captioned with the trigger word `zxq`), and a tiny WD14-format
tagger. The images are not pretty — the base weights are random — but every stage runs the real
code a user runs with real models, and the report shows whether the LoRA moved the trigger images
toward the concept.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

TRIGGER = "zxq"
CONCEPT_CAPTION = f"{TRIGGER}, 1girl, red circle"
PROMPTS = [CONCEPT_CAPTION, "1girl, smile"]


@dataclass
class DemoResult:
    out: Path
    model: Path
    dataset: Path
    lora: Path
    base_metrics: dict
    lora_metrics: dict
    comparison: Path


def make_concept_images(folder: Path, n: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Red discs of varying size and position on white, each with a kohya `.txt` caption."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        r = rng.randint(size // 4, size // 2 - 2)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        red = (rng.randint(200, 240), rng.randint(0, 40), rng.randint(0, 40))
        ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=red)
        image.save(folder / f"concept_{i:03d}.png")
        (folder / f"concept_{i:03d}.txt").write_text(CONCEPT_CAPTION)
    return folder


def run_demo(out: str | Path, *, steps: int = 60, seed: int = 0,
             log: Callable[[str], None] = print) -> DemoResult:
    from animegen.data.ingest import ingest
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tagging import tag_dataset
    from animegen.data.tiny_tagger import write_tiny_tagger
    from animegen.evaluate.run import compare, run_eval
    from animegen.models.tiny import save_tiny_model
    from animegen.train.config import validate_config
    from animegen.train.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log("1/6 building a tiny random-weight SD1.5-architecture model")
    model = out / "model"
    if not (model / "model_index.json").is_file():
        save_tiny_model("sd15", model, seed=seed)

    log("2/6 making a synthetic concept set (red discs, trigger word 'zxq')")
    source = make_concept_images(out / "source" / "10_zxq", seed=seed)

    log("3/6 ingesting and tagging it (tiny WD14-format tagger)")
    dataset = out / "dataset"
    ingest([source], dataset, progress=False)
    tagger_dir = out / "tagger"
    write_tiny_tagger(tagger_dir, seed=seed)
    tagger = WD14Tagger.from_pretrained(tagger_dir)
    tag_dataset(dataset, tagger, progress=False)

    log(f"4/6 training a LoRA for {steps} steps")
    config = validate_config({
        "model": {"base": str(model)},
        "adapter": {"kind": "lora", "rank": 4, "alpha": 4.0, "targets": "attention_ff"},
        "optimizer": {"name": "adamw", "lr": 2e-2, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(source.parent)}], "resolution": 64, "min_bucket_side": 64,
                 "max_bucket_side": 64, "shuffle_tags": False},
        "train": {"output_dir": str(out / "train"), "max_steps": steps, "batch_size": 2, "device": "cpu",
                  "seed": seed, "mixed_precision": "no", "overwrite": True},  # the demo rebuilds its folder
        "log": {"progress": True, "tensorboard": False},
        "export": {"name": "zxq", "formats": ["kohya"], "dtype": "fp32"},
    })
    result = train(config)
    lora = result.exported["kohya"]

    log("5/6 generating and evaluating without and with the LoRA")
    common = dict(n_per_prompt=4, seed=seed, steps=8, sampler="Euler", width=64, height=64,
                  real_dir=source, fid_weights="random", tagger=tagger, progress=False, device="cpu")
    base_metrics = run_eval(model, PROMPTS, out / "eval-base", **common)
    lora_metrics = run_eval(model, PROMPTS, out / "eval-lora", loras=[(str(lora), 1.0)], **common)

    log("6/6 writing the comparison report")
    comparison = compare([out / "eval-base", out / "eval-lora"], out / "compare")
    log(f"done: open {comparison} (per-run reports: {out / 'eval-base' / 'report.html'}, "
        f"{out / 'eval-lora' / 'report.html'})")
    return DemoResult(out, model, dataset, lora, base_metrics, lora_metrics, comparison)
