"""The trainer reads what `animegen data` writes: a manifest from `ingest` and WebDataset shards from
`export_webdataset`. The reference is the source folder the test writes itself (pixels and sidecar
captions); a 2-step run on each format sees exactly those images and captions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import tiny_config

from animegen.data.export import export_webdataset
from animegen.data.ingest import ingest
from animegen.train.config import DataSection, DatasetEntry
from animegen.train.data import TrainData, open_item_image
from animegen.train.trainer import Trainer

SOURCES = {  # name: (colour, size, caption)
    "red": ((230, 20, 20), (64, 64), "zxq, red, square"),
    "blue": ((20, 20, 230), (96, 64), "zxq, blue, wide"),
    "green": ((20, 200, 20), (64, 96), "zxq, green, tall"),
}


@pytest.fixture
def source(tmp_path):
    """A folder of images with `.txt` sidecars, plus an exact duplicate that ingest must not let train."""
    src = tmp_path / "src"
    src.mkdir()
    for name, (colour, size, caption) in SOURCES.items():
        img = Image.new("RGB", size, colour)
        img.putpixel((1, 1), (0, 0, 0))  # not a flat image: a distinct perceptual hash per source
        img.save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(caption)
    shutil.copy(src / "red.png", src / "red_copy.png")
    (src / "red_copy.txt").write_text("a duplicate that must not train")
    return src


def _expected() -> dict[str, np.ndarray]:
    """caption -> the pixels written for it."""
    out = {}
    for colour, size, caption in SOURCES.values():
        img = Image.new("RGB", size, colour)
        img.putpixel((1, 1), (0, 0, 0))
        out[caption] = np.asarray(img)
    return out


class RecordingTrainer(Trainer):
    """Records the captions the training loop encodes."""

    seen: list[str]

    def encode_text(self, captions):
        self.seen = getattr(self, "seen", []) + list(captions)
        return super().encode_text(captions)


def _check_read_and_train(tmp_path, model_dir, dataset_path, kind):
    entry = DatasetEntry(path=str(dataset_path))
    data = TrainData.load(DataSection(datasets=[entry], resolution=64, min_bucket_side=64, max_bucket_side=128),
                          seed=0)
    expected = _expected()
    got = {}
    for item in data.train:
        [caption] = item.captions
        got[caption] = np.asarray(open_item_image(item))
    assert got.keys() == expected.keys()  # the duplicate row is not ok, so it is not read
    for caption, pixels in expected.items():
        assert got[caption].shape == pixels.shape and np.array_equal(got[caption], pixels), caption
    cfg = tiny_config(model_dir, dataset_path, tmp_path / f"run_{kind}",
                      data={"datasets": [{"path": str(dataset_path), "kind": kind}], "resolution": 64,
                            "min_bucket_side": 64, "max_bucket_side": 128},
                      train={"max_steps": 2, "batch_size": 1, "device": "cpu"})
    trainer = RecordingTrainer(cfg)
    result = trainer.run()
    assert result.finished and len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert len(trainer.seen) == 2 and set(trainer.seen) <= expected.keys()


def test_trains_from_an_ingested_manifest(tmp_path, tiny_sd15_dir, source):
    report = ingest([source], tmp_path / "ds", progress=False)
    assert report is not None
    _check_read_and_train(tmp_path, tiny_sd15_dir, tmp_path / "ds", "manifest")


def test_trains_from_exported_webdataset_shards(tmp_path, tiny_sd15_dir, source):
    ingest([source], tmp_path / "ds", progress=False)
    export_webdataset(tmp_path / "ds", tmp_path / "wds", progress=False)
    assert list((tmp_path / "wds").glob("*.tar"))
    _check_read_and_train(tmp_path, tiny_sd15_dir, tmp_path / "wds", "webdataset")


def test_every_image_ingest_accepts_is_read_from_a_kohya_folder(tmp_path):
    """One list of image extensions: a `.tif` that `data ingest` takes was silently skipped by the kohya reader."""
    from animegen.data.manifest import load_manifest
    from animegen.train.data import read_dataset

    folder = tmp_path / "kohya" / "1_tif"
    folder.mkdir(parents=True)
    for i, suffix in enumerate((".tif", ".tiff", ".png")):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"img{i}{suffix}")
        (folder / f"img{i}.txt").write_text(f"zxq, img{i}")
    ingest([folder], tmp_path / "ingested", workers=1)
    accepted = {Path(r.path).name for r in load_manifest(tmp_path / "ingested") if r.ok}
    read = {Path(item.source).name for item in read_dataset(DatasetEntry(path=str(tmp_path / "kohya")))}
    assert accepted == {"img0.tif", "img1.tiff", "img2.png"} and read == accepted
