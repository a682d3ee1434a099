"""A1111-style conditioning, checked against diffusers' own `encode_prompt` and hand-computed emphasis."""

import pytest
import torch

from animegen.models.tiny import build_tiny_pipeline
from animegen.prompts.encode import (
    ConditioningPair,
    count_tokens,
    encode_prompts,
    encode_text,
    tokenize_prompt,
)

PROMPT = "1girl, solo, long hair, looking at viewer, smile"
NEGATIVE = "lowres, bad anatomy, worst quality"


@pytest.fixture(scope="module")
def sd15():
    pipe = build_tiny_pipeline("sd15")
    # diffusers' SD1 clip-skip path still reads `text_encoder.text_model`, which transformers 5 removed;
    # alias it (without registering a submodule) so diffusers can compute its own reference values.
    if not hasattr(pipe.text_encoder, "text_model"):
        object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_pipeline("sdxl")


def diffusers_sd1(pipe, text, clip_skip=1):
    """diffusers' positive-prompt embedding with A1111's clip skip k == diffusers' k - 1."""
    embeds, _ = pipe.encode_prompt(text, "cpu", 1, False, clip_skip=None if clip_skip == 1 else clip_skip - 1)
    return embeds


def diffusers_sdxl(pipe, text):
    embeds, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
    return embeds, pooled


def close(a, b, tol=1e-6):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_sd1_plain_prompt_equals_diffusers(sd15, clip_skip):
    cond = encode_prompts(sd15, PROMPT, NEGATIVE, clip_skip=clip_skip)
    close(cond.prompt_embeds, diffusers_sd1(sd15, PROMPT, clip_skip))
    # diffusers applies clip skip to the positive prompt only; A1111 (and we) apply it to both.
    close(cond.negative_prompt_embeds, diffusers_sd1(sd15, NEGATIVE, clip_skip))
    assert cond.pooled_prompt_embeds is None
    if clip_skip == 1:  # with no skip diffusers' own positive/negative pair matches as a whole
        pos, neg = sd15.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
        close(cond.prompt_embeds, pos)
        close(cond.negative_prompt_embeds, neg)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sdxl_plain_prompt_equals_diffusers(sdxl, clip_skip):
    # A1111's SDXL clip skip 1 and 2 are both diffusers' default, the penultimate layer (test_sdxl_clip_skip.py)
    cond = encode_prompts(sdxl, PROMPT, NEGATIVE, clip_skip=clip_skip)
    embeds, pooled = diffusers_sdxl(sdxl, PROMPT)
    close(cond.prompt_embeds, embeds)
    close(cond.pooled_prompt_embeds, pooled)
    neg_embeds, neg_pooled = diffusers_sdxl(sdxl, NEGATIVE)
    close(cond.negative_prompt_embeds, neg_embeds)
    close(cond.negative_pooled_prompt_embeds, neg_pooled)
    assert set(cond.as_pipeline_kwargs()) == {"prompt_embeds", "negative_prompt_embeds",
                                               "pooled_prompt_embeds", "negative_pooled_prompt_embeds"}


def test_sdxl_second_tokenizer_pads_with_its_own_pad_token(sdxl):
    chunk = tokenize_prompt(sdxl.tokenizer_2, "a cat")[0]
    from animegen.prompts.encode import _chunk_ids

    ids_1, _ = _chunk_ids(sdxl.tokenizer, chunk)
    ids_2, _ = _chunk_ids(sdxl.tokenizer_2, chunk)
    assert ids_1[-1] == sdxl.tokenizer.eos_token_id and ids_2[-1] == 0  # "!" has id 0
    assert ids_2 == sdxl.tokenizer_2("a cat", padding="max_length", max_length=77)["input_ids"]


def _same_images(pipe):
    kwargs = {"num_inference_steps": 1, "height": 64, "width": 64, "output_type": "np", "guidance_scale": 5.0}
    plain = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, generator=torch.Generator().manual_seed(1), **kwargs)
    ours = pipe(**encode_prompts(pipe, PROMPT, NEGATIVE).as_pipeline_kwargs(),
                generator=torch.Generator().manual_seed(1), **kwargs)
    assert abs(plain.images - ours.images).max() < 1e-5


def test_generation_with_our_embeddings_reproduces_plain_diffusers_sd1(sd15):
    _same_images(sd15)


def test_generation_with_our_embeddings_reproduces_plain_diffusers_sdxl(sdxl):
    _same_images(sdxl)


def test_emphasis_scales_token_then_restores_mean(sd15):
    z = diffusers_sd1(sd15, "a cat sitting")[0]  # BOS, a, cat, sitting, EOS...
    weights = torch.ones(77)
    weights[2] = 1.5
    scaled = z * weights[:, None]
    expected_original = scaled * (z.mean() / scaled.mean())
    cond = encode_prompts(sd15, "a (cat:1.5) sitting", "", emphasis="Original")
    close(cond.prompt_embeds[0], expected_original, 1e-5)
    cond = encode_prompts(sd15, "a (cat:1.5) sitting", "", emphasis="No norm")
    close(cond.prompt_embeds[0], scaled, 1e-6)
    cond = encode_prompts(sd15, "a (cat:1.5) sitting", "", emphasis="Ignore")
    close(cond.prompt_embeds[0], z, 1e-6)
    with pytest.raises(ValueError, match="emphasis"):
        encode_prompts(sd15, "x", "", emphasis="Loud")


def test_sdxl_emphasis_is_normalised_per_text_encoder(sdxl):
    z, pooled = diffusers_sdxl(sdxl, "a cat sitting")
    z = z[0]
    weights = torch.ones(77)
    weights[2] = 1.21
    parts = []
    for half in (z[:, :64], z[:, 64:]):  # CLIP-L then bigG channels, each restored to its own mean
        scaled = half * weights[:, None]
        parts.append(scaled * (half.mean() / scaled.mean()))
    cond = encode_prompts(sdxl, "a ((cat)) sitting", "")
    close(cond.prompt_embeds[0], torch.cat(parts, dim=-1), 1e-5)
    close(cond.pooled_prompt_embeds, pooled)  # emphasis does not touch the pooled embedding


def test_long_prompt_uses_two_chunks_each_encoded_alone(sd15, sdxl):
    long_prompt = "cat " * 100  # "cat" is one token: 100 tokens -> chunks of 75 and 25
    cond = encode_prompts(sd15, long_prompt, "")
    assert cond.prompt_embeds.shape == (1, 154, 64)
    close(cond.prompt_embeds[:, :77], diffusers_sd1(sd15, "cat " * 75))
    close(cond.prompt_embeds[:, 77:], diffusers_sd1(sd15, "cat " * 25))
    # the negative is padded with an empty chunk (the encoding of "") to the same length
    assert cond.negative_prompt_embeds.shape == (1, 154, 64)
    close(cond.negative_prompt_embeds[:, :77], diffusers_sd1(sd15, ""))
    close(cond.negative_prompt_embeds[:, 77:], diffusers_sd1(sd15, ""))

    cond = encode_prompts(sdxl, long_prompt, "")
    assert cond.prompt_embeds.shape == (1, 154, 128)
    first, pooled = diffusers_sdxl(sdxl, "cat " * 75)
    close(cond.prompt_embeds[:, :77], first)
    close(cond.pooled_prompt_embeds, pooled)  # pooled comes from the first chunk, as in A1111
    # SDXL: an empty negative is zeros (A1111); its padding chunk is the encoding of ""
    assert not cond.negative_prompt_embeds[:, :77].any() and not cond.negative_pooled_prompt_embeds.any()
    close(cond.negative_prompt_embeds[:, 77:], diffusers_sdxl(sdxl, "")[0])


def test_sdxl_empty_negative_is_zero_like_diffusers(sdxl):
    cond = encode_prompts(sdxl, PROMPT, "")
    pos, neg, _, neg_pooled = sdxl.encode_prompt(PROMPT, device="cpu", negative_prompt=None)
    assert not neg.any() and not neg_pooled.any()  # diffusers' force_zeros_for_empty_prompt
    close(cond.prompt_embeds, pos)
    close(cond.negative_prompt_embeds, neg)
    close(cond.negative_pooled_prompt_embeds, neg_pooled)
    kept = encode_prompts(sdxl, PROMPT, "", zero_empty_negative=False)
    close(kept.negative_prompt_embeds, diffusers_sdxl(sdxl, "")[0])


def test_break_starts_a_new_chunk(sd15):
    cond = encode_prompts(sd15, "a cat BREAK a dog", "a tree")
    assert cond.prompt_embeds.shape == (1, 154, 64)
    close(cond.prompt_embeds[:, :77], diffusers_sd1(sd15, "a cat"))
    close(cond.prompt_embeds[:, 77:], diffusers_sd1(sd15, "a dog"))
    close(cond.negative_prompt_embeds[:, :77], diffusers_sd1(sd15, "a tree"))


def test_comma_backtracking(sd15):
    tok = sd15.tokenizer
    # comma is token 71 of 81: the 10 words after it move to the second chunk together
    chunks = tokenize_prompt(tok, "a " * 70 + ", " + "b " * 10)
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == tok.convert_tokens_to_ids(",</w>")
    # comma more than 20 tokens before the end of the chunk: plain split at 75
    chunks = tokenize_prompt(tok, "a " * 10 + ", " + "b " * 70)
    assert [len(c.tokens) for c in chunks] == [75, 6]
    # back-tracking off
    chunks = tokenize_prompt(tok, "a " * 70 + ", " + "b " * 10, comma_backtrack=0)
    assert [len(c.tokens) for c in chunks] == [75, 6]
    assert count_tokens(tok, "a cat") == (2, 75)


def test_emphasis_none_keeps_brackets_as_text(sd15):
    tok = sd15.tokenizer
    chunk = tokenize_prompt(tok, "(cat:1.2)", emphasis="None")[0]
    assert chunk.tokens == tok("(cat:1.2)", add_special_tokens=False)["input_ids"]
    assert set(chunk.weights) == {1.0}


def test_batches_and_negative_broadcast(sd15):
    cond = encode_prompts(sd15, ["a cat", "cat " * 80], "ugly")
    assert cond.prompt_embeds.shape == (2, 154, 64) and cond.negative_prompt_embeds.shape == (2, 154, 64)
    close(cond.prompt_embeds[0, :77], diffusers_sd1(sd15, "a cat")[0])
    close(cond.negative_prompt_embeds[1, :77], diffusers_sd1(sd15, "ugly")[0])
    with pytest.raises(ValueError, match="negative"):
        encode_prompts(sd15, ["a", "b"], ["c"])
    repeated = cond.repeat_interleave(3)
    assert isinstance(repeated, ConditioningPair) and repeated.prompt_embeds.shape[0] == 6
    close(repeated.prompt_embeds[2], cond.prompt_embeds[0])


def test_clip_skip_out_of_range(sd15, sdxl):
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd15, "x", "", clip_skip=5)  # tiny encoder has 4 layers
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sdxl, "x", "", clip_skip=0)


def test_encode_text_on_bare_modules_supports_training(sdxl):
    tokenizers = [sdxl.tokenizer, sdxl.tokenizer_2]
    encoders = [sdxl.text_encoder, sdxl.text_encoder_2]
    out = encode_text(tokenizers, encoders, [PROMPT, "cat " * 200], clip_skip=2, max_chunks=2)
    assert out.embeds.shape == (2, 154, 128) and out.pooled.shape == (2, 64)
    via_pipe = encode_prompts(sdxl, PROMPT, "", clip_skip=2)
    close(out.embeds[:1, :77], via_pipe.prompt_embeds)
    # gradients reach the text encoder weights (training the text encoder)
    out.embeds.sum().backward()
    grad = sdxl.text_encoder.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    sdxl.text_encoder.zero_grad(set_to_none=True)
    sdxl.text_encoder_2.zero_grad(set_to_none=True)


def test_emphasis_on_a_zero_mean_chunk_stays_finite():
    """A chunk whose mean is ~0 (LayerNorm output with zero bias) must not divide by ~0 into inf/NaN."""
    import torch

    from animegen.prompts.encode import apply_emphasis

    z = torch.randn(1, 77, 16)
    z = z - z.mean(dim=-1, keepdim=True)  # every token zero-mean, like a bias-free LayerNorm
    w = torch.ones(1, 77)
    w[0, 3] = 1.2
    out = apply_emphasis(z, w)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 3], z[0, 3] * 1.2, atol=1e-6)
    # an ordinary chunk still gets A1111's mean restoration
    z2 = torch.randn(1, 77, 16) + 0.5
    out2 = apply_emphasis(z2, w)
    assert torch.allclose(out2.mean(), z2.mean(), atol=1e-6)
