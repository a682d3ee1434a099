"""`animegen data tag`: WD14 tags for every ok row of a dataset (resumable, batched)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from animegen.data.batching import run_batched
from animegen.data.manifest import Manifest, ManifestRow
from animegen.data.tagger import (
    DEFAULT_CHARACTER_THRESHOLD,
    DEFAULT_GENERAL_THRESHOLD,
    TagResult,
    WD14Tagger,
)


@dataclass
class TagReport:
    tagged: int
    skipped: int
    failed: int


def apply_tags(row: ManifestRow, res: TagResult, tagger_name: str) -> None:
    """Record one tagger result on its row (both engines): tags, scores rounded to 4 places, rating."""
    row.tags = list(res.general)
    row.character_tags = list(res.character)
    row.tag_scores = {k: round(v, 4) for k, v in {**res.character, **res.general}.items()}
    row.rating = res.rating
    row.tagger = tagger_name
    row.caption = None  # stale: re-run `animegen data caption`


def tag_dataset(
    dataset: str | Path,
    tagger: WD14Tagger,
    *,
    batch_size: int = 16,
    general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
    general_mcut: bool = False,
    character_mcut: bool = False,
    blacklist: Iterable[str] = (),
    force: bool = False,
    progress: bool = True,
) -> TagReport:
    """Tag rows that have no tags yet (all ok rows with `force`); the caption of re-tagged rows is cleared."""
    blacklist = list(blacklist)
    with Manifest(dataset) as manifest:
        ok = manifest.ok_rows()
        todo = [r for r in ok if force or r.tags is None]

        def work(rows, images):
            results = tagger.tag(images, general_threshold=general_threshold,
                                 character_threshold=character_threshold, general_mcut=general_mcut,
                                 character_mcut=character_mcut, blacklist=blacklist)
            for row, res in zip(rows, results):
                apply_tags(row, res, tagger.name)

        done, failed = run_batched(manifest, todo, batch_size, work, desc="tag", progress=progress)
    return TagReport(tagged=done, skipped=len(ok) - len(todo), failed=failed)
