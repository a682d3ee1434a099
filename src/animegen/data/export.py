"""`animegen data export`: a kohya-ss folder (image + .txt) or size-bounded WebDataset tar shards.

Images whose bytes are already a clean RGB JPEG/PNG are copied byte for byte; anything ingest had to
normalise (CMYK, palette, alpha, 16-bit, EXIF rotation, animation, other formats) is written as the
normalised PNG, so the trainer never sees what `open_image` would have rejected or converted.

Weighting (`data.balance.exposure`): both formats hold whole numbers, a kohya `{N}_{name}` folder per repeat
count and N copies of a WebDataset sample, so a row's exposure goes through `integer_exposures` (whole values
kept, fractional weights rounded by largest remainder per balance bucket, tie-break seed 0 in both formats, so
they agree image by image). Exposure 0 is not exported.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from animegen.core.files import atomic_write, is_image_file
from animegen.data.balance import integer_exposures
from animegen.data.image_io import DEFAULT_MAX_PIXELS, ImageError, open_image
from animegen.data.manifest import ManifestRow, load_manifest

_COPY_FORMATS = {"JPEG": ("jpg", ".jpg"), "PNG": ("png", ".png")}
WDS_INDEX = "index.json"


@dataclass
class ExportReport:
    written: int
    skipped: int
    failed: list[tuple[str, str]]
    shards: list[str]


def row_caption(row: ManifestRow) -> str:
    """The text that goes with an image: `caption`, else its tags, else the sidecar caption."""
    if row.caption:
        return row.caption
    if row.all_tags:
        return ", ".join(row.all_tags)
    return row.source_caption or ""


def image_payload(row: ManifestRow, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, bytes]:
    """(wds key `jpg`|`png`, bytes) for a row: original bytes when clean, else a normalised PNG."""
    if not row.normalized and row.format in _COPY_FORMATS:
        return _COPY_FORMATS[row.format][0], Path(row.path).read_bytes()
    img = open_image(row.path, max_pixels=max_pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "png", buf.getvalue()


def _export_rows(dataset: str | Path) -> list[tuple[ManifestRow, int]]:
    """The ok rows in path order, each with its whole-number exposure (see the module docstring)."""
    rows = [r for r in load_manifest(dataset) if r.ok]
    rows.sort(key=lambda r: r.path)
    return list(zip(rows, integer_exposures(rows), strict=True))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _safe_name(row: ManifestRow) -> str:
    return f"{_safe(Path(row.path).stem)[:80]}_{(row.sha256 or '')[:10]}"


def _remove_stale(out: Path, names: set[str], targets: dict[str, Path]) -> None:
    """Drop this dataset's images (and captions) from repeat folders they no longer belong to: an image left
    in its old `3_x/` after a re-balance would train in both folders. Other files are left alone."""
    if not out.is_dir():
        return
    for folder in out.iterdir():
        if not folder.is_dir() or not folder.name.split("_", 1)[0].isdigit():
            continue
        for f in list(folder.iterdir()):
            if f.stem in names and targets.get(f.stem) != folder and (is_image_file(f) or f.suffix == ".txt"):
                f.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def export_kohya(dataset: str | Path, out: str | Path, *, progress: bool = True) -> ExportReport:
    """`OUT/{repeats}_{bucket}/NAME.{jpg,png}` + `NAME.txt` (kohya's DreamBooth-style folder layout), one folder
    per (repeat count, bucket); `data` names the folder of rows without a bucket.

    Resumable: images already exported (same name, same folder) are not rewritten; captions always are.
    """
    out = Path(out)
    written = skipped = 0
    failed: list[tuple[str, str]] = []
    plan = _export_rows(dataset)
    targets = {_safe_name(row): out / f"{n}_{_safe(row.bucket or 'data')}" for row, n in plan if n > 0}
    _remove_stale(out, {_safe_name(row) for row, _ in plan}, targets)
    for row, n in tqdm(plan, desc="export kohya", unit="img", disable=not progress):
        if n <= 0:
            skipped += 1
            continue
        name = _safe_name(row)
        folder = targets[name]
        folder.mkdir(parents=True, exist_ok=True)
        ext = _COPY_FORMATS[row.format][1] if (not row.normalized and row.format in _COPY_FORMATS) else ".png"
        target = folder / (name + ext)
        try:
            if not target.exists():
                _, data = image_payload(row)
                atomic_write(target, data)
                written += 1
            else:
                skipped += 1
        except (ImageError, OSError) as e:
            failed.append((row.path, getattr(e, "reason", str(e))))
            continue
        atomic_write(folder / (name + ".txt"), row_caption(row))
    return ExportReport(written, skipped, failed, [])


def export_webdataset(
    dataset: str | Path,
    out: str | Path,
    *,
    shard_size_mb: float = 1000.0,
    shard_max_count: int = 100_000,
    seed: int = 0,
    progress: bool = True,
) -> ExportReport:
    """Tar shards `OUT/shard-000000.tar` ... of at most `shard_size_mb` MB / `shard_max_count` samples.

    Each sample: `__key__`, `jpg` or `png`, `txt` (caption), `json` (tags, rating, scores, bucket, weight,
    repeats, size, sha256). A row is written as many times as its whole-number exposure (`repeats` in the
    json; distinct keys, 0: not at all), so any WebDataset reader sees the weighting; `animegen train` counts
    the copies of one sha256 as one image with that many repeats. Order is shuffled with `seed` so
    consecutive samples are not from one source folder. OUT/index.json lists the shards.
    """
    import webdataset as wds

    if shard_size_mb <= 0 or shard_max_count < 1:
        raise ValueError("shard_size_mb must be > 0 and shard_max_count >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.tar"):
        old.unlink()  # a previous (possibly killed) export: start over, shards are cheap to rewrite
    items = [(row, n, k) for row, n in _export_rows(dataset) for k in range(n)]
    random.Random(seed).shuffle(items)
    written = 0
    failed: list[tuple[str, str]] = []
    pattern = str(out / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_max_count, maxsize=shard_size_mb * 1e6, verbose=0) as sink:
        for row, n, k in tqdm(items, desc="export wds", unit="sample", disable=not progress):
            try:
                key, data = image_payload(row)
            except (ImageError, OSError) as e:
                failed.append((row.path, getattr(e, "reason", str(e))))
                continue
            meta = {
                "path": row.path, "sha256": row.sha256, "width": row.width, "height": row.height,
                "tags": row.tags, "character_tags": row.character_tags, "rating": row.rating,
                "aesthetic_score": row.aesthetic_score, "aesthetic_tag": row.aesthetic_tag,
                "quality_tag": row.quality_tag, "bucket": row.bucket, "weight": row.weight, "repeats": n,
            }
            sink.write({"__key__": f"{(row.sha256 or _safe_name(row))[:16]}_{k}", key: data,
                        "txt": row_caption(row), "json": meta})
            written += 1
    shards = sorted(p.name for p in out.glob("shard-*.tar"))
    atomic_write(out / WDS_INDEX, json.dumps({"shards": shards, "samples": written}, indent=2))
    return ExportReport(written, 0, failed, shards)

