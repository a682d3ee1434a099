"""A LoRA's file is hashed once per process, not once per image: its infotext hash (`Lora hashes`) is
remembered by (path, size, mtime_ns), even where the on-disk hash cache cannot be written (a read-only
home), and a file that changed on disk is hashed again."""

from __future__ import annotations

import collections
import os

import pytest
import torch

from animegen.core import files
from animegen.generate import GenerationRequest, Generator
from animegen.models.lora import LoraFile, LoraModule, lora_hash, write_lora

TARGET = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _lora(path, seed: int):
    g = torch.Generator().manual_seed(seed)
    module = LoraModule(TARGET, "lora", {"lora_down.weight": torch.randn(4, 32, generator=g),
                                         "lora_up.weight": torch.randn(32, 4, generator=g)}, alpha=4.0)
    return write_lora(LoraFile({TARGET: module}, {}), path, format="kohya")


@pytest.fixture
def counted_hashes(monkeypatch, tmp_path):
    """Calls of the byte hasher per file, with a cache root that cannot be written (its parent is a file)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("ANIMEGEN_CACHE", str(blocker / "cache"))
    calls: collections.Counter = collections.Counter()
    real = files._sha256_bytes

    def counting(path, *args, **kwargs):
        calls[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "_sha256_bytes", counting)
    return calls


def test_a_four_image_request_hashes_its_lora_file_once(counted_hashes, tiny_sd15_dir, tmp_path, one_torch_thread):
    folder = tmp_path / "loras"
    folder.mkdir()
    path = _lora(folder / "spiky.safetensors", seed=0)
    gen = Generator(tiny_sd15_dir, device="cpu", lora_dir=folder)
    images = gen(GenerationRequest("1girl <lora:spiky:0.8>", width=64, height=64, steps=1, sampler="Euler",
                                   seed=3, n=4))
    assert len(images) == 4
    assert all(f"spiky: {lora_hash(path)}" in im.infotext for im in images)
    assert counted_hashes[str(path)] == 1


def test_a_changed_file_is_hashed_again(counted_hashes, tmp_path):
    path = _lora(tmp_path / "a.safetensors", seed=0)
    first = lora_hash(path)
    assert lora_hash(path) == first and counted_hashes[str(path)] == 1
    before = path.stat().st_mtime_ns
    _lora(path, seed=1)  # new bytes, same size: the new mtime tells the remembered hash no longer applies
    # file times tick coarsely (a few ms): make sure the rewrite's mtime differs, as it would in real use
    os.utime(path, ns=(path.stat().st_atime_ns, max(path.stat().st_mtime_ns, before + 1_000_000)))
    second = lora_hash(path)
    assert second != first
    assert counted_hashes[str(path)] == 2
