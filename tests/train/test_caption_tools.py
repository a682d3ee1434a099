"""kohya's caption tools: per-tag dropout, `keep_tokens_separator`, `{a|b}` wildcards and multi-line
caption files (one line per showing).

Reference: kohya sd-scripts `library/train_util.py` `BaseDataset.process_caption`: whole-caption dropout
first; then (wildcards on) a random line of a multi-line caption and each `{a|b|c}` replaced by one of its
options (`{{`/`}}` are literal braces); then the tags after the fixed ones (`keep_tokens`, or those before
`keep_tokens_separator`, with a fixed suffix after a second separator) are shuffled and each dropped with
`caption_tag_dropout_rate`. Our randomness is the per-sample RNG of (seed, step, slot), so a caption is a
pure function of it.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from animegen.prompts.tags import split_tags
from animegen.train.config import DataSection, DatasetEntry
from animegen.train.data import Item, make_caption, read_dataset, step_rng

N = 3000


def _item(caption: str) -> Item:
    return Item("x.png", [caption], 1.0)


def _five_sigma(n: int, p: float) -> float:
    return 5 * math.sqrt(n * p * (1 - p))


def test_tag_dropout_keeps_the_keep_tokens_and_drops_the_rate_of_the_rest():
    tags = ["trigger"] + [f"t{i}" for i in range(9)]
    cfg = DataSection(keep_tokens=1, caption_tag_dropout_rate=0.3)
    kept = 0
    for s in range(N):
        out = split_tags(make_caption(_item(", ".join(tags)), cfg, random.Random(s)))
        assert out[0] == "trigger"
        assert out[1:] == [t for t in tags[1:] if t in out[1:]]  # no shuffle asked for: order kept
        kept += len(out) - 1
    n = 9 * N
    assert abs(kept - 0.7 * n) < _five_sigma(n, 0.7)


def test_keep_tokens_separator_fixes_a_head_and_a_suffix():
    cfg = DataSection(keep_tokens_separator="|||", shuffle_tags=True, keep_tokens=5)
    caption = "zxq, 1girl ||| red hair, smile, outdoors, sky ||| masterpiece"
    orders = set()
    for s in range(200):
        out = split_tags(make_caption(_item(caption), cfg, random.Random(s)))
        assert out[:2] == ["zxq", "1girl"] and out[-1] == "masterpiece"  # the separator wins over keep_tokens
        assert sorted(out[2:-1]) == sorted(["red hair", "smile", "outdoors", "sky"])
        orders.add(tuple(out))
    assert len(orders) > 10
    # Neither shuffling nor dropout: the caption trains without the separator (kohya leaves `|||` in it).
    plain = make_caption(_item(caption), DataSection(keep_tokens_separator="|||"), random.Random(0))
    assert plain == "zxq, 1girl, red hair, smile, outdoors, sky, masterpiece"


def test_tag_dropout_never_drops_the_separator_head():
    cfg = DataSection(keep_tokens_separator="|||", caption_tag_dropout_rate=1.0)
    assert make_caption(_item("a, b ||| c, d ||| e"), cfg, random.Random(0)) == "a, b, e"


def test_wildcards_pick_each_option_equally_often():
    counts = Counter(make_caption(_item("1girl, {red|green|blue} hair"), DataSection(), random.Random(s))
                     for s in range(N))
    assert set(counts) == {f"1girl, {c} hair" for c in ("red", "green", "blue")}
    assert all(abs(n - N / 3) < _five_sigma(N, 1 / 3) for n in counts.values())


def test_wildcards_are_deterministic_per_seed_and_step():
    item, cfg = _item("{a|b|c|d}, {e|f|g|h}, x"), DataSection(shuffle_tags=True)
    runs = [[make_caption(item, cfg, step_rng(7, step, 0)) for step in range(50)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 10
    assert runs[0] != [make_caption(item, cfg, step_rng(8, step, 0)) for step in range(50)]


def test_escaped_braces_stay_literal():
    assert make_caption(_item("{{a|b}}, c"), DataSection(), random.Random(0)) == "{a|b}, c"


def test_multi_line_caption_files_train_one_line_per_showing(tmp_path):
    from PIL import Image

    folder = tmp_path / "ds" / "1_zxq"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    (folder / "a.txt").write_text("zxq, long caption\n\nzxq, short\nzxq, {one|two}\n", encoding="utf-8")
    [item] = read_dataset(DatasetEntry(path=str(tmp_path / "ds")))
    counts = Counter(make_caption(item, DataSection(), random.Random(s)) for s in range(N))
    lines = {"zxq, long caption": 1 / 3, "zxq, short": 1 / 3, "zxq, one": 1 / 6, "zxq, two": 1 / 6}
    assert set(counts) == set(lines)  # the blank line is no caption
    assert all(abs(counts[c] - N * p) < _five_sigma(N, p) for c, p in lines.items())
