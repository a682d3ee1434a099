"""`animegen data export`: a kohya-ss folder (image + .txt) or size-bounded WebDataset tar shards.

Images whose bytes are already a clean RGB JPEG/PNG are copied byte for byte; anything ingest had to
normalise (CMYK, palette, alpha, 16-bit, EXIF rotation, animation, other formats) is written as the
normalised PNG, so the trainer never sees what `open_image` would have rejected or converted.

Weighting (`data.balance.exposure`): both formats hold whole numbers, a kohya `{N}_{name}` folder per repeat
count and N copies of a WebDataset sample, so a row's exposure goes through `integer_exposures` (whole values
kept, fractional weights rounded by largest remainder per balance bucket, tie-break seed 0 in both formats, so
they agree image by image). Exposure 0 is not exported.

kohya folders: a row ingested from a kohya `N_name` folder goes back to a `{repeats}_{name}` folder (its class
token is the folder's name part: kohya's caption for an image with no caption file); other rows go to
`{repeats}_{bucket}` (or `{repeats}_data`). No empty caption file is written (kohya stops on one): an image
with no caption has none, and trains with its folder's class token, or with "" from a `{repeats}_` folder
when it has no class token either (never with a bucket name). WebDataset has no folders: the class token is
the `txt` of an image with no caption.

Sources are read as `image_io` reads them: only regular files of at most `max_bytes` (a source replaced by a
FIFO since ingest is a failed row, not a hang).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from animegen.core.files import (
    FileTooLargeError,
    NotRegularFileError,
    atomic_write,
    is_image_file,
    open_regular_file,
)
from animegen.data.balance import integer_exposures
from animegen.data.image_io import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, open_image
from animegen.data.manifest import ManifestRow, load_manifest
from animegen.data.sidecar import CAPTION_EXTENSIONS, kohya_folder

_COPY_FORMATS = {"JPEG": ("jpg", ".jpg"), "PNG": ("png", ".png")}
WDS_INDEX = "index.json"


@dataclass
class ExportReport:
    written: int
    skipped: int
    failed: list[tuple[str, str]]
    shards: list[str]


def row_caption(row: ManifestRow) -> str:
    """The text that goes with an image: `caption`, else its tags (`all_tags`), else the sidecar caption;
    "" when there is none (the class token is the caller's fallback: a kohya folder name, a WebDataset txt)."""
    if row.caption:
        return row.caption
    tags = row.all_tags
    if tags and not (row.source_caption is None and tags == row.caption_file_tags):  # not the class token alone
        return ", ".join(tags)
    return row.source_caption or ""


def image_payload(row: ManifestRow, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[str, bytes]:
    """(wds key `jpg`|`png`, bytes) for a row: original bytes when clean, else a normalised PNG.

    Raises `ImageError` (with the reason) for a source that is no longer a regular file or is too large."""
    if not row.normalized and row.format in _COPY_FORMATS:
        try:
            with open_regular_file(row.path, max_bytes=max_bytes) as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except (NotRegularFileError, FileTooLargeError) as e:
            raise ImageError(row.path, e.reason) from None
        if max_bytes is not None and len(data) > max_bytes:  # it grew since the size check
            raise ImageError(row.path, FileTooLargeError(row.path, len(data), max_bytes).reason)
        return _COPY_FORMATS[row.format][0], data
    img = open_image(row.path, max_pixels=max_pixels, max_bytes=max_bytes)
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


def _is_caption_file(f: Path) -> bool:
    return f.suffix in CAPTION_EXTENSIONS


def _remove_stale(out: Path, names: set[str], targets: dict[str, Path]) -> None:
    """Drop this dataset's images (and captions) from repeat folders they no longer belong to: an image left
    in its old `3_x/` after a re-balance would train in both folders. Other files are left alone."""
    if not out.is_dir():
        return
    for folder in out.iterdir():
        if not folder.is_dir() or kohya_folder(folder.name) is None:
            continue
        for f in list(folder.iterdir()):
            if f.stem in names and targets.get(f.stem) != folder and (is_image_file(f) or _is_caption_file(f)):
                f.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def _folder_name(row: ManifestRow, n: int, caption: str) -> str:
    """`{n}_{name}`: the row's class token, else (the name is only a label then) its bucket or `data`; a row
    with neither a caption nor a class token goes to `{n}_`, so kohya's fallback trains it with ""."""
    if row.class_token is not None:
        return f"{n}_{row.class_token.replace('/', '_').replace(chr(0), '_')}"
    return f"{n}_{_safe(row.bucket or 'data')}" if caption else f"{n}_"


def export_kohya(dataset: str | Path, out: str | Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 progress: bool = True) -> ExportReport:
    """`OUT/{repeats}_{name}/NAME.{jpg,png}` + `NAME.txt` (kohya's DreamBooth-style folder layout), one folder
    per (repeat count, class token or bucket); see the module docstring for the names and the captions.

    Resumable: images already exported (same name, same folder) are not rewritten; captions always are (and
    a caption file the row no longer has is removed).
    """
    out = Path(out)
    written = skipped = 0
    failed: list[tuple[str, str]] = []
    plan = _export_rows(dataset)
    captions = {_safe_name(row): row_caption(row) for row, _ in plan}
    targets = {_safe_name(row): out / _folder_name(row, n, captions[_safe_name(row)]) for row, n in plan if n > 0}
    _remove_stale(out, set(captions), targets)
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
                _, data = image_payload(row, max_bytes=max_bytes)
                atomic_write(target, data)
                written += 1
            else:
                skipped += 1
        except (ImageError, OSError) as e:
            failed.append((row.path, getattr(e, "reason", str(e))))
            continue
        caption_file = folder / (name + ".txt")
        if captions[name]:
            atomic_write(caption_file, captions[name])
        else:  # kohya stops on an empty caption file; with none, the folder's class token applies
            caption_file.unlink(missing_ok=True)
    return ExportReport(written, skipped, failed, [])


def export_webdataset(
    dataset: str | Path,
    out: str | Path,
    *,
    shard_size_mb: float = 1000.0,
    shard_max_count: int = 100_000,
    seed: int = 0,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
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
                key, data = image_payload(row, max_bytes=max_bytes)
            except (ImageError, OSError) as e:
                failed.append((row.path, getattr(e, "reason", str(e))))
                continue
            meta = {
                "path": row.path, "sha256": row.sha256, "width": row.width, "height": row.height,
                "tags": row.tags, "character_tags": row.character_tags, "rating": row.rating,
                "aesthetic_score": row.aesthetic_score, "aesthetic_tag": row.aesthetic_tag,
                "quality_tag": row.quality_tag, "bucket": row.bucket, "weight": row.weight, "repeats": n,
                "source_repeats": row.source_repeats, "class_token": row.class_token,
            }
            sink.write({"__key__": f"{(row.sha256 or _safe_name(row))[:16]}_{k}", key: data,
                        "txt": row_caption(row) or row.class_token or "", "json": meta})
            written += 1
    shards = sorted(p.name for p in out.glob("shard-*.tar"))
    atomic_write(out / WDS_INDEX, json.dumps({"shards": shards, "samples": written}, indent=2))
    return ExportReport(written, 0, failed, shards)

