"""kohya DreamBooth-folder captions and the dataset summary.

The reference is kohya sd-scripts (`library/config_util.py` `generate_dreambooth_subsets_config_by_subdirs`,
`library/train_util.py` `DreamBoothDataset`): a folder `N_name` repeats its images N times and `name` (the
folder name after the first `N_`, underscores kept) is the class token an image without a caption file trains
with; the caption file is `<image stem><caption_extension>`, kohya's default extension being `.caption`;
`ss_num_train_images` is "num train images * repeats" and `ss_tag_frequency` counts the captions' tags.
We differ on purpose where kohya fails: an empty caption file (kohya: assertion error) also takes the class
token, and `.txt` and `.caption` are both looked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from animegen.train.config import ConfigError, DataSection, DatasetEntry, validate_config
from animegen.train.data import TrainData, read_dataset


def _image(path: Path, size=(64, 64), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _captions(root: Path, **entry) -> dict[str, list[str]]:
    return {Path(it.source).name: it.captions for it in read_dataset(DatasetEntry(path=str(root), **entry))}


def test_images_without_a_caption_take_the_folder_class_token(tmp_path):
    root = tmp_path / "ds"
    _image(root / "10_zxq girl" / "none.png")  # no caption file at all
    _image(root / "10_zxq girl" / "empty.png")
    (root / "10_zxq girl" / "empty.txt").write_text("  \n")  # kohya: "caption file is empty" assertion
    _image(root / "10_zxq girl" / "own.png")
    (root / "10_zxq girl" / "own.txt").write_text("zxq, smile")
    _image(root / "3_blue_hat" / "a.png")  # kohya: "_".join(name.split("_")[1:]) -> "blue_hat"
    items = {Path(it.source).name: it for it in read_dataset(DatasetEntry(path=str(root)))}
    assert items["none.png"].captions == ["zxq girl"]
    assert items["empty.png"].captions == ["zxq girl"]
    assert items["own.png"].captions == ["zxq, smile"]
    assert items["a.png"].captions == ["blue_hat"]
    assert [items[n].repeats for n in ("none.png", "empty.png", "own.png", "a.png")] == [10, 10, 10, 3]


def test_caption_and_txt_files_are_both_found_in_the_configured_order(tmp_path):
    root = tmp_path / "ds"
    f = root / "2_zxq"
    for name in ("cap", "txt", "both"):
        _image(f / f"{name}.png")
    (f / "cap.caption").write_text("from caption")
    (f / "txt.txt").write_text("from txt")
    (f / "both.caption").write_text("both caption")
    (f / "both.txt").write_text("both txt")
    # default: both extensions, .txt first (the order `data ingest` reads sidecars in)
    assert _captions(root) == {"cap.png": ["from caption"], "txt.png": ["from txt"], "both.png": ["both txt"]}
    assert _captions(root, caption_extension=[".caption", ".txt"]) == {
        "cap.png": ["from caption"], "txt.png": ["from txt"], "both.png": ["both caption"]}
    # kohya's own default, one extension, written without the dot as kohya also accepts
    assert _captions(root, caption_extension="caption") == {
        "cap.png": ["from caption"], "txt.png": ["zxq"], "both.png": ["both caption"]}
    # a .txt-only config keeps working: `.caption` files are then not read
    assert _captions(root, caption_extension=".txt") == {
        "cap.png": ["zxq"], "txt.png": ["from txt"], "both.png": ["both txt"]}


def test_caption_extension_is_validated():
    with pytest.raises(ConfigError, match="caption_extension"):
        validate_config({"data": {"datasets": [{"path": "x", "caption_extension": []}]}})
    cfg = validate_config({"data": {"datasets": [{"path": "x", "caption_extension": ["txt", ".caption"]}]}})
    assert cfg.data.datasets[0].caption_extension == [".txt", ".caption"]


def _summary_dataset(root: Path) -> Path:
    f = root / "10_zxq"
    _image(f / "none.png")
    _image(f / "empty.png")
    (f / "empty.txt").write_text("")
    _image(f / "own.png")
    (f / "own.txt").write_text("zxq, smile, red hair")
    g = root / "2_wide"
    for i in range(2):
        _image(g / f"w{i}.png", size=(192, 64))
        (g / f"w{i}.txt").write_text("zxq, wide")
    return root


def test_the_summary_counts_images_repeats_buckets_and_captions(tmp_path):
    root = _summary_dataset(tmp_path / "ds")
    cfg = DataSection(datasets=[DatasetEntry(path=str(root))], resolution=128, min_bucket_side=64,
                      max_bucket_side=256)
    summary = TrainData.load(cfg, seed=0).summary()
    [ds] = summary.datasets
    assert ds.images == 5 and ds.held_out == 0
    assert ds.repeats == {10: 3, 2: 2}
    assert ds.images_x_repeats == 3 * 10 + 2 * 2
    assert ds.buckets == {"128x128": 3, "192x64": 2}  # squares scale up; 3:1 images fit 192x64 exactly
    assert (ds.captions_missing, ds.captions_empty, ds.captions_from_class_token, ds.captions_final_empty) \
        == (1, 1, 2, 0)
    assert ds.top_tags[:2] == [("zxq", 5), ("wide", 2)]  # the two class-token captions count as "zxq"
    assert dict(ds.top_tags) == {"zxq": 5, "wide": 2, "smile": 1, "red hair": 1}
    assert summary.images_x_repeats == 34 and not summary.warnings
    text = summary.format()
    assert "images x repeats 34" in text and "2 from the class token" in text


def test_a_dataset_whose_captions_all_end_empty_warns_loudly(tmp_path, caplog):
    root = tmp_path / "ds"
    _image(root / "img0.png")  # a flat folder: no `N_name`, so no class token either
    _image(root / "img1.png")
    (root / "img1.caption").write_text("")
    cfg = DataSection(datasets=[DatasetEntry(path=str(root), caption_extension=".txt")], resolution=64,
                      min_bucket_side=64, max_bucket_side=128)
    with caplog.at_level(logging.WARNING, logger="animegen.train"):
        summary = TrainData.load(cfg, seed=0).summary()
        summary.log()
    [ds] = summary.datasets
    assert ds.captions_final_empty == 2 and ds.captions_missing == 2
    assert summary.warnings and "every caption" in summary.warnings[0] and str(root) in summary.warnings[0]
    assert any(r.levelno == logging.WARNING and "every caption" in r.getMessage() for r in caplog.records)


def test_training_prints_the_summary_before_step_1_and_counts_repeats_in_the_metadata(
        tmp_path, tiny_sd15_dir, capsys):
    from safetensors import safe_open
    from train_helpers import tiny_config

    from animegen.train.trainer import Trainer

    root = tmp_path / "ds"
    for i in range(2):
        _image(root / "5_zxq" / f"img{i}.png")  # no captions: kohya trains them as "zxq"

    class Recording(Trainer):
        printed_before_step_1 = ""

        def train_step(self, step, micro_batches):
            if step == 1:
                Recording.printed_before_step_1 = capsys.readouterr().out
            return super().train_step(step, micro_batches)

    cfg = tiny_config(tiny_sd15_dir, root, tmp_path / "run", train={"max_steps": 1, "batch_size": 1,
                                                                     "device": "cpu"})
    result = Recording(cfg).run()
    assert "images x repeats 10" in Recording.printed_before_step_1
    assert result.dataset_summary.datasets[0].images_x_repeats == 10
    path = next(p for p in result.exported.values() if str(p).endswith(".safetensors"))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_train_images"] == "10"  # kohya: 2 images x 5 repeats
    freq = json.loads(meta["ss_tag_frequency"])
    assert any(tags.get("zxq") == 2 for tags in freq.values()), freq
