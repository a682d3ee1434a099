"""Tag adherence: does the image show the Danbooru tags its prompt asked for?

Each generated image is tagged with the WD14 tagger; a prompt tag counts as a hit when the tagger
finds it on the image. Recall = hits / images whose prompt has the tag; precision = hits / images
on which the tagger found the tag, over the tags the prompts use (so "red hair" found on the
"blue hair" prompt's images lowers red hair's precision). Quality, aesthetic, year and other
tags no image tagger can see are listed as ignored instead of counted as misses.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from animegen.evaluate.metrics import MetricError
from animegen.prompts.tags import RATING_ALIASES, RATINGS, is_count_tag

NON_VISUAL_TAGS = {
    "masterpiece", "best quality", "amazing quality", "great quality", "high quality", "good quality",
    "normal quality", "low quality", "bad quality", "worst quality", "very aesthetic", "aesthetic",
    "displeasing", "very displeasing", "absurdres", "highres", "incredibly absurdres", "lowres",
    "newest", "recent", "mid", "early", "old", "oldest", "anime illustration", "score 9", "score 8 up",
}
_YEAR = re.compile(r"^(year )?\d{4}s?$")
CATEGORIES = ("count", "character", "general", "rating")


def prompt_tags(prompt: str) -> list[str]:
    """The normalised Danbooru tags of an A1111 prompt (emphasis, LoRA tags and weights removed)."""
    from animegen.prompts.parser import extract_lora_tags, parse_prompt_attention
    from animegen.prompts.tags import normalize_tag, split_tags

    text, _ = extract_lora_tags(prompt)
    plain = "".join(chunk for chunk, _w in parse_prompt_attention(text) if chunk != "BREAK")
    tags = []
    for tag in split_tags(plain):
        tag = normalize_tag(tag.strip()).strip().lower()
        if tag.startswith("rating:"):
            tag = tag.split(":", 1)[1].strip()
        tag = RATING_ALIASES.get(tag, tag)
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def _category(tag: str, character_tags: set[str], categories: Mapping[str, str] | None,
              vocabulary: Mapping[str, str] | None) -> str | None:
    """Category a prompt tag is scored in, or None when the tagger cannot see it."""
    if categories and tag in categories:
        return categories[tag]
    if tag in NON_VISUAL_TAGS or _YEAR.match(tag):
        return None
    if tag in RATINGS:
        return "rating"
    if vocabulary is not None and tag not in vocabulary:
        return None
    if is_count_tag(tag):
        return "count"
    if vocabulary is not None:
        return vocabulary[tag]
    return "character" if tag in character_tags else "general"


def _predicted(result) -> tuple[set, set, str]:
    general = {t.replace("_", " ").lower() for t in result.general}
    character = {t.replace("_", " ").lower() for t in result.character}
    rating = str(result.rating).lower().removeprefix("rating:")
    return general, character, RATING_ALIASES.get(rating, rating)


def tagger_vocabulary(tagger) -> dict[str, str] | None:
    """{tag: "general" | "character" | "rating"} from a WD14Tagger's label list, if it exposes one."""
    names, cats = getattr(tagger, "names", None), getattr(tagger, "categories", None)
    if names is None or cats is None:
        return None
    kinds = {0: "general", 4: "character", 9: "rating"}
    return {n.replace("_", " ").lower(): kinds[int(c)] for n, c in zip(names, cats) if int(c) in kinds}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def adherence_from_tags(prompts: Sequence[str], results: Sequence, *,
                        categories: Mapping[str, str] | None = None,
                        vocabulary: Mapping[str, str] | None = None,
                        tag_lists: Sequence[Sequence[str]] | None = None) -> dict:
    """Score tagger `results` (objects with .rating, .general, .character) against their prompts.

    `vocabulary` ({tag: category} of everything the tagger can output) marks prompt tags outside
    it as ignored; without it, tags never detected on any image still count as misses.
    `tag_lists` overrides prompt parsing (one tag list per image); `categories` overrides a
    tag's category (e.g. from a preset's tag groups).
    """
    if len(prompts) != len(results):
        raise MetricError(f"tag adherence: {len(prompts)} prompts but {len(results)} tagged images")
    if not results:
        raise MetricError("tag adherence: no images")
    wanted = [list(t) for t in tag_lists] if tag_lists is not None else [prompt_tags(p) for p in prompts]
    predicted = [_predicted(r) for r in results]
    character_vocab = set().union(*(c for _, c, _ in predicted))
    cats: dict[str, str] = {}
    ignored: set[str] = set()
    for tags in wanted:
        for tag in tags:
            cat = _category(tag, character_vocab, categories, vocabulary)
            if cat is None:
                ignored.add(tag)
            else:
                cats[tag] = cat
    if not cats:
        raise MetricError("tag adherence: the prompts contain no taggable Danbooru tags "
                          f"(ignored as not visible to a tagger: {sorted(ignored)[:10]})")
    support, hits, detected = defaultdict(int), defaultdict(int), defaultdict(int)
    per_prompt: dict[str, list[float]] = defaultdict(list)
    missing: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for prompt, tags, (general, character, rating) in zip(prompts, wanted, predicted):
        seen = general | character | {rating}
        asked = [t for t in tags if t in cats]
        for tag, cat in cats.items():
            found = (rating == tag) if cat == "rating" else tag in seen
            detected[tag] += found
            if tag in asked:
                support[tag] += 1
                hits[tag] += found
                if not found:
                    missing[prompt][tag] += 1
        if asked:
            per_prompt[prompt].append(sum((rating == t) if cats[t] == "rating" else t in seen
                                          for t in asked) / len(asked))
    per_tag = {t: {"category": cats[t], "support": support[t], "hits": hits[t], "detected": detected[t],
                   "recall": _ratio(hits[t], support[t]), "precision": _ratio(hits[t], detected[t])}
               for t in sorted(cats)}
    per_category = {}
    for cat in sorted(set(cats.values()), key=lambda c: (CATEGORIES + (c,)).index(c)):
        members = [t for t in cats if cats[t] == cat]
        s, h, d = (sum(x[t] for t in members) for x in (support, hits, detected))
        per_category[cat] = {"tags": len(members), "support": s, "hits": h, "detected": d,
                             "recall": _ratio(h, s), "precision": _ratio(h, d)}
    s, h, d = sum(support.values()), sum(hits.values()), sum(detected.values())
    return {
        "overall": {"support": s, "hits": h, "detected": d, "recall": _ratio(h, s), "precision": _ratio(h, d)},
        "per_category": per_category,
        "per_tag": per_tag,
        "per_prompt": {p: {"recall": sum(v) / len(v), "images": len(v), "missing": dict(missing[p])}
                       for p, v in per_prompt.items()},
        "ignored_tags": sorted(ignored),
    }


def tag_adherence(images: Sequence, prompts: Sequence[str], tagger, *, batch_size: int = 16,
                  general_threshold: float = 0.35, character_threshold: float = 0.85,
                  categories: Mapping[str, str] | None = None, progress: bool = True) -> dict:
    """Tag `images` with a `WD14Tagger` (anything with its `.tag(images, general_threshold=...,
    character_threshold=...)`) and score them against `prompts` (one per image)."""
    from tqdm.auto import tqdm

    if len(images) != len(prompts):
        raise MetricError(f"tag adherence needs one prompt per image ({len(images)} vs {len(prompts)})")
    results = []
    for start in tqdm(range(0, len(images), batch_size), desc="tagging", disable=not progress):
        results.extend(tagger.tag(list(images[start:start + batch_size]), general_threshold=general_threshold,
                                  character_threshold=character_threshold))
    out = adherence_from_tags(prompts, results, categories=categories, vocabulary=tagger_vocabulary(tagger))
    out.update(general_threshold=general_threshold, character_threshold=character_threshold,
               tagger=str(getattr(tagger, "name", type(tagger).__name__)))
    return out
