"""The weighting a user chose reaches the trainer once, through every export format (issue #12 item 8).

A manifest row's exposure (times the image is shown per epoch) is `repeats` when set (balance's
`--target-size` already put the weight into it), else `weight`, else 1; 0 means never. The reference values
below are worked out by hand from that rule: the manifest is read as is (fractions are expected counts);
kohya folders and WebDataset copies can only hold whole numbers, so fractional exposures are rounded by
largest remainder per balance bucket (Hamilton's method: each bucket's total within 1 of its share, the
total the rounded sum), the same way `data balance --target-size` rounds.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from datakit import noise_image

from animegen.data.balance import balance_dataset
from animegen.data.export import export_kohya, export_webdataset
from animegen.data.ingest import ingest
from animegen.data.manifest import Manifest, load_manifest
from animegen.train.config import DataSection, DatasetEntry
from animegen.train.data import TrainData, read_dataset

# name: (balance bucket, weight, repeats) -> intended exposure per epoch
ROWS = {
    "a0": ("a", 2.6, None),   # weight only: 2.6 per epoch
    "b0": ("b", 0.6, None),
    "b1": ("b", 0.6, None),
    "c0": ("c", 1.0, 3),      # repeats already hold the weight
    "c1": ("c", 2.0, 0),      # 0 = never
    "d0": (None, None, None),  # never balanced: once
    "e0": ("e", 1.5, 2),      # repeats win over the weight, never multiplied by it
    "f0": ("f", 2.0, None),   # a whole weight stays exact
}
INTENT = {"a0": 2.6, "b0": 0.6, "b1": 0.6, "c0": 3, "c1": 0, "d0": 1, "e0": 2, "f0": 2}
# fractional rows a0, b0, b1 sum to 3.8 -> 4 whole showings; bucket shares a 2.6, b 1.2 -> floors 2 + 1,
# the larger remainder (a: .6 > b: .2) gets the 4th; inside b, 0.6 + 0.6 -> one image 1, the other 0
WHOLE = {"a0": 3, "c0": 3, "c1": 0, "d0": 1, "e0": 2, "f0": 2}


@pytest.fixture
def weighted(tmp_path) -> tuple[Path, dict[str, str]]:
    """A dataset whose rows carry ROWS' buckets/weights/repeats; -> (dataset, sha256 -> row name)."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(ROWS):
        noise_image(100 + i, (48, 40)).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"zxq, {name}")
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    names = {}
    with Manifest(ds) as m:
        for row in m:
            name = Path(row.path).stem
            row.bucket, row.weight, row.repeats = ROWS[name]
            names[row.sha256] = name
            m.put(row)
    return ds, names


def _exposure(items, names) -> dict[str, float]:
    """Per source image, the times per epoch the trainer shows it (copies of one image summed)."""
    out: Counter = Counter()
    for it in items:
        out[names[hashlib.sha256(it.read_bytes()).hexdigest()]] += it.repeats
    return dict(out)


def _read(path) -> list:
    return read_dataset(DatasetEntry(path=str(path)))


def test_the_manifest_is_read_with_the_intended_exposure(weighted):
    ds, names = weighted
    got = _exposure(_read(ds), names)
    assert {k: got.get(k, 0) for k in INTENT} == pytest.approx(INTENT)


def test_an_image_with_repeats_0_is_never_shown(weighted):
    ds, names = weighted
    data = TrainData.load(DataSection(datasets=[DatasetEntry(path=str(ds))], resolution=64,
                                      min_bucket_side=64, max_bucket_side=128), seed=0)
    never = [i for i, it in enumerate(data.train) if names[hashlib.sha256(it.read_bytes()).hexdigest()] == "c1"]
    assert len(never) == 1
    epochs = 400
    shown: Counter = Counter()
    for epoch in range(epochs):
        for batch in data.epoch_batches(epoch, 1):
            shown[names[hashlib.sha256(data.train[batch[0]].read_bytes()).hexdigest()]] += 1
    assert shown["c1"] == 0
    for name, intent in INTENT.items():  # fractions are drawn per epoch: their mean is the intent
        assert shown[name] / epochs == pytest.approx(intent, abs=0.08), name


def test_balance_target_size_repeats_are_not_weighted_again(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tags = [["1girl", "smile"]] * 4 + [["1boy"]] * 2 + [["no humans"]]
    for i in range(len(tags)):
        noise_image(200 + i, (40 + i, 40)).save(src / f"{i}.png")
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    with Manifest(ds) as m:
        for row, t in zip(sorted(m, key=lambda r: r.width), tags):
            row.tags = t
            m.put(row)
    balance_dataset(ds, target_size=12, chart=False)
    rows = {r.path: r for r in load_manifest(ds)}
    assert any(r.weight != 1 for r in rows.values())  # the weights are there, and already in the repeats
    items = _read(ds)
    assert {it.source: it.repeats for it in items} == {p: r.repeats for p, r in rows.items()}
    assert sum(it.repeats for it in items) == 12


def test_kohya_export_keeps_repeats_and_weights(weighted, tmp_path):
    ds, names = weighted
    out = tmp_path / "kohya"
    export_kohya(ds, out, progress=False)
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == {"3_a", "1_b", "3_c", "1_data", "2_e", "2_f"}  # one `{repeats}_{name}` per count
    got = _exposure(_read(out), names)
    assert {k: got[k] for k in WHOLE if WHOLE[k]} == {k: v for k, v in WHOLE.items() if v}
    assert "c1" not in got
    assert sorted([got.get("b0", 0), got.get("b1", 0)]) == [0, 1]


def test_webdataset_export_keeps_repeats_and_weights(weighted, tmp_path):
    ds, names = weighted
    out = tmp_path / "wds"
    export_webdataset(ds, out, shard_max_count=5, progress=False)
    items = _read(out)
    got = _exposure(items, names)
    assert {k: got[k] for k in WHOLE if WHOLE[k]} == {k: v for k, v in WHOLE.items() if v}
    assert "c1" not in got
    assert sorted([got.get("b0", 0), got.get("b1", 0)]) == [0, 1]
    # copies of one image are one training image (one validation-split decision, one latent)
    assert len(items) == len(got)


def test_every_format_agrees_image_by_image(weighted, tmp_path):
    ds, names = weighted
    export_kohya(ds, tmp_path / "kohya", progress=False)
    export_webdataset(ds, tmp_path / "wds", seed=7, progress=False)
    kohya = _exposure(_read(tmp_path / "kohya"), names)
    wds = _exposure(_read(tmp_path / "wds"), names)
    manifest = _exposure(_read(ds), names)
    assert kohya == wds
    for name, intent in INTENT.items():
        assert abs(kohya.get(name, 0) - manifest.get(name, 0)) < 1, name
        assert manifest.get(name, 0) == pytest.approx(intent), name
    assert sum(kohya.values()) == round(sum(INTENT.values()))


def test_a_second_kohya_export_after_rebalancing_leaves_no_stale_copies(weighted, tmp_path):
    ds, names = weighted
    out = tmp_path / "kohya"
    export_kohya(ds, out, progress=False)
    with Manifest(ds) as m:
        for row in m:
            row.repeats, row.weight = 5, None
            m.put(row)
    export_kohya(ds, out, progress=False)
    got = _exposure(_read(out), names)
    assert got == {name: 5 for name in ROWS}  # each image once, in `5_*`, not also in its old folder
    assert all(p.name.startswith("5_") for p in out.iterdir())  # emptied folders go too
