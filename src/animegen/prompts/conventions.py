"""A model's prompt convention: what a LoRA or checkpoint was trained to be prompted with, read from its file.

Exports (`animegen.train.conventions`) write it into the safetensors header; generation reads it back here, so
this module is the one home of the header key names:

* ``animegen.convention``: one JSON object with every field of `Convention` (the authoritative record);
* Stability AI's ModelSpec 1.0 keys where the spec defines one (github.com/Stability-AI/ModelSpec, values
  formatted as kohya sd-scripts' `library/sai_model_spec.py` writes them): ``modelspec.sai_model_spec``,
  ``modelspec.architecture``, ``modelspec.implementation``, ``modelspec.title``, ``modelspec.resolution``
  (``WxH``), ``modelspec.prediction_type`` (``epsilon`` / ``v``), ``modelspec.trigger_phrase`` (the trigger
  words, comma-separated), ``modelspec.usage_hint`` (one readable line) and ``modelspec.encoder_layer``
  (A1111 clip skip, written only when above 1).

`read_convention(path)` gives the `Convention` of a file (None when it has none); `preset="auto"`
(`presets.detect_preset`) prefers its preset to name rules, and the engine warns when a prompt lacks a LoRA's
trigger words (`missing_triggers`). This module never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from animegen.prompts.tags import tag_key, unescape_tag

log = logging.getLogger(__name__)

CONVENTION_KEY = "animegen.convention"
MODELSPEC_VERSION = "1.0.0"  # what `models.single_file.save_single_file` writes too
MODELSPEC = {name: f"modelspec.{name}" for name in (
    "sai_model_spec", "architecture", "implementation", "title", "resolution", "prediction_type",
    "trigger_phrase", "usage_hint", "encoder_layer")}
# kohya sd-scripts' implementation ids: SDXL LoRAs and LDM-layout checkpoints are Stability's layout
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


@dataclass(frozen=True)
class Convention:
    """How a trained model expects to be prompted and sampled; None / () = not known."""

    title: str = ""
    architecture: str = ""  # modelspec architecture, "/lora" appended for adapters (as kohya)
    trigger_words: tuple[str, ...] = ()
    preset: str = "none"  # the caption preset the captions went through (`data.caption_preset`)
    tag_order: tuple[str, ...] = ()  # that preset's tag order
    quality: tuple[str, ...] = ()  # quality / aesthetic / rating tags found in the trained captions
    aesthetic: tuple[str, ...] = ()
    rating: tuple[str, ...] = ()
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    prediction_type: str | None = None  # "epsilon" or "v" (ModelSpec's spelling)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Convention:
        """From the decoded ``animegen.convention`` object; unknown keys (a newer writer's) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)

    def usage_hint(self) -> str:
        """The one readable line for ``modelspec.usage_hint``."""
        parts = []
        if self.trigger_words:
            parts.append(f"Trigger words: {', '.join(self.trigger_words)}")
        if self.preset != "none":
            parts.append(f"prompt preset: {self.preset}")
        settings = [f"{self.sampler}" if self.sampler else "", f"{self.steps} steps" if self.steps else "",
                    f"CFG {self.cfg_scale:g}" if self.cfg_scale is not None else "",
                    f"{self.width}x{self.height}" if self.width and self.height else "",
                    f"clip skip {self.clip_skip}" if self.clip_skip and self.clip_skip > 1 else ""]
        if any(settings):
            parts.append("trained previews: " + ", ".join(s for s in settings if s))
        return "; ".join(parts)

    def to_metadata(self, *, implementation: str) -> dict[str, str]:
        """The header keys of this convention (ModelSpec keys plus ``animegen.convention``), all strings."""
        meta = {MODELSPEC["sai_model_spec"]: MODELSPEC_VERSION, MODELSPEC["implementation"]: implementation,
                CONVENTION_KEY: self.to_json()}
        if self.architecture:
            meta[MODELSPEC["architecture"]] = self.architecture
        if self.title:
            meta[MODELSPEC["title"]] = self.title
        if self.width and self.height:
            meta[MODELSPEC["resolution"]] = f"{self.width}x{self.height}"
        if self.prediction_type:
            meta[MODELSPEC["prediction_type"]] = self.prediction_type
        if self.trigger_words:
            meta[MODELSPEC["trigger_phrase"]] = ", ".join(self.trigger_words)
        if self.clip_skip and self.clip_skip > 1:
            meta[MODELSPEC["encoder_layer"]] = str(self.clip_skip)
        hint = self.usage_hint()
        if hint:
            meta[MODELSPEC["usage_hint"]] = hint
        return meta


def convention_from_metadata(metadata: Mapping[str, object] | None) -> Convention | None:
    """The `Convention` in a safetensors `__metadata__` mapping (the JSON text or, as `core.files.
    safetensors_metadata` returns it, already decoded); None when there is none or it is not an object."""
    value = (metadata or {}).get(CONVENTION_KEY)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, Mapping):
        return None
    try:
        return Convention.from_mapping(value)
    except TypeError:
        return None


def read_convention(path: str | os.PathLike) -> Convention | None:
    """The convention written into a `.safetensors` file's header; None for other files or none written.

    Reads the header only. A header that cannot be read raises `core.files.WeightsFileError` naming the file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from animegen.core.files import safetensors_metadata

    return convention_from_metadata(safetensors_metadata(path))


def _prompt_text(prompt: str) -> str:
    """The prompt's words for matching: A1111 emphasis and escapes resolved (`prompts.parser`), BREAK dropped,
    lower case, `_` as space."""
    from animegen.prompts.parser import parse_prompt_attention

    text = " ".join(fragment for fragment, weight in parse_prompt_attention(prompt)
                    if (fragment, weight) != ("BREAK", -1))
    return " " + " ".join(text.replace("_", " ").lower().split()) + " "


def missing_triggers(convention: Convention | None, prompt: str) -> list[str]:
    """The convention's trigger words that the prompt does not contain (as a whole word or phrase, ignoring
    case, `_` vs space, A1111 escapes and emphasis weights)."""
    if convention is None:
        return []
    text = _prompt_text(prompt)
    missing = []
    for word in convention.trigger_words:
        key = tag_key(unescape_tag(word))
        if not re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", text):
            missing.append(word)
    return missing


def warn_missing_triggers(name: str, path: str | os.PathLike, prompt: str) -> str | None:
    """Log (and return) one warning when `prompt` lacks trigger words of the LoRA `name` at `path`; None if it
    has them all, the file records none, or its header cannot be read (the LoRA loader reports that)."""
    from animegen.core.files import WeightsFileError

    try:
        convention = read_convention(path)
    except WeightsFileError:
        return None
    missing = missing_triggers(convention, prompt)
    if not missing:
        return None
    message = (f"LoRA {name!r} was trained with the trigger words {', '.join(convention.trigger_words)!r}; the "
               f"prompt lacks {', '.join(missing)!r}: add them to the prompt to call up what it learned")
    log.warning("%s", message)
    return message
