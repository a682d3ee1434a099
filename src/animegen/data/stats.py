"""`animegen data stats`: tag frequencies, a long-tail plot, and bulk tag replace/remove."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from animegen.core.files import atomic_path
from animegen.data.manifest import Manifest, ManifestRow, load_manifest


def tag_frequencies(rows: Iterable[ManifestRow]) -> Counter[str]:
    """How many ok images carry each tag (character + general; each tag counted once per image)."""
    counts: Counter[str] = Counter()
    for r in rows:
        if r.ok:
            counts.update(set(r.all_tags))
    return counts


def write_frequencies(counts: Counter[str], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag", "count"])
        for tag, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            w.writerow([tag, n])
    return path


def plot_long_tail(counts: Counter[str], path: str | Path) -> Path:
    """Rank-frequency plot on log-log axes: how fast the tag distribution falls off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array(sorted(counts.values(), reverse=True), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    if values.size:
        ax.loglog(np.arange(1, values.size + 1), values, marker=".", linestyle="-")
        for rank in (0, values.size // 2, values.size - 1):
            name = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[rank][0]
            ax.annotate(name, (rank + 1, values[rank]), fontsize=7)
    ax.set_xlabel("tag rank")
    ax.set_ylabel("images with tag")
    ax.set_title(f"tag long tail ({values.size} tags)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _edit(tags: list[str] | None, replace: Mapping[str, str], remove: set[str]) -> list[str] | None:
    if tags is None:
        return None
    out: list[str] = []
    for t in tags:
        t = replace.get(t, t)
        if t and t not in remove and t not in out:
            out.append(t)
    return out


def edit_tags(dataset: str | Path, *, replace: Mapping[str, str] | None = None,
              remove: Iterable[str] = ()) -> int:
    """Rename (`replace` old -> new; new "" removes) and drop tags in every row; returns #rows changed.

    Changed rows lose their caption (re-run `animegen data caption`).
    """
    replace = dict(replace or {})
    remove = set(remove)
    if not replace and not remove:
        return 0
    changed = 0
    with Manifest(dataset) as manifest:
        for r in list(manifest):
            new = {k: _edit(getattr(r, k), replace, remove) for k in ("tags", "character_tags", "source_tags")}
            if all(new[k] == getattr(r, k) for k in new):
                continue
            for k, v in new.items():
                setattr(r, k, v)
            if r.tag_scores is not None:
                scores: dict[str, float] = {}
                for t, s in r.tag_scores.items():
                    t = replace.get(t, t)
                    if t and t not in remove:
                        scores[t] = max(s, scores.get(t, 0.0))
                r.tag_scores = scores
            r.caption = None
            manifest.put(r)
            changed += 1
    return changed


def dataset_stats(dataset: str | Path, *, plot: bool = True) -> tuple[Counter[str], dict[str, int], Path | None]:
    """(tag counts, rows per status, long-tail plot path); also writes DATASET/tag_counts.csv."""
    rows = load_manifest(dataset)
    counts = tag_frequencies(rows)
    status = Counter(r.status for r in rows)
    write_frequencies(counts, Path(dataset) / "tag_counts.csv")
    chart = plot_long_tail(counts, Path(dataset) / "tag_long_tail.png") if plot and counts else None
    return counts, dict(status), chart
