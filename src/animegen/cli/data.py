"""`animegen data`: dataset curation commands (thin layer over `animegen.data`).

Every command is resumable: the manifest records each finished image at once, so a killed run picks up
where it stopped. Sources are only ever read.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from animegen.cli.common import user_errors

app = typer.Typer(no_args_is_help=True, help="Curate a dataset: ingest, tag, score, caption, balance, export.")
console = Console()


def _user_errors():
    """User errors, and also runtime errors of a stage (a tagger or captioner failing) → one line, exit 2."""
    return user_errors(RuntimeError)


def _parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{what} {item!r} must look like OLD=NEW")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _split_list(items: list[str]) -> list[str]:
    return [t.strip() for item in items for t in item.split(",") if t.strip()]


@app.command()
def ingest(
    sources: list[Path] = typer.Argument(..., help="Folders or files to scan (recursively)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder (manifest.jsonl is written here)."),
    max_pixels: int = typer.Option(256_000_000, help="Reject images with more pixels (decompression bombs)."),
    max_bytes: int = typer.Option(1 << 30, help="Reject larger files unread (giant or endless files)."),
    near_duplicate_threshold: int = typer.Option(
        4, help="Max perceptual-hash bit distance of near duplicates (-1: off)."),
    parquet: bool = typer.Option(False, help="Also write manifest.parquet."),
    show_errors: int = typer.Option(20, help="How many broken files to list."),
):
    """Scan sources into a dataset manifest: validate, read sidecar captions, drop (near) duplicates."""
    from animegen.data.ingest import NEAR_DUPLICATES_REPORT
    from animegen.data.ingest import ingest as run_ingest

    with _user_errors():
        rep = run_ingest(sources, out, max_pixels=max_pixels, max_bytes=max_bytes,
                         near_duplicate_threshold=near_duplicate_threshold)
        if parquet:
            _write_parquet(out)
    console.print(f"scanned {rep.scanned}, new {rep.added}, already done {rep.skipped}, "
                  f"broken {len(rep.errors)}, exact duplicates {len(rep.duplicates)}, "
                  f"near-duplicate clusters {len(rep.clusters)} (see {out / NEAR_DUPLICATES_REPORT})")
    if rep.repeat_folders:
        console.print("kohya repeat folders (repeats, class token): " + ", ".join(
            f"{Path(f).name} ({n}, {token!r})" for f, (n, token) in rep.repeat_folders.items()))
    if rep.errors and show_errors:
        t = Table("skipped file", "reason", title="broken files (sources untouched)")
        for path, reason in rep.errors[:show_errors]:
            t.add_row(path, reason)
        console.print(t)
        if len(rep.errors) > show_errors:
            console.print(f"... and {len(rep.errors) - show_errors} more (status=error in the manifest)")
    if rep.ignored:
        t = Table("skipped file", "reason", title=f"{len(rep.ignored)} not ingested: not regular files")
        for path, reason in rep.ignored[:show_errors]:
            t.add_row(path, reason)
        console.print(t)


def _write_parquet(dataset: Path) -> None:
    from animegen.data.manifest import export_parquet, load_manifest

    path = export_parquet(load_manifest(dataset), dataset / "manifest.parquet")
    console.print(f"wrote {path}")


@app.command()
def tag(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    tagger: str = typer.Option(..., "--tagger", help="WD14 tagger folder or hub id (model.onnx + selected_tags.csv)."),
    batch_size: int = typer.Option(16, min=1),
    general_threshold: float = typer.Option(0.35, min=0.0, max=1.0),
    character_threshold: float = typer.Option(0.85, min=0.0, max=1.0),
    general_mcut: bool = typer.Option(False, help="MCut instead of the general threshold."),
    character_mcut: bool = typer.Option(False, help="MCut (>= 0.15) instead of the character threshold."),
    blacklist: list[str] = typer.Option([], help="Tags never emitted (repeatable or comma separated)."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: CUDA provider when present)."),
    force: bool = typer.Option(False, help="Re-tag rows that already have tags."),
):
    """Tag every ok image with a WD14 ONNX tagger."""
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tagging import tag_dataset

    with _user_errors():
        model = WD14Tagger.from_pretrained(tagger, device=device)
        rep = tag_dataset(dataset, model, batch_size=batch_size, general_threshold=general_threshold,
                          character_threshold=character_threshold, general_mcut=general_mcut,
                          character_mcut=character_mcut, blacklist=_split_list(blacklist), force=force)
    console.print(f"tagged {rep.tagged}, already tagged {rep.skipped}, unreadable {rep.failed} "
                  f"(providers: {', '.join(model.providers)})")


@app.command()
def score(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    aesthetic: Path = typer.Option(..., "--aesthetic", help="Improved aesthetic predictor weights (.pth/.safetensors)."),
    clip: str = typer.Option("openai/clip-vit-large-patch14", help="CLIP ViT-L/14 folder or hub id."),
    min_score: float | None = typer.Option(None, help="Filter out images scoring below this (WD1.4 used 6.0)."),
    config: Path | None = typer.Option(None, help="TOML with [score] aesthetic_cutoffs / quality_percentiles."),
    batch_size: int = typer.Option(16, min=1),
    device: str | None = typer.Option(None),
    force: bool = typer.Option(False, help="Re-score rows that already have a score."),
):
    """Aesthetic scores (1-10), the --min-score filter, aesthetic and quality tags."""
    from animegen.data.aesthetic import AestheticScorer, ScoreTagConfig, score_dataset

    with _user_errors():
        cfg = ScoreTagConfig.from_toml(config) if config else ScoreTagConfig()
        scorer = AestheticScorer.from_pretrained(aesthetic, clip, device=device)
        rep = score_dataset(dataset, scorer, batch_size=batch_size, min_score=min_score, config=cfg, force=force)
    console.print(f"scored {rep.scored}, already scored {rep.skipped}, unreadable {rep.failed}, "
                  f"filtered {rep.filtered}, kept {rep.kept}")


@app.command()
def caption(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    preset: str = typer.Option("dashanime", help="Caption template: dashanime, animagine, danbooru, none."),
    captioner: str | None = typer.Option(None, help="NL captioner: module:function, file.py:function or a VLM path."),
    captioner_prompt: str | None = typer.Option(None, help="Instruction for a VLM captioner."),
    batch_size: int = typer.Option(8, min=1),
    device: str | None = typer.Option(None),
    force: bool = typer.Option(False, help="Rebuild captions that exist."),
    character_tag_expand: bool = typer.Option(
        False, help="Split `name (series)` character tags into `name` + a series tag (kohya's option)."),
    resolution_tags: bool = typer.Option(
        True, help="Derive lowres / highres / absurdres from the pixel size (Danbooru's thresholds)."),
):
    """Assemble training captions (preset template, style phrases removed, score/rating words).

    Sidecar tags and the tagger's are merged; a kohya caption's leading trigger word stays first.
    """
    from animegen.data.caption import caption_dataset, load_captioner

    with _user_errors():
        from animegen.prompts.presets import get_preset

        get_preset(preset)  # unknown name -> ValueError listing the valid ones
        cap = load_captioner(captioner, device=device, prompt=captioner_prompt) if captioner else None
        rep = caption_dataset(dataset, preset=preset, captioner=cap, batch_size=batch_size, force=force,
                              character_tag_expand=character_tag_expand, resolution_tags=resolution_tags)
    console.print(f"captioned {rep.captioned}, described by captioner {rep.described}, unreadable {rep.failed}")


@app.command()
def balance(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    rules: Path | None = typer.Option(None, help="Bucket rules TOML ([[buckets]] name/all/any/none; fallback)."),
    strength: float = typer.Option(1.0, min=0.0, help="1: every bucket weighted to the median size; 0: no change."),
    min_weight: float = typer.Option(0.1, min=0.0),
    max_weight: float = typer.Option(10.0, min=0.0),
    target_size: int | None = typer.Option(None, min=0, help="Resample to this many images (sets repeats)."),
    seed: int = typer.Option(0),
    chart: bool = typer.Option(True, help="Write balance.png."),
):
    """One bucket per image; sampling weights toward the median bucket size; before/after table."""
    from animegen.data.balance import DEFAULT_FALLBACK, balance_dataset, load_rules

    with _user_errors():
        rule_list, fallback = load_rules(rules) if rules else (None, DEFAULT_FALLBACK)
        rep = balance_dataset(dataset, rules=rule_list, fallback=fallback, strength=strength,
                              min_weight=min_weight, max_weight=max_weight, target_size=target_size,
                              seed=seed, chart=chart)
    t = Table("bucket", "images (before)", "weight", "resampled" if target_size is not None else "effective (after)",
              title=f"balance (median bucket size {rep.median:g})")
    for b in rep.buckets:
        t.add_row(b.name, str(b.images), f"{b.weight:.3f}", f"{b.after:g}")
    console.print(t)
    if rep.chart:
        console.print(f"chart: {rep.chart}")


@app.command()
def stats(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    top: int = typer.Option(30, min=0, help="How many of the most frequent tags to show."),
    replace: list[str] = typer.Option([], help="Rename a tag everywhere: OLD=NEW (repeatable)."),
    remove: list[str] = typer.Option([], help="Delete a tag everywhere (repeatable or comma separated)."),
    plot: bool = typer.Option(True, help="Write tag_long_tail.png."),
):
    """Tag frequencies and a long-tail plot; optional bulk tag replace/remove."""
    from animegen.data.stats import dataset_stats, edit_tags

    with _user_errors():
        pairs = _parse_pairs(replace, "--replace")
        if pairs or remove:
            n = edit_tags(dataset, replace=pairs, remove=_split_list(remove))
            console.print(f"edited tags in {n} rows (their captions must be rebuilt: animegen data caption)")
        counts, status, chart = dataset_stats(dataset, plot=plot)
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
    t = Table("tag", "images", title=f"{len(counts)} distinct tags")
    for name, n in counts.most_common(top):
        t.add_row(name, str(n))
    console.print(t)
    console.print(f"all counts: {dataset / 'tag_counts.csv'}" + (f"; long tail: {chart}" if chart else ""))


class ExportFormat(str, Enum):
    kohya = "kohya"
    wds = "wds"
    parquet = "parquet"


@app.command()
def export(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    format: ExportFormat = typer.Option(ExportFormat.kohya, "--format", help="kohya folder, WebDataset shards or manifest Parquet."),
    out: Path = typer.Option(..., "--out", help="Output folder (a .parquet file for --format parquet)."),
    shard_size_mb: float = typer.Option(1000.0, help="WebDataset: max shard size in MB."),
    shard_max_count: int = typer.Option(100_000, min=1, help="WebDataset: max samples per shard."),
    seed: int = typer.Option(0, help="WebDataset: sample shuffle seed."),
):
    """Write the ok images with their captions for training."""
    from animegen.data.export import export_kohya, export_webdataset

    with _user_errors():
        if format == ExportFormat.parquet:
            from animegen.data.manifest import export_parquet, load_manifest

            path = export_parquet(load_manifest(dataset), out)
            console.print(f"wrote {path}")
            return
        if format == ExportFormat.kohya:
            rep = export_kohya(dataset, out)
        else:
            rep = export_webdataset(dataset, out, shard_size_mb=shard_size_mb, shard_max_count=shard_max_count,
                                    seed=seed)
    console.print(f"written {rep.written}, skipped {rep.skipped}, failed {len(rep.failed)}"
                  + (f", {len(rep.shards)} shards" if rep.shards else "") + f" -> {out}")
    for path, reason in rep.failed[:20]:
        console.print(f"  [yellow]{path}[/yellow]: {reason}")
