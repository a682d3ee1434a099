"""One home for "the tags of a row": stats, balance, export and captions all see the sidecar's tags after the
tagger ran (issue #12 item 9).

Reference: kohya sd-scripts `finetune/tag_images_by_wd14_tagger.py --append_tags` keeps the tags already in an
image's caption file and appends the tagger's new ones (each tag once); Danbooru JSON posts carry
`tag_string_copyright` (`vocaloid`). A tag that only a sidecar gives is therefore one of the image's tags
whether or not a tagger ran afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

from datakit import noise_image, write_tiny_tagger

from animegen.data.balance import BucketRule, balance_dataset
from animegen.data.caption import caption_row
from animegen.data.export import export_kohya, export_webdataset
from animegen.data.ingest import ingest
from animegen.data.manifest import ManifestRow, load_manifest
from animegen.data.stats import tag_frequencies
from animegen.prompts.tags import split_tags
from animegen.train.config import DatasetEntry
from animegen.train.data import read_dataset


def _tagged(tmp_path) -> Path:
    """Two images whose only `vocaloid` / `zxq` tags come from sidecars, then tagged by a WD14 tagger."""
    src = tmp_path / "src"
    src.mkdir()
    noise_image(800, (40, 32)).save(src / "txt.png")
    (src / "txt.txt").write_text("zxq, vocaloid, 1girl\n")  # a kohya caption file's tag list
    noise_image(801, (40, 32)).save(src / "json.png")
    (src / "json.json").write_text(json.dumps({"tag_string": "hatsune_miku vocaloid 1girl",
                                               "tag_string_character": "hatsune_miku",
                                               "tag_string_copyright": "vocaloid"}))
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    write_tiny_tagger(tmp_path / "tagger")
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tagging import tag_dataset

    tag_dataset(ds, WD14Tagger.from_pretrained(tmp_path / "tagger"), general_threshold=0.0, progress=False)
    rows = load_manifest(ds)
    assert all(r.tags is not None and "vocaloid" not in r.tags for r in rows)  # the tagger ran, cannot say it
    return ds


def test_stats_count_sidecar_tags_after_tagging(tmp_path):
    counts = tag_frequencies(load_manifest(_tagged(tmp_path)))
    assert counts["vocaloid"] == 2 and counts["zxq"] == 1  # neither is in the tagger's vocabulary


def test_balance_buckets_by_sidecar_tags_after_tagging(tmp_path):
    ds = _tagged(tmp_path)
    balance_dataset(ds, rules=[BucketRule("vocaloid", all=["vocaloid"])], fallback="rest", chart=False)
    assert {r.bucket for r in load_manifest(ds)} == {"vocaloid"}


def test_export_captions_keep_sidecar_tags_after_tagging(tmp_path):
    ds = _tagged(tmp_path)  # tagged, not captioned: the exported text is the row's tags
    export_kohya(ds, tmp_path / "kohya", progress=False)
    export_webdataset(ds, tmp_path / "wds", progress=False)
    for out in ("kohya", "wds"):
        captions = [split_tags(it.captions[0]) for it in read_dataset(DatasetEntry(path=str(tmp_path / out)))]
        assert len(captions) == 2 and all("vocaloid" in c for c in captions), out
        assert any(c[0] == "zxq" for c in captions), out  # a caption file's first tag stays first


def test_all_four_agree_on_a_row():
    row = ManifestRow(path="x", width=640, height=640, source_caption="zxq, long_hair",
                      source_tags=["vocaloid"], tags=["1girl", "long hair"], character_tags=["hatsune miku"])
    assert row.all_tags == ["zxq", "long hair", "vocaloid", "hatsune miku", "1girl"]
    assert set(row.all_tags) == set(split_tags(caption_row(row, "none")))
