"""Real-size SD1.5 / SDXL modules with random weights, from the shipped architecture configs
(`animegen/models/configs`), for benchmarks that need the real shapes but no downloaded weights.

`device="meta"` builds them without allocating (shapes only: FLOP and memory counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCHS = ("sd15", "sdxl")


def config_dir(arch: str) -> Path:
    import animegen.models

    return Path(animegen.models.__file__).parent / "configs" / ("sd1" if arch == "sd15" else "sdxl")


def real_unet(arch: str, device: str = "cpu"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel.from_config(json.loads((config_dir(arch) / "unet.json").read_text()))


def real_text_encoders(arch: str, device: str = "cpu") -> dict[str, torch.nn.Module]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = config_dir(arch)
    with torch.device(device):
        out = {"text_encoder": CLIPTextModel(CLIPTextConfig(**json.loads((cfg / "text_encoder.json").read_text())))}
        if arch == "sdxl":
            out["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**json.loads((cfg / "text_encoder_2.json").read_text())))
    return out


def real_components(arch: str, device: str = "cpu") -> dict:
    """Every pipeline component at real size (tokenizers and scheduler from the tiny model, which has
    the real vocabularies and schedule)."""
    from diffusers import AutoencoderKL

    from animegen.models.tiny import build_tiny_components

    comps = build_tiny_components(arch)
    comps["unet"] = real_unet(arch, device)
    with torch.device(device):
        comps["vae"] = AutoencoderKL.from_config(json.loads((config_dir(arch) / "vae.json").read_text()))
    comps.update(real_text_encoders(arch, device))
    return comps


def real_pipeline(arch: str, dtype: torch.dtype = torch.float32):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    comps = real_components(arch)
    pipe = (StableDiffusionXLPipeline(**comps) if arch == "sdxl"
            else StableDiffusionPipeline(**comps, requires_safety_checker=False))
    return pipe.to(dtype=dtype)
