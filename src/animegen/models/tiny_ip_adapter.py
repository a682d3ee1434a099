"""Tiny random-weight IP-Adapters and CLIP image encoders in the real files' layouts (tests, offline).

Contract. `tiny_image_encoder(seed, width)` is a CLIPVisionModelWithProjection (32 px, patch 8, two layers) whose
projection dim is `width`; `tiny_ip_adapter_state(unet, encoder, plus=, seed=)` is a flat state dict with
h94/IP-Adapter's keys for `unet` (a tiny SD1.5 / SDXL UNet): plain = `image_proj.proj.*` (4 tokens) and
`image_proj.norm.*`; plus = the Resampler's `image_proj.latents`, `proj_in`, `proj_out`, `norm_out` and
`layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}` / `layers.{i}.1.{0,1,3}`; both with `ip_adapter.{k}.to_k_ip.weight`
/ `to_v_ip.weight` for k = 1, 3, 5, ... over the UNet's attention processors in diffusers' order (attn1 at the
even numbers has no weights), as the original training script numbers them. `save_tiny_ip_adapter(dir, arch)`
writes the h94 repository layout: `models/ip-adapter_<arch>.safetensors` (and `-plus`) beside
`models/image_encoder/`.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_image_encoder(seed: int = 0, width: int = 32, hidden: int = 64):
    """A tiny CLIPVisionModelWithProjection (random weights) with projection dim `width`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=1, image_size=32, patch_size=8, projection_dim=width,
                              hidden_act="gelu")
    return CLIPVisionModelWithProjection(config).eval()


def _randn(generator: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def tiny_ip_adapter_state(unet, encoder, *, plus: bool = False, seed: int = 0, tokens: int = 4,
                          depth: int = 4) -> dict[str, torch.Tensor]:
    """A flat IP-Adapter state dict in the real key layout for `unet` and `encoder` (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state: dict[str, torch.Tensor] = {}
    if not plus:
        width = encoder.config.projection_dim
        state.update({"image_proj.proj.weight": _randn(g, 4 * cross, width), "image_proj.proj.bias": _randn(g, 4 * cross),
                      "image_proj.norm.weight": 1 + _randn(g, cross), "image_proj.norm.bias": _randn(g, cross)})
    else:
        width, inner = encoder.config.hidden_size, 64  # the Resampler's width: one 64-channel head
        p = "image_proj."
        state.update({p + "latents": _randn(g, 1, tokens, inner), p + "proj_in.weight": _randn(g, inner, width),
                      p + "proj_in.bias": _randn(g, inner), p + "proj_out.weight": _randn(g, cross, inner),
                      p + "proj_out.bias": _randn(g, cross), p + "norm_out.weight": 1 + _randn(g, cross),
                      p + "norm_out.bias": _randn(g, cross)})
        for i in range(depth):
            q = f"{p}layers.{i}."
            for norm in ("0.norm1", "0.norm2", "1.0"):
                state[f"{q}{norm}.weight"], state[f"{q}{norm}.bias"] = 1 + _randn(g, inner), _randn(g, inner)
            state.update({q + "0.to_q.weight": _randn(g, inner, inner), q + "0.to_kv.weight": _randn(g, 2 * inner, inner),
                          q + "0.to_out.weight": _randn(g, inner, inner), q + "1.1.weight": _randn(g, 4 * inner, inner),
                          q + "1.3.weight": _randn(g, inner, 4 * inner)})
    for k, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            hidden = attn.to_k.out_features
            state[f"ip_adapter.{k}.to_k_ip.weight"] = _randn(g, hidden, cross)
            state[f"ip_adapter.{k}.to_v_ip.weight"] = _randn(g, hidden, cross)
    return state


def save_tiny_ip_adapter(out: str | Path, unet, arch: str = "sd15", seed: int = 0) -> dict[str, Path]:
    """h94's layout under `out`: {"plain": models/ip-adapter_<arch>.safetensors, "plus": ..., "encoder": folder}."""
    from safetensors.torch import save_file

    models = Path(out) / "models"
    encoder = tiny_image_encoder(seed)
    encoder.save_pretrained(models / "image_encoder", safe_serialization=True)
    paths = {"encoder": models / "image_encoder"}
    for kind, plus in (("plain", False), ("plus", True)):
        path = models / f"ip-adapter{'-plus' if plus else ''}_{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_ip_adapter_state(unet, encoder, plus=plus, seed=seed).items()},
                  str(path))
        paths[kind] = path
    return paths
