"""`generate_images`: load a model, run one request, return the images; the library's one-shot call.

For more than one request build a `Generator` once and call it: loading dominates the cost.
"""

from __future__ import annotations

import dataclasses
import os

from animegen.core.keywords import check_keywords
from animegen.generate.engine import GeneratedImage, Generator
from animegen.generate.request import REQUEST_ALIASES, GenerationRequest

LOADER_KEYWORDS = ("model", "vae", "device", "dtype", "allow_pickle", "lora_dir", "preset_file")


def generate_images(prompt: str, *, model: str | os.PathLike, vae: str | os.PathLike | None = None,
                    device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
                    lora_dir: str | os.PathLike | None = None, preset_file: str | os.PathLike | None = None,
                    **request_fields) -> list[GeneratedImage]:
    """Images for `prompt` from `model`; `request_fields` are `GenerationRequest`'s (steps, seed, ...)."""
    valid = {f.name for f in dataclasses.fields(GenerationRequest)} | set(LOADER_KEYWORDS)
    check_keywords("generate_images", request_fields, valid, REQUEST_ALIASES)
    request = GenerationRequest(prompt=prompt, **request_fields)  # a bad field fails before the model loads
    request.validate()
    generator = Generator(model, vae=vae, device=device, dtype=dtype, allow_pickle=allow_pickle,
                          lora_dir=lora_dir, preset_file=preset_file)
    return generator(request)
