"""Captions and tags stored next to an image: kohya `NAME.txt` / `NAME.caption`, and `NAME.json` metadata.

Text sidecars hold a kohya caption: a comma-separated tag list (`zxq, 1girl, long_hair`), a Danbooru tag
string (`1girl hatsune_miku long_hair`: spaces between tags, underscores inside them) or a sentence.
JSON sidecars are Danbooru API posts (`tag_string`, and `tag_string_character` / `_copyright` / `_artist` /
`_general` / `_meta` by category), booru dumps with `tags` (a string, a list, or a dict of category ->
tags as e621 writes it), or anything with a `caption` / `text` / `prompt` / `description`.

`CAPTION_EXTENSIONS` is the one list of caption-file extensions (ingest reads them, the trainer's
`caption_extension` defaults to them). `kohya_folder` reads kohya's `N_name` folder names (repeats, class token).

Danbooru tag strings split on spaces first and only then turn `_` into spaces (`prompts.tags.normalize_tag`,
the one home of that rule), so kaomoji such as `^_^` survive. Danbooru's `copyright` category is the
prompt builders' `series`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from animegen.prompts.tags import normalize_tag, tag_key

CAPTION_EXTENSIONS = (".txt", ".caption")
"""Caption files next to an image, in the order they are looked for: `.txt`, then kohya's default `.caption`."""
#: Danbooru API post fields -> the prompt builders' tag categories (`prompts.presets.TAG_CATEGORIES`).
DANBOORU_CATEGORY_FIELDS = {"tag_string_character": "character", "tag_string_copyright": "series",
                            "tag_string_artist": "artist", "tag_string_general": "general",
                            "tag_string_meta": "meta"}
#: Booru category names in a `tags` dict (e621, gallery-dl) -> tag categories; unknown ones are general.
_BOORU_CATEGORIES = {"character": "character", "copyright": "series", "series": "series", "artist": "artist",
                     "meta": "meta", "general": "general"}


def kohya_folder(name: str) -> tuple[int, str] | None:
    """(repeats, class token) of a kohya DreamBooth folder name, None when it does not start with a count.

    kohya splits the name on `_`: the first part is the repeat count, the rest joined with `_` the class token
    (`10_zxq` -> (10, "zxq"), `2_blue_cat` -> (2, "blue_cat"), `5` -> (5, "")). ASCII digits only.
    """
    head, _, token = name.partition("_")
    return (int(head), token) if head.isascii() and head.isdigit() else None


def looks_like_tag_list(caption: str) -> bool:
    """`1girl, long hair, smile` (short comma-separated items) vs a sentence."""
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    return len(parts) >= 2 and all(len(p.split()) <= 4 for p in parts) and not caption.rstrip().endswith(".")


def _looks_like_tag_string(text: str) -> bool:
    """`hatsune_miku vocaloid` or a lone `zxq`: one lower-case line, no commas, underscores or one word."""
    text = text.strip()
    return (bool(text) and "," not in text and "\n" not in text and not text.endswith(".")
            and text == text.lower() and ("_" in text or len(text.split()) == 1))


def split_tag_string(text: str) -> list[str]:
    """A Danbooru tag string -> normalised tags: split on whitespace first, then `_` -> space."""
    return [normalize_tag(t) for t in text.split()]


def caption_tags(caption: str) -> list[str] | None:
    """The normalised tags of a sidecar caption that is a tag list or a tag string; None for a sentence."""
    if looks_like_tag_list(caption):
        return [normalize_tag(t) for t in caption.split(",") if t.strip()]
    if _looks_like_tag_string(caption):
        return split_tag_string(caption)
    return None


def _read_json(image_path: Path) -> dict[str, Any] | None:
    p = image_path.with_suffix(".json")
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):  # unreadable or not JSON: the sidecar gives nothing, the image still counts
        return None
    return meta if isinstance(meta, dict) else None


def _categorised(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(tag, category) pairs from Danbooru `tag_string_*` fields or a `tags` dict; [] if there are none."""
    pairs: list[tuple[str, str]] = []
    for field, category in DANBOORU_CATEGORY_FIELDS.items():
        if isinstance(meta.get(field), str):
            pairs += [(t, category) for t in split_tag_string(meta[field])]
    raw = meta.get("tags")
    if isinstance(raw, dict):
        for name, values in raw.items():
            category = _BOORU_CATEGORIES.get(str(name).lower(), "general")
            if isinstance(values, str):
                values = values.split()
            if isinstance(values, list):
                pairs += [(normalize_tag(str(t)), category) for t in values if str(t).strip()]
    return pairs


def dedupe_tags(tags: Iterable[str]) -> list[str]:
    """First occurrence of each tag (by `tag_key`), in order; empty tags dropped."""
    first: dict[str, str] = {}
    for t in tags:
        if t:
            first.setdefault(tag_key(t), t)
    return list(first.values())


def _json_tags(meta: dict[str, Any]) -> list[str] | None:
    raw = meta.get("tags")
    if isinstance(raw, str):  # comma separated, else a booru tag string
        return dedupe_tags([normalize_tag(t) for t in raw.split(",")] if "," in raw else split_tag_string(raw))
    if isinstance(raw, list):
        return dedupe_tags([normalize_tag(str(t)) for t in raw])
    pairs = _categorised(meta)
    if isinstance(meta.get("tag_string"), str):  # Danbooru API: also holds the tags no category field lists
        pairs += [(t, "general") for t in split_tag_string(meta["tag_string"])]
    return dedupe_tags([t for t, _ in pairs]) if pairs else None


def read_sidecar(image_path: str | Path) -> tuple[str | None, list[str] | None]:
    """Caption and tags from `NAME.txt` / `NAME.caption` / `NAME.json` next to an image (first found).

    The caption is the first non-empty text sidecar, else the JSON's caption-like field; the tags come
    from the JSON (normalised, deduplicated; by category first where the JSON has categories).
    """
    image_path = Path(image_path)
    caption: str | None = None
    for ext in CAPTION_EXTENSIONS:
        p = image_path.with_suffix(ext)
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                caption = text
                break
    meta = _read_json(image_path)
    if meta is None:
        return caption, None
    if caption is None:
        for key in ("caption", "text", "prompt", "description"):
            if isinstance(meta.get(key), str) and meta[key].strip():
                caption = meta[key].strip()
                break
    return caption, _json_tags(meta)


def read_sidecar_categories(image_path: str | Path) -> dict[str, str]:
    """`tag_key(tag)` -> category (character, series, artist, general, meta) from a JSON sidecar's fields.

    Empty when the sidecar has no categories. The manifest keeps the flat tag list (`source_tags`); the
    categories are read back from the sidecar when captions are built.
    """
    meta = _read_json(Path(image_path))
    out: dict[str, str] = {}
    for tag, category in _categorised(meta) if meta else ():
        out.setdefault(tag_key(tag), category)
    return out
