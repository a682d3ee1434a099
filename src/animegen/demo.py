"""`animegen demo`: the whole loop — data → curate → train → generate → evaluate — offline, on a CPU.

Everything it uses is built on the spot: a tiny random-weight SD1.5-architecture model, a synthetic
concept set (red discs on white, captioned with the trigger word `zxq`) plus a second "downloads" folder
holding a re-downloaded copy of one image, and a tiny WD14-format tagger. The images are not pretty — the
base weights are random — but every stage runs the code a user runs with real models, in the same order:
`animegen data ingest / tag / caption / balance` write `DATASET/manifest.jsonl`, training reads that
manifest through the `train.toml` the demo writes (so rows curation set aside, such as the copy, are not
trained on; `animegen train OUT/train.toml` reruns it), then both models generate the same seeds and the
last line says what the report's KID/FID say: whether the LoRA moved the images toward the concept. With
random weights and 8 images per run that is a check that the loop works, not a quality measure; the
line says "did not clearly move" unless KID fell by more than its spread.

Each stage prints one line, `[i/6] stage: what it did … done in 2.1 s`. The demo runs torch on one
thread (`threads`): its tensors are so small that more threads only wait for each other; on a busy 2-core
machine two threads took 526 s (193 s of CPU) where one takes 23 s (18 s of CPU). Where a real run would
use more, the demo uses less: 64 px images, 60 LoRA steps, 8 sampling steps, 4 images per prompt (one
batch), random Inception weights.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

TRIGGER = "zxq"
CONCEPT_CAPTION = f"{TRIGGER}, 1girl, red circle"
PROMPTS = [CONCEPT_CAPTION, "1girl, smile"]
CAPTION_PRESET = "danbooru"  # plain tag captions, the way SD1.5 anime models are prompted
STAGES = ("model", "data", "curate", "train", "evaluate", "report")


@dataclass
class DemoResult:
    out: Path
    model: Path
    dataset: Path
    train_config: Path
    lora: Path
    base_metrics: dict
    lora_metrics: dict
    comparison: Path
    verdict: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


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


def make_sources(root: Path, seed: int = 0) -> list[Path]:
    """The user's two folders: the concept images, and downloads holding a second copy of one of them."""
    concept = make_concept_images(root / "concept", seed=seed)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(concept / "concept_003.png", downloads / "concept_003 (1).png")
    return [concept, downloads]


def verdict(base: dict, lora: dict) -> str:
    """One line: did the LoRA bring the generated images closer to the concept images (KID, FID)?

    "moved" only when KID fell by more than the larger of the two runs' subset standard deviations."""
    kb, kl = base["kid"], lora["kid"]
    moved = kb["mean"] - kl["mean"] > max(kb["std"], kl["std"])
    return (f"the LoRA {'moved' if moved else 'did not clearly move'} the generated images toward the "
            f"concept (KID×1000 {kb['mean'] * 1000:.1f} ± {kb['std'] * 1000:.1f} → {kl['mean'] * 1000:.1f} ± "
            f"{kl['std'] * 1000:.1f}, FID {base['fid']['value']:.1f} → {lora['fid']['value']:.1f}; random "
            "Inception weights, so compare these two runs only)")


class _Progress:
    """`[i/n] name: summary … done in 2.1 s`, one line per stage when it ends; keeps the timings."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.timings, self._start = log, {}, time.perf_counter()

    def done(self, name: str, summary: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._start
        self.log(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {summary} … done in "
                 f"{self.timings[name]:.1f} s")
        self._start = now


def _curate(sources: list[Path], dataset: Path, tagger, seed: int) -> str:
    """ingest → tag → caption → balance, as `animegen data ...` does; returns the stage summary."""
    from animegen.data.balance import balance_dataset
    from animegen.data.caption import caption_dataset
    from animegen.data.ingest import ingest
    from animegen.data.manifest import load_manifest
    from animegen.data.tagging import tag_dataset

    ingest(sources, dataset, progress=False)
    tag_dataset(dataset, tagger, progress=False)
    caption_dataset(dataset, preset=CAPTION_PRESET, progress=False)
    report = balance_dataset(dataset, seed=seed)
    rows = load_manifest(dataset)
    status = Counter(row.status for row in rows)
    aside = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(status.items()) if s != "ok")
    buckets = sum(1 for b in report.buckets if b.images)
    return (f"{len(rows)} files ingested → {status['ok']} ok ({aside or 'none'} set aside), tagged, captioned "
            f"({CAPTION_PRESET} preset), balanced into {buckets} bucket{'s' * (buckets != 1)}")


def _write_train_config(out: Path, model: Path, dataset: Path, steps: int, seed: int) -> Path:
    """The training config as a TOML file a user can rerun; its dataset is the curated manifest."""
    import tomli_w

    from animegen.core.files import atomic_write
    from animegen.data.manifest import MANIFEST_NAME

    config = {
        "model": {"base": str(model)},
        "adapter": {"kind": "lora", "rank": 4, "alpha": 4.0, "targets": "attention_ff"},
        "optimizer": {"name": "adamw", "lr": 2e-2, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(dataset / MANIFEST_NAME), "kind": "manifest"}], "resolution": 64,
                 "min_bucket_side": 64, "max_bucket_side": 64, "shuffle_tags": False},
        "train": {"output_dir": str(out / "train"), "max_steps": steps, "batch_size": 2, "device": "cpu",
                  "seed": seed, "mixed_precision": "no", "overwrite": True},  # the demo rebuilds its folder
        "log": {"progress": True, "tensorboard": False},
        "export": {"name": TRIGGER, "formats": ["kohya"], "dtype": "fp32"},
    }
    path = out / "train.toml"
    atomic_write(path, "# written by `animegen demo`; rerun with `animegen train " f"{path}`\n"
                 + tomli_w.dumps(config))
    return path


def run_demo(out: str | Path, *, steps: int = 60, seed: int = 0, threads: int = 1,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run every stage into `out`; torch uses `threads` intra-op threads meanwhile (the count is restored)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(Path(out).resolve(), steps, seed, log)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, steps: int, seed: int, log: Callable[[str], None]) -> DemoResult:
    from animegen.core.files import is_image_file
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tiny_tagger import write_tiny_tagger
    from animegen.evaluate.inception import build_fid_inception
    from animegen.evaluate.run import compare, run_eval
    from animegen.generate import Generator
    from animegen.models.tiny import save_tiny_model
    from animegen.train.config import load_config
    from animegen.train.trainer import train

    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(log)
    model = out / "model"
    reused = (model / "model_index.json").is_file()
    if not reused:
        save_tiny_model("sd15", model, seed=seed)
    progress.done("model", f"{'reused the' if reused else 'built a'} tiny random-weight SD1.5-architecture "
                           f"model in {model}")

    sources = make_sources(out / "source", seed=seed)
    n = sum(1 for p in sources[0].iterdir() if is_image_file(p))
    progress.done("data", f"{n} red discs captioned '{CONCEPT_CAPTION}' in {sources[0]}, one of them again "
                          f"in {sources[1]}")

    dataset = out / "dataset"
    tagger_dir = out / "tagger"
    write_tiny_tagger(tagger_dir, seed=seed)
    tagger = WD14Tagger.from_pretrained(tagger_dir)
    progress.done("curate", _curate(sources, dataset, tagger, seed))

    train_config = _write_train_config(out, model, dataset, steps, seed)
    lora = train(load_config(train_config)).exported["kohya"]
    progress.done("train", f"a rank-4 LoRA, {steps} steps on the curated manifest ({train_config}) → {lora}")

    generator = Generator(model, device="cpu")  # one pipeline and one FID network serve both runs
    common = {"n_per_prompt": 4, "batch_size": 4, "seed": seed, "steps": 8, "sampler": "Euler", "width": 64,
              "height": 64, "real_dir": sources[0], "tagger": tagger, "progress": False,
              "inception": build_fid_inception("random", seed=seed, device="cpu")}
    base_metrics = run_eval(generator, PROMPTS, out / "eval-base", **common)["metrics"]
    lora_metrics = run_eval(generator, PROMPTS, out / "eval-lora", loras=[(str(lora), 1.0)], **common)["metrics"]
    progress.done("evaluate", f"{len(PROMPTS)} prompts × 4 seeds without and with the LoRA, FID/KID (random "
                              "Inception weights) and tag adherence")

    comparison = compare([out / "eval-base", out / "eval-lora"], out / "compare")
    progress.done("report", f"{comparison} (per run: {out / 'eval-base' / 'report.html'}, "
                            f"{out / 'eval-lora' / 'report.html'})")
    said = verdict(base_metrics, lora_metrics)
    log(f"verdict: {said}")
    return DemoResult(out, model, dataset, train_config, lora, base_metrics, lora_metrics, comparison, said,
                      progress.timings)
