"""The one prompt pipeline shared by generation and training.

* `parser`: A1111 emphasis `(x:1.2)` / `[x]` / `BREAK` and `<lora:name:w>` tags.
* `tags`: Danbooru tag normalisation, escaping, kohya-style shuffling.
* `encode`: A1111-style weighted, chunked (>77 tokens) CLIP conditioning for SD1 and SDXL.
* `presets`: model-family prompt templates (animagine, dashanime, danbooru, none, user TOML).

Names are loaded lazily so that `import animegen.prompts.parser` does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "parse_prompt_attention": "parser", "extract_lora_tags": "parser",
    "normalize_tag": "tags", "escape_tag": "tags", "unescape_tag": "tags", "split_tags": "tags",
    "shuffle_tags": "tags",
    "encode_prompts": "encode", "encode_text": "encode", "ConditioningPair": "encode",
    "TextConditioning": "encode", "tokenize_prompt": "encode", "count_tokens": "encode",
    "Preset": "presets", "get_preset": "presets", "list_presets": "presets", "build_prompt": "presets",
}
__all__ = [
    "ConditioningPair",
    "Preset",
    "TextConditioning",
    "build_prompt",
    "count_tokens",
    "encode_prompts",
    "encode_text",
    "escape_tag",
    "extract_lora_tags",
    "get_preset",
    "list_presets",
    "normalize_tag",
    "parse_prompt_attention",
    "shuffle_tags",
    "split_tags",
    "tokenize_prompt",
    "unescape_tag",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
