"""`animegen eval`: FID, KID, CLIP score, full evaluation runs with HTML reports, and run comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from animegen.cli.checks import (
    DEVICE_HELP,
    DTYPE_HELP,
    Problems,
    check_device_and_dtype,
    check_file,
    check_folder,
    check_loras,
    check_model,
    check_output_folder,
    check_preset,
    check_sampler,
    device_word,
    seed_or_random,
)
from animegen.cli.common import fail, user_errors

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate: FID, KID, CLIP score, tag adherence, reports.")

WEIGHTS_HELP = ("FID Inception weights: a path to pt_inception-2015-12-05-6726825d.pth, 'default' (torch hub "
                "cache), or 'random' (smoke tests only: numbers not comparable).")
MODE_HELP = "Resize: 'legacy' (pytorch-fid, bilinear) or 'clean' (clean-fid's PIL bicubic)."


def _mode(value: str) -> str:
    if value not in ("legacy", "clean"):
        raise typer.BadParameter(f"'{value}' is not a resize mode; use 'legacy' or 'clean'")
    return value


def _emit(data: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for line in lines:
        typer.echo(line)
    for note in data.get("warnings", []):
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)


@app.command("fid")
def fid_cmd(
    real: Path = typer.Argument(..., help="Folder of real images (statistics cached by content hash), or a "
                                "pytorch-fid statistics .npz (mu, sigma)."),
    fake: Path = typer.Argument(..., help="Folder of generated images."),
    weights: str = typer.Option("default", "--weights", "--fid-weights", help=WEIGHTS_HELP),
    mode: str = typer.Option("legacy", "--mode", "--fid-mode", callback=_mode, help=MODE_HELP),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Images per Inception forward pass."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap resamples for the CI (0 = none)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where real-set statistics are cached."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap (and of random weights); -1 picks one."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Fréchet Inception Distance between two image folders (pytorch-fid compatible)."""
    from animegen.evaluate.run import fid_kid_block

    with user_errors():
        block = fid_kid_block(real, fake, fid_weights=weights, mode=mode, batch_size=batch_size,
                              bootstrap=bootstrap, cache_dir=cache_dir, seed=seed_or_random(seed), kid_subsets=1)
    fid = block["fid"]
    line = f"FID: {fid['value']:.4f}"
    fid["n_real"] = fid["n_real"] if fid["n_real"] is not None else "?"
    if "ci" in fid:
        ci = fid["ci"]
        line += f"  ({int(ci['confidence'] * 100)}% CI {ci['low']:.4f} .. {ci['high']:.4f})"
    detail = (f"mode: {fid['mode']}  weights: {fid['weights']}  "
              f"images: {fid['n_real']} real / {fid['n_fake']} generated")
    _emit(fid, as_json, [line, detail])


@app.command("kid")
def kid_cmd(
    real: Path = typer.Argument(..., help="Folder of real images."),
    fake: Path = typer.Argument(..., help="Folder of generated images."),
    weights: str = typer.Option("default", "--weights", "--fid-weights", help=WEIGHTS_HELP),
    mode: str = typer.Option("legacy", "--mode", "--fid-mode", callback=_mode, help=MODE_HELP),
    batch_size: int = typer.Option(50, "--batch-size", min=1),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1, help="Random subsets to average over."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", min=2,
                                        help="Images per subset (reduced to the smaller set's size)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsets (and of random weights); -1 picks one."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Kernel Inception Distance (unbiased, cubic polynomial kernel): mean ± std over subsets."""
    from animegen.evaluate.run import fid_kid_block

    with user_errors():
        block = fid_kid_block(real, fake, fid_weights=weights, mode=mode, batch_size=batch_size, bootstrap=0,
                              kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, cache_dir=cache_dir,
                              seed=seed_or_random(seed))
    if "kid" not in block:
        fail("KID needs the real images themselves, not a statistics .npz; pass the folder")
    kid = block["kid"]
    kid["warnings"] = [w for w in block["fid"]["warnings"] if "RANDOM" in w or "unreadable" in w] + kid["warnings"]
    detail = f"{kid['n_subsets']} subsets of {kid['subset_size']}  mode: {kid['mode']}  weights: {kid['weights']}"
    _emit(kid, as_json, [f"KID: {kid['mean']:.6f} ± {kid['std']:.6f}", detail])


@app.command("clip")
def clip_cmd(
    fake: Path = typer.Argument(..., help="Folder of generated images."),
    prompts: Path | None = typer.Option(None, "--prompts", help="One prompt per image, in sorted file order "
                                           "(default: each PNG's own infotext prompt)."),
    clip_model: str = typer.Option(..., "--clip-model", help="CLIP model folder or hub id."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """CLIP score (100 · max(cos, 0), torchmetrics' definition) of images against their prompts."""
    from animegen.evaluate.clip_score import ClipScorer
    from animegen.evaluate.features import list_images, load_images
    from animegen.evaluate.run import load_prompts, plain_prompt
    from animegen.generate.infotext import parse_infotext, read_png_infotext

    with user_errors():
        paths = list_images(fake)
        loaded, skipped = load_images(paths)
        if not loaded:
            fail(f"no readable images in '{fake}' (first problem: {skipped[0][1]})")
        if prompts is not None:
            texts = load_prompts(prompts)
            if len(texts) != len(paths):
                fail(f"--prompts has {len(texts)} prompts but '{fake}' has {len(paths)} images; give one prompt "
                     "per image (sorted by file name), or omit --prompts to use the PNG infotext")
            by_path = dict(zip(map(str, paths), texts))
            texts = [by_path[str(p)] for p, _ in loaded]
        else:
            texts = []
            for p, _ in loaded:
                info = read_png_infotext(p) if p.suffix.lower() == ".png" else None
                if not info:
                    fail(f"'{p}' has no infotext prompt; pass --prompts")
                texts.append(parse_infotext(info).get("Prompt", ""))
        scorer = ClipScorer.load(clip_model)
        scores = scorer.score([im for _, im in loaded], [plain_prompt(t) for t in texts], batch_size=batch_size)
    data = {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "n": len(scores), "model": clip_model,
            "per_image": {str(p): float(s) for (p, _), s in zip(loaded, scores)},
            "warnings": scorer.notes + [f"skipped unreadable image {p}: {r}" for p, r in skipped]}
    _emit(data, as_json, [f"CLIP score: {data['mean']:.3f} ± {data['std']:.3f} over {data['n']} images"])


@app.command("run")
def run_cmd(
    model: str = typer.Option(..., "--model", help="Model: hub id, diffusers folder or single .safetensors."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file: one per line, JSON list or TOML prompts=[]."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/, metrics.json, report.html)."),
    lora: list[str] = typer.Option([], "--lora", help="LoRA as PATH_OR_NAME[:WEIGHT]; repeatable."),
    real: Path | None = typer.Option(None, "--real", help="Folder of real images: enables FID and KID."),
    batch_count: int = typer.Option(4, "--batch-count", min=1, help="Batches per prompt (A1111's n_iter); images "
                                    "per prompt = batch count x batch size."),
    n_per_prompt: int | None = typer.Option(None, "--n-per-prompt", hidden=True),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image k uses seed + k; -1 picks one."),
    sampler: str | None = typer.Option(None, "--sampler", help="A1111 sampler name (default: preset's)."),
    steps: int | None = typer.Option(None, "--steps", min=1),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale", min=0),
    width: int | None = typer.Option(None, "--width"),
    height: int | None = typer.Option(None, "--height"),
    negative_prompt: str = typer.Option("", "--negative-prompt"),
    preset: str = typer.Option("none", "--preset", help="Prompt preset (see `animegen presets`)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Images per batch (one forward pass)."),
    fid_weights: str | None = typer.Option(None, "--fid-weights", help=WEIGHTS_HELP +
                                              " Default: the torch hub cache if present, else FID is skipped."),
    fid_mode: str = typer.Option("legacy", "--fid-mode", callback=_mode, help=MODE_HELP),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0),
    clip_model: str | None = typer.Option(None, "--clip-model", help="CLIP folder or hub id: enables CLIP score."),
    tagger: str | None = typer.Option(None, "--tagger", help="WD14 tagger folder or hub id: enables tag adherence."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where real-set statistics are cached."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
) -> None:
    """Generate a seeded image set, compute every metric that has its inputs, write metrics.json + report.html."""
    from animegen.evaluate.run import run_eval
    from animegen.generate.request import parse_lora_spec

    with user_errors():
        problems = Problems()
        if n_per_prompt is not None:  # the old name: the total per prompt, as before
            typer.echo("note: --n-per-prompt is now --batch-count (images per prompt = batch count x batch size); "
                       "the old name goes in the next release", err=True)
        per_prompt = n_per_prompt if n_per_prompt is not None else batch_count * batch_size
        check_model(problems, model, allow_pickle=False)
        check_file(problems, "--prompts", prompts)
        check_folder(problems, "--real", real)
        check_sampler(problems, "--sampler", sampler, None, "--schedule-type")
        check_preset(problems, preset, None)
        loras = []
        with problems.catch("--lora"):
            loras = [parse_lora_spec(s) for s in lora]
        check_loras(problems, loras, [], None, allow_pickle=False)
        check_device_and_dtype(problems, device, dtype)
        check_output_folder(problems, "--out", out, out)
        problems.raise_if_any()
        data = run_eval(model, prompts, out, loras=loras, real_dir=real,
                        n_per_prompt=per_prompt, seed=seed_or_random(seed), sampler=sampler, steps=steps,
                        cfg_scale=cfg_scale,
                        width=width, height=height, negative_prompt=negative_prompt, preset=preset,
                        batch_size=batch_size, fid_weights=fid_weights, fid_mode=fid_mode, bootstrap=bootstrap,
                        clip_model=clip_model, tagger=tagger, cache_dir=cache_dir, device=device_word(device),
                        dtype=dtype, log=lambda m: typer.echo(m, err=True))
    from animegen.evaluate.report import metric_rows

    for name, value, note in metric_rows(data["metrics"]):
        typer.echo(f"{name}: {value}   ({note})")
    for name, why in data["skipped"].items():
        typer.echo(f"{name}: not computed — {why}")
    for note in data["warnings"]:
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"report: {out / 'report.html'}")


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Two or more `eval run` output folders."),
    out: Path = typer.Option(..., "--out", help="Output folder (compare.html, compare.json) or .html file."),
) -> None:
    """Side-by-side table, plots and same-seed images of several eval runs."""
    from animegen.evaluate.run import compare

    with user_errors():
        path = compare(runs, out)
    typer.echo(f"comparison: {path}")


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="An `eval run` output folder.")) -> None:
    """Re-write report.html of a run from its metrics.json."""
    from animegen.evaluate.report import write_run_report

    with user_errors():
        path = write_run_report(run)
    typer.echo(f"report: {path}")
