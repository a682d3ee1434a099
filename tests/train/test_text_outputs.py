"""`data.cache_text_encoder_outputs` (kohya's `--cache_text_encoder_outputs`): every caption an image can be shown
with is encoded before the first step, then the text encoders leave the training device.

Specification: the set of captions is exactly what the caption rules can produce (hand-listed here; and every
caption the real random draws give lies in it); a run with the option equals the run without it bit for bit,
and never calls a text encoder after the cache is filled: released to the meta device (the "GPU" here, forced),
any call would fail; what cannot be listed ahead (per-tag shuffling, a trained encoder) is refused.
"""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

from animegen.train import text_outputs
from animegen.train.config import DataSection, validate_config
from animegen.train.data import Item, make_caption
from animegen.train.text_outputs import caption_variants
from animegen.train.trainer import train


def _item(*captions: str) -> Item:
    return Item(source="img.png", captions=list(captions), repeats=1.0, size=(64, 64), bucket=(64, 64))


def test_the_variants_are_every_caption_the_rules_can_give():
    data = DataSection(caption_dropout=0.1)
    item = _item("{red|blue} hair, smile\nsolo", "long caption")
    expected = {"red hair, smile", "blue hair, smile", "solo", "long caption", ""}
    assert caption_variants(item, data) == expected
    seen = {make_caption(item, data, random.Random(seed)) for seed in range(300)}
    assert seen == expected  # the real draws reach each, and nothing else


def test_keep_tokens_separator_needs_no_draw_and_is_one_caption():
    data = DataSection(keep_tokens_separator="|||")
    item = _item("zxq, 1girl ||| red hair, smile ||| masterpiece")
    (only,) = caption_variants(item, data)
    assert only == make_caption(item, data, random.Random(0))


def test_too_many_alternatives_are_refused_naming_the_image():
    item = _item(" ".join("{a|b}" for _ in range(9)))  # 512 captions
    with pytest.raises(text_outputs.CaptionVariantsError, match="img.png"):
        caption_variants(item, DataSection())


def test_what_cannot_be_encoded_ahead_is_refused_together(tmp_path):
    with pytest.raises(Exception, match="train_text_encoder.*shuffle_tags") as e:
        validate_config({"adapter": {"train_text_encoder": True},
                         "data": {"cache_text_encoder_outputs": True, "shuffle_tags": True}})
    assert "cache_text_encoder_outputs = false" in str(e.value)


def test_a_cached_run_equals_the_plain_run_with_the_encoders_released(tmp_path, tiny_sd15_dir, monkeypatch):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, {red|crimson} square", n=3)
    runs = {}
    for cached in (False, True):
        if cached:  # force the accelerator path: released encoders go to the meta device (no weights)
            monkeypatch.setattr(text_outputs, "HOST", torch.device("meta"))
        cfg = tiny_config(tiny_sd15_dir, data, tmp_path / f"run-{cached}",
                          data={"caption_dropout": 0.3, "cache_text_encoder_outputs": cached,
                                "validation_split": 0.34},
                          validation={"every_steps": 2}, train={"max_steps": 4, "batch_size": 2, "device": "cpu"})
        runs[cached] = train(cfg)
    assert runs[True].losses == runs[False].losses and runs[True].val_losses == runs[False].val_losses
    a, b = (load_file(runs[c].exported["kohya"]) for c in (False, True))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
