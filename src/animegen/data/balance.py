"""`animegen data balance`: one bucket per image by tag rules; weights that pull buckets toward the median.

DashAnime's observation: a scraped anime set is dominated by "1girl"; re-weighting tag-group buckets toward
the median bucket size lets the long tail (boys, animals, objects, scenery) be learned. Rules are evaluated
on the row's tags (`ManifestRow.all_tags`, the sidecar's included) in order and the first match wins, so
every image lands in exactly one bucket (the fallback catches the rest). A bucket of n images gets weight
(median / n) ** strength, clipped to [min_weight, max_weight]. With `target_size`, integer repeats are rounded
per bucket (each bucket's total within 1 image of its share, summing to the target exactly), never per image:
see `resample_repeats`.

What `weight` and `repeats` mean (one meaning for the trainer and every export): a row's *exposure*, the times
its image is shown per epoch, is `repeats` when set, else `source_repeats * weight` (each 1 when unset;
`exposure`). `source_repeats` is the user's own weighting, the N of the kohya `N_name` folder the image was
ingested from: balance keeps it and multiplies it by the bucket weight (the buckets are still sized in images,
so balance does not undo a folder's repeats). `repeats` already holds both (`--target-size` resamples in
proportion to `source_repeats * weight`), so it is never multiplied again; a fractional exposure is an
expected count (the trainer draws the fraction each epoch); 0 means never. The trainer
multiplies it by the training config's per-dataset `repeats * weight` only. Formats that hold whole numbers
(kohya `N_name` folders, WebDataset copies) get `integer_exposures`: whole exposures as they are, fractional
ones rounded like `--target-size` (largest remainder per bucket, total = the rounded sum).
"""

from __future__ import annotations

import json
import random
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from animegen.core.files import atomic_path, atomic_write
from animegen.data.manifest import Manifest, ManifestRow

GIRLS = ["1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple girls"]
BOYS = ["1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple boys"]
HUMANS = GIRLS + BOYS + ["1other", "2others", "3others", "multiple others", "solo"]
EMOTIONS = [
    "smile", "grin", "light smile", "evil smile", "smirk", "smug", "laughing", "happy", ":d", ":)", ";d",
    "crying", "crying with eyes open", "tears", "tearing up", "sad", "angry", "annoyed", "frown", "pout",
    "blush", "embarrassed", "nervous", "surprised", "scared", "disgust", "serious", "sleepy", "wavy mouth",
    ">_<", ":o", "shaded face", "furrowed brow", "despair", "expressionless",
]
ANIMALS = [
    "animal", "animal focus", "cat", "dog", "bird", "fish", "horse", "rabbit", "fox", "wolf", "bear",
    "dragon", "pokemon (creature)", "butterfly", "insect", "cow", "pig", "snake", "duck", "penguin",
]
OBJECTS = [
    "food", "food focus", "still life", "flower", "weapon", "sword", "gun", "vehicle focus", "car",
    "motor vehicle", "building", "book", "cup", "fruit", "cake", "bottle", "instrument", "robot", "mecha",
]


@dataclass
class BucketRule:
    """An image matches when it has every `all` tag, at least one `any` tag (if listed), no `none` tag."""

    name: str
    all: list[str] = field(default_factory=list)
    any: list[str] = field(default_factory=list)
    none: list[str] = field(default_factory=list)

    def matches(self, tags: set[str]) -> bool:
        return (all(t in tags for t in self.all) and (not self.any or any(t in tags for t in self.any))
                and not any(t in tags for t in self.none))


def default_rules() -> list[BucketRule]:
    """DashAnime's buckets, in priority order."""
    return [
        BucketRule("1girl_emotion", all=["1girl"], any=EMOTIONS, none=BOYS),
        BucketRule("1girl", all=["1girl"], none=BOYS),
        BucketRule("1boy_emotion", all=["1boy"], any=EMOTIONS, none=GIRLS),
        BucketRule("1boy", all=["1boy"], none=GIRLS),
        BucketRule("multiple_girls", any=GIRLS[1:], none=BOYS),
        BucketRule("multiple_boys", any=BOYS[1:], none=GIRLS),
        BucketRule("animal", any=ANIMALS, none=HUMANS),
        BucketRule("object", all=["no humans"], any=OBJECTS),
        BucketRule("no_humans", all=["no humans"]),
    ]


DEFAULT_FALLBACK = "other"


def load_rules(path: str | Path) -> tuple[list[BucketRule], str]:
    """Rules TOML: `fallback = "other"` and `[[buckets]]` tables with name / all / any / none."""
    from animegen.prompts.tags import normalize_tag

    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"buckets", "fallback"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; valid: buckets, fallback")
    rules = []
    for i, b in enumerate(data.get("buckets", [])):
        bad = set(b) - {"name", "all", "any", "none"}
        if bad or "name" not in b:
            raise ValueError(f"{path}: bucket #{i + 1} needs `name` and only all/any/none lists (got {sorted(b)})")
        rules.append(BucketRule(str(b["name"]), *[[normalize_tag(t) for t in b.get(k, [])]
                                                    for k in ("all", "any", "none")]))
    if not rules:
        raise ValueError(f"{path}: no [[buckets]] defined")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate bucket names {names}")
    return rules, str(data.get("fallback", DEFAULT_FALLBACK))


def assign_bucket(tags: set[str], rules: Sequence[BucketRule], fallback: str = DEFAULT_FALLBACK) -> str:
    """First matching rule's name, else `fallback`: exactly one bucket per image."""
    return next((r.name for r in rules if r.matches(tags)), fallback)


def bucket_weights(counts: dict[str, int], *, strength: float = 1.0, min_weight: float = 0.1,
                   max_weight: float = 10.0) -> dict[str, float]:
    """Per-image weight per bucket: (median size / bucket size) ** strength, clipped (empty buckets: 0)."""
    sizes = [n for n in counts.values() if n > 0]
    if not sizes:
        return {k: 0.0 for k in counts}
    median = float(np.median(sizes))
    return {k: (float(np.clip((median / n) ** strength, min_weight, max_weight)) if n > 0 else 0.0)
            for k, n in counts.items()}


def _largest_remainder(shares: np.ndarray, total: int, rng: random.Random) -> np.ndarray:
    """Integers summing to `total`, each within 1 of its share (Hamilton's method; ties in a seeded order)."""
    base = np.floor(shares).astype(np.int64)
    order = list(range(len(shares)))
    rng.shuffle(order)
    order.sort(key=lambda i: -(shares[i] - base[i]))  # stable: ties keep the shuffled order
    for i in order[:total - int(base.sum())]:
        base[i] += 1
    return base


def resample_repeats(weights: Sequence[float], target: int, seed: int = 0,
                     groups: Sequence[str] | None = None) -> list[int]:
    """Integer repeats summing to `target` exactly, proportional to weights.

    With `groups` (one bucket name per image) rounding happens at the bucket level first: every image of a
    bucket has the same remainder, so rounding per image rounds whole buckets up or down together (20,000
    DashAnime-shaped images at target 11,000 gave both "1girl" buckets 0). Each bucket's integer total is its
    share by largest remainder (so within 1 of it: a share >= 1 never gets 0), then spread over the bucket's
    images by largest remainder again (equal weights: an even spread, the seed picks which get the +1).
    Largest remainder rather than seeded stochastic rounding: it is deterministic up to ties, and a bucket
    total is never more than 1 off its share whatever the seed. A share in [0.5, 1) may still round to 0 when
    many such shares compete for too few images (five shares of 0.6 cannot all get 1 out of 3).
    """
    w = np.asarray(weights, dtype=np.float64)
    if target < 0 or w.sum() <= 0:
        raise ValueError("resample needs a target >= 0 and at least one positive weight")
    rng = random.Random(seed)
    expected = w * target / w.sum()
    if groups is None:
        return _largest_remainder(expected, target, rng).tolist()
    names = list(dict.fromkeys(groups))
    members = {name: [] for name in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    totals = _largest_remainder(np.array([expected[members[n]].sum() for n in names]), target, rng)
    repeats = np.zeros(len(w), dtype=np.int64)
    for name, total in zip(names, totals):
        idx = members[name]
        share = expected[idx]
        inside = share * total / share.sum() if share.sum() > 0 else share  # the bucket's total, by weight
        repeats[idx] = _largest_remainder(inside, int(total), rng)
    return repeats.tolist()


def exposure(row: ManifestRow) -> float:
    """Times per epoch the row's image is shown: `repeats` if set (all weighting in it), else
    `source_repeats * weight`, each 1 when unset."""
    if row.repeats is not None:
        return float(row.repeats)
    return _source_repeats(row) * (float(row.weight) if row.weight is not None else 1.0)


def _source_repeats(row: ManifestRow) -> float:
    return float(row.source_repeats) if row.source_repeats is not None else 1.0


def integer_exposures(rows: Sequence[ManifestRow], seed: int = 0) -> list[int]:
    """Whole-number exposures for formats that cannot hold fractions (kohya folders, WebDataset copies).

    Whole exposures are kept exactly; the fractional ones are rounded together by `resample_repeats`, grouped
    by balance bucket, to their rounded sum: each bucket within 1 of its share, every image within 1 of its
    own. `seed` only breaks ties, so every format exported with the same seed agrees image by image.
    """
    values = [exposure(r) for r in rows]
    if any(v < 0 for v in values):
        bad = next(r for r, v in zip(rows, values) if v < 0)
        raise ValueError(f"{bad.path}: negative repeats/weight in the manifest; rerun `animegen data balance`")
    out = [int(v) if v.is_integer() else 0 for v in values]
    frac = [i for i, v in enumerate(values) if not v.is_integer()]
    if frac:
        shares = [values[i] for i in frac]
        total = int(np.floor(sum(shares) + 0.5))
        groups = [str(rows[i].bucket) for i in frac]
        for i, n in zip(frac, resample_repeats(shares, total, seed, groups)):
            out[i] = n
    return out


@dataclass
class BucketStat:
    name: str
    images: int
    weight: float
    after: float  # showings per epoch after weighting (source repeats included; resampled count)


@dataclass
class BalanceReport:
    buckets: list[BucketStat]
    median: float
    chart: str | None = None


def plot_balance(stats: Sequence[BucketStat], path: str | Path, title: str = "bucket sizes") -> Path:
    """Grouped bar chart before / after (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in stats]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4))
    ax.bar(x - 0.2, [s.images for s in stats], 0.4, label="before")
    ax.bar(x + 0.2, [s.after for s in stats], 0.4, label="after")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def balance_dataset(
    dataset: str | Path,
    *,
    rules: Sequence[BucketRule] | None = None,
    fallback: str = DEFAULT_FALLBACK,
    strength: float = 1.0,
    min_weight: float = 0.1,
    max_weight: float = 10.0,
    target_size: int | None = None,
    seed: int = 0,
    chart: bool = True,
) -> BalanceReport:
    """Assign buckets, weights (and repeats with `target_size`) to every ok row; writes balance.json/.png."""
    if strength < 0 or min_weight < 0 or max_weight < min_weight:
        raise ValueError("need strength >= 0 and 0 <= min_weight <= max_weight")
    rules = list(rules) if rules is not None else default_rules()
    order = [r.name for r in rules] + ([fallback] if fallback not in {r.name for r in rules} else [])
    with Manifest(dataset) as manifest:
        rows = manifest.ok_rows()
        buckets = {r.path: assign_bucket(set(r.all_tags), rules, fallback) for r in rows}
        counts = {name: 0 for name in order}
        for b in buckets.values():
            counts[b] += 1
        weights = bucket_weights(counts, strength=strength, min_weight=min_weight, max_weight=max_weight)
        repeats = resample_repeats([weights[buckets[r.path]] * _source_repeats(r) for r in rows], target_size,
                                   seed, [buckets[r.path] for r in rows]) \
            if target_size is not None and rows else None
        after = {name: 0.0 for name in order}
        for i, r in enumerate(rows):
            b = buckets[r.path]
            new = (b, round(weights[b], 6), repeats[i] if repeats is not None else None)
            if (r.bucket, r.weight, r.repeats) != new:
                r.bucket, r.weight, r.repeats = new
                manifest.put(r)
            after[b] += exposure(r)
        sizes = [n for n in counts.values() if n]
        stats = [BucketStat(n, counts[n], weights[n], round(after[n], 3)) for n in order]
        report = BalanceReport(stats, float(np.median(sizes)) if sizes else 0.0)
        if chart and rows:
            report.chart = str(plot_balance(stats, Path(dataset) / "balance.png"))
        atomic_write(Path(dataset) / "balance.json", json.dumps(asdict(report), indent=2))
    return report
