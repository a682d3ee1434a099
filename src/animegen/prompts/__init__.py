"""The one prompt pipeline shared by generation and training.

* `parser`: A1111 emphasis `(x:1.2)` / `[x]` / `BREAK` and `<lora:name:te:unet>` / other extra-network tags.
* `schedule`: A1111 prompt editing `[a:b:0.5]`, alternation `[a|b]` and composable `AND`, per step.
* `tags`: Danbooru tag normalisation, escaping, kohya-style shuffling.
* `encode`: A1111-style weighted, chunked (>77 tokens) CLIP conditioning for SD1 and SDXL.
* `embeddings`: textual-inversion embedding files (SD1, SDXL) used by name in prompts.
* `presets`: model-family prompt templates (animagine, dashanime, danbooru, none, user TOML).

Names are loaded lazily so that `import animegen.prompts.parser` does not pull in torch.
"""

from animegen.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "parser": ("parse_prompt_attention", "parse_extra_networks", "extract_lora_tags", "LoraTag", "ExtraNetworkTag"),
    "schedule": ("get_prompt_schedule", "split_and", "pass_schedules"),
    "tags": ("normalize_tag", "escape_tag", "unescape_tag", "split_tags", "shuffle_tags"),
    "encode": ("encode_prompts", "encode_text", "ConditioningPair", "TextConditioning", "tokenize_prompt",
               "count_tokens"),
    "embeddings": ("EmbeddingLibrary", "read_embedding"),
    "presets": ("Preset", "get_preset", "list_presets", "build_prompt"),
})
