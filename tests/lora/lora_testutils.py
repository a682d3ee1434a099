"""Hand-written reference helpers for the LoRA tests (fixed UNet/text-encoder inputs, merged copies)."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save_file

from animegen.models.lora import apply_loras, read_lora


def unet_inputs(unet, seed: int = 1):
    """A fixed (latents, timestep, conditioning) for one UNet forward pass."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = {
        "sample": torch.randn(1, 4, cfg.sample_size, cfg.sample_size, generator=g),
        "timestep": 10,
        "encoder_hidden_states": torch.randn(1, 8, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        }
    return kwargs


@torch.no_grad()
def unet_out(unet, seed: int = 1) -> torch.Tensor:
    return unet(**unet_inputs(unet, seed)).sample


@torch.no_grad()
def te_out(text_encoder) -> torch.Tensor:
    ids = torch.tensor([[49406, 320, 1125, 539, 49407] + [49407] * 3])
    return text_encoder(ids).last_hidden_state


def merged_copy(module: torch.nn.Module, deltas: dict[str, torch.Tensor],
                bias_deltas: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """A deep copy of `module` with hand-computed deltas added to the named layers' weights."""
    ref = copy.deepcopy(module)
    with torch.no_grad():
        for path, d in deltas.items():
            layer(ref, path).weight += d
        for path, d in (bias_deltas or {}).items():
            layer(ref, path).bias += d
    return ref


def layer(module: torch.nn.Module, path: str) -> torch.nn.Module:
    """`module.get_submodule(path)`, skipping ``text_model.`` where transformers 5 removed it."""
    if path.startswith("text_model.") and not hasattr(module, "text_model"):
        path = path.removeprefix("text_model.")
    return module.get_submodule(path)


def save_lora(tmp_path, tensors, name="lora.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def check_unet(pipe, path, deltas, multiplier=1.0, bias_deltas=None, atol=2e-5):
    ref = merged_copy(pipe.unet, {k: multiplier * v for k, v in deltas.items()},
                      {k: multiplier * v for k, v in (bias_deltas or {}).items()})
    expected = unet_out(ref)
    base = unet_out(pipe.unet)
    apply_loras(pipe, [(read_lora(path), multiplier)])
    got = unet_out(pipe.unet)
    assert (expected - base).abs().max() > 1e-4, "test delta too small to be visible"
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4)
    for name in deltas:
        torch.testing.assert_close(pipe.unet.get_submodule(name).weight, ref.get_submodule(name).weight,
                                   atol=1e-6, rtol=1e-5)


def kron(a, b):
    """Kronecker product written out block by block (independent of torch.kron)."""
    out = torch.zeros(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *b.shape[2:])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i * b.shape[0]:(i + 1) * b.shape[0], j * b.shape[1]:(j + 1) * b.shape[1]] = a[i, j] * b
    return out
