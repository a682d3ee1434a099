"""`animegen data caption`: training captions assembled by the same preset code generation uses.

DashAnime-style captions put the style in a fixed prefix ("anime illustration, ...") and remove style words
from the natural-language part, so the model ties the look to the prefix instead of to random adjectives.
The shortening rules below are plain regular expressions: the same input always gives the same caption.
A natural-language captioner is optional: `module:function` / `file.py:function` (a callable taking a list
of PIL images, returning a list of strings) or a transformers vision-language model folder / hub id.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from animegen.data.batching import run_batched
from animegen.data.manifest import Manifest, ManifestRow
from animegen.prompts.tags import RATING_WORDS, is_count_tag

Captioner = Callable[[list[Image.Image]], list[str]]

#: Tags that go with the counting tags (`animegen.prompts.tags.is_count_tag`) at the front of a caption.
_WITH_COUNT = frozenset({"solo", "solo focus"})
META_TAGS = frozenset({"highres", "absurdres", "lowres", "commentary", "commentary request", "translated",
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


def looks_like_tag_list(caption: str) -> bool:
    """`1girl, long hair, smile` (short comma-separated items) vs a sentence."""
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    return len(parts) >= 2 and all(len(p.split()) <= 4 for p in parts) and not caption.rstrip().endswith(".")


def categorize_tags(general: Sequence[str], character: Sequence[str] = ()) -> dict[str, list[str]]:
    """Split tags into the prompt builder's categories: count, character, general, meta."""
    out: dict[str, list[str]] = {"count": [], "character": list(character), "general": [], "meta": []}
    seen = set(character)
    for t in general:
        if t in seen:
            continue
        seen.add(t)
        if is_count_tag(t) or t in _WITH_COUNT:
            out["count"].append(t)
        elif t in META_TAGS:
            out["meta"].append(t)
        else:
            out["general"].append(t)
    return {k: v for k, v in out.items() if v}


def caption_row(row: ManifestRow, preset: str = "dashanime") -> str:
    """The training caption for one manifest row (tags, NL caption, score and rating words)."""
    from animegen.prompts.presets import build_prompt
    from animegen.prompts.tags import normalize_tag, split_tags, unescape_tag

    general = list(row.tags if row.tags is not None else (row.source_tags or []))
    text_source = row.nl_caption
    if row.source_caption and not text_source:
        if looks_like_tag_list(row.source_caption):
            if not general and not row.character_tags:
                general = [normalize_tag(t) for t in split_tags(row.source_caption)]
        else:
            text_source = row.source_caption
    text = strip_style_phrases(text_source) if text_source else ""
    tags = categorize_tags(general, row.character_tags or [])
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


def caption_dataset(
    dataset: str | Path,
    *,
    preset: str = "dashanime",
    captioner: Captioner | None = None,
    batch_size: int = 8,
    force: bool = False,
    progress: bool = True,
) -> CaptionReport:
    """Fill `caption` for ok rows lacking one (all with `force`); run `captioner` first where it is given."""
    from tqdm.auto import tqdm

    with Manifest(dataset) as manifest:
        described = failed = 0
        if captioner is not None:
            todo = [r for r in manifest.ok_rows() if force or not r.nl_caption]

            def work(rows, images):
                texts = captioner(images)
                if len(texts) != len(rows):
                    raise RuntimeError(f"captioner returned {len(texts)} captions for {len(rows)} images")
                for row, t in zip(rows, texts):
                    row.nl_caption = str(t).strip()
                    row.caption = None

            described, failed = run_batched(manifest, todo, batch_size, work, desc="describe",
                                            progress=progress)
        todo = [r for r in manifest.ok_rows() if force or r.caption is None]
        for row in tqdm(todo, desc="caption", unit="img", disable=not progress):
            row.caption = caption_row(row, preset)
            manifest.put(row)
    return CaptionReport(captioned=len(todo), described=described, failed=failed)
