"""`run_eval`: generate a seeded image set from a prompt file and measure everything measurable.

Each metric runs only when it has what it needs (FID/KID: a real image folder and Inception
weights; CLIP score: a CLIP model; tag adherence: a WD14 tagger); the others are listed in
`metrics.json` under `skipped` with the reason, so a missing number is never mistaken for a bad one.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from animegen import __version__
from animegen.core.files import atomic_write
from animegen.evaluate.metrics import MetricError

FORMAT_VERSION = 1


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, `#` comments), a JSON list, or TOML `prompts = [...]`."""
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"prompt file '{path}' not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            data = data.get("prompts", data) if isinstance(data, dict) else data
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(text).get("prompts")
        else:
            data = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise MetricError(f"cannot parse prompt file '{path}': {err}") from err
    if not isinstance(data, list):
        raise MetricError(f"'{path}': expected a list of prompts (JSON list or TOML `prompts = [...]`)")
    prompts = [(p.get("prompt") if isinstance(p, dict) else p) for p in data]
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise MetricError(f"'{path}': every prompt must be a non-empty string")
    if not prompts:
        raise MetricError(f"'{path}' contains no prompts")
    return [p.strip() for p in prompts]


def plain_prompt(prompt: str) -> str:
    """The prompt as text for CLIP: LoRA tags, emphasis brackets, weights and BREAK removed."""
    from animegen.prompts.parser import extract_lora_tags, parse_prompt_attention

    text, _ = extract_lora_tags(prompt)
    chunks = [c for c, w in parse_prompt_attention(text) if not (c == "BREAK" and w == -1)]
    return " ".join("".join(chunks).split())


def _clip_block(images: Sequence[Image.Image], prompts: Sequence[str], clip_model, progress: bool) -> dict:
    from animegen.evaluate.clip_score import ClipScorer

    scorer = clip_model if isinstance(clip_model, ClipScorer) else ClipScorer.load(clip_model)
    scores = scorer.score(list(images), [plain_prompt(p) for p in prompts], progress=progress)
    return {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "n": len(scores), "model": scorer.name, "per_image": [round(float(s), 4) for s in scores],
            "notes": scorer.notes}


def fid_kid_block(real_dir: str | Path, fake: Sequence[Image.Image] | str | Path, *, fid_weights="default",
                  mode: str = "legacy", batch_size: int = 50, bootstrap: int = 200, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, cache_dir: str | Path | None = None, seed: int = 0,
                  device=None, progress: bool = True, inception=None) -> dict:
    """FID (+ bootstrap CI) and KID between a real folder and generated images (folder or PIL list)."""
    from animegen.evaluate import features as feat
    from animegen.evaluate.inception import build_fid_inception, is_random
    from animegen.evaluate.metrics import fid_bootstrap_ci, fid_from_features, fid_warnings, kid

    net = inception or build_fid_inception(fid_weights, seed=seed, device=device or feat.default_device())
    if Path(real_dir).suffix == ".npz":
        return {"fid": _fid_against_stats(Path(real_dir), fake, net, mode, batch_size, progress)}
    real = feat.folder_features(real_dir, net, mode=mode, batch_size=batch_size,
                                cache_dir=cache_dir if cache_dir is not None else feat.default_cache_dir(),
                                progress=progress)
    if isinstance(fake, (str, Path)):
        fake_set = feat.folder_features(fake, net, mode=mode, batch_size=batch_size, progress=progress)
        fake_feats, skipped = fake_set.features, fake_set.skipped
    else:
        if len(fake) < 2:
            raise MetricError(f"FID/KID need at least 2 generated images, got {len(fake)}")
        fake_feats = feat.extract_features(list(fake), net, mode=mode, batch_size=batch_size,
                                           progress=progress, desc="features generated")
        skipped = []
    value = fid_from_features(real.features, fake_feats)
    notes = fid_warnings(len(real.features), len(fake_feats))
    comparable = not is_random(net)
    if not comparable:
        notes.insert(0, "FID/KID computed with RANDOM Inception weights (test mode): the numbers are not "
                        "comparable with any published FID or with runs using the real weights.")
    for path, reason in real.skipped + skipped:
        notes.append(f"skipped unreadable image {path}: {reason}")
    fid = {"value": value, "mode": mode, "weights": net.weights_id, "comparable": comparable,
           "n_real": len(real.features), "n_fake": len(fake_feats),
           "real_cache_hit": real.from_cache, "warnings": notes}
    if bootstrap:
        fid["ci"] = fid_bootstrap_ci(real.features, fake_feats, n_boot=bootstrap, seed=seed, point=value,
                                     progress=progress)
    k = kid(real.features, fake_feats, n_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    kid_block = {"mean": k.mean, "std": k.std, "subset_size": k.subset_size, "n_subsets": k.n_subsets,
                 "mode": mode, "weights": net.weights_id, "comparable": comparable, "warnings": k.warnings}
    return {"fid": fid, "kid": kid_block}


def _fid_against_stats(stats_file: Path, fake, net, mode: str, batch_size: int, progress: bool) -> dict:
    """FID of generated images against precomputed real statistics (pytorch-fid `.npz`: mu, sigma).

    Only FID: KID and the bootstrap need the real features themselves.
    """
    from animegen.evaluate import features as feat
    from animegen.evaluate.inception import is_random
    from animegen.evaluate.metrics import fid_stats_vs_features, fid_warnings

    if not stats_file.is_file():
        raise MetricError(f"statistics file '{stats_file}' not found")
    with np.load(stats_file, allow_pickle=False) as data:
        if "mu" not in data or "sigma" not in data:
            raise MetricError(f"'{stats_file}' lacks 'mu'/'sigma' arrays (pytorch-fid --save-stats format)")
        mu, sigma = data["mu"], data["sigma"]
        n_real = int(data["features"].shape[0]) if "features" in data else None
    if isinstance(fake, (str, Path)):
        fake_feats = feat.folder_features(fake, net, mode=mode, batch_size=batch_size, progress=progress).features
    else:
        fake_feats = feat.extract_features(list(fake), net, mode=mode, batch_size=batch_size, progress=progress)
    notes = fid_warnings(n_real or len(fake_feats), len(fake_feats))
    notes.append(f"real statistics read from {stats_file.name}: the resize mode and weights used to make "
                 "them are not recorded there — make sure they match.")
    comparable = not is_random(net)
    if not comparable:
        notes.insert(0, "FID computed with RANDOM Inception weights (test mode): not comparable with anything.")
    return {"value": fid_stats_vs_features(mu, sigma, fake_feats), "mode": mode, "weights": net.weights_id,
            "comparable": comparable, "n_real": n_real, "n_fake": len(fake_feats), "real_stats": str(stats_file),
            "warnings": notes}


def _resolve_fid_weights(fid_weights) -> tuple[object | None, str | None]:
    """(weights argument, None) when FID can run, (None, reason) when the default weights are absent."""
    from animegen.evaluate.inception import _missing_message, default_weights_path

    if fid_weights in (None, "default"):
        if default_weights_path().is_file():
            return "default", None
        return None, _missing_message(default_weights_path())
    if str(fid_weights) != "random" and not Path(fid_weights).expanduser().is_file():
        raise MetricError(_missing_message(Path(fid_weights)))
    return fid_weights, None


def run_eval(model, prompts_file: str | Path | Sequence[str], out_dir: str | Path, *,
             loras: Sequence[tuple[str, float]] = (), real_dir: str | Path | None = None,
             n_per_prompt: int = 4, seed: int = 0, sampler: str | None = None, steps: int | None = None,
             cfg_scale: float | None = None, width: int | None = None, height: int | None = None,
             negative_prompt: str = "", preset: str = "none", clip_skip: int = 1, batch_size: int = 1,
             fid_weights: str | Path | None = None, fid_mode: str = "legacy", fid_batch_size: int = 50,
             bootstrap: int = 200, kid_subsets: int = 100, kid_subset_size: int = 1000,
             clip_model=None, tagger=None, cache_dir: str | Path | None = None,
             device: str | None = None, dtype: str | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None, inception=None) -> dict:
    """Generate `n_per_prompt` seeded images per prompt with `model` (+ `loras`), save them as PNGs
    with infotext under `out_dir/images/`, compute the metrics, write `metrics.json` + `report.html`.

    `model` is a model reference for `animegen.generate.Generator` or a ready `Generator`.
    `tagger`: a tagger folder / hub id or a loaded `WD14Tagger`; `clip_model`: folder / hub id or a
    `ClipScorer`. `fid_weights`: None = the torch-hub-cache weights if present, a path, or "random";
    `inception`: an already built FID network (from `build_fid_inception`) to reuse instead.
    Returns the metrics.json content.
    """
    from animegen.evaluate.report import write_run_report
    from animegen.generate import GenerationRequest, Generator
    from animegen.generate.infotext import save_png

    say = log or (lambda _m: None)
    if n_per_prompt < 1:
        raise MetricError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    if fid_mode not in ("legacy", "clean"):
        raise MetricError(f"fid_mode must be 'legacy' or 'clean', got {fid_mode!r}")
    prompts = list(prompts_file) if not isinstance(prompts_file, (str, Path)) else load_prompts(prompts_file)
    out = Path(out_dir)
    if real_dir is None:
        weights_arg, fid_reason = None, "needs --real (a folder of real images)"
    elif inception is not None:
        weights_arg, fid_reason = None, None
    else:
        weights_arg, fid_reason = _resolve_fid_weights(fid_weights)
    if real_dir is not None:
        from animegen.evaluate.features import list_images

        list_images(real_dir)  # fail before generating, not after
    gen = model if isinstance(model, Generator) else Generator(model, device=device, dtype=dtype)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, image_prompts, records, per_prompt = [], [], [], []
    resolved: dict = {}
    broken: list[str] = []
    for i, prompt in enumerate(prompts):
        say(f"[{i + 1}/{len(prompts)}] {prompt}")
        request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, preset=preset,
                                    sampler=sampler, steps=steps, cfg_scale=cfg_scale, width=width,
                                    height=height, clip_skip=clip_skip, loras=[(str(p), float(w)) for p, w in loras],
                                    n=n_per_prompt, batch_size=batch_size, seed=seed + i * n_per_prompt)
        entry = {"prompt": prompt, "images": []}
        for j, result in enumerate(gen(request)):
            rel = f"images/p{i:03d}_{j:02d}_s{result.seed}.png"
            save_png(result, out / rel)
            rec = {"file": rel, "prompt_index": i, "seed": int(result.seed)}
            arr = getattr(result, "array", None)
            if arr is not None and not np.isfinite(arr).all():
                rec["invalid"] = True
                broken.append(f"{rel} (prompt #{i}, seed {result.seed}) came out of the model with NaN/inf "
                              "pixels (saved black); metrics on this run are unreliable")
            params = getattr(result, "parameters", None) or {}
            resolved = resolved or {k: params.get(k) for k in ("Sampler", "Steps", "CFG scale", "Size")}
            records.append(rec)
            entry["images"].append(rec)
            images.append(result.image)
            image_prompts.append(prompt)
        per_prompt.append(entry)
    run_info = {"model": getattr(gen, "model_name", str(model)), "model_hash": getattr(gen, "model_hash", None),
                "loras": [[str(p), float(w)] for p, w in loras], "prompts_file": None if not isinstance(
                    prompts_file, (str, Path)) else str(prompts_file),
                "n_prompts": len(prompts), "n_per_prompt": n_per_prompt, "seed": seed, "sampler": sampler,
                "steps": steps, "cfg_scale": cfg_scale, "width": width, "height": height, "preset": preset,
                "negative_prompt": negative_prompt, "real_dir": str(real_dir) if real_dir else None,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "animegen": __version__, "resolved": resolved}
    metrics, skipped, notes = {}, {}, list(broken)
    if fid_reason:
        skipped["fid"] = skipped["kid"] = fid_reason
    else:
        say("FID / KID")
        block = fid_kid_block(real_dir, images, fid_weights=weights_arg, mode=fid_mode,
                              batch_size=fid_batch_size, bootstrap=bootstrap, kid_subsets=kid_subsets,
                              kid_subset_size=kid_subset_size, cache_dir=cache_dir, seed=seed, progress=progress,
                              inception=inception)
        metrics.update(block)
        notes += block["fid"]["warnings"] + block["kid"]["warnings"]
    if clip_model is None:
        skipped["clip_score"] = "needs --clip-model (a CLIP folder or hub id)"
    else:
        say("CLIP score")
        metrics["clip_score"] = _clip_block(images, image_prompts, clip_model, progress)
        notes += metrics["clip_score"]["notes"]
        scores = metrics["clip_score"]["per_image"]
        for entry in per_prompt:
            idx = [records.index(r) for r in entry["images"]]
            entry["clip_score"] = float(np.mean([scores[k] for k in idx]))
    if tagger is None:
        skipped["tag_adherence"] = "needs --tagger (a WD14 tagger folder or hub id)"
    else:
        say("tag adherence")
        try:
            metrics["tag_adherence"] = _tag_block(images, image_prompts, tagger, progress)
        except MetricError as err:
            skipped["tag_adherence"] = str(err)
        else:
            if metrics["tag_adherence"]["toy_tagger"]:
                notes.append("tag adherence computed with a TOY tagger (random weights, from tests or `animegen "
                             "demo`): its tags are noise, so recall and precision mean nothing; pass a real WD14 "
                             "tagger with --tagger.")
            for entry in per_prompt:
                pp = metrics["tag_adherence"]["per_prompt"].get(entry["prompt"])
                if pp:
                    entry["tag_recall"], entry["missing_tags"] = pp["recall"], pp["missing"]
    data = {"format_version": FORMAT_VERSION, "run": run_info, "metrics": metrics, "skipped": skipped,
            "warnings": list(dict.fromkeys(notes)), "per_prompt": per_prompt, "images": records}
    _write_json(out / "metrics.json", data)
    write_run_report(out, data)
    return data


def _tag_block(images, prompts, tagger, progress: bool) -> dict:
    """The tag adherence block, marked `toy_tagger` when the tagger is the tiny random one."""
    from animegen.data.tiny_tagger import is_toy_tagger
    from animegen.evaluate.tag_adherence import tag_adherence

    if isinstance(tagger, (str, Path)):
        from animegen.data.tagger import WD14Tagger

        tagger = WD14Tagger.from_pretrained(tagger)
    return {**tag_adherence(images, prompts, tagger, progress=progress), "toy_tagger": is_toy_tagger(tagger)}


def _write_json(path: Path, data: dict) -> None:
    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.floating, np.integer)):
            return clean(obj.item())
        return obj

    atomic_write(path, json.dumps(clean(data), indent=2, ensure_ascii=False))


def compare(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Side-by-side HTML (table, plots, same-seed images) of several `run_eval` folders."""
    from animegen.evaluate.report import write_compare_report

    return write_compare_report(run_dirs, out)
