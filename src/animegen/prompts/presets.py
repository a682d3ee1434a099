"""Prompt presets: a model family's prompt template, negative prompt and recommended settings.

Anime checkpoints are trained on captions in a fixed shape (Animagine: count, character, series,
rating, general tags, then quality tags) and work best when prompts follow it. A preset captures that
shape once; `build_prompt` turns free text or categorised tags into a prompt in that shape.
Built-ins live in the shipped `presets.toml`; a user TOML file with the same layout adds presets or
overrides built-ins by name (keys it leaves out are inherited from the built-in of that name, or from the
preset its `extends` key names).

`preset="auto"` picks the preset of the model being run: `detect_preset` looks at a single file's
safetensors `__metadata__` (the built-in preset its `animegen.convention` names, which animegen's
training exports write: `prompts.conventions`; modelspec title, kohya's `ss_sd_model_name`), then the
model's name (file, folder or hub id), then the A1111 short hash where a model card prints one (`_NAME_RULES`, `KNOWN_HASHES`:
the one table of what is recognised). An unrecognised model gets `none`, with one notice naming what was
looked at. This module never imports torch.
"""

from __future__ import annotations

import logging
import os
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from animegen.prompts.conventions import CONVENTION_KEY, convention_from_metadata
from animegen.prompts.tags import RATING_TAGS, escape_tag, is_count_tag, normalize_tag, split_tags, tag_key

log = logging.getLogger(__name__)

AUTO = "auto"  # the preset name that means "the model's own preset" (`detect_preset`)
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
#: The aesthetic-score words among them (Animagine's `{aesthetic}` vocabulary); the rest state quality.
AESTHETIC_TAGS = frozenset({"very aesthetic", "aesthetic", "displeasing", "very displeasing"})


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
    # A1111's "Clip skip" (2 = penultimate layer) and CFG rescale phi in [0, 1]; they apply when the request
    # leaves its own at the default (clip_skip 1, guidance_rescale 0).
    clip_skip: int | None = None
    guidance_rescale: float | None = None


_FIELD_TYPES = {f.name: f.type.removesuffix(" | None") for f in fields(Preset)}
_KEYS = tuple(k for k in _FIELD_TYPES if k != "name")
_TOML_KEYS = (*_KEYS, "extends")  # `extends = "NAME"`: start from that preset instead of from scratch


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
        if key == "guidance_rescale" and value > 1:
            raise ValueError(f"{where}: guidance_rescale must be in [0, 1] (0 = off; 0.7 is the usual), got {value}")
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
        if name == AUTO:
            raise ValueError(f"{where}: '{AUTO}' is reserved (it picks the model's own preset); rename this preset")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table of keys ({', '.join(_TOML_KEYS)})")
        bad = sorted(set(entry) - set(_TOML_KEYS))
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; valid keys: {', '.join(_TOML_KEYS)}")
        entry = dict(entry)
        parent = _parent(where, entry.pop("extends", None), name, {**base, **out})
        values = {key: _coerce(where, key, value) for key, value in entry.items()}
        _check_template(where, values.get("template", parent.template if parent else "{prompt}"))
        if check_sampler and "sampler" in values:
            _check_sampler(where, values["sampler"])
        out[name] = replace(parent, name=name, **values) if parent else Preset(name=name, **values)
    return out


def _parent(where: str, extends, name: str, known: Mapping[str, Preset]) -> Preset | None:
    """The preset an entry starts from: the one `extends` names, else the earlier preset of the same name."""
    if extends is None:
        return known.get(name)
    if not isinstance(extends, str) or extends not in known:
        raise ValueError(f"{where}: extends = {extends!r} names no preset defined before it; "
                         f"valid: {', '.join(known)}")
    return known[extends]


def _check_sampler(where: str, sampler: str) -> None:
    from animegen.generate.sampler_names import resolve_sampler_name  # torch-free: `animegen presets` stays light

    try:
        resolve_sampler_name(sampler)
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


def get_preset(name: str, user_file: str | Path | None = None, *,
               model: str | os.PathLike | None = None) -> Preset:
    """The preset called `name` (user file first, then built-ins); unknown names list the valid ones.

    `name="auto"` is the preset `detect_preset(model)` recognises, else `none` (with one notice).
    """
    presets = _all_presets(user_file)
    if name == AUTO:
        name = auto_preset_name(model)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(presets)}, {AUTO}")
    return presets[name]


# ---- recognising a model's preset (`preset="auto"`) -----------------------------------------------------
_S = r"[-_. ]?"  # the separators model names use between words and version digits
# (preset, pattern on the lower-cased name or metadata text); the first match wins, so more specific first.
_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("animagine-xl-4.0", rf"animagine{_S}(xl)?{_S}v?4"),
    ("animagine-xl-3.1", rf"animagine{_S}(xl)?{_S}v?3{_S}1"),
    ("noobai-xl-vpred", rf"noob{_S}ai.*v{_S}pred"),
    ("noobai-xl-eps", rf"noob{_S}ai"),
    ("pony-v6", rf"pony{_S}(diffusion)?{_S}v?6"),
    ("illustrious-xl", r"illustrious"),
    ("kohaku-xl", rf"kohaku{_S}xl"),
    ("wd-1.5", rf"(?<![a-z])(wd|waifu{_S}diffusion){_S}v?1{_S}5(?![0-9])"),
    ("wd-1.4", rf"(?<![a-z])(wd|waifu{_S}diffusion){_S}v?1{_S}4(?![0-9])"),
    ("dashanime-xl", rf"dash{_S}anime"),
)
# A1111's short model hash (sha256[:10], Civitai's "AutoV2") -> preset, only where the model page prints it.
KNOWN_HASHES: dict[str, str] = {
    "67ab2fd8ec": "pony-v6",           # https://civitai.com/models/257749 (V6, "start with this one")
    "1d5b43ff75": "animagine-xl-4.0",  # https://civitai.com/models/1188071
}
_METADATA_KEYS = ("modelspec.title", "ss_sd_model_name")
_VPRED = {"modelspec.prediction_type": {"v", "v_prediction", "v-prediction"}, "ss_v_parameterization": {"true"}}


def _match_name(text: str) -> str | None:
    lowered = text.lower()
    return next((preset for preset, pattern in _NAME_RULES if re.search(pattern, lowered)), None)


def _names_of(model: str) -> list[str]:
    """The name to match: the file or folder name, then its folder's (a `model.safetensors` says nothing)."""
    path = Path(model)
    return [n for n in (path.name, path.parent.name) if n not in ("", ".", "..")]


def _file_metadata(path: Path) -> dict:
    from animegen.core.files import WeightsFileError, safetensors_metadata

    try:
        return safetensors_metadata(path)
    except WeightsFileError as exc:  # detection looks; it does not judge the file (the loader will)
        log.warning("%s", exc)
        return {}


def _detect(model: str | os.PathLike | None, metadata: Mapping[str, object] | None) -> tuple[str | None, str]:
    """(preset or None, what was looked at), for `detect_preset` and the "auto" notice."""
    if model is None and not metadata:
        return None, "no model given"
    path = Path(model) if model is not None else None
    is_file = path is not None and path.is_file()
    if metadata is None and is_file and path.suffix.lower() == ".safetensors":
        metadata = _file_metadata(path)
    looked: list[str] = []
    convention = convention_from_metadata(metadata)  # what the model was trained with says it best
    if convention is not None and convention.preset != "none":
        looked.append(f"{CONVENTION_KEY} preset {convention.preset!r}")
        if convention.preset in _builtins():
            return convention.preset, looked[-1]
    for key in _METADATA_KEYS:
        value = (metadata or {}).get(key)
        if isinstance(value, str) and value:
            looked.append(f"{key} {value!r}")
            found = _match_name(value)
            if found:
                if found == "noobai-xl-eps" and any(
                        str((metadata or {}).get(k, "")).lower() in v for k, v in _VPRED.items()):
                    found = "noobai-xl-vpred"  # trained or declared as v-prediction
                return found, looked[-1]
    for name in _names_of(str(model)) if model is not None else []:
        looked.append(f"the name {name!r}")
        found = _match_name(name)
        if found:
            return found, looked[-1]
    if is_file:
        from animegen.core.files import sha256_file  # cached per (path, size, mtime): the engine hashes it anyway

        short = sha256_file(path)[:10]
        looked.append(f"the hash {short}")
        if short in KNOWN_HASHES:
            return KNOWN_HASHES[short], looked[-1]
    return None, ", ".join(looked) or "nothing recognisable"


def detect_preset(model_path_or_name: str | os.PathLike | None,
                  metadata: Mapping[str, object] | None = None) -> str | None:
    """The built-in preset for a model, recognised from its metadata, name or documented hash; None if unknown.

    `metadata` is a safetensors `__metadata__` mapping; None reads it from the file's header when the model is a
    single `.safetensors` file. A trained convention's preset (`prompts.conventions`, a built-in one) wins over
    the name rules; metadata wins over the name (a renamed file keeps its title); v-prediction
    metadata (`modelspec.prediction_type`, kohya's `ss_v_parameterization`) turns NoobAI eps into v-pred.
    """
    return _detect(model_path_or_name, metadata)[0]


@lru_cache(maxsize=64)
def _auto_cached(model: str | None, size: int, mtime_ns: int) -> str:
    found, looked = _detect(model, None)
    if found is None:
        log.warning("preset auto: no known base model recognised (looked at %s); using preset 'none'", looked)
        return "none"
    log.info("preset auto: %s (from %s)", found, looked)
    return found


def auto_preset_name(model: str | os.PathLike | None) -> str:
    """The preset `preset="auto"` means for `model`; "none" (with one notice per model) when unrecognised."""
    try:
        stat = os.stat(model) if model is not None else None
    except OSError:
        stat = None
    return _auto_cached(None if model is None else str(model), stat.st_size if stat else 0,
                        stat.st_mtime_ns if stat else 0)


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
