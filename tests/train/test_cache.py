"""Latent cache: keyed by image content + VAE + bucket; an edited image gets a new entry."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from PIL import Image
from train_helpers import RED, write_kohya

from animegen.train.cache import LatentCache, TextEmbeddingCache, module_fingerprint
from animegen.train.config import DatasetEntry
from animegen.train.data import read_dataset


def test_latent_cache_hits_and_invalidates(tmp_path):
    write_kohya(tmp_path / "d", "red", RED, "zxq", n=2)
    items = read_dataset(DatasetEntry(path=str(tmp_path / "d")))
    for it in items:
        it.bucket = (64, 64)
    encoded = []

    def encode(item, flip):
        encoded.append((item.source, flip))
        return torch.full((4, 8, 8), float(len(encoded))), (0, 0)

    cache = LatentCache(tmp_path / "cache", vae_id="vae-a")
    first = cache.get(items[0], False, encode)[0]
    assert torch.equal(cache.get(items[0], False, encode)[0], first) and len(encoded) == 1  # hit
    fresh = LatentCache(tmp_path / "cache", vae_id="vae-a")  # a new run reads the disk entry
    assert torch.equal(fresh.get(items[0], False, encode)[0], first) and len(encoded) == 1
    cache.get(items[0], True, encode)  # flipped is its own entry
    assert len(encoded) == 2
    LatentCache(tmp_path / "cache", vae_id="vae-b").get(items[0], False, encode)  # another VAE
    assert len(encoded) == 3
    items[0].bucket = (128, 64)
    cache.get(items[0], False, encode)  # another bucket
    assert len(encoded) == 4
    items[0].bucket = (64, 64)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(items[0].source)  # the image changed on disk
    again = LatentCache(tmp_path / "cache", vae_id="vae-a")
    value = again.get(items[0], False, encode)[0]
    assert len(encoded) == 5 and not torch.equal(value, first)


def _vae(seed):
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4)


def test_vae_fingerprint_follows_weights_not_object():
    a, b, c = _vae(0), _vae(0), _vae(1)
    assert module_fingerprint(a) == module_fingerprint(b) != module_fingerprint(c)


def test_text_cache_only_when_enabled():
    calls = []

    def enc(caption):
        calls.append(caption)
        return (torch.ones(2),)

    on, off = TextEmbeddingCache(True), TextEmbeddingCache(False)
    on.get("a", enc), on.get("a", enc)
    assert calls == ["a"]
    off.get("a", enc), off.get("a", enc)
    assert calls == ["a", "a", "a"]
