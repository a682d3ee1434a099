"""Fused attention projections kept in step with merged weights.

diffusers' `fuse_qkv_projections` (a CUDA speed-up default, `generate/speed.py`) copies `to_q/to_k/to_v`
into one `to_qkv` (`to_k/to_v` into `to_kv` for cross-attention), and the fused processor reads only
the copy. `apply_loras` merges into `to_q/to_k/to_v`, so a stale copy would silently drop the LoRA;
`apply_loras`/`remove_loras` therefore refresh every fused copy themselves, in place (same tensors,
so a compiled UNet or captured CUDA graph stays valid).

Found by diffusers' own marker (`fused_projections` on the attention module), so a pipeline fused by
any caller is covered, not only one fused by `generate/speed.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def _modules(pipe) -> list[torch.nn.Module]:
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        components = {n: getattr(pipe, n, None) for n in ("unet", "vae")}
    return [m for m in components.values() if isinstance(m, torch.nn.Module)]


def fused_projections(pipe) -> Iterator[tuple[torch.nn.Linear, tuple[torch.nn.Linear, ...]]]:
    """(fused layer, the separate layers it concatenates) for every fused attention in `pipe`."""
    for component in _modules(pipe):
        for attn in component.modules():
            if getattr(attn, "fused_projections", False):
                if hasattr(attn, "to_qkv"):
                    yield attn.to_qkv, (attn.to_q, attn.to_k, attn.to_v)
                if hasattr(attn, "to_kv"):
                    yield attn.to_kv, (attn.to_k, attn.to_v)


@torch.no_grad()
def sync_fused_projections(pipe) -> int:
    """Re-copy the separate weights into every fused projection in place; returns how many."""
    count = 0
    for fused, parts in fused_projections(pipe):
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        count += 1
    return count


def fused_projections_in_sync(pipe) -> bool:
    """True if every fused projection equals its separate weights (and biases)."""
    return all(torch.equal(fused.weight, torch.cat([p.weight for p in parts]))
               and (fused.bias is None or torch.equal(fused.bias, torch.cat([p.bias for p in parts])))
               for fused, parts in fused_projections(pipe))


__all__ = ["fused_projections", "fused_projections_in_sync", "sync_fused_projections"]
