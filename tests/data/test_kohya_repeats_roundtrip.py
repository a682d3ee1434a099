"""A kohya dataset folder keeps its repeats and class tokens through ingest, balance and export (issue #12
item 8), and the caption-file extensions have one home.

Reference, kohya sd-scripts (`library/config_util.py` `generate_dreambooth_subsets_config_by_subdirs`,
`library/train_util.py` `DreamBoothDataset`), written from its documented behaviour, not from animegen's code:
- `train_data_dir` holds one sub-folder per subset; a sub-folder's name split on `_` gives the repeat count
  (the first token, `int(...)`) and the class tokens (the other tokens joined with `_`): `10_zxq` is 10
  repeats of class `zxq`, `2_blue_cat` 2 repeats of class `blue_cat`. Folders with fewer than 1 repeat are
  ignored. Only the images directly inside a sub-folder belong to it (no recursion), so `archive/7_old/` under
  `train_data_dir` is no repeat folder.
- An image's caption is the first `<image stem><caption_extension>` that exists; an image without one is
  captioned with its folder's class tokens.
- Each image is shown `num_repeats` times per epoch.

animegen's own rules on top (data.balance module docstring): a balance weight multiplies the source repeats
(exposure = source repeats x weight), `--target-size` resamples in proportion to that product.
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

# image -> (folder under the source root, caption file text or None)
IMAGES = {
    "a0": ("10_zxq", "zxq, 1girl"),
    "a1": ("10_zxq", None),
    "b0": ("3_zxq", "zxq, 1girl"),
    "c0": ("5_zxq", None),
    "d0": ("2_blue_cat", None),
    "loose": ("", "1girl, solo"),           # directly in the root: no repeat folder
    "e0": ("archive/7_old", "no humans"),   # nested: not a kohya repeat folder
}
REPEATS = {"a0": 10, "a1": 10, "b0": 3, "c0": 5, "d0": 2, "loose": 1, "e0": 1}
# what kohya trains each image with: its caption file, else its folder's class tokens
CAPTIONS = {"a0": "zxq, 1girl", "a1": "zxq", "b0": "zxq, 1girl", "c0": "zxq", "d0": "blue_cat",
            "loose": "1girl, solo", "e0": "no humans"}


@pytest.fixture
def kohya_src(tmp_path) -> tuple[Path, dict[str, str]]:
    """The source folder; -> (root, sha256 -> image name)."""
    root = tmp_path / "src"
    names = {}
    for i, (name, (folder, caption)) in enumerate(IMAGES.items()):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        noise_image(500 + i, (48, 40)).save(d / f"{name}.png")
        names[hashlib.sha256((d / f"{name}.png").read_bytes()).hexdigest()] = name
        if caption is not None:
            (d / f"{name}.txt").write_text(caption + "\n")
    return root, names


def _by_name(items, names) -> dict[str, object]:
    return {names[hashlib.sha256(it.read_bytes()).hexdigest()]: it for it in items}


def _read(path):
    return read_dataset(DatasetEntry(path=str(path)))


def _exposure(items, names) -> dict[str, float]:
    out: Counter = Counter()
    for it in items:
        out[names[hashlib.sha256(it.read_bytes()).hexdigest()]] += it.repeats
    return dict(out)


def test_the_reference_folder_reads_as_kohya_reads_it(kohya_src):
    """The fixture itself, read by the trainer's kohya reader: the figures above are kohya's."""
    root, names = kohya_src
    items = {k: v for k, v in _by_name(_read(root), names).items() if k != "e0"}  # kohya does not recurse
    assert {k: it.repeats for k, it in items.items()} == {k: v for k, v in REPEATS.items() if k != "e0"}
    assert {k: it.captions[0] for k, it in items.items()} == {k: v for k, v in CAPTIONS.items() if k != "e0"}


def test_ingest_keeps_each_images_repeats_and_class_token(kohya_src, tmp_path):
    root, names = kohya_src
    ds = tmp_path / "ds"
    report = ingest([root], ds, progress=False)
    assert {Path(f).name: info for f, info in report.repeat_folders.items()} == {
        "10_zxq": (10, "zxq"), "3_zxq": (3, "zxq"), "5_zxq": (5, "zxq"), "2_blue_cat": (2, "blue_cat")}
    rows = {Path(r.path).stem: r for r in load_manifest(ds)}
    assert {k: r.source_repeats for k, r in rows.items()} == {
        "a0": 10, "a1": 10, "b0": 3, "c0": 5, "d0": 2, "loose": None, "e0": None}
    assert {k: r.class_token for k, r in rows.items()} == {
        "a0": "zxq", "a1": "zxq", "b0": "zxq", "c0": "zxq", "d0": "blue_cat", "loose": None, "e0": None}
    # training from the manifest: each image that many times per epoch, the class token for no caption
    items = _by_name(_read(ds), names)
    assert {k: it.repeats for k, it in items.items()} == REPEATS
    assert {k: it.captions[0] for k, it in items.items()} == CAPTIONS
    assert {k for k, it in items.items() if it.class_token} == {"a1", "c0", "d0"}
    # a repeat folder given as the source is kohya's train_data_dir, not one of its subsets
    ingest([root / "10_zxq"], tmp_path / "ds2", progress=False)
    assert {r.source_repeats for r in load_manifest(tmp_path / "ds2")} == {None}
    data = TrainData.load(DataSection(datasets=[DatasetEntry(path=str(ds))], resolution=64, min_bucket_side=64,
                                      max_bucket_side=128), seed=0)
    shown = Counter(data.train[i].source for batch in data.epoch_batches(0, 1) for i in batch)
    assert {Path(s).stem: n for s, n in shown.items()} == REPEATS


def test_kohya_export_writes_the_repeat_folders_again(kohya_src, tmp_path):
    root, names = kohya_src
    ds = tmp_path / "ds"
    ingest([root], ds, progress=False)
    out = tmp_path / "kohya"
    export_kohya(ds, out, progress=False)
    folders = {p.name: sorted(f.stem.split("_")[0] for f in p.iterdir() if f.suffix == ".png")
               for p in out.iterdir()}
    assert folders == {"10_zxq": ["a0", "a1"], "3_zxq": ["b0"], "5_zxq": ["c0"], "2_blue_cat": ["d0"],
                       "1_data": ["e0", "loose"]}
    assert not list((out / "10_zxq").glob("a1_*.txt")) and not list((out / "5_zxq").glob("*.txt"))
    items = _by_name(_read(out), names)
    assert {k: it.repeats for k, it in items.items()} == REPEATS
    assert {k: it.captions[0] for k, it in items.items()} == CAPTIONS  # the class token fallback applies


def test_webdataset_export_keeps_repeats_and_the_class_token_caption(kohya_src, tmp_path):
    root, names = kohya_src
    ds = tmp_path / "ds"
    ingest([root], ds, progress=False)
    export_webdataset(ds, tmp_path / "wds", progress=False)
    items = _by_name(_read(tmp_path / "wds"), names)
    assert {k: it.repeats for k, it in items.items()} == REPEATS
    assert {k: it.captions[0] for k, it in items.items()} == CAPTIONS


def _balanced(kohya_src, tmp_path, **kw):
    """Only the 10_/3_/5_zxq images, tagged so that a0, a1, b0 are `1girl` and c0 `no_humans`."""
    root, names = kohya_src
    ds = tmp_path / "ds"
    ingest([root], ds, progress=False)
    with Manifest(ds) as m:
        for r in list(m):
            stem = Path(r.path).stem
            if stem not in ("a0", "a1", "b0", "c0"):
                r.status = "filtered"
            r.tags = ["no humans"] if stem == "c0" else ["1girl", "long hair"]
            r.character_tags = []
            m.put(r)
    return ds, names, balance_dataset(ds, chart=False, **kw)


def test_balance_weights_multiply_the_source_repeats(kohya_src, tmp_path):
    # buckets: 1girl 3 images, no_humans 1 -> median 2 -> weights 2/3 and 2 (data.balance docstring)
    ds, names, report = _balanced(kohya_src, tmp_path)
    want = {"a0": 10 * 2 / 3, "a1": 10 * 2 / 3, "b0": 3 * 2 / 3, "c0": 5 * 2}
    assert _exposure(_read(ds), names) == pytest.approx(want)
    after = {b.name: b.after for b in report.buckets if b.images}
    assert after == pytest.approx({"1girl": 2 * 10 * 2 / 3 + 2, "no_humans": 10}, abs=1e-3)
    out = tmp_path / "kohya"
    export_kohya(ds, out, progress=False)
    # whole exposures as they are; a0 + a1 = 13.33 -> 13 whole showings, one image 7, the other 6
    assert sorted(p.name for p in out.iterdir()) == ["10_zxq", "2_zxq", "6_zxq", "7_zxq"]


def test_balance_target_size_resamples_source_repeats_times_weight(kohya_src, tmp_path):
    # shares source x weight: 6.67, 6.67, 2, 10 (sum 25.33); target 38 -> 10, 10, 3, 15 exactly
    ds, names, _ = _balanced(kohya_src, tmp_path, target_size=38)
    assert _exposure(_read(ds), names) == {"a0": 10, "a1": 10, "b0": 3, "c0": 15}
    out = tmp_path / "kohya"
    export_kohya(ds, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["10_zxq", "15_zxq", "3_zxq"]


def test_caption_extensions_have_one_home():
    from animegen.data import ingest as ingest_module
    from animegen.data import sidecar
    from animegen.train import config

    assert config.CAPTION_EXTENSIONS is sidecar.CAPTION_EXTENSIONS
    assert not hasattr(ingest_module, "SIDECAR_EXTENSIONS") and not hasattr(sidecar, "TEXT_SIDECAR_EXTENSIONS")
    assert DatasetEntry(path="x").caption_extension == list(sidecar.CAPTION_EXTENSIONS)
