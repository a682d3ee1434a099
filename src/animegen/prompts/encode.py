"""A1111-style weighted text conditioning for diffusers' CLIP text encoders (SD1.x and SDXL).

Why not `pipe.encode_prompt`: diffusers truncates at 77 tokens and ignores `(emphasis:1.2)`, so prompts
copied from A1111 / Civitai would give different images. This module reproduces A1111's
`sd_hijack_clip` conditioning instead, and for a plain prompt of at most 75 tokens it is numerically the
same as diffusers' own encoding, so nothing changes for prompts diffusers already handles.

Pipeline of one prompt:
1. `parse_prompt_attention` splits it into (fragment, weight) pairs (`BREAK` markers included).
2. Fragments are tokenized without BOS/EOS and packed into chunks of 75 tokens. When a chunk fills up
   and the last comma lies within the last `comma_backtrack` (20) tokens, the text after that comma
   moves to the next chunk; `BREAK` closes the current chunk.
3. Every chunk becomes BOS + 75 tokens + EOS padded with the tokenizer's own pad id (SDXL's second
   tokenizer pads with `!`, id 0) and goes through the encoder on its own.
4. Hidden states are multiplied by the token weights and (emphasis "Original") rescaled so the chunk's
   mean is unchanged; chunks are concatenated along the sequence axis (77 per chunk).

Textual-inversion embeddings (`prompts.embeddings`, A1111's `sd_hijack_clip` + `EmbeddingsWithFixes`): a
fragment's tokens that spell an embedding's name (longest name first) become its N vectors, each with
the fragment's weight. They are never split: when N no longer fits the chunk, the chunk closes and the
vectors open the next one. The vectors replace the token embeddings of their positions before the
position embeddings are added; each SDXL encoder takes its own (`clip_l`, `clip_g`).
Deliberately unlike A1111: when comma back-tracking moves the words after the last comma to the next
chunk, an embedding among them moves with its vectors; A1111 moves only its placeholder tokens, so the
next chunk gets `!` tokens in its place and the vectors overwrite the old chunk's padding.

Clip skip uses A1111's numbering (1 = no skip): SD1 takes `hidden_states[-clip_skip]` then the final
layer norm. SDXL always takes the penultimate hidden state of both encoders, without the layer norm, whatever
the clip skip: that is what it was trained on and what A1111 1.10 does (its "Clip skip" does not reach SDXL
unless the CLIP-L-only `sdxl_clip_l_skip` option is on; kohya sd-scripts ignores clip skip for SDXL too), so
"Clip skip: 2" infotexts (Pony and most SDXL anime models) and "Clip skip: 1" give the same conditioning, as in
A1111, Forge and ComfyUI. Above 2 the tools part: Forge and ComfyUI go one layer deeper per step
(`hidden_states[-clip_skip]` of both encoders); we follow A1111 (no effect) and log a warning.
SD2 is the same story one layer up: its OpenCLIP encoder is always read at the penultimate layer (the diffusers
conversion already dropped the last one, so that is our `hidden_states[-1]` plus the final layer norm) and
A1111's "Clip skip" does not reach it (`sd_hijack_open_clip.py`); a higher value is ignored with a warning.
SDXL's pooled embedding is text_encoder_2's projected pooled output of the first chunk.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import torch

from animegen.models.family import SD1, SDXL, family_of, get_family
from animegen.prompts.embeddings import EmbeddingError, EmbeddingLibrary, encoder_slots
from animegen.prompts.parser import BREAK_MARKER, parse_prompt_attention

log = logging.getLogger(__name__)

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
"""Original: weights + mean restore; No norm: weights only; Ignore: parse but weight 1; None: no parsing."""


EMBEDDING_PLACEHOLDER = 0
"""The token id standing for an embedding's vectors in `PromptChunk.tokens` (A1111's, any id but EOS works)."""


@dataclass
class PromptChunk:
    """Up to 75 content token ids of one prompt (no BOS/EOS) and their emphasis weights.

    `fixes`: (offset in `tokens`, Embedding) for each embedding whose vectors take the placeholder tokens there.
    """

    tokens: list[int]
    weights: list[float]
    fixes: list = field(default_factory=list)


@dataclass
class TextConditioning:
    """Encoder output for a batch of prompts: (B, 77 * chunks, C) hidden states, SDXL pooled (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class ConditioningPair:
    """Positive and negative conditioning with equal sequence length, ready for a diffusers pipeline."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def as_pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for `pipe(...)` in place of `prompt=` / `negative_prompt=`."""
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs

    def repeat_interleave(self, n: int) -> ConditioningPair:
        """Each prompt repeated `n` times along the batch axis (diffusers' num_images_per_prompt)."""
        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat_interleave(n, dim=0)

        return ConditioningPair(rep(self.prompt_embeds), rep(self.negative_prompt_embeds),
                                rep(self.pooled_prompt_embeds), rep(self.negative_pooled_prompt_embeds))


def _check_emphasis(emphasis: str) -> None:
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis {emphasis!r}: choose one of {', '.join(EMPHASIS_MODES)}")


def parse_for_emphasis(text: str, emphasis: str = "Original") -> list[tuple[str, float]]:
    """(fragment, weight) pairs for `text` under an emphasis mode."""
    _check_emphasis(emphasis)
    if emphasis == "None":
        return [(text, 1.0)]
    parsed = parse_prompt_attention(text)
    if emphasis == "Ignore":
        return [(t, w) if (t, w) == BREAK_MARKER else (t, 1.0) for t, w in parsed]
    return parsed


_COMMA_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def comma_token_id(tokenizer) -> int | None:
    """The id of `,</w>` in `tokenizer`'s vocabulary (None if absent), looked up once per tokenizer object.

    `get_vocab()` builds the whole ~49k-entry dict (~90 ms on a CLIP tokenizer) and every generated prompt and
    training caption needs this one id. Adding tokens never renumbers existing ones, so the id stays right;
    the cache holds tokenizers weakly (one that cannot be weakly referenced is asked every time).
    """
    try:
        return _COMMA_IDS[tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return tokenizer.get_vocab().get(",</w>")
    comma = _COMMA_IDS[tokenizer] = tokenizer.get_vocab().get(",</w>")
    return comma


def tokenize_prompt(tokenizer, text: str, emphasis: str = "Original", comma_backtrack: int = COMMA_BACKTRACK,
                    *, embeddings: EmbeddingLibrary | None = None) -> list[PromptChunk]:
    """Split a prompt into 75-token chunks with A1111's comma back-tracking and `BREAK` handling; names of
    `embeddings` become their vectors' placeholders (`PromptChunk.fixes`), never split across chunks."""
    parsed = parse_for_emphasis(text, emphasis)
    # verbose=False: the "longer than 77 tokens" warning does not apply, chunking handles any length
    ids_per_fragment = tokenizer([t for t, _ in parsed], add_special_tokens=False, truncation=False,
                                 verbose=False)["input_ids"]
    comma = comma_token_id(tokenizer)
    match = embeddings.matcher(tokenizer) if embeddings is not None else None

    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, fixes, last_comma
        chunks.append(PromptChunk(tokens, weights, fixes))
        tokens, weights, fixes, last_comma = [], [], [], -1

    for (fragment, weight), ids in zip(parsed, ids_per_fragment):
        if (fragment, weight) == BREAK_MARKER:
            close_chunk()
            continue
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif (comma_backtrack > 0 and len(tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                # The chunk is full mid-phrase: move the words after the last comma to the next chunk.
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                moved_fixes = [(offset - cut, e) for offset, e in fixes if offset >= cut]  # A1111 leaves these
                tokens, weights, fixes = tokens[:cut], weights[:cut], [f for f in fixes if f[0] < cut]
                close_chunk()
                tokens, weights, fixes = moved_tokens, moved_weights, moved_fixes
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            found = match(ids, position) if match is not None else None
            if found is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            embedding, name_length = found
            if embedding.count > CHUNK_LENGTH:
                raise EmbeddingError(f"embedding {embedding.name!r} ({embedding.path}) has {embedding.count} "
                                     f"vectors; a prompt chunk holds {CHUNK_LENGTH}")
            if len(tokens) + embedding.count > CHUNK_LENGTH:
                close_chunk()  # an embedding is never split across chunks
            fixes.append((len(tokens), embedding))
            tokens += [EMBEDDING_PLACEHOLDER] * embedding.count
            weights += [weight] * embedding.count
            position += name_length
    if tokens or not chunks:
        close_chunk()
    return chunks


def count_tokens(tokenizer, text: str, emphasis: str = "Original", *,
                 embeddings: EmbeddingLibrary | None = None) -> tuple[int, int]:
    """(tokens used, token capacity of the chunks) like A1111's `30/75` counter (an embedding counts its vectors)."""
    chunks = tokenize_prompt(tokenizer, text, emphasis, embeddings=embeddings)
    used = sum(len(c.tokens) for c in chunks[:-1]) + len(chunks[-1].tokens)
    return used, CHUNK_LENGTH * len(chunks)


def _chunk_ids(tokenizer, chunk: PromptChunk) -> tuple[list[int], list[float]]:
    """BOS + tokens + EOS, padded to 77 with the tokenizer's pad id; weights 1.0 outside the text."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    ids += [pad] * (CHUNK_LENGTH + 2 - len(ids))
    weights = [1.0, *chunk.weights] + [1.0] * (CHUNK_LENGTH + 1 - len(chunk.weights))
    return ids, weights


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor, emphasis: str = "Original") -> torch.Tensor:
    """Scale hidden states (N, T, C) by per-token weights (N, T); "Original" restores each row's mean.

    A1111 restores the mean of the whole chunk batch; we restore it per prompt chunk, which is the same
    for the usual one-prompt batch and keeps a prompt's conditioning independent of its batch mates.
    """
    _check_emphasis(emphasis)
    if emphasis in ("Ignore", "None") or bool((weights == 1.0).all()):
        return z
    z32 = z.float()
    scaled = z32 * weights.to(z32)[..., None]
    if emphasis == "Original":
        old_mean = z32.mean(dim=(1, 2), keepdim=True)
        new_mean = scaled.mean(dim=(1, 2), keepdim=True)
        # A1111 divides unguarded. A chunk whose mean is ~0 (e.g. a final LayerNorm with zero bias, as in
        # freshly initialised encoders) would blow up to inf/NaN, so such rows keep their weighted values.
        tiny = new_mean.abs() <= 1e-4 * scaled.abs().mean(dim=(1, 2), keepdim=True)
        scaled = torch.where(tiny, scaled, scaled * (old_mean / torch.where(tiny, 1.0, new_mean)))
    return scaled.to(z.dtype)


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The encoder's final LayerNorm (transformers < 5 nests it under `.text_model`, 5.x does not)."""
    from animegen.models.ldm_names import clip_text_model

    return clip_text_model(text_encoder).final_layer_norm


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where the module's inputs must go; with CPU offloading that is the hook's device, not the weights'."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers: no offload-aware helper
        return next(module.parameters()).device
    return get_module_execution_device(module)


SDXL_CLIP_SKIP = 2
"""The layer SDXL always conditions on, in A1111's numbering (the penultimate)."""

FIXED_CLIP_SKIP = {"sdxl": SDXL_CLIP_SKIP, "sd2": 1}
"""Families whose conditioning layer A1111's "Clip skip" does not change: the layer each always uses."""


@cache  # once per value: training encodes every caption
def _warn_fixed_clip_skip(arch: str, clip_skip: int) -> None:
    log.warning("clip skip %d has no effect on %s: it conditions on the penultimate layer of its text "
                "encoder(s), as A1111 does (Forge and ComfyUI would go deeper)", clip_skip, arch.upper())


def _check_clip_skip(clip_skip: int, text_encoder, sdxl: bool) -> None:
    num_layers = text_encoder.config.num_hidden_layers
    if clip_skip < 1 or (not sdxl and clip_skip > num_layers):
        bound = "at least 1" if sdxl else f"between 1 and {num_layers} for this text encoder ({num_layers} layers)"
        raise ValueError(f"clip_skip must be {bound}, got {clip_skip}")


def _hidden_states(text_encoder, ids: torch.Tensor, clip_skip: int, sdxl: bool):
    """The conditioning hidden states for A1111's `clip_skip`, plus the projected pooled output if any."""
    _check_clip_skip(clip_skip, text_encoder, sdxl)
    out = text_encoder(ids, output_hidden_states=True)
    if sdxl:
        z = out.hidden_states[-SDXL_CLIP_SKIP]
    else:
        z = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    pooled = getattr(out, "text_embeds", None)
    return z, pooled


@contextmanager
def _embedding_vectors(text_encoder, fixes: list[tuple[int, int, torch.Tensor]]):
    """While active, the encoder's token embeddings of chunk `row`, positions `start`.. are the given vectors
    (A1111's `EmbeddingsWithFixes`: before the position embeddings are added)."""
    if not fixes:
        yield
        return
    from animegen.models.ldm_names import clip_text_model

    def insert(module, args, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for row, start, vectors in fixes:
            out[row, start:start + vectors.shape[0]] = vectors.to(out)
        return out

    handle = clip_text_model(text_encoder).embeddings.token_embedding.register_forward_hook(insert)
    try:
        yield
    finally:
        handle.remove()


def encode_text(tokenizers, text_encoders, prompts: str | Sequence[str], clip_skip: int = 1,
                emphasis: str = "Original", *, arch: str | None = None, min_chunks: int = 1,
                max_chunks: int | None = None, comma_backtrack: int = COMMA_BACKTRACK,
                embeddings: EmbeddingLibrary | None = None) -> TextConditioning:
    """Encode prompts with bare tokenizer(s) and text encoder(s); no pipeline needed (used by training).

    `tokenizers` / `text_encoders`: one of each (SD1) or two (SDXL: CLIP-L then OpenCLIP-bigG with
    projection). `arch` ("sd1" or "sdxl") defaults to "sdxl" when two encoders are given. All prompts are
    padded with empty chunks to the longest one (at least `min_chunks`); `max_chunks` truncates longer
    prompts (kohya's max_token_length = 75 * max_chunks). Gradients flow: wrap in `torch.no_grad()`
    yourself when not training the text encoder. `embeddings`: textual inversions usable by name.
    """
    if not isinstance(tokenizers, (list, tuple)):
        tokenizers = [tokenizers]
    if not isinstance(text_encoders, (list, tuple)):
        text_encoders = [text_encoders]
    if len(tokenizers) != len(text_encoders) or not tokenizers:
        raise ValueError(f"give one tokenizer per text encoder (got {len(tokenizers)} tokenizers, "
                         f"{len(text_encoders)} text encoders)")
    arch = (get_family(arch) if arch else SDXL if len(text_encoders) == len(SDXL.text_encoders) else SD1).name
    _check_emphasis(emphasis)
    if arch in FIXED_CLIP_SKIP:
        if clip_skip > max(FIXED_CLIP_SKIP[arch], 2):  # 1 and 2 are what users pick for any model
            _warn_fixed_clip_skip(arch, clip_skip)
        if clip_skip >= 1:
            clip_skip = FIXED_CLIP_SKIP[arch]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts to encode")
    if max_chunks is not None and max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")

    per_encoder_chunks = []
    for tokenizer in tokenizers:
        cache: dict[str, list[PromptChunk]] = {}
        batch = []
        for text in prompts:
            if text not in cache:
                cache[text] = tokenize_prompt(tokenizer, text, emphasis, comma_backtrack,
                                              embeddings=embeddings)[:max_chunks]
            batch.append(cache[text])
        per_encoder_chunks.append(batch)
    n_chunks = max(min_chunks, *(len(c) for batch in per_encoder_chunks for c in batch))
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)

    hidden, pooled = [], None
    slots = encoder_slots(arch, text_encoders) if embeddings is not None else [None] * len(text_encoders)
    for tokenizer, encoder, batch, slot in zip(tokenizers, text_encoders, per_encoder_chunks, slots):
        ids, weights, fixes = [], [], []
        for chunks in batch:
            padded = chunks + [PromptChunk([], [])] * (n_chunks - len(chunks))
            for chunk in padded:
                chunk_ids, chunk_weights = _chunk_ids(tokenizer, chunk)
                fixes += [(len(ids), 1 + offset, e.vectors_for(slot, slots, get_family(arch).display_name))
                          for offset, e in chunk.fixes]  # 1 +: after BOS
                ids.append(chunk_ids)
                weights.append(chunk_weights)
        device = execution_device(encoder)
        with _embedding_vectors(encoder, fixes):
            z, chunk_pooled = _hidden_states(encoder, torch.tensor(ids, device=device), clip_skip,
                                             sdxl=arch == "sdxl")
        z = apply_emphasis(z, torch.tensor(weights, device=device), emphasis)
        hidden.append(z.reshape(len(prompts), n_chunks * z.shape[1], z.shape[2]))
        if chunk_pooled is not None:
            pooled = chunk_pooled.reshape(len(prompts), n_chunks, -1)[:, 0]  # first chunk, as A1111
    if arch == "sdxl" and pooled is None:
        raise ValueError("SDXL conditioning needs a text encoder with projection "
                         "(CLIPTextModelWithProjection) as the last text encoder")
    return TextConditioning(torch.cat(hidden, dim=-1), pooled if arch == "sdxl" else None)


def _as_batch(prompt: str | Sequence[str], negative: str | Sequence[str]) -> tuple[list[str], list[str]]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
    if len(negatives) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts: give one "
                         "negative prompt per prompt, or a single string for all")
    return prompts, negatives


def pipeline_text_modules(pipe) -> tuple[list, list, str]:
    """(tokenizers, text encoders, arch) of a diffusers SD1 / SDXL pipeline (SDXL refiner: encoder 2 only)."""
    family = family_of(pipe) if getattr(pipe, "text_encoder", None) or getattr(pipe, "text_encoder_2", None) else None
    pairs = [(getattr(pipe, te.tokenizer, None), getattr(pipe, te.component, None))
             for te in (family.text_encoders if family else ())]
    pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
    if not pairs:
        raise ValueError("this pipeline has no text encoder / tokenizer to encode prompts with")
    return [p[0] for p in pairs], [p[1] for p in pairs], family.name


def encode_prompts(pipe, prompt: str | list[str], negative: str | list[str], clip_skip: int = 1,
                   emphasis: str = "Original", *, zero_empty_negative: bool | None = None,
                   embeddings: EmbeddingLibrary | None = None) -> ConditioningPair:
    """A1111-style conditioning for a diffusers SD1 / SDXL pipeline; pass `.as_pipeline_kwargs()` to it.

    Positive and negative prompts are padded to the same number of 77-token chunks with empty chunks
    (the encoding of "", as A1111's "pad prompt/negative prompt" option does). On SDXL an empty negative
    prompt gives zeros instead of the encoding of "" (A1111's behaviour and diffusers'
    `force_zeros_for_empty_prompt`); `zero_empty_negative` overrides that (default: the pipeline's
    `force_zeros_for_empty_prompt`, true for SDXL base models; never for SD1). `embeddings`: textual
    inversions usable by name in both prompts.
    """
    prompts, negatives = _as_batch(prompt, negative)
    tokenizers, encoders, arch = pipeline_text_modules(pipe)
    with torch.no_grad():
        both = encode_text(tokenizers, encoders, prompts + negatives, clip_skip, emphasis, arch=arch,
                           embeddings=embeddings)
    n = len(prompts)
    empty = [n + i for i, text in enumerate(negatives) if text == ""]
    zero = empty if _zeroes_empty(pipe, arch, zero_empty_negative) else []
    embeds, pooled = _zero_rows(both.embeds, both.pooled, zero)
    return ConditioningPair(
        prompt_embeds=embeds[:n],
        negative_prompt_embeds=embeds[n:],
        pooled_prompt_embeds=None if pooled is None else pooled[:n],
        negative_pooled_prompt_embeds=None if pooled is None else pooled[n:],
    )


def _zeroes_empty(pipe, arch: str, zero_empty_negative: bool | None) -> bool:
    """Whether an empty negative prompt is zeros: the caller's choice, else the pipeline's (SDXL base models)."""
    if zero_empty_negative is not None:
        return zero_empty_negative
    return arch == "sdxl" and bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))


def _zero_rows(embeds: torch.Tensor, pooled: torch.Tensor | None, rows: list[int]):
    """Zero the first chunk (an empty prompt's only one) and the pooled vector of `rows`; padding chunks stay
    the encoded "" as A1111 pads them."""
    if not rows:
        return embeds, pooled
    embeds, pooled = embeds.clone(), None if pooled is None else pooled.clone()
    embeds[rows, : CHUNK_LENGTH + 2] = 0
    if pooled is not None:
        pooled[rows] = 0
    return embeds, pooled


def encode_pass_texts(pipe, positive: Sequence[str], negative: Sequence[str], clip_skip: int = 1,
                      emphasis: str = "Original", *, zero_empty_negative: bool | None = None,
                      embeddings: EmbeddingLibrary | None = None) -> TextConditioning:
    """Every distinct text of one sampling pass (`schedule.PassSchedules`), positive texts then negative texts, in
    one encoder batch padded to the longest with empty chunks; row i is text i. For one prompt and one negative
    this is exactly `encode_prompts`. The negative rows are zeros (SDXL policy as in `encode_prompts`) only when
    every negative text is empty, as A1111 zeroes a negative prompt whose schedule is all "".
    """
    tokenizers, encoders, arch = pipeline_text_modules(pipe)
    with torch.no_grad():
        out = encode_text(tokenizers, encoders, [*positive, *negative], clip_skip, emphasis, arch=arch,
                          embeddings=embeddings)
    zero = negative and all(text == "" for text in negative) and _zeroes_empty(pipe, arch, zero_empty_negative)
    rows = list(range(len(positive), len(positive) + len(negative))) if zero else []
    return TextConditioning(*_zero_rows(out.embeds, out.pooled, rows))
