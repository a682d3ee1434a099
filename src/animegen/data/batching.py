"""Shared loop for per-image model passes (tag, score, caption): batch, decode in threads, persist each batch.

Each batch is written to the manifest as soon as the model returns, so killing a run loses at most one
batch, and re-running only processes rows whose work is not yet recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm.auto import tqdm

from animegen.data.image_io import DEFAULT_MAX_PIXELS, ImageError, open_image
from animegen.data.manifest import STATUS_ERROR, Manifest, ManifestRow


def _load(row: ManifestRow, max_pixels: int) -> Image.Image | ImageError:
    try:
        return open_image(row.path, max_pixels=max_pixels)
    except ImageError as e:
        return e


def iter_image_batches(
    rows: Sequence[ManifestRow], batch_size: int, *, desc: str, progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 4,
) -> Iterator[tuple[list[ManifestRow], list[Image.Image], list[tuple[ManifestRow, str]]]]:
    """Yield (rows, images, failures) per batch; decoding of the next batch overlaps the current one."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [list(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(lambda c=c: [_load(r, max_pixels) for r in c]) for c in chunks[:2]]
        for i, chunk in enumerate(chunks):
            loaded = pending[i].result()
            if i + 2 < len(chunks):
                pending.append(pool.submit(lambda c=chunks[i + 2]: [_load(r, max_pixels) for r in c]))
            good_rows, images, failures = [], [], []
            for row, item in zip(chunk, loaded):
                if isinstance(item, ImageError):
                    failures.append((row, item.reason))
                else:
                    good_rows.append(row)
                    images.append(item)
            yield good_rows, images, failures
            bar.update(len(chunk))
    bar.close()


def run_batched(
    manifest: Manifest,
    todo: Sequence[ManifestRow],
    batch_size: int,
    work: Callable[[list[ManifestRow], list[Image.Image]], None],
    *, desc: str, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Run `work(rows, images)` (which updates the rows in place) and persist; returns (done, failed)."""
    done = failed = 0
    for rows, images, failures in iter_image_batches(todo, batch_size, desc=desc, progress=progress,
                                                       max_pixels=max_pixels):
        for row, reason in failures:
            row.status, row.reason = STATUS_ERROR, f"unreadable at {desc}: {reason}"
            manifest.put(row)
            failed += 1
        if rows:
            work(rows, images)
            manifest.put_many(rows)
            done += len(rows)
    return done, failed
