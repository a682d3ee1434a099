"""The prompt convention of a training run, derived from its captions and config, for the export header.

`derive_convention` is the one place that decides what an exported LoRA or checkpoint says about how to prompt
it (`animegen.prompts.conventions.Convention`, whose `to_metadata` owns the header key names):

* trigger words: every tag found in at least `TRIGGER_SHARE` (90 %) of the concept images' captions (each
  image's first caption, as kohya's ``ss_tag_frequency`` counts; regularisation images left out), most frequent
  first, ties in order of first appearance. Count tags (``1girl``) and quality / aesthetic / rating words are
  never triggers. kohya's class token is included whenever it is the caption (an `N_token` folder without
  caption files), because then it is in every caption of that folder;
* preset and tag order: ``data.caption_preset`` and that preset's ``tag_order``;
* quality / aesthetic / rating vocabulary: the words of `prompts.presets.QUALITY_TAGS` (split by
  `AESTHETIC_TAGS`) and `prompts.tags.RATING_TAGS` that occur in the captions as trained (after the caption
  preset), most frequent first;
* sampler, steps, CFG, size: the run's preview settings (``[sample]``); clip skip: ``data.clip_skip``;
  prediction type: what the run trained with (``epsilon`` or ``v``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from animegen.models.family import ModelFamily, get_family
from animegen.prompts.conventions import IMPL_DIFFUSERS, IMPL_STABILITY_AI, Convention
from animegen.prompts.presets import AESTHETIC_TAGS, QUALITY_TAGS, build_prompt, get_preset
from animegen.prompts.tags import RATING_TAGS, is_count_tag, split_tags, tag_key
from animegen.train.config import TrainConfig

TRIGGER_SHARE = 0.9  # a tag in at least this share of the concept captions is a trigger word


def _frequencies(captions: Iterable[str]) -> tuple[Counter, dict[str, str], dict[str, int], int]:
    """(captions containing each tag key, first spelling, first position, number of captions)."""
    counts: Counter = Counter()
    spelling: dict[str, str] = {}
    first: dict[str, int] = {}
    n = 0
    for caption in captions:
        n += 1
        for tag in split_tags(caption):
            key = tag_key(tag)
            if key not in spelling:
                spelling[key], first[key] = tag, len(first)
        counts.update({tag_key(tag) for tag in split_tags(caption)})
    return counts, spelling, first, n


def _ranked(counts: Counter, spelling: dict[str, str], first: dict[str, int], keep) -> tuple[str, ...]:
    keys = sorted((k for k in counts if keep(k, counts[k])), key=lambda k: (-counts[k], first[k]))
    return tuple(spelling[k] for k in keys)


def _vocabulary(key: str) -> str | None:
    if key in RATING_TAGS:
        return "rating"
    if key in AESTHETIC_TAGS:
        return "aesthetic"
    if key in QUALITY_TAGS:
        return "quality"
    return None


def trigger_words(captions: Sequence[str]) -> tuple[str, ...]:
    """The tags in at least 90 % of `captions` (the module's rule), most frequent first."""
    counts, spelling, first, n = _frequencies(captions)
    return _ranked(counts, spelling, first, lambda k, c: c >= TRIGGER_SHARE * n and not is_count_tag(k)
                   and _vocabulary(k) is None)


def derive_convention(config: TrainConfig, items, *, family: ModelFamily | str,
                      v_prediction: bool) -> Convention:
    """The convention of a finished run; `items` are its training items (`train.data.Item`), regularisation
    ones are skipped. `v_prediction`: what the run trained with (the trainer's noise scheduler)."""
    family = get_family(family)
    concept = [it for it in items if not getattr(it, "is_reg", False)]
    raw = [it.captions[0] for it in concept if it.captions]
    preset = get_preset(config.data.caption_preset)
    trained = [build_prompt(preset, c) if preset.name != "none" else c for c in raw]
    counts, spelling, first, _ = _frequencies(trained)
    vocab = {slot: _ranked(counts, spelling, first, lambda k, c, s=slot: _vocabulary(k) == s)
             for slot in ("quality", "aesthetic", "rating")}
    adapter = config.adapter.kind != "full"
    s = config.sample
    return Convention(
        title=config.export.name,
        architecture=family.modelspec_architecture + ("/lora" if adapter else ""),
        trigger_words=trigger_words(raw), preset=preset.name, tag_order=tuple(preset.tag_order), **vocab,
        sampler=s.sampler, steps=s.steps, cfg_scale=float(s.cfg_scale), width=s.width, height=s.height,
        clip_skip=config.data.clip_skip, prediction_type="v" if v_prediction else "epsilon")


def convention_metadata(config: TrainConfig, items, *, family: ModelFamily | str,
                        v_prediction: bool) -> dict[str, str]:
    """The header keys an export adds for its convention (ModelSpec + ``animegen.convention``).

    The implementation id is kohya's: Stability's layout for SDXL LoRAs and for single-file checkpoints,
    diffusers' for SD1/SD2 LoRAs."""
    family = get_family(family)
    convention = derive_convention(config, items, family=family, v_prediction=v_prediction)
    stability = config.adapter.kind == "full" or family.is_sdxl
    return convention.to_metadata(implementation=IMPL_STABILITY_AI if stability else IMPL_DIFFUSERS)
