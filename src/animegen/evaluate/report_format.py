"""Values of an eval run as HTML a person reads: one function per kind of value, each returning escaped HTML.

Contract: every `fmt_*` takes a value as `metrics.json` holds it, or as `run_eval` passes it (Paths, tuples,
numpy scalars), and returns HTML safe to put in a table cell — text escaped, never a Python repr. A missing
value (None, NaN, an empty string or list) is an em dash, never a fake 0; `fmt_setting` says what a missing
run setting meant instead ("default"). Plain-text variants (`lora_text`) serve plot labels and JSON.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

DASH = "—"

# Run settings in the order and words a reader wants; keys not listed keep their own name, '_' as spaces.
SETTING_LABELS = {
    "model": "model", "model_hash": "model hash", "loras": "LoRAs", "preset": "preset", "sampler": "sampler",
    "steps": "steps", "cfg_scale": "CFG scale", "width": "width", "height": "height", "seed": "first seed",
    "n_prompts": "prompts", "n_per_prompt": "images per prompt", "negative_prompt": "negative prompt",
    "prompts_file": "prompt file", "real_dir": "real images", "resolved": "as generated (infotext)",
    "created": "created", "animegen": "animegen version",
}
# Generation settings left unset: the model's / preset's default was used (the infotext row says which).
DEFAULTED = {"sampler", "steps", "cfg_scale", "width", "height"}
NONE_MEANS = {"prompts_file": "prompts passed as a list", "model_hash": "not a single file"}
METRIC_NAMES = {"fid": "FID", "kid": "KID", "clip_score": "CLIP score", "tag_adherence": "tag adherence"}


def esc(value) -> str:
    return html.escape(str(value))


def fmt_number(value, digits: int = 3) -> str:
    """A metric with a fixed number of decimals (so a column lines up); missing values as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"
    return esc(value)


def short_float(value: float) -> str:
    """A setting's float with the digits that matter: 7.0 → '7.0', 0.30000000000000004 → '0.3'."""
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else text + ".0"


def fmt_scalar(value) -> str:
    """One plain value: None / NaN / '' → —, bools as yes/no, floats with sensible digits, paths as text."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return short_float(value)
    if isinstance(value, os.PathLike):
        return esc(os.fspath(value))
    return esc(value)


def lora_text(path, weight) -> str:
    """'zxq (1.0)' for a LoRA file and its weight: the file's stem, the weight as set."""
    return f"{Path(str(path)).stem} ({short_float(float(weight))})"


def fmt_loras(loras: Iterable[Sequence]) -> str:
    """[[path, weight], ...] → 'zxq (1.0), style (0.5)', each name carrying its full path as a tooltip."""
    items = [f"<span title='{esc(p)}'>{esc(lora_text(p, w))}</span>" for p, w in loras or ()]
    return ", ".join(items) if items else DASH


def fmt_mapping(mapping: Mapping) -> str:
    """A small dict as a key/value list (values through `fmt_value`); an empty one as —."""
    if not mapping:
        return DASH
    rows = "".join(f"<li><span class='k'>{esc(k)}</span> {fmt_value(v)}</li>" for k, v in mapping.items())
    return f"<ul class='kv'>{rows}</ul>"


def fmt_timestamp(value) -> str:
    """An ISO timestamp as '2026-12-02 13:24:48 UTC' (other offsets kept as written); anything else as text."""
    try:
        when = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return fmt_scalar(value)
    if when.utcoffset() == _dt.timedelta(0):
        return esc(when.strftime("%Y-%m-%d %H:%M:%S UTC"))
    return esc(when.isoformat(sep=" "))


def fmt_value(value) -> str:
    """Any JSON-ish value: dicts as key/value lists, lists joined by commas, scalars by `fmt_scalar`."""
    if isinstance(value, Mapping):
        return fmt_mapping(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(fmt_value(v) for v in value) if value else DASH
    return fmt_scalar(value)


def fmt_setting(key: str, value) -> str:
    """One run setting (a key of metrics.json `run`) by what it is."""
    if key == "loras":
        return fmt_loras(value)
    if key == "created":
        return fmt_timestamp(value)
    if value is None and key in DEFAULTED:
        return "default"
    if value is None and key in NONE_MEANS:
        return esc(NONE_MEANS[key])
    return fmt_value(value)


def setting_rows(run: Mapping) -> list[tuple[str, str]]:
    """(label, value HTML) rows of a run's settings, the known ones first in `SETTING_LABELS` order."""
    keys = [k for k in SETTING_LABELS if k in run] + [k for k in run if k not in SETTING_LABELS]
    return [(esc(SETTING_LABELS.get(k, k.replace("_", " "))), fmt_setting(k, run[k]))
            for k in keys if k != "prompts"]


def count_warnings(notes: Iterable[tuple[str, str | None]]) -> list[tuple[str, int, list[str]]]:
    """(text, source) pairs → (text, times, sources) in first-seen order: a warning said N times is one row."""
    seen: dict[str, tuple[list[int], list[str]]] = {}
    for text, source in notes:
        times, sources = seen.setdefault(str(text), ([0], []))
        times[0] += 1
        if source is not None and source not in sources:
            sources.append(source)
    return [(text, times[0], sources) for text, (times, sources) in seen.items()]


def fmt_warnings(notes: Iterable[str | tuple[str, str | None]], everyone: Sequence[str] = ()) -> str:
    """Warning boxes, each text once: '×5' when it was said five times, the runs that said it when known
    ('every run' when that is all of `everyone`, the runs on the page)."""
    pairs = [n if isinstance(n, tuple) else (n, None) for n in notes]
    out = []
    for text, times, sources in count_warnings(pairs):
        count = f" <span class='count'>×{times}</span>" if times > 1 else ""
        who = "every run" if len(everyone) > 1 and set(sources) == set(everyone) else ", ".join(sources)
        where = f" <span class='src'>({esc(who)})</span>" if sources else ""
        out.append(f"<div class='warn'>⚠ {esc(text)}{count}{where}</div>")
    return "".join(out)
