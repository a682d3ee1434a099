"""`animegen demo`: the whole loop — data → curate → train → generate → evaluate — offline, on a CPU.

Everything it uses is built on the spot: a tiny SD1.5-architecture model, a synthetic concept set (red
discs on white, captioned with the trigger word `zxq`) plus a second "downloads" folder holding a
re-downloaded copy of one image, and a tiny WD14-format tagger. Every stage runs the code a user runs
with real models, in the same order: `animegen data ingest / tag / caption / balance` write
`DATASET/manifest.jsonl`, training reads that manifest through the `train.toml` the demo writes (so rows
curation set aside, such as the copy, are not trained on; `animegen train OUT/train.toml` reruns it),
then the base and the base + LoRA generate the same seeds and the last line says whether the LoRA
learned the concept.

The base. A LoRA on the random-weight UNet mostly learns generic denoising, and its images change for
every reason but the concept (KID at seed 0 went 53.5 → 48.8 after 60 steps, 59.3 after 200). So the
tiny model is first pre-trained like `tests/train`'s `tiny_world_base`: a full fine-tune of `base_steps`
steps on a "world" of smooth colour fields captioned "1girl", seeded and run on the demo's one thread,
kept in `OUT/model` with a stamp of its recipe so reruns skip it. Its images are colour fields, never red
on white.

The verdict is a measure the concept defines, not KID/FID (random Inception weights and 16 images say
little; they stay in the report as secondary figures). `red_on_white_score`: per image, the smaller of
its share of disc-red pixels and its share of white ones (the concept images score ~0.35; a flat red or
flat white image 0; the base's colour fields ≤ 0.02), averaged over the prompt's 8 seeds. "learned"
needs the trigger prompt's score to rise by more than `MIN_GAIN`; the other prompt's rise is reported
next to it and says whether the concept stays with the trigger. Measured with the demo's defaults (same
recipe, seeds 0–5, 8 images per prompt): the trigger's gain +0.070..+0.184 (base 0.000..0.014); the
other prompt's +0.076..+0.123, 60–110 % of the trigger's. `MIN_GAIN = 0.03` sits under half the
smallest gain and above the base's largest score. The concept does show without the trigger: the tiny
base was pre-trained on a single caption and barely reads its prompt, and the captions share "1girl,
smile" with the other prompt, so the line says so (a real base, or a reg set, keeps it to the trigger;
kohya's `reg_data_dir`).

Each stage prints one line, `[i/6] stage: what it did … done in 2.1 s`. The demo runs torch on one
thread (`threads`): its tensors are so small that more threads only wait for each other; on a busy 2-core
machine two threads took 526 s (193 s of CPU) where one takes 23 s (18 s of CPU). Where a real run would
use more, the demo uses less: 64 px images, 120 LoRA steps, 8 sampling steps, 8 images per prompt (one
batch), random Inception weights.
"""

from __future__ import annotations

import json
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
OTHER_PROMPT = "1girl, smile"  # no trigger: shows whether the concept stays with it
PROMPTS = [CONCEPT_CAPTION, OTHER_PROMPT]
CAPTION_PRESET = "danbooru"  # plain tag captions, the way SD1.5 anime models are prompted
STAGES = ("model", "data", "curate", "train", "evaluate", "report")
N_PER_PROMPT = 8  # images per prompt and run: the score's average
LORA_STEPS, LORA_LR = 120, 1e-2
BASE_STEPS = 300
# The base's pre-training (see the module docstring); the stamp in OUT/model records it with the seed and steps.
WORLD = {"images": 32, "caption": "1girl", "lr": 5e-3, "batch_size": 8}
BASE_STAMP = "animegen_demo_base.json"
# The concept score: a pixel (0-255) is disc red when R - max(G, B) > RED_MIN, white when min(R, G, B) > WHITE_MIN.
RED_MIN, WHITE_MIN = 102, 204  # 0.4 and 0.8 of full scale
MIN_GAIN = 0.03  # the trigger prompt's score must rise by more; measured gains +0.070..+0.184
BLEED = 0.5  # the other prompt rising by this share of the trigger's gain or more: the concept shows without it


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
    scores: dict = field(default_factory=dict)  # the concept score per run and prompt (concept_score.json)
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


def make_world_images(root: Path, n: int = 32, size: int = 64, seed: int = 0, caption: str = "1girl") -> Path:
    """The base's world: a kohya folder `root/1_world` of smooth colour fields (2x2 random colours,
    bilinear), each captioned `caption`. Channels stay in 25..230, so no field is red on white."""
    import numpy as np

    folder = root / "1_world"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        corners = Image.fromarray(rng.integers(25, 230, size=(2, 2, 3), dtype=np.uint8))
        corners.resize((size * 2, size * 2), Image.BILINEAR).crop((size // 2,) * 2 + (size * 3 // 2,) * 2).save(
            folder / f"w{i}.png")
        (folder / f"w{i}.txt").write_text(caption)
    return root


def make_sources(root: Path, seed: int = 0) -> list[Path]:
    """The user's two folders: the concept images, and downloads holding a second copy of one of them."""
    concept = make_concept_images(root / "concept", seed=seed)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(concept / "concept_003.png", downloads / "concept_003 (1).png")
    return [concept, downloads]


def red_on_white_score(images) -> float:
    """The concept's measure over RGB images (uint8 arrays or PIL images): per image, the smaller of its
    disc-red and its white pixel shares, averaged. Only red on white raises it, as in every concept image."""
    import numpy as np

    scores = []
    for image in images:
        px = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.int16)
        red = (px[..., 0] - np.maximum(px[..., 1], px[..., 2]) > RED_MIN).mean()
        white = (px.min(axis=-1) > WHITE_MIN).mean()
        scores.append(min(red, white))
    return float(np.mean(scores))


def _run_scores(run_dir: Path, data: dict) -> dict[str, float]:
    """The concept score of each prompt's images in a `run_eval` folder, read back from its PNGs."""
    return {prompt: red_on_white_score([Image.open(run_dir / rec["file"]) for rec in data["images"]
                                        if rec["prompt_index"] == i]) for i, prompt in enumerate(PROMPTS)}


def verdict(scores: dict) -> str:
    """One line: did the LoRA teach the concept to the trigger prompt's images, and does it show without?

    `scores`: {"concept_images": x, "base": {prompt: x}, "lora": {prompt: x}} (red_on_white_score)."""
    base, lora = scores["base"], scores["lora"]
    gain = {p: lora[p] - base[p] for p in PROMPTS}
    if gain[CONCEPT_CAPTION] <= MIN_GAIN:
        said = f"the LoRA did not clearly learn the concept (the trigger's score must rise by more than {MIN_GAIN})"
    elif gain[OTHER_PROMPT] < BLEED * gain[CONCEPT_CAPTION]:
        said = "the LoRA learned the concept, and keeps it to the trigger"
    else:
        said = "the LoRA learned the concept, and it shows without the trigger too"
    return (f"trigger images: red-on-white score {base[CONCEPT_CAPTION]:.2f} → {lora[CONCEPT_CAPTION]:.2f} "
            f"(concept images {scores['concept_images']:.2f}); other prompt: {base[OTHER_PROMPT]:.2f} → "
            f"{lora[OTHER_PROMPT]:.2f}: {said}")


def kid_fid_line(base: dict, lora: dict) -> str:
    """The report's KID/FID of both runs, secondary: random Inception weights and 16 images per run."""
    kb, kl = base["kid"], lora["kid"]
    return (f"KID×1000 {kb['mean'] * 1000:.1f} ± {kb['std'] * 1000:.1f} → {kl['mean'] * 1000:.1f} ± "
            f"{kl['std'] * 1000:.1f}, FID {base['fid']['value']:.1f} → {lora['fid']['value']:.1f} (random "
            "Inception weights: compare these two runs only)")


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


def _write_toml(path: Path, config: dict) -> Path:
    """A training config as a TOML file a user can rerun with `animegen train`."""
    import tomli_w

    from animegen.core.files import atomic_write

    atomic_write(path, f"# written by `animegen demo`; rerun with `animegen train {path}`\n" + tomli_w.dumps(config))
    return path


def _train_config(model: Path, datasets: list[dict], output_dir: Path, steps: int, batch_size: int, seed: int,
                  adapter: dict, lr: float, export: dict) -> dict:
    """The demo's two trainings, alike but for what they train: 64 px, CPU, fp32, constant AdamW."""
    return {
        "model": {"base": str(model)},
        "adapter": adapter,
        "optimizer": {"name": "adamw", "lr": lr, "scheduler": "constant"},
        "data": {"datasets": datasets, "resolution": 64, "min_bucket_side": 64, "max_bucket_side": 64,
                 "shuffle_tags": False},
        "train": {"output_dir": str(output_dir), "max_steps": steps, "batch_size": batch_size, "device": "cpu",
                  "seed": seed, "mixed_precision": "no", "overwrite": True},  # the demo rebuilds its folders
        "log": {"progress": True, "tensorboard": False},
        "export": {**export, "dtype": "fp32"},
    }


def build_base(out: Path, *, seed: int = 0, base_steps: int = BASE_STEPS) -> tuple[Path, str]:
    """The tiny base in `out/model`: built with `seed`, then fully fine-tuned `base_steps` steps on its world
    (0: left random). Reused when its stamp matches; returns (folder, the stage summary)."""
    from animegen.core.files import atomic_dir, atomic_write
    from animegen.models.tiny import save_tiny_model
    from animegen.train.config import load_config
    from animegen.train.trainer import train

    model = out / "model"
    stamp = {"seed": seed, "base_steps": base_steps, "world": WORLD}
    try:
        reuse = json.loads((model / BASE_STAMP).read_text()) == stamp
    except (OSError, ValueError):
        reuse = False
    what = (f"pre-trained {base_steps} steps (full fine-tune) on {WORLD['images']} smooth colour fields "
            f"captioned '{WORLD['caption']}'" if base_steps else "left random (base_steps = 0)")
    if reuse:
        return model, f"reused the tiny SD1.5-architecture base in {model} (seed {seed}, {what})"
    work = out / "base"
    shutil.rmtree(work, ignore_errors=True)  # the demo's own folder, rebuilt whole
    source = work / "random"
    save_tiny_model("sd15", source, seed=seed)
    if base_steps:
        world = make_world_images(work / "world", n=WORLD["images"], seed=seed, caption=WORLD["caption"])
        config = _train_config(source, [{"path": str(world)}], work / "train", base_steps, WORLD["batch_size"],
                               seed, {"kind": "full"}, WORLD["lr"], {"name": "base", "formats": ["diffusers"]})
        source = train(load_config(_write_toml(work / "train.toml", config))).exported["diffusers"]
    with atomic_dir(model) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        atomic_write(tmp / BASE_STAMP, json.dumps(stamp, indent=2))
    return model, f"built a tiny SD1.5-architecture base in {model} (seed {seed}, {what})"


def run_demo(out: str | Path, *, steps: int = LORA_STEPS, base_steps: int = BASE_STEPS, seed: int = 0,
             threads: int = 1, log: Callable[[str], None] = print) -> DemoResult:
    """Run every stage into `out`; torch uses `threads` intra-op threads meanwhile (the count is restored)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(Path(out).resolve(), steps, base_steps, seed, log)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, steps: int, base_steps: int, seed: int, log: Callable[[str], None]) -> DemoResult:
    from animegen.core.files import atomic_write, is_image_file
    from animegen.data.manifest import MANIFEST_NAME
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tiny_tagger import write_tiny_tagger
    from animegen.evaluate.inception import build_fid_inception
    from animegen.evaluate.run import compare, run_eval
    from animegen.generate import Generator
    from animegen.train.config import load_config
    from animegen.train.trainer import train

    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(log)
    model, summary = build_base(out, seed=seed, base_steps=base_steps)
    progress.done("model", summary)

    sources = make_sources(out / "source", seed=seed)
    concept = [p for p in sorted(sources[0].iterdir()) if is_image_file(p)]
    progress.done("data", f"{len(concept)} red discs captioned '{CONCEPT_CAPTION}' in {sources[0]}, one of them "
                          f"again in {sources[1]}")

    dataset = out / "dataset"
    tagger_dir = out / "tagger"
    write_tiny_tagger(tagger_dir, seed=seed)
    tagger = WD14Tagger.from_pretrained(tagger_dir)
    progress.done("curate", _curate(sources, dataset, tagger, seed))

    config = _train_config(model, [{"path": str(dataset / MANIFEST_NAME), "kind": "manifest"}], out / "train",
                           steps, 2, seed, {"kind": "lora", "rank": 4, "alpha": 4.0, "targets": "attention_ff"},
                           LORA_LR, {"name": TRIGGER, "formats": ["kohya"]})
    train_config = _write_toml(out / "train.toml", config)  # its dataset is the curated manifest
    lora = train(load_config(train_config)).exported["kohya"]
    progress.done("train", f"a rank-4 LoRA, {steps} steps on the curated manifest ({train_config}) → {lora}")

    generator = Generator(model, device="cpu")  # one pipeline and one FID network serve both runs
    common = {"n_per_prompt": N_PER_PROMPT, "batch_size": N_PER_PROMPT, "seed": seed, "steps": 8,
              "sampler": "Euler", "width": 64, "height": 64, "real_dir": sources[0], "tagger": tagger,
              "progress": False, "inception": build_fid_inception("random", seed=seed, device="cpu")}
    runs = {"base": (out / "eval-base", []), "lora": (out / "eval-lora", [(str(lora), 1.0)])}
    data = {name: run_eval(generator, PROMPTS, folder, loras=loras, **common) for name, (folder, loras) in runs.items()}
    scores = {"measure": "red_on_white_score", "min_gain": MIN_GAIN,
              "concept_images": red_on_white_score([Image.open(p) for p in concept]),
              **{name: _run_scores(runs[name][0], data[name]) for name in runs}}
    progress.done("evaluate", f"{len(PROMPTS)} prompts × {N_PER_PROMPT} seeds without and with the LoRA: "
                              "red-on-white score, FID/KID (random Inception weights) and tag adherence")

    comparison = compare([runs["base"][0], runs["lora"][0]], out / "compare")
    said = verdict(scores)
    atomic_write(out / "concept_score.json", json.dumps({**scores, "verdict": said}, indent=2, ensure_ascii=False))
    progress.done("report", f"{comparison} (per run: {runs['base'][0] / 'report.html'}, "
                            f"{runs['lora'][0] / 'report.html'}; scores: {out / 'concept_score.json'})")
    base_metrics, lora_metrics = data["base"]["metrics"], data["lora"]["metrics"]
    log(f"verdict: {said}")
    log(f"secondary: {kid_fid_line(base_metrics, lora_metrics)}")
    return DemoResult(out, model, dataset, train_config, lora, base_metrics, lora_metrics, comparison, said,
                      scores, progress.timings)
