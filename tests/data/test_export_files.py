"""What `data export` reads and writes: only regular files within the byte limit are read (a source replaced
by a FIFO since ingest is a reported failure, not a hang), and no empty caption file is written.

Reference, kohya sd-scripts `library/train_util.py` `DreamBoothDataset.read_caption`: a caption file that
exists but holds no line stops training (`assert len(lines) > 0, "caption file is empty"`); an image with no
caption file is captioned with its folder's class tokens (the name after `N_`), and with "" when the folder
has none.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from datakit import noise_image

from animegen.data.export import export_kohya, export_webdataset
from animegen.data.ingest import ingest
from animegen.data.manifest import Manifest, load_manifest
from animegen.train.config import DatasetEntry
from animegen.train.data import read_dataset

TIMEOUT_S = 20


def _dataset(tmp_path, captions: dict[str, str | None], folder: str = "") -> Path:
    src = tmp_path / "src" / folder
    src.mkdir(parents=True)
    for i, (name, caption) in enumerate(captions.items()):
        noise_image(900 + i, (32, 32)).save(src / f"{name}.png")
        if caption is not None:
            (src / f"{name}.txt").write_text(caption)
    ds = tmp_path / "ds"
    ingest([tmp_path / "src"], ds, progress=False)
    return ds


def _run_with_timeout(fn, fifo: Path):
    """fn() in a thread; if it is still blocked after TIMEOUT_S, open the FIFO's other end to free it, fail."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a waiting reader gets EOF and returns
        thread.join(TIMEOUT_S)
        pytest.fail(f"export blocked on the FIFO {fifo} for {TIMEOUT_S} s")
    return result["value"]


@pytest.mark.parametrize("export", [export_kohya, export_webdataset])
def test_a_source_replaced_by_a_fifo_is_a_failure_not_a_hang(tmp_path, export):
    ds = _dataset(tmp_path, {"good": "1girl", "gone": "1girl"})
    fifo = tmp_path / "src" / "gone.png"
    fifo.unlink()
    os.mkfifo(fifo)
    report = _run_with_timeout(lambda: export(ds, tmp_path / "out", progress=False), fifo)
    assert [(Path(p).name, "not a regular file" in why) for p, why in report.failed] == [("gone.png", True)]
    assert report.written == 1


def test_a_source_grown_past_max_bytes_is_not_read(tmp_path):
    ds = _dataset(tmp_path, {"big": "1girl"})
    size = (tmp_path / "src" / "big.png").stat().st_size
    report = export_kohya(ds, tmp_path / "out", max_bytes=size - 1, progress=False)
    assert report.written == 0 and len(report.failed) == 1 and "too large" in report.failed[0][1]


def test_no_empty_caption_file_is_written(tmp_path):
    ds = _dataset(tmp_path, {"captioned": "zxq, 1girl", "bare": None}, folder="4_zxq")
    out = tmp_path / "out"
    export_kohya(ds, out, progress=False)
    texts = {p.stem.split("_")[0]: p.read_text() for p in out.rglob("*.txt")}
    assert texts == {"captioned": "zxq, 1girl"}
    captions = {Path(it.source).stem.split("_")[0]: it.captions[0] for it in read_dataset(DatasetEntry(path=str(out)))}
    assert captions == {"captioned": "zxq, 1girl", "bare": "zxq"}  # kohya's class-token fallback


def test_an_image_with_no_caption_and_no_class_token_trains_empty_not_as_a_folder_label(tmp_path):
    ds = _dataset(tmp_path, {"bare": None, "other": "1girl"})
    with Manifest(ds) as m:
        for r in m:
            r.bucket = "1girl_emotion"
            m.put(r)
    out = tmp_path / "out"
    export_kohya(ds, out, progress=False)
    assert not list(out.rglob("bare_*.txt"))
    items = {Path(it.source).stem.split("_")[0]: it for it in read_dataset(DatasetEntry(path=str(out)))}
    assert items["bare"].captions == [""] and items["other"].captions == ["1girl"]


def test_a_caption_removed_since_the_last_export_leaves_no_stale_file(tmp_path):
    ds = _dataset(tmp_path, {"img": "1girl"}, folder="2_zxq")
    out = tmp_path / "out"
    export_kohya(ds, out, progress=False)
    assert len(list(out.rglob("*.txt"))) == 1
    with Manifest(ds) as m:
        for r in m:
            r.source_caption = None
            m.put(r)
    assert all(r.source_caption is None for r in load_manifest(ds))
    export_kohya(ds, out, progress=False)
    assert not list(out.rglob("*.txt"))
    assert [it.captions[0] for it in read_dataset(DatasetEntry(path=str(out)))] == ["zxq"]
