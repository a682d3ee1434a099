"""On-disk latent cache and in-memory text-embedding cache.

A latent entry's file name is a hash of (image content, VAE identity, bucket, flip), so editing an
image, swapping the VAE or changing the resolution each lead to a fresh entry and a stale one is never
read. VAE identity hashes the VAE's config and weights, not its path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from animegen.core.files import atomic_path
from animegen.train.data import Item


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's config (if any) and every parameter/buffer, by name."""
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class LatentCache:
    """`get(item, flip, encode)` returns the item's latents for its bucket, encoding once per key."""

    def __init__(self, root: str | Path | None, vae_id: str):
        self.root = Path(root) if root is not None else None
        self.vae_id = vae_id
        self._content: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def key(self, item: Item, flip: bool) -> str:
        if item.source not in self._content:
            self._content[item.source] = item.content_hash()
        raw = f"{self._content[item.source]}/{self.vae_id}/{item.bucket[0]}x{item.bucket[1]}/{int(flip)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    def path(self, item: Item, flip: bool) -> Path:
        assert self.root is not None
        k = self.key(item, flip)
        return self.root / k[:2] / f"{k}.safetensors"

    def get(self, item: Item, flip: bool,
            encode: Callable[[Item, bool], tuple[torch.Tensor, tuple[int, int]]]) -> tuple[torch.Tensor, tuple[int, int]]:
        """(latent CHW float32, crop (top, left)); read from disk or computed by `encode` and stored."""
        if self.root is None:
            return encode(item, flip)
        path = self.path(item, flip)
        if path.exists():
            try:
                data = load_file(str(path))
                self.hits += 1
                return data["latent"], (int(data["crop"][0]), int(data["crop"][1]))
            except (OSError, ValueError, RuntimeError, KeyError):  # torn or foreign file: recompute, overwrite
                path.unlink(missing_ok=True)
        self.misses += 1
        latent, crop = encode(item, flip)
        with atomic_path(path) as tmp:
            save_file({"latent": latent.detach().float().cpu().contiguous(),
                       "crop": torch.tensor(crop, dtype=torch.int64)}, str(tmp))
        return latent, crop


class TextEmbeddingCache:
    """Caption -> encoder outputs, kept while the text encoders are frozen (they never change then)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.sealed = False  # every caption is in (data.cache_text_encoder_outputs): a miss is a bug
        self._store: dict[str, tuple[torch.Tensor, ...]] = {}

    def get(self, caption: str, encode: Callable[[str], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        if not self.enabled:
            return encode(caption)
        if caption not in self._store:
            if self.sealed:
                raise RuntimeError(f"caption {caption!r} was not encoded ahead (data.cache_text_encoder_outputs)")
            self._store[caption] = tuple(t.detach() for t in encode(caption))
        return self._store[caption]
