"""Text-to-image and image-to-image generation with A1111 semantics on top of diffusers."""

from __future__ import annotations

import os

from animegen.generate.engine import GeneratedImage, GenerationInterrupted, Generator
from animegen.generate.infotext import format_infotext, parse_infotext, read_png_infotext, save_png
from animegen.generate.request import GenerationRequest, request_from_infotext
from animegen.generate.samplers import SAMPLERS, make_scheduler, resolve_sampler

__all__ = [
    "GeneratedImage", "GenerationInterrupted", "GenerationRequest", "Generator", "SAMPLERS", "format_infotext",
    "generate", "make_scheduler", "parse_infotext", "read_png_infotext", "request_from_infotext",
    "resolve_sampler", "save_png",
]


def generate(prompt: str, *, model: str | os.PathLike, vae=None, device=None, dtype=None, allow_pickle=False,
             lora_dir=None, **request_fields) -> list[GeneratedImage]:
    """One-shot generation: load `model`, run one request, return the images (with infotext)."""
    generator = Generator(model, vae=vae, device=device, dtype=dtype, allow_pickle=allow_pickle, lora_dir=lora_dir)
    return generator(GenerationRequest(prompt=prompt, **request_fields))


class _CallableModule(type(os)):
    """Lets `animegen.generate(...)` be called directly while `animegen.generate.Generator` stays importable."""

    def __call__(self, prompt: str, **kwargs) -> list[GeneratedImage]:
        return generate(prompt, **kwargs)


import sys  # noqa: E402

sys.modules[__name__].__class__ = _CallableModule
