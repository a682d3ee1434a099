"""The tags the DashAnime recipe keeps (issue #12 item 9, and item 8's trigger word in captions).

References, written from the community tools (not from animegen's code):
- Danbooru `app/models/post.rb` `add_automatic_tags`: resolution tags are recomputed from the file's size:
  incredibly_absurdres width or height >= 10000, absurdres width >= 3200 or height >= 2400, highres width
  >= 1600 or height >= 1200, lowres width <= 500 and height <= 500.
- Danbooru API posts: `tag_string` is space separated with underscores; `tag_string_character`,
  `tag_string_copyright`, `tag_string_artist`, `tag_string_general`, `tag_string_meta` split it by category.
- kohya sd-scripts `finetune/tag_images_by_wd14_tagger.py`: `--character_tag_expand` turns
  `chara_name_(series)` into `chara_name, series` and `chara_name_(costume)_(series)` into
  `chara_name_(costume), series`; `--remove_underscore` keeps the underscores of tags of 3 characters or
  fewer (`^_^`, `;_;`); `--append_tags` keeps the existing caption's tags first, then adds the new ones.
- SmilingWolf's wd-tagger app keeps the underscores of its kaomoji list (`(o)_(o)`, `<o>_<o>`, `||_||`, ...).
"""

from __future__ import annotations

import json

import pytest
from datakit import noise_image, write_tiny_tagger

from animegen.data.caption import caption_dataset, caption_row
from animegen.data.ingest import ingest
from animegen.data.manifest import ManifestRow, load_manifest
from animegen.data.sidecar import read_sidecar, read_sidecar_categories
from animegen.data.tagger import load_tag_csv
from animegen.prompts.tags import expand_character_tag, normalize_tag, resolution_tags, split_tags


def _tags(caption: str, prefix: str = "anime illustration") -> list[str]:
    tags = split_tags(caption)
    return tags[1:] if tags and tags[0] == prefix else tags


# ---- 1. sidecar tags survive the tagger; the trigger word keeps first place --------------------------------
def test_sidecar_danbooru_tags_are_kept_once_the_tagger_ran():
    row = ManifestRow(path="x", width=3500, height=2500,
                      source_tags=["hatsune miku", "vocaloid", "highres", "absurdres"],  # Danbooru sidecar
                      tags=["1girl", "long hair", "twintails"], character_tags=["hatsune miku"])  # tagger
    tags = _tags(caption_row(row, "dashanime"))
    for want in ("hatsune miku", "vocaloid", "highres", "absurdres", "1girl", "long hair", "twintails"):
        assert tags.count(want) == 1, (want, tags)


def test_kohya_txt_tags_are_merged_with_normalised_spaces_and_deduplicated():
    row = ManifestRow(path="x", width=640, height=640, source_caption="zxq, 1girl, long_hair,  red   circle",
                      tags=["1girl", "long hair", "solo", "circle"], character_tags=[])
    # kohya --append_tags order: the caption file's tags, then the tagger's new ones; counting tags lead,
    # and the trigger word (the caption's first tag, unknown to the tagger) stays in front of everything.
    assert caption_row(row, "dashanime") == "anime illustration, zxq, 1girl, solo, long hair, red circle, circle"


def test_lone_trigger_word_and_danbooru_tag_string_in_a_txt_are_tags():
    lone = ManifestRow(path="x", width=640, height=640, source_caption="zxq", tags=["1girl", "smile"],
                       character_tags=[])
    assert caption_row(lone, "dashanime") == "anime illustration, zxq, 1girl, smile"
    booru = ManifestRow(path="x", width=3500, height=2500, source_caption="hatsune_miku vocaloid highres absurdres",
                        tags=["1girl", "twintails"], character_tags=["hatsune miku"])
    tags = _tags(caption_row(booru, "dashanime"))
    assert sorted(tags) == sorted(["1girl", "hatsune miku", "vocaloid", "twintails", "absurdres", "highres"])


def test_trigger_word_leads_in_tag_ordering_presets_too():
    row = ManifestRow(path="x", width=640, height=640, source_caption="zxq, 1girl, smile",
                      tags=["1girl", "smile"], character_tags=["hatsune miku"], rating="general")
    tags = split_tags(caption_row(row, "animagine"))
    assert tags[0] == "zxq" and tags.count("zxq") == 1
    assert tags.index("1girl") < tags.index("hatsune miku") < tags.index("safe") < tags.index("smile")


def test_a_leading_tag_the_tagger_knows_is_not_a_trigger():
    row = ManifestRow(path="x", width=640, height=640, source_caption="smile, 1girl",
                      tags=["1girl", "smile"], character_tags=[])
    assert caption_row(row, "dashanime") == "anime illustration, 1girl, smile"


def test_trigger_survives_ingest_tag_caption(tmp_path):
    src = tmp_path / "src" / "10_zxq"
    src.mkdir(parents=True)
    for i in range(3):
        noise_image(700 + i, (40, 32)).save(src / f"c{i}.png")
        (src / f"c{i}.txt").write_text("zxq, 1girl, red circle\n")
    ds = tmp_path / "ds"
    ingest([src.parent], ds, progress=False)
    tagger_dir = tmp_path / "tagger"
    write_tiny_tagger(tagger_dir)
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tagging import tag_dataset

    tag_dataset(ds, WD14Tagger.from_pretrained(tagger_dir), progress=False)
    caption_dataset(ds, progress=False)
    rows = [r for r in load_manifest(ds) if r.ok]
    assert len(rows) == 3
    for r in rows:
        assert r.caption.startswith("anime illustration, zxq, "), r.caption
        tags = _tags(r.caption)
        assert "red circle" in tags and tags.count("1girl") == 1
        assert set(r.tags) | set(r.character_tags) <= set(tags)  # the tagger's tags are all there too


# ---- 2. resolution tags from the pixel size, Danbooru's thresholds ----------------------------------------
@pytest.mark.parametrize("size, want", [
    ((500, 500), ["lowres"]),
    ((501, 500), []),
    ((500, 64), ["lowres"]),
    ((1599, 1199), []),
    ((1600, 10), ["highres"]),
    ((10, 1200), ["highres"]),
    ((3199, 2399), ["highres"]),
    ((3200, 10), ["absurdres", "highres"]),
    ((10, 2400), ["absurdres", "highres"]),
    ((10_000, 10), ["incredibly absurdres", "absurdres", "highres"]),
    ((10, 10_000), ["incredibly absurdres", "absurdres", "highres"]),
])
def test_resolution_tags_follow_danbooru(size, want):
    assert sorted(resolution_tags(*size)) == sorted(want)


def test_caption_resolution_tags_come_from_the_pixel_size():
    small = ManifestRow(path="x", width=64, height=64, tags=["1girl"], character_tags=[])
    assert _tags(caption_row(small, "dashanime")) == ["1girl", "lowres"]
    # Danbooru recomputes its automatic tags from the file: a downscaled copy is no longer absurdres
    stale = ManifestRow(path="x", width=800, height=600, source_tags=["1girl", "absurdres", "highres"])
    assert _tags(caption_row(stale, "dashanime")) == ["1girl"]
    big = ManifestRow(path="x", width=1600, height=900, source_tags=["1girl", "lowres"])
    assert _tags(caption_row(big, "dashanime")) == ["1girl", "highres"]
    # opting out keeps the sidecar's own resolution tags and derives none
    assert _tags(caption_row(stale, "dashanime", resolution_tags=False)) == ["1girl", "absurdres", "highres"]
    assert _tags(caption_row(small, "dashanime", resolution_tags=False)) == ["1girl"]


# ---- 3. `name (series)` -> series tag (kohya --character_tag_expand, opt-in) ---------------------------------
def test_expand_character_tag_as_kohya():
    assert expand_character_tag("skadi (arknights)") == ("skadi", "arknights")
    assert expand_character_tag("skadi_(arknights)") == ("skadi", "arknights")
    assert expand_character_tag("chara (swimsuit) (series)") == ("chara (swimsuit)", "series")
    assert expand_character_tag("hatsune miku") == ("hatsune miku", None)
    assert expand_character_tag("(o)") == ("(o)", None)  # nothing before the bracket: not a name


def test_caption_character_tag_expand_is_opt_in():
    row = ManifestRow(path="x", width=640, height=640, tags=["1girl", "smile"],
                      character_tags=["skadi (arknights)", "chara (swimsuit) (series)"])
    plain = split_tags(caption_row(row, "animagine"))
    assert "skadi (arknights)" in plain and "arknights" not in plain
    tags = split_tags(caption_row(row, "animagine", character_tag_expand=True))
    assert "skadi (arknights)" not in tags
    # animagine order: count, character, series, ..., general
    assert tags[:5] == ["1girl", "skadi", "chara (swimsuit)", "arknights", "series"]


def test_cli_caption_character_tag_expand(tmp_path):
    from typer.testing import CliRunner

    from animegen.cli.main import app

    src = tmp_path / "src"
    src.mkdir()
    noise_image(1, (40, 40)).save(src / "a.png")
    (src / "a.json").write_text(json.dumps({"tag_string_character": "skadi_(arknights)",
                                            "tag_string_general": "1girl solo"}))
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    r = CliRunner().invoke(app, ["data", "caption", str(ds), "--character-tag-expand", "--no-resolution-tags"])
    assert r.exit_code == 0, r.output
    (row,) = load_manifest(ds)
    assert row.caption == "anime illustration, 1girl, solo, skadi, arknights"


# ---- 4. Danbooru JSON sidecars: kaomoji keep their underscores, categories are read ----------------------------
KAOMOJI_TAGS = ["^_^", ">_<", "o_o", "0_0", "|_|", "=_=", "u_u", "+_+", "._.", "@_@", ";_;", "(o)_(o)", "||_||"]


def test_kaomoji_keep_their_underscores():
    for face in KAOMOJI_TAGS:
        assert normalize_tag(face) == face
    assert normalize_tag("long_hair") == "long hair" and normalize_tag("k-on!") == "k-on!"


def test_danbooru_tag_string_splits_on_spaces_before_underscores(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    (tmp_path / "a.json").write_text(json.dumps({"tag_string": "1girl " + " ".join(KAOMOJI_TAGS) + " long_hair"}))
    _, tags = read_sidecar(img)
    assert tags == ["1girl", *KAOMOJI_TAGS, "long hair"]


def test_wd14_tag_names_keep_kaomoji(tmp_path):
    csv = tmp_path / "selected_tags.csv"
    rows = ["tag_id,name,category,count", "0,general,9,1", "1,long_hair,0,1"]
    rows += [f"{i + 2},{face},0,1" for i, face in enumerate(KAOMOJI_TAGS) if "," not in face]
    csv.write_text("\n".join(rows) + "\n")
    names, _ = load_tag_csv(csv)
    assert names == ["general", "long hair", *KAOMOJI_TAGS]


DANBOORU_POST = {
    "tag_string": "1girl ^_^ absurdres commentary_request hatsune_miku highres long_hair some_artist twintails "
                  "vocaloid",
    "tag_string_general": "1girl ^_^ long_hair twintails",
    "tag_string_character": "hatsune_miku",
    "tag_string_copyright": "vocaloid",
    "tag_string_artist": "some_artist",
    "tag_string_meta": "absurdres commentary_request highres",
}


def test_danbooru_json_categories(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    (tmp_path / "a.json").write_text(json.dumps(DANBOORU_POST))
    _, tags = read_sidecar(img)
    assert sorted(tags) == sorted(normalize_tag(t) for t in DANBOORU_POST["tag_string"].split())
    cats = read_sidecar_categories(img)
    assert cats["hatsune miku"] == "character" and cats["vocaloid"] == "series"
    assert cats["some artist"] == "artist" and cats["commentary request"] == "meta"
    assert cats["^_^"] == "general" and cats["long hair"] == "general"


def test_danbooru_json_categories_reach_the_caption(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise_image(3, (3300, 8)).save(src / "a.png")  # 3300 px wide: absurdres + highres on Danbooru
    (src / "a.json").write_text(json.dumps(DANBOORU_POST))
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    caption_dataset(ds, preset="animagine", progress=False)
    (row,) = load_manifest(ds)
    tags = split_tags(row.caption)
    assert "^_^" in tags and "^ ^" not in row.caption
    # animagine order: count, character, series, rating, artist, general, meta
    order = ["1girl", "hatsune miku", "vocaloid", "some artist", "long hair", "commentary request"]
    assert [tags.index(t) for t in order] == sorted(tags.index(t) for t in order), tags
    assert {"absurdres", "highres"} <= set(tags)
    assert len(tags) == len(set(tags))
