"""Captions train as plain text unless `data.weighted_captions = true` (kohya's `--weighted_captions`).

References, written independently of `animegen.prompts`:
* plain: kohya's `get_input_ids` is a plain `tokenizer(caption, padding="max_length", max_length=77)` call,
  and the conditioning is the text encoder's output for exactly those ids (CLIP's `last_hidden_state` at
  clip skip 1), so every character of `skadi (arknights), (o)_(o), \\m/` reaches the encoder;
* weighted (`test_text.py`): A1111 emphasis, i.e. what `animegen generate` encodes for the same text;
* a prompt typed later in A1111 syntax escapes the brackets and backslashes of a tag (A1111's own advice for
  `name (series)` tags: `\\(` `\\)`, and `\\\\` for a backslash) and must reach the encoder as the very tokens
  the caption trained with.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import RED, tiny_config, write_kohya

from animegen.models.loading import load_pipeline
from animegen.prompts.encode import encode_prompts
from animegen.train.trainer import Trainer

CAPTION = r"skadi (arknights), (o)_(o), \m/"
TYPED = r"skadi \(arknights\), \(o\)_\(o\), \\m/"  # the same three tags typed as an A1111 prompt
EMPHASIS = "zxq, (red hair:1.2), [blue eyes], ((smile))"
LONG = ", ".join(f"tag{i} (word{i})" for i in range(30))  # > 75 tokens: several chunks
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _trainer(tmp_path, model_dir, **data) -> Trainer:
    folder = write_kohya(tmp_path / "data", "red", RED, "zxq", n=1)
    trainer = Trainer(tiny_config(model_dir, folder, tmp_path / "run", data=data))
    trainer.setup()
    return trainer


def _record_ids(module: torch.nn.Module, seen: list[torch.Tensor]):
    return module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().cpu().clone()))


def _plain_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids


@pytest.mark.parametrize("caption", [CAPTION, EMPHASIS])
def test_default_captions_reach_the_encoder_as_plain_text(tmp_path, tiny_sd15_dir, caption):
    trainer = _trainer(tmp_path, tiny_sd15_dir)
    seen: list[torch.Tensor] = []
    hook = _record_ids(trainer.pipe.text_encoder, seen)
    with torch.no_grad():
        ours, _ = trainer.encode_text([caption])
    hook.remove()
    tokenizer = trainer.pipe.tokenizer
    assert [row.tolist() for t in seen for row in t] == [_plain_ids(tokenizer, caption)]
    gen = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32)
    ids = torch.tensor([_plain_ids(gen.tokenizer, caption)])
    with torch.no_grad():
        ref = gen.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(ours, ref, **TOL)


def test_long_plain_captions_keep_every_token_in_order(tmp_path, tiny_sd15_dir):
    trainer = _trainer(tmp_path, tiny_sd15_dir)
    tokenizer = trainer.pipe.tokenizer
    seen: list[torch.Tensor] = []
    hook = _record_ids(trainer.pipe.text_encoder, seen)
    with torch.no_grad():
        trainer.encode_text([LONG])
    hook.remove()
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    rows = [row.tolist() for t in seen for row in t]
    assert len(rows) > 1 and all(len(r) == 77 and r[0] == tokenizer.bos_token_id for r in rows)
    content = [i for r in rows for i in r if i not in special]
    assert content == tokenizer(LONG, add_special_tokens=False).input_ids


def test_sdxl_default_captions_reach_both_encoders_as_plain_text(tmp_path, tiny_sdxl_dir):
    trainer = _trainer(tmp_path, tiny_sdxl_dir)
    seen1: list[torch.Tensor] = []
    seen2: list[torch.Tensor] = []
    hooks = [_record_ids(trainer.pipe.text_encoder, seen1), _record_ids(trainer.pipe.text_encoder_2, seen2)]
    with torch.no_grad():
        trainer.encode_text([CAPTION])
    for h in hooks:
        h.remove()
    assert [r.tolist() for t in seen1 for r in t] == [_plain_ids(trainer.pipe.tokenizer, CAPTION)]
    assert [r.tolist() for t in seen2 for r in t] == [_plain_ids(trainer.pipe.tokenizer_2, CAPTION)]


def test_a_prompt_typed_in_a1111_syntax_reaches_the_encoder_as_the_trained_caption(tmp_path, tiny_sd15_dir):
    from animegen.prompts.tags import escape_tag, split_tags

    # the tagger -> prompt direction: tag names escaped as prompts need them give what a user types
    assert ", ".join(escape_tag(t) for t in split_tags(CAPTION)) == TYPED
    trainer = _trainer(tmp_path, tiny_sd15_dir)
    gen = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32)
    trained: list[torch.Tensor] = []
    typed: list[torch.Tensor] = []
    hooks = [_record_ids(trainer.pipe.text_encoder, trained), _record_ids(gen.text_encoder, typed)]
    with torch.no_grad():
        caption_embeds, _ = trainer.encode_text([CAPTION])
        prompt_embeds = encode_prompts(gen, TYPED, "").prompt_embeds  # what `animegen generate` encodes
    for h in hooks:
        h.remove()
    [trained_ids] = [r.tolist() for t in trained for r in t]
    typed_ids = typed[0][0].tolist()  # row 0: the prompt (row 1 is the negative)
    assert typed_ids == trained_ids == _plain_ids(gen.tokenizer, CAPTION)
    torch.testing.assert_close(prompt_embeds, caption_embeds, **TOL)
