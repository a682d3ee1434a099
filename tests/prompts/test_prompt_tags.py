"""Tag normalisation, escaping and kohya-style shuffling."""

import random

import pytest

from animegen.prompts.parser import parse_prompt_attention
from animegen.prompts.tags import KAOMOJI, escape_tag, normalize_tag, shuffle_tags, split_tags, unescape_tag


def test_normalize_underscores_but_not_kaomoji():
    assert normalize_tag("long_hair") == "long hair"
    assert normalize_tag("  looking_at__viewer ") == "looking at viewer"
    assert normalize_tag("hatsune_miku_(cosplay)") == "hatsune miku (cosplay)"
    for face in ["^_^", ">_<", "o_o", "0_0", "(o)_(o)", "+_+", "=_=", "<o>_<o>", "u_u", "x_x", "|_|",
                 "||_||", "@_@"]:
        assert face in KAOMOJI
        assert normalize_tag(face) == face


@pytest.mark.parametrize("tag", ["hatsune miku (cosplay)", "(o)_(o)", "\\m/", "[abstract]", "a:b (c) [d]"])
def test_escaped_tag_parses_back_to_itself_with_weight_one(tag):
    escaped = escape_tag(tag)
    assert parse_prompt_attention(escaped) == [(tag, 1.0)]
    assert unescape_tag(escaped) == tag


def test_escape_tag_exact_form():
    assert escape_tag("hatsune miku (cosplay)") == "hatsune miku \\(cosplay\\)"


def test_split_tags_strips_and_drops_empties():
    assert split_tags(" 1girl,solo , ,long hair,") == ["1girl", "solo", "long hair"]
    assert split_tags("") == []


def test_shuffle_keeps_first_tokens_and_permutes_the_rest():
    caption = "1girl, hatsune miku, a, b, c, d, e, f"
    out = split_tags(shuffle_tags(caption, 2, random.Random(3)))
    assert out[:2] == ["1girl", "hatsune miku"]
    assert sorted(out[2:]) == ["a", "b", "c", "d", "e", "f"]
    # kohya: the tail is shuffled by the given rng in place; the same seed gives the same order.
    reference = ["a", "b", "c", "d", "e", "f"]
    random.Random(3).shuffle(reference)
    assert out[2:] == reference
    # different seeds reach different orders
    orders = {shuffle_tags(caption, 2, random.Random(s)) for s in range(20)}
    assert len(orders) > 5


def test_shuffle_edge_cases():
    assert shuffle_tags("a, b", 5, random.Random(0)) == "a, b"
    assert shuffle_tags("a, b, c", 1, random.Random(0), dropout=1.0) == "a"
    with pytest.raises(ValueError, match="keep_tokens"):
        shuffle_tags("a", -1, random.Random(0))


def test_shuffle_with_keep_tokens_separator():
    out = shuffle_tags("1girl, miku ||| a, b, c, d ||| masterpiece", 0, random.Random(1),
                       keep_tokens_separator="|||")
    tags = split_tags(out)
    assert tags[:2] == ["1girl", "miku"] and tags[-1] == "masterpiece"
    assert sorted(tags[2:-1]) == ["a", "b", "c", "d"]


# ---- the tag vocabularies: one home, the same answer in data/, prompts/presets and evaluate/ ----------
COUNT_TAGS = ["1girl", "2boys", "6+girls", "1other", "multiple girls", "multiple others", "no humans"]
NOT_COUNT = ["girl", "long hair", "multiple", "1girl solo", "humans"]


def test_count_tags_are_recognised_alike_by_presets_captions_and_tag_adherence():
    from animegen.data.caption import categorize_tags
    from animegen.evaluate.tag_adherence import _category
    from animegen.prompts.presets import build_prompt
    from animegen.prompts.tags import is_count_tag

    for tag in COUNT_TAGS + NOT_COUNT:
        want = tag in COUNT_TAGS
        assert is_count_tag(tag) is want, tag
        assert ("count" in categorize_tags([tag])) is want, tag
        assert (_category(tag, set(), None, None) == "count") is want, tag
        # animagine moves count tags to the front of the free text
        assert build_prompt("animagine", f"smile, {tag}", quality="", aesthetic="", rating="").startswith(tag) is want


def test_rating_words_mean_the_same_everywhere():
    from animegen.evaluate.tag_adherence import _category, prompt_tags
    from animegen.prompts.presets import build_prompt
    from animegen.prompts.tags import RATING_ALIASES, RATING_TAGS, RATINGS

    assert RATINGS == ("general", "sensitive", "questionable", "explicit")
    for word in RATING_TAGS:
        assert _category(RATING_ALIASES.get(word, word), set(), None, None) == "rating", word
        assert prompt_tags(word) == [RATING_ALIASES.get(word, word)]
        # a rating the user typed replaces the preset's default rating
        assert "safe" not in build_prompt("animagine", f"1girl, {word}").split(", ") or word == "safe", word
