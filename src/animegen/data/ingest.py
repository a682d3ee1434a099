"""`animegen data ingest`: scan source folders into a dataset manifest without touching the sources.

Every file is validated through `image_io.read_image`; broken files become `error` rows with the reason.
One bad file never stops or hangs a run: a FIFO, socket or device named like an image (or a symlink to
`/dev/zero`) is a reported skip (`IngestReport.ignored`, not a row: it has no content to record), found by
stat before anything opens it; a file above `max_bytes`, or anything that goes wrong while hashing or
decoding (whatever the exception), is an error row. A file name that is not valid UTF-8 is an ordinary row
(the manifest stores its surrogate-escaped path, which opens the same file).
An image directly inside a kohya `N_name` folder that is a sub-folder of a source (kohya's `train_data_dir`
layout) keeps N as `source_repeats` and `name` as `class_token` (`data.sidecar.kohya_folder`); a source
folder itself, or a deeper folder, is no repeat folder (kohya neither reads a subset's sub-folders).
Exact duplicates are found by sha256, near duplicates by perceptual hash (clusters of pictures within a few
bits of each other; the largest is kept). Re-running skips files already recorded with the same content.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from animegen.core.files import (
    FileTooLargeError,
    NotRegularFileError,
    atomic_write,
    is_image_file,
    sha256_file,
    stat_regular_file,
)
from animegen.data.image_io import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageError,
    color_distance,
    hash_distance,
    mean_color,
    perceptual_hash,
    read_image,
    too_large_reason,
)
from animegen.data.manifest import (
    STATUS_DUPLICATE,
    STATUS_ERROR,
    STATUS_NEAR_DUPLICATE,
    STATUS_OK,
    Manifest,
    ManifestRow,
)
from animegen.data.sidecar import kohya_folder, read_sidecar

NEAR_DUPLICATES_REPORT = "near_duplicates.json"
MAX_ASPECT_LOG_RATIO = 0.1  # ~10 % aspect difference: crops and letterboxing are different pictures
MAX_COLOR_DIFF = 24  # per channel, 0..255


@dataclass
class IngestReport:
    """What an ingest run did; `clusters` lists near-duplicate groups with the kept path first.

    `skipped` counts files already recorded; `ignored` lists (path, reason) of files that are no row at all
    (not regular files); `repeat_folders` maps each kohya `N_name` folder found to its (repeats, class token).
    """

    scanned: int = 0
    added: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    clusters: list[list[str]] = field(default_factory=list)
    repeat_folders: dict[str, tuple[int, str]] = field(default_factory=dict)


def scan_sources(sources: Sequence[str | Path], *, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """All candidate image files under `sources` (recursive, sorted, symlinked dirs not followed)."""
    excluded = [Path(p).resolve() for p in exclude]
    found: set[Path] = set()
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"source {src} does not exist")
        if src.is_file():
            found.add(src.resolve())
            continue
        for root, dirs, files in os.walk(src):
            root_path = Path(root).resolve()
            if any(root_path == e or e in root_path.parents for e in excluded):
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if is_image_file(name) and not name.startswith("."):
                    found.add(root_path / name)
    return sorted(found)


def _repeat_folders(sources: Sequence[str | Path], paths: Iterable[Path]) -> dict[Path, tuple[int, str]]:
    """The kohya `N_name` folders holding `paths`: direct sub-folders of a source folder (resolved)."""
    roots = {Path(s).resolve() for s in sources if Path(s).is_dir()}
    found: dict[Path, tuple[int, str]] = {}
    for folder in {p.parent for p in paths}:
        info = kohya_folder(folder.name) if folder.parent in roots else None
        if info is not None:
            found[folder] = info
    return found


def _examine(path: Path, stat: os.stat_result, sha: str, max_pixels: int,
             max_bytes: int | None) -> ManifestRow:
    row = ManifestRow(path=str(path), sha256=sha, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    try:
        loaded = read_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageError as e:
        row.status, row.reason = STATUS_ERROR, e.reason
        return row
    img = loaded.image
    row.width, row.height = img.size
    row.format, row.mode, row.normalized = loaded.format, loaded.source_mode, loaded.normalized
    row.phash = perceptual_hash(img)
    row.mean_color = mean_color(img)
    notes = []
    if loaded.extension_mismatch:
        notes.append(f"content is {loaded.format} despite the {path.suffix} extension")
    if loaded.n_frames > 1:
        notes.append(f"animated ({loaded.n_frames} frames): first frame used")
    try:
        row.source_caption, row.source_tags = read_sidecar(path)
    except Exception as e:  # noqa: BLE001 (an unreadable sidecar costs its caption, not the image)
        notes.append(f"sidecar not read ({type(e).__name__}: {e})")
    row.reason = "; ".join(notes) or None
    return row


def find_near_duplicate_clusters(
    items: Sequence[tuple[str, str]], threshold: int, accept: Callable[[str, str], bool] | None = None,
) -> list[list[str]]:
    """Group keys whose hex hashes differ in <= `threshold` bits (transitively; single-link).

    `accept(key_a, key_b)` can veto a pair (e.g. different aspect ratio or colour).

    Pigeonhole banding: split the hash into threshold+1 bands; two hashes within the threshold agree
    exactly on at least one band, so only keys sharing a band are compared (no O(n^2) scan).
    """
    if threshold < 0 or not items:
        return []
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    nbits = len(items[0][1]) * 4
    ints = [int(h, 16) for _, h in items]
    n_bands = min(threshold + 1, nbits)
    bounds = [round(b * nbits / n_bands) for b in range(n_bands + 1)]
    for b in range(n_bands):
        lo, hi = bounds[b], bounds[b + 1]
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, v in enumerate(ints):
            buckets[(v >> lo) & mask].append(i)
        for members in buckets.values():
            for a_idx in range(len(members)):
                for b_idx in range(a_idx + 1, len(members)):
                    i, j = members[a_idx], members[b_idx]
                    if find(i) != find(j) and (ints[i] ^ ints[j]).bit_count() <= threshold and (
                            accept is None or accept(items[i][0], items[j][0])):
                        parent[find(i)] = find(j)
    groups: dict[int, list[str]] = defaultdict(list)
    for i, (key, _) in enumerate(items):
        groups[find(i)].append(key)
    return [g for g in groups.values() if len(g) > 1]


def _update_near_duplicates(manifest: Manifest, threshold: int) -> list[list[str]]:
    """Recompute near-duplicate clusters over all decoded rows; keep the largest image of each."""
    candidates = [r for r in manifest if r.status in (STATUS_OK, STATUS_NEAR_DUPLICATE) and r.phash]
    candidates.sort(key=lambda r: r.path)
    by_path = {r.path: r for r in candidates}

    def accept(a: str, b: str) -> bool:
        """Same picture = similar aspect ratio and average colour too (flat images share a phash)."""
        ra, rb = by_path[a], by_path[b]
        if (ra.width and rb.width and ra.height and rb.height
                and abs(math.log((ra.width / ra.height) / (rb.width / rb.height))) > MAX_ASPECT_LOG_RATIO):
            return False
        return not (ra.mean_color and rb.mean_color
                    and color_distance(ra.mean_color, rb.mean_color) > MAX_COLOR_DIFF)

    clusters = find_near_duplicate_clusters([(r.path, r.phash) for r in candidates], threshold, accept)
    ordered: list[list[str]] = []
    in_cluster: dict[str, tuple[int, str]] = {}
    for members in clusters:
        rows = sorted((by_path[p] for p in members),
                      key=lambda r: (-(r.width or 0) * (r.height or 0), -(r.size or 0), r.path))
        ordered.append([r.path for r in rows])
    ordered.sort(key=lambda paths: paths[0])
    for cid, paths in enumerate(ordered):
        for p in paths:
            in_cluster[p] = (cid, paths[0])
    for r in candidates:
        cid, best = in_cluster.get(r.path, (None, r.path))
        want_status = STATUS_OK if best == r.path else STATUS_NEAR_DUPLICATE
        want_dup = None if best == r.path else best
        want_reason = None if want_status == STATUS_OK else (
            f"near duplicate of {best} (perceptual hash distance "
            f"{hash_distance(r.phash, by_path[best].phash)})"
        )
        if (r.status, r.duplicate_of, r.cluster) != (want_status, want_dup, cid):
            r.status, r.duplicate_of, r.cluster = want_status, want_dup, cid
            if want_status == STATUS_NEAR_DUPLICATE or (r.reason or "").startswith("near duplicate"):
                r.reason = want_reason
            manifest.put(r)
    return ordered


def process_file(path: Path, stat: os.stat_result, old: ManifestRow | None, known: dict[str, str],
             max_pixels: int, max_bytes: int | None) -> tuple[str, ManifestRow | None] | tuple[str, str]:
    """Worker: hash the file, decode it only if its content is new. Returns (kind, payload).

    Never raises: whatever goes wrong with one file is that file's error row, not the end of the run.
    """
    try:
        sha = sha256_file(path, cached=False, max_bytes=max_bytes)
        if old is not None and old.sha256 == sha:
            return "touched", sha
        if known.get(sha, str(path)) != str(path):
            return "duplicate", sha
        return "examined", _examine(path, stat, sha, max_pixels, max_bytes)
    except NotRegularFileError as e:  # replaced by a FIFO or the like since it was scanned
        return "ignored", e.reason
    except FileTooLargeError as e:
        reason = too_large_reason(e)
    except OSError as e:
        reason = f"cannot read file: {e}"
    except Exception as e:  # noqa: BLE001 (a bug must cost one file, not the run; the reason says which)
        reason = f"unexpected error, please report it ({type(e).__name__}: {e})"
    return "error", ManifestRow(path=str(path), status=STATUS_ERROR, reason=reason)


ProcessMany = Callable[[list[tuple[Path, os.stat_result, ManifestRow | None]], int, int | None],
                       Iterable[tuple[str, object]]]


def _process_threaded(todo, known: dict[str, str], max_pixels: int, max_bytes: int | None, workers: int):
    """`process_file` over `todo` in a thread pool, a bounded window ahead, yielding results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque = deque()
        items = iter(todo)
        for item in itertools.islice(items, workers * 4):
            window.append(pool.submit(process_file, *item, known, max_pixels, max_bytes))
        while window:
            fut = window.popleft()
            nxt = next(items, None)
            if nxt is not None:
                window.append(pool.submit(process_file, *nxt, known, max_pixels, max_bytes))
            yield fut.result()


def ingest(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    near_duplicate_threshold: int = 4,
    workers: int | None = None,
    progress: bool = True,
    process_many: ProcessMany | None = None,
) -> IngestReport:
    """Scan `sources` into the dataset folder `out` (created if needed); resumable and incremental.

    `max_bytes`: larger files are error rows, never read (None: no limit).
    `near_duplicate_threshold`: max perceptual-hash bit distance of near duplicates (-1 turns it off).
    `workers`: decoding threads (PIL and hashlib release the GIL); rows are still written in scan order.
    `process_many(todo, max_pixels, max_bytes)`: another engine for the per-file work (`process_file` on
    every (path, stat, old) item, results in `todo` order; `data.ray_engine`); the default is threads.
    """
    out = Path(out)
    workers = workers or min(8, os.cpu_count() or 1)
    report = IngestReport()
    paths = scan_sources(sources, exclude=[out])
    report.scanned = len(paths)
    with Manifest(out, create=True) as manifest:
        by_sha: dict[str, str] = {}
        for r in manifest:
            if r.sha256 and r.status not in (STATUS_ERROR, STATUS_DUPLICATE):
                by_sha.setdefault(r.sha256, r.path)
        todo: list[tuple[Path, os.stat_result, ManifestRow | None]] = []
        for path in paths:
            try:
                stat = stat_regular_file(path)  # before anything opens it: a FIFO would block the open
            except NotRegularFileError as e:
                report.ignored.append((str(path), e.reason))
                continue
            except OSError as e:
                manifest.put(ManifestRow(path=str(path), status=STATUS_ERROR, reason=f"cannot read file: {e}"))
                continue
            old = manifest.rows.get(str(path))
            if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
                report.skipped += 1  # unchanged since it was recorded
            else:
                todo.append((path, stat, old))
        bar = tqdm(total=len(paths), initial=report.skipped + len(report.ignored), desc="ingest", unit="img",
                   disable=not progress)
        run = process_many or (lambda items, mp, mb: _process_threaded(items, by_sha, mp, mb, workers))
        for (path, stat, old), (kind, payload) in zip(todo, run(todo, max_pixels, max_bytes), strict=True):
            key = str(path)
            bar.update(1)
            if kind == "ignored":
                report.ignored.append((key, payload))
                continue
            if kind == "touched":  # same content, new mtime: nothing to redo
                old.size, old.mtime_ns = stat.st_size, stat.st_mtime_ns
                manifest.put(old)
                report.skipped += 1
                continue
            sha = payload if kind == "duplicate" else payload.sha256
            kept = by_sha.get(sha) if sha else None
            if kind != "error" and kept is not None and kept != key:
                row = ManifestRow(path=key, sha256=sha, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                  status=STATUS_DUPLICATE, duplicate_of=kept,
                                  reason=f"exact duplicate of {kept}")
            else:
                row = payload
                if row.status != STATUS_ERROR:
                    by_sha[sha] = key
            manifest.put(row)
            report.added += 1
        bar.close()
        folders = _repeat_folders(sources, paths)
        report.repeat_folders = {str(f): info for f, info in sorted(folders.items())}
        for path in paths:  # every row, old ones too: a manifest from before this column gets it on rerun
            row = manifest.rows.get(str(path))
            want = folders.get(path.parent, (None, None))
            if row is not None and (row.source_repeats, row.class_token) != want:
                row.source_repeats, row.class_token = want
                manifest.put(row)
        report.clusters = _update_near_duplicates(manifest, near_duplicate_threshold)
        for r in manifest:
            if r.status == STATUS_ERROR:
                report.errors.append((r.path, r.reason or "unknown error"))
            elif r.status == STATUS_DUPLICATE:
                report.duplicates.append((r.path, r.duplicate_of or ""))
        atomic_write(out / NEAR_DUPLICATES_REPORT, json.dumps(
            [{"kept": c[0], "dropped": c[1:]} for c in report.clusters], indent=2))
    return report
