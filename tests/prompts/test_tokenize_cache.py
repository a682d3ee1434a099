"""Tokenizing a prompt builds the tokenizer's vocabulary once per tokenizer, not once per prompt.

`get_vocab()` on a CLIP tokenizer builds a ~49k-entry dict (~90 ms); `tokenize_prompt` needs one id from it
(the comma's, for A1111's comma back-tracking). Generation tokenizes every prompt and training every caption,
so the lookup is cached per tokenizer object. These tests count the calls; they never time anything.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from animegen.models.assets import load_tokenizer
from animegen.prompts.encode import encode_text, tokenize_prompt

PROMPTS = [f"1girl, (silver hair:1.{i}), smile, looking at viewer, {i} cats" for i in range(10)]


def counting_tokenizer(pad_token: str = "<|endoftext|>"):
    """A fresh CLIP tokenizer whose `get_vocab` calls are counted in `.vocab_calls`."""
    tokenizer = load_tokenizer(pad_token=pad_token)
    real = tokenizer.get_vocab
    tokenizer.vocab_calls = 0

    def get_vocab():
        tokenizer.vocab_calls += 1
        return real()

    tokenizer.get_vocab = get_vocab
    return tokenizer


def test_ten_prompts_build_the_vocabulary_once():
    tokenizer = counting_tokenizer()
    for prompt in PROMPTS:
        tokenize_prompt(tokenizer, prompt)
    assert tokenizer.vocab_calls == 1


def test_the_cached_comma_still_drives_comma_backtracking():
    tokenizer = counting_tokenizer()
    tokenize_prompt(tokenizer, "warm up")
    chunks = tokenize_prompt(tokenizer, "a " * 70 + ", " + "b " * 10)  # full mid-phrase: the b's move on
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert tokenizer.vocab_calls == 1


def test_each_tokenizer_is_looked_up_once_on_its_own():
    first, second = counting_tokenizer(), counting_tokenizer(pad_token="!")  # SDXL's two tokenizers
    for prompt in PROMPTS:
        tokenize_prompt(first, prompt)
        tokenize_prompt(second, prompt)
    assert (first.vocab_calls, second.vocab_calls) == (1, 1)


def test_training_captions_build_the_vocabulary_once():
    """The training path: `encode_text` over ten distinct captions, one call each as the trainer makes them."""
    torch = pytest.importorskip("torch")
    from animegen.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15")
    tokenizer = counting_tokenizer()
    with torch.no_grad():
        for caption in PROMPTS:
            encode_text(tokenizer, pipe.text_encoder, caption)
    assert tokenizer.vocab_calls == 1


def test_the_cache_does_not_keep_a_tokenizer_alive():
    tokenizer = counting_tokenizer()
    tokenize_prompt(tokenizer, "1girl, smile")
    ref = weakref.ref(tokenizer)
    del tokenizer
    gc.collect()
    assert ref() is None
