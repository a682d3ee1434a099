"""Tag adherence: recall/precision per tag and category, counted by hand."""

from __future__ import annotations

import pytest

from animegen.data.tagger import TagResult
from animegen.evaluate.metrics import MetricError
from animegen.evaluate.tag_adherence import adherence_from_tags, prompt_tags, tag_adherence


def test_prompt_tags_strip_emphasis_loras_ratings_and_underscores():
    tags = prompt_tags("masterpiece, 1girl, (blue_hair:1.2), [smile], <lora:char:0.8> rating:general, hatsune miku")
    assert tags == ["masterpiece", "1girl", "blue hair", "smile", "general", "hatsune miku"]


PROMPTS = ["1girl, blue hair, smile, masterpiece, general", "1girl, red hair, hatsune miku, explicit"]


def results():
    return [
        # prompt 0, image a: everything found
        TagResult(rating="general", general={"1girl": 0.9, "blue_hair": 0.8, "smile": 0.6}, character={}),
        # prompt 0, image b: blue hair missing, red hair wrongly found, rating wrong
        TagResult(rating="sensitive", general={"1girl": 0.9, "red_hair": 0.7, "smile": 0.5}, character={}),
        # prompt 1, image c: red hair + character found, rating right
        TagResult(rating="explicit", general={"1girl": 0.9, "red_hair": 0.9}, character={"hatsune_miku": 0.95}),
    ]


def test_recall_and_precision_per_tag_category_and_prompt():
    out = adherence_from_tags([PROMPTS[0], PROMPTS[0], PROMPTS[1]], results())
    per_tag = out["per_tag"]
    assert per_tag["1girl"] == {"category": "count", "support": 3, "hits": 3, "detected": 3,
                                "recall": 1.0, "precision": 1.0}
    assert per_tag["blue hair"]["recall"] == pytest.approx(1 / 2) and per_tag["blue hair"]["precision"] == 1.0
    # red hair: asked once (image c, found), also found on image b where it was not asked
    assert per_tag["red hair"]["support"] == 1 and per_tag["red hair"]["detected"] == 2
    assert per_tag["red hair"]["recall"] == 1.0 and per_tag["red hair"]["precision"] == pytest.approx(0.5)
    assert per_tag["hatsune miku"]["category"] == "character" and per_tag["hatsune miku"]["recall"] == 1.0
    assert per_tag["general"]["category"] == "rating" and per_tag["general"]["recall"] == pytest.approx(0.5)
    assert "masterpiece" in out["ignored_tags"] and "masterpiece" not in per_tag
    general = out["per_category"]["general"]  # blue hair, red hair, smile
    assert (general["support"], general["hits"], general["detected"]) == (5, 4, 5)
    rating = out["per_category"]["rating"]  # general x2 asked (1 hit), explicit x1 asked (1 hit)
    assert (rating["support"], rating["hits"], rating["detected"]) == (3, 2, 2)
    overall = out["overall"]
    assert overall["support"] == 3 + 5 + 1 + 3 and overall["hits"] == 3 + 4 + 1 + 2
    p0 = out["per_prompt"][PROMPTS[0]]
    assert p0["recall"] == pytest.approx((4 / 4 + 2 / 4) / 2)
    assert p0["missing"] == {"blue hair": 1, "general": 1}


def test_tagger_vocabulary_marks_unknown_tags_as_ignored():
    class Tagger:  # the WD14Tagger interface: label list + categories + tag()
        names = ("1girl", "smile", "blue_hair", "general", "explicit", "hatsune_miku")
        categories = (0, 0, 0, 9, 9, 4)
        name = "fake"

        def tag(self, images, general_threshold, character_threshold):
            assert general_threshold == 0.35 and character_threshold == 0.85
            return results()[: len(images)]

    out = tag_adherence(["a", "b"], [PROMPTS[0], PROMPTS[0]], Tagger(), progress=False)
    assert "smile" in out["per_tag"] and "red hair" not in out["per_tag"]
    assert out["tagger"] == "fake"
    only_unknown = Tagger()
    with pytest.raises(MetricError, match="no taggable"):
        tag_adherence(["a"], ["masterpiece, best quality"], only_unknown, progress=False)
    with pytest.raises(MetricError, match="one prompt per image"):
        tag_adherence(["a", "b"], [PROMPTS[0]], only_unknown, progress=False)
