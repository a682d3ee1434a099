"""A LoRA's trigger words (its `animegen.convention`): a prompt without them logs one warning naming the LoRA and
the words it lacks; a prompt with them, or a LoRA that records none, logs nothing (issue #16)."""

from __future__ import annotations

import logging

import pytest
import torch

from animegen.generate import GenerationRequest, Generator
from animegen.models.lora import LoraFile, LoraModule, write_lora
from animegen.prompts.conventions import Convention, missing_triggers

SIZE = {"width": 64, "height": 64, "steps": 1, "sampler": "Euler", "seed": 3}


def _lora(path, metadata):
    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    module = LoraModule(target, "lora", {"lora_down.weight": torch.zeros(2, 32),
                                         "lora_up.weight": torch.zeros(32, 2)}, alpha=2.0)
    return write_lora(LoraFile({target: module}, {}), path, format="kohya", metadata=metadata)


@pytest.fixture(scope="module")
def engine(tiny_sd15_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    convention = Convention(title="zxq", trigger_words=("zxq", "red hair"))
    _lora(folder / "zxq.safetensors", convention.to_metadata(implementation="diffusers"))
    _lora(folder / "plain.safetensors", {})
    return Generator(tiny_sd15_dir, device="cpu", lora_dir=folder)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "trigger words" in r.getMessage()]


def test_prompt_without_trigger_words_warns_once(engine, caplog):
    with caplog.at_level(logging.WARNING):
        engine(GenerationRequest("1girl, smile <lora:zxq:0.8>", **SIZE))
    [message] = _warnings(caplog)
    assert "'zxq'" in message and "zxq, red hair" in message and "lacks 'zxq, red hair'" in message


def test_prompt_missing_one_trigger_word_names_it(engine, caplog):
    with caplog.at_level(logging.WARNING):
        engine(GenerationRequest("zxq, 1girl <lora:zxq:0.8>", **SIZE))
    [message] = _warnings(caplog)
    assert "lacks 'red hair'" in message


def test_prompt_with_trigger_words_or_lora_without_convention_is_quiet(engine, caplog):
    with caplog.at_level(logging.WARNING):
        engine(GenerationRequest("(zxq:1.2), Red_Hair, 1girl <lora:zxq:1>", **SIZE))
        engine(GenerationRequest("1girl <lora:plain:1>", **SIZE))
    assert _warnings(caplog) == []


def test_trigger_match_is_whole_words_ignoring_case_escapes_and_weights():
    conv = Convention(trigger_words=("zxq", "skadi (arknights)"))
    assert missing_triggers(conv, "ZXQ, [skadi \\(arknights\\)], 1girl") == []
    assert missing_triggers(conv, "zxqq, skadi") == ["zxq", "skadi (arknights)"]
    assert missing_triggers(None, "anything") == []
