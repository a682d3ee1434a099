"""Prompt presets: a model family's prompt template, negative prompt and recommended settings.

Anime checkpoints are trained on captions in a fixed shape (Animagine: count, character, series,
rating, general tags, then quality tags) and work best when prompts follow it. A preset captures that
shape once; `build_prompt` turns free text or categorised tags into a prompt in that shape.
Built-ins live in the shipped `presets.toml`; a user TOML file with the same layout adds presets or
overrides built-ins by name (keys it leaves out are inherited from the built-in of that name).
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from animegen.prompts.tags import RATING_TAGS, escape_tag, is_count_tag, normalize_tag, split_tags, tag_key

PLACEHOLDERS = ("prompt", "quality", "aesthetic", "rating")
TAG_CATEGORIES = ("count", "character", "series", "artist", "general", "meta")
ORDER_SLOTS = (*TAG_CATEGORIES, "rating", "quality")

# Tags recognised in free text so that tag-ordering presets can move them to their slot
# (count tags and rating words: `animegen.prompts.tags`).
QUALITY_TAGS = frozenset({
    "masterpiece", "best quality", "great quality", "high quality", "good quality", "normal quality",
    "low quality", "worst quality", "very aesthetic", "aesthetic", "displeasing", "very displeasing",
    "absurdres", "highres",
})


@dataclass(frozen=True)
class Preset:
    """A named prompt template plus the generation settings recommended for a model family."""

    name: str
    template: str = "{prompt}"
    negative: str = ""
    # Recommended settings; None = no recommendation, the request's default applies
    # (`animegen.generate.request.resolve`, the one home of generation defaults).
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    description: str = ""
    quality: str = ""
    aesthetic: str = ""
    rating: str = ""
    tag_order: tuple[str, ...] = ()


_FIELD_TYPES = {f.name: f.type.removesuffix(" | None") for f in fields(Preset)}
_KEYS = tuple(k for k in _FIELD_TYPES if k != "name")


def _builtin_file() -> Path:
    return Path(str(files("animegen.prompts") / "presets.toml"))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"preset file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"preset file {path} is not valid TOML: {e}") from None


def _check_template(where: str, template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"{where}: template {template!r} is malformed ({e}); write literal braces as "
                         "{{ and }}") from None
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        raise ValueError(f"{where}: template uses unknown placeholder(s) {sorted(unknown)}; "
                         f"valid placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if "prompt" not in names:
        raise ValueError(f"{where}: template {template!r} has no {{prompt}} placeholder, so the prompt "
                         "would be lost; add {prompt} where the user's text goes")


def _coerce(where: str, key: str, value):
    """Check one TOML value against the Preset field type; return it in that type."""
    kind = _FIELD_TYPES[key]
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        if key in ("width", "height") and value % 8:
            raise ValueError(f"{where}: {key} must be a multiple of 8, got {value}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}: {key} must be a non-negative number, got {value!r}")
        return float(value)
    # tag_order
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: tag_order must be a list of category names, got {value!r}")
    bad = [v for v in value if v not in ORDER_SLOTS]
    if bad:
        raise ValueError(f"{where}: tag_order has unknown categories {bad}; valid: {', '.join(ORDER_SLOTS)}")
    return tuple(value)


def _parse_presets(data: dict, source: Path, base: Mapping[str, Preset], check_sampler: bool) -> dict[str, Preset]:
    extra = set(data) - {"presets"}
    if extra:
        raise ValueError(f"{source}: unknown top-level key(s) {sorted(extra)}; put presets under "
                         "[presets.NAME] tables")
    table = data.get("presets", {})
    if not isinstance(table, dict):
        raise ValueError(f"{source}: 'presets' must be a table of [presets.NAME] sections")
    out: dict[str, Preset] = {}
    for name, entry in table.items():
        where = f"{source} [presets.{name}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table of keys ({', '.join(_KEYS)})")
        bad = sorted(set(entry) - set(_KEYS))
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; valid keys: {', '.join(_KEYS)}")
        values = {key: _coerce(where, key, value) for key, value in entry.items()}
        _check_template(where, values.get("template", base[name].template if name in base else "{prompt}"))
        if check_sampler and "sampler" in values:
            _check_sampler(where, values["sampler"])
        out[name] = replace(base[name], **values) if name in base else Preset(name=name, **values)
    return out


def _check_sampler(where: str, sampler: str) -> None:
    from animegen.generate.samplers import resolve_sampler

    try:
        resolve_sampler(sampler)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


@lru_cache(maxsize=1)
def _builtins() -> dict[str, Preset]:
    path = _builtin_file()
    return _parse_presets(_read_toml(path), path, {}, check_sampler=False)


def _all_presets(user_file: str | Path | None) -> dict[str, Preset]:
    presets = dict(_builtins())
    if user_file is not None:
        path = Path(user_file)
        presets.update(_parse_presets(_read_toml(path), path, presets, check_sampler=True))
    return presets


def list_presets(user_file: str | Path | None = None) -> list[Preset]:
    """Built-in presets (file order) followed by the user's new ones; user entries override by name."""
    return list(_all_presets(user_file).values())


def get_preset(name: str, user_file: str | Path | None = None) -> Preset:
    """The preset called `name` (user file first, then built-ins); unknown names list the valid ones."""
    presets = _all_presets(user_file)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(presets)}")
    return presets[name]


# ---- building prompts -------------------------------------------------------------------------------
def _free_text_slot(tag: str) -> str:
    key = tag_key(tag)
    if is_count_tag(key):
        return "count"
    if key in QUALITY_TAGS:
        return "quality"
    return "general"


def _order_tags(preset: Preset, text: str, tags: Mapping[str, Sequence[str]], rating: str,
                tail_keys: set[str]) -> str:
    """Tags of `text` and `tags` in the preset's category order, duplicates and tail tags dropped."""
    slots: dict[str, list[str]] = {slot: [] for slot in ORDER_SLOTS}
    for category, values in tags.items():
        slots[category].extend(escape_tag(normalize_tag(v)) for v in values)
    text_tags = split_tags(text)
    for tag in text_tags:
        slots[_free_text_slot(tag)].append(tag)
    if not any(tag_key(t) in RATING_TAGS for t in text_tags):  # a rating typed by the user stays where it is
        slots["rating"].extend(split_tags(rating))
    order = list(preset.tag_order) + [s for s in ORDER_SLOTS if s not in preset.tag_order]
    seen = set(tail_keys)
    ordered: list[str] = []
    for slot in order:
        for tag in slots[slot]:
            if tag_key(tag) not in seen:
                seen.add(tag_key(tag))
                ordered.append(tag)
    return ", ".join(ordered)


_SEPARATOR_STRENGTH = {".": 2, ",": 1}
_SEPARATORS = re.compile(r"^[\s,.]*$")


def _merge_separators(before: str, after: str, at_start: bool, at_end: bool) -> str:
    """Join the literal text around a left-out placeholder, keeping only the stronger separator."""
    head = re.search(r"[\s,.]*$", before)
    tail = re.match(r"[\s,.]*", after)
    sep_before, sep_after = before[head.start():], after[: tail.end()]
    if at_start or at_end:
        sep = ""
    else:
        def strength(sep: str) -> int:
            return max((_SEPARATOR_STRENGTH.get(c, 0) for c in sep), default=0)
        sep = sep_before if strength(sep_before) >= strength(sep_after) else sep_after
    return before[: head.start()] + sep + after[tail.end():]


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill a preset template; an empty value disappears together with its dangling separator.

    `anime illustration, {prompt}. {quality}` with an empty prompt gives `anime illustration. ...`:
    of the two separators around a left-out value the stronger (`.` over `,`) is kept, and at the
    start or end of the text both go.
    """
    literals: list[str] = []
    names: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        literals.append(literal)
        if name is not None:
            names.append(name)
    if len(literals) == len(names):
        literals.append("")
    out_literals, out_values = [literals[0]], []
    for i, name in enumerate(names):
        value = values.get(name, "").strip().strip(",").strip()
        following = literals[i + 1]
        if value:
            out_values.append(value)
            out_literals.append(following)
            continue
        at_start = not out_values and bool(_SEPARATORS.match(out_literals[-1]))
        at_end = i == len(names) - 1 and bool(_SEPARATORS.match(following))
        out_literals[-1] = _merge_separators(out_literals[-1], following, at_start, at_end)
    text = out_literals[0] + "".join(v + lit for v, lit in zip(out_values, out_literals[1:]))
    return text.strip()


def build_prompt(preset: Preset | str, text: str = "", *, tags: Mapping[str, Sequence[str]] | None = None,
                 quality: str | None = None, aesthetic: str | None = None, rating: str | None = None) -> str:
    """The prompt for `text` (prompt syntax, kept as typed) and `tags` (raw tag names by category).

    `tags` keys are categories (count, character, series, artist, general, meta); their values are
    normalised (`long_hair` -> `long hair`) and escaped (`\\(`) because they are names, not prompt
    syntax. `quality` / `aesthetic` / `rating` default to the preset's; "" leaves them out. Presets with
    a `tag_order` (animagine) reorder comma tags into their slots: count tags (1girl, 2boys, ...) found
    in the text go first, tags given by category go to their slot, the rest of the text counts as
    general, quality tags go last and appear once. Other presets keep the text as written.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    tags = dict(tags or {})
    bad = sorted(set(tags) - set(TAG_CATEGORIES))
    if bad:
        raise ValueError(f"unknown tag categories {bad}; valid: {', '.join(TAG_CATEGORIES)}")
    given = {"quality": quality, "aesthetic": aesthetic, "rating": rating}
    values = {key: getattr(preset, key) if value is None else value for key, value in given.items()}
    in_template = {name for _, name, _, _ in string.Formatter().parse(preset.template) if name}

    # A tag-ordering preset with a "rating" slot puts the rating among the tags, not in the template.
    consumed = {"rating"} if "rating" in preset.tag_order else set()
    template_values = {k: ("" if k in consumed else v) for k, v in values.items()}
    if preset.tag_order:
        tail = render_template(preset.template, {**template_values, "prompt": ""})
        tail_keys = {tag_key(t) for t in split_tags(tail)}  # quality tags the template appends anyway
        body = _order_tags(preset, text, tags, values["rating"] if consumed else "", tail_keys)
    else:
        if not tags and preset.template == "{prompt}" and not any(given.values()):
            return text  # nothing to add: the prompt stays exactly as typed
        tag_text = ", ".join(escape_tag(normalize_tag(v)) for values_ in tags.values() for v in values_)
        body = ", ".join(part for part in (tag_text, text.strip()) if part)

    prompt = render_template(preset.template, {**template_values, "prompt": body})
    # Values the caller asked for explicitly but the template has no place for are appended.
    extra = [given[k] for k in ("quality", "aesthetic", "rating")
             if given[k] and k not in in_template and k not in consumed]
    return ", ".join(part for part in (prompt, *extra) if part)
