"""Text-to-image and image-to-image generation with A1111 semantics on top of diffusers.

Names load lazily (`animegen.core.lazy`), so `import animegen.generate` does not pull in torch.
"""

from animegen.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "engine": ("GeneratedImage", "GenerationInterrupted", "Generator"),
    "infotext": ("format_infotext", "parse_infotext", "read_png_infotext", "save_png"),
    "oneshot": "generate_images",
    "request": ("GenerationRequest", "request_from_infotext"),
    "samplers": ("SAMPLERS", "resolve_sampler"),
})
