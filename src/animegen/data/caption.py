"""`animegen data caption`: training captions assembled by the same preset code generation uses.

DashAnime-style captions put the style in a fixed prefix ("anime illustration, ...") and remove style words
from the natural-language part, so the model ties the look to the prefix instead of to random adjectives.
The shortening rules below are plain regular expressions: the same input always gives the same caption.

Tags: the sidecar's (kohya tag list or Danbooru tag string in `.txt`, JSON tags) and the tagger's are merged
as kohya's `--append_tags` does (sidecar first, each tag once), so a Danbooru `vocaloid` or a trigger word
survives tagging. A kohya caption's first tag that neither the tagger nor the vocabulary knows (`zxq`) is the
trigger word and goes first, right after the preset's fixed prefix (DashAnime: train with `keep_tokens = 2`
to pin `anime illustration, zxq`). Danbooru's resolution tags are derived from the pixel size and replace
given ones, as Danbooru does. `character_tag_expand` is kohya's `--character_tag_expand`, opt-in as there;
unlike kohya it runs when captions are built, so it also splits sidecar character tags and needs no re-tag.

A natural-language captioner is optional: `module:function` / `file.py:function` (a callable taking a list
of PIL images, returning a list of strings) or a transformers vision-language model folder / hub id.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from animegen.data.batching import run_batched
from animegen.data.manifest import Manifest, ManifestRow
from animegen.data.sidecar import (
    looks_like_tag_list,  # noqa: F401  (its home moved; callers import it here)
    read_sidecar_categories,
)
from animegen.prompts.tags import (
    RATING_WORDS,
    RESOLUTION_TAGS,
    expand_character_tag,
    is_count_tag,
    tag_key,
    unescape_tag,
)
from animegen.prompts.tags import resolution_tags as danbooru_resolution_tags

Captioner = Callable[[list[Image.Image]], list[str]]

#: Tags that go with the counting tags (`animegen.prompts.tags.is_count_tag`) at the front of a caption.
_WITH_COUNT = frozenset({"solo", "solo focus"})
META_TAGS = frozenset({*RESOLUTION_TAGS, "commentary", "commentary request", "translated",
                       "translation request", "english commentary", "official art", "scan", "watermark",
                       "signature", "artist name", "web address", "jpeg artifacts"})

_STYLE_ADJ = (r"animated|anime[- ]styled?|manga[- ]styled?|cartoon[- ]styled?|cartoonish|cartoon|anime|manga|"
              r"cel[- ]shaded|chibi[- ]style|digital|2d|stylized|stylised|hand[- ]drawn")
_FRAME_NOUN = (r"illustration|image|picture|artwork|drawing|art|painting|scene|depiction|rendering|render|"
               r"screenshot|still|frame|graphic")
_FRAME_VERB = r"of|showing|shows|depicting|depicts|featuring|features|that shows|in which"
# A leading description of the medium: "An animated, cartoon-style digital illustration of ..."
_LEADING_FRAME = re.compile(
    rf"^\s*(?:(?:this|the|an?|it is an?|this is an?)\s+)?(?:(?:{_STYLE_ADJ})\s*,?\s*(?:and\s+)?)*"
    rf"(?:{_FRAME_NOUN})s?\s*(?:,\s*)?(?:{_FRAME_VERB})\s+",
    re.IGNORECASE,
)
# Style phrases dropped wherever they occur.
STYLE_PHRASES: tuple[str, ...] = (
    r"in (?:an? |the )?(?:anime|manga|cartoon|chibi|cel[- ]shaded)(?:[- ]style)? (?:style|fashion|aesthetic)",
    r"in the style of (?:an? )?(?:anime|manga|cartoons?)",
    r"(?:anime|manga|cartoon)[- ]styled?",
    r"(?:digital|2d) (?:illustration|art|artwork|painting|drawing)s?",
    r"cel[- ]shaded",
    r"animated",
    r"cartoonish",
    r"cartoon-like",
)
_STYLE_RE = re.compile(r"\b(?:" + "|".join(STYLE_PHRASES) + r")\b", re.IGNORECASE)
_LOWER_FIRST = {"a", "an", "the", "this", "that", "two", "three", "four", "several", "some", "one", "it",
                "there", "many", "a couple", "her", "his", "their"}


_CUT = "\x00"  # marks where a style phrase was removed


def _fix_articles(text: str) -> str:
    """`An <cut> girl` -> `A girl`: only articles that stood before a removed phrase are touched."""
    def repl(m: re.Match) -> str:
        art, word = m.group(1), m.group(2)
        want = "an" if word[0].lower() in "aeiou" else "a"
        return (want.capitalize() if art[0].isupper() else want) + " " + word
    return re.sub(rf"\b(an?)\s*{_CUT}[\s{_CUT}]*([A-Za-z])", repl, text, flags=re.IGNORECASE)


def strip_style_phrases(text: str) -> str:
    """Remove medium/style wording from a natural-language caption (deterministic regex rules).

    "An animated, cartoon-style digital illustration of a girl with red hair." -> "a girl with red hair"
    """
    text = " ".join(text.split())
    text = _LEADING_FRAME.sub("", text, count=1)
    text = _fix_articles(_STYLE_RE.sub(_CUT, text)).replace(_CUT, "")
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)  # ", ," -> ","
    text = re.sub(r"\s{2,}", " ", text).strip()
    text = re.sub(r"^[\s,.;:]+|[\s,;:]+$", "", text)
    text = text.rstrip(".").strip()
    first = text.split(" ", 1)[0].lower() if text else ""
    if first in _LOWER_FIRST:
        text = text[0].lower() + text[1:]
    return text


def _category(tag: str, characters: set[str], known: Mapping[str, str]) -> str:
    """A tag's slot: a sidecar's category, else the tagger's character, else by vocabulary."""
    key = tag_key(tag)
    category = known.get(key, "general")
    if category != "general":
        return category
    if key in characters:
        return "character"
    if is_count_tag(key) or key in _WITH_COUNT:
        return "count"
    return "meta" if key in META_TAGS else "general"


def categorize_tags(general: Sequence[str], character: Sequence[str] = (), *,
                    known: Mapping[str, str] | None = None, lead: str | None = None,
                    character_tag_expand: bool = False) -> dict[str, list[str]]:
    """Split tags into the prompt builder's categories: count, character, series, artist, general, meta.

    `character` (a tagger's character tags) and `known` (a sidecar's `tag_key` -> category) say where a tag
    belongs; the rest go by vocabulary (counting tags and `solo` lead, `META_TAGS` are meta). Each tag is kept
    once, where it first occurs (`general` before `character`). `lead` (a trigger word) goes in front of
    everything: at the head of the count slot, the first slot of every built-in preset. `character_tag_expand`
    splits `name (series)` into `name` + a series tag (kohya's `--character_tag_expand`).
    """
    known = known or {}
    characters = {tag_key(t) for t in character}
    out: dict[str, list[str]] = {k: [] for k in ("count", "character", "series", "artist", "general", "meta")}
    seen: set[str] = set()

    def add(category: str, tag: str) -> None:
        if tag_key(tag) not in seen:
            seen.add(tag_key(tag))
            out[category].append(tag)

    if lead:
        add("count", lead)
    for t in [*general, *character]:
        category = _category(t, characters, known)
        if category == "character" and character_tag_expand:
            t, series = expand_character_tag(t)
            add("character", t)
            if series:
                add("series", series)
            continue
        add(category, t)
    return {k: v for k, v in out.items() if v}


def _trigger(file_tags: Sequence[str], tagger_tags: set[str], known: Mapping[str, str]) -> str | None:
    """The first tag of a kohya caption file when it is a word no tagger or vocabulary knows (`zxq`).

    kohya users put the trigger word first and fix it with `keep_tokens`; it keeps that place.
    """
    if not file_tags:
        return None
    first = file_tags[0]
    if tag_key(first) in tagger_tags or _category(first, set(), known) != "general":
        return None
    return first


def caption_row(row: ManifestRow, preset: str = "dashanime", *,
                sidecar_categories: Mapping[str, str] | None = None, character_tag_expand: bool = False,
                resolution_tags: bool = True) -> str:
    """The training caption for one manifest row (tags, NL caption, score and rating words).

    Tags are the sidecar's (a kohya tag-list caption, then the JSON tags) followed by the tagger's new ones,
    as kohya's `--append_tags` merges them, each once. The caption file's first tag stays first when it is a
    trigger word (`_trigger`). `sidecar_categories` (`data.sidecar.read_sidecar_categories`) places Danbooru
    character / copyright / artist / meta tags. With `resolution_tags` and a known pixel size, Danbooru's
    resolution tags are derived from it and replace any the sidecar or tagger gave (Danbooru recomputes them
    from the file too, so a downscaled copy of an `absurdres` post is not called absurdres).
    """
    from animegen.prompts.presets import build_prompt

    known = sidecar_categories or {}
    text_tags = row.caption_file_tags  # the caption file's tags, or with none the kohya class token
    text_source = row.nl_caption or (row.source_caption if text_tags is None else None)
    text = strip_style_phrases(text_source) if text_source else ""
    tagger = [*(row.tags or []), *(row.character_tags or [])]
    general = [*row.sidecar_tags, *(row.tags or [])]  # the row's tags (`all_tags`), characters placed below
    derived: list[str] = []
    if resolution_tags and row.width and row.height:
        general = [t for t in general if tag_key(t) not in RESOLUTION_TAGS]
        derived = danbooru_resolution_tags(row.width, row.height)
    tags = categorize_tags(general, row.character_tags or [], known=known,
                           lead=_trigger(text_tags or [], {tag_key(t) for t in tagger}, known),
                           character_tag_expand=character_tag_expand)
    if derived:
        tags.setdefault("meta", []).extend(derived)  # meta is the last slot: the order stays intact
    # "" (not None) for unknown values: the preset's generation defaults ("masterpiece ...") would
    # otherwise be claimed for images that were never scored.
    prompt = build_prompt(
        preset,
        text,
        tags=tags or None,
        quality=row.quality_tag or "",
        aesthetic=row.aesthetic_tag or "",
        rating=RATING_WORDS.get(row.rating, row.rating) if row.rating else "",
    )
    return unescape_tag(prompt)  # prompts escape "(" in tag names; the text encoder must see plain text


def _load_callable(spec: str) -> Captioner:
    target, _, func = spec.rpartition(":")
    if target.endswith(".py"):
        mod_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"cannot import captioner file {target}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"captioner {spec!r}: {func!r} is not a callable in {target}")  # noqa: TRY004
    return fn


class TransformersCaptioner:
    """Any transformers image-text-to-text model (BLIP, Florence, LLaVA, Qwen-VL ...) by path; lazy import."""

    def __init__(self, model: str, *, prompt: str = "Describe this image in one sentence.",
                 device: str | None = None, max_new_tokens: int = 77):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model).to(self.device).eval()
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def _text(self) -> str:
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.prompt

    def __call__(self, images: list[Image.Image]) -> list[str]:
        import torch

        out = []
        for im in images:  # one at a time: prompts differ in length across VLM families
            inputs = self.processor(images=im, text=self._text(), return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            text = self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
            if "input_ids" in inputs:  # decoder-only VLMs and BLIP echo the prompt: cut it off
                prompt = self.processor.batch_decode(inputs["input_ids"], skip_special_tokens=True)[0].strip()
                if prompt and text.startswith(prompt):
                    text = text[len(prompt):].strip()
            out.append(text)
        return out


def load_captioner(spec: str, *, device: str | None = None, prompt: str | None = None) -> Captioner:
    """`pkg.module:fn` or `file.py:fn` -> that callable; otherwise a transformers VLM path or hub id."""
    if ":" in spec and not Path(spec).exists() and not re.match(r"^[A-Za-z]:[\\/]", spec):
        return _load_callable(spec)
    kwargs = {"device": device}
    if prompt:
        kwargs["prompt"] = prompt
    return TransformersCaptioner(spec, **kwargs)


@dataclass
class CaptionReport:
    captioned: int
    described: int
    failed: int


def describe(captioner: Captioner, images: list[Image.Image]) -> list[str]:
    """One caption per image from the plug-in, or a RuntimeError naming the mismatch."""
    texts = list(captioner(images))
    if len(texts) != len(images):
        raise RuntimeError(f"captioner returned {len(texts)} captions for {len(images)} images")
    return [str(t) for t in texts]


def apply_nl_caption(row: ManifestRow, text: str) -> None:
    """Record a captioner's sentence (both engines); the training caption must be rebuilt."""
    row.nl_caption = str(text).strip()
    row.caption = None


def caption_dataset(
    dataset: str | Path,
    *,
    preset: str = "dashanime",
    captioner: Captioner | None = None,
    batch_size: int = 8,
    force: bool = False,
    character_tag_expand: bool = False,
    resolution_tags: bool = True,
    progress: bool = True,
) -> CaptionReport:
    """Fill `caption` for ok rows lacking one (all with `force`); run `captioner` first where it is given.

    Each row's JSON sidecar is read again for its tag categories (the manifest keeps the flat list).
    """
    from tqdm.auto import tqdm

    with Manifest(dataset) as manifest:
        described = failed = 0
        if captioner is not None:
            todo = [r for r in manifest.ok_rows() if force or not r.nl_caption]

            def work(rows, images):
                for row, t in zip(rows, describe(captioner, images)):
                    apply_nl_caption(row, t)

            described, failed = run_batched(manifest, todo, batch_size, work, desc="describe",
                                            progress=progress)
        todo = [r for r in manifest.ok_rows() if force or r.caption is None]
        for row in tqdm(todo, desc="caption", unit="img", disable=not progress):
            row.caption = caption_row(row, preset, sidecar_categories=read_sidecar_categories(row.path),
                                      character_tag_expand=character_tag_expand,
                                      resolution_tags=resolution_tags)
            manifest.put(row)
    return CaptionReport(captioned=len(todo), described=described, failed=failed)
