"""Helpers for the training tests: synthetic kohya folders and tiny-model configs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from animegen.train.config import validate_config

RED = (230, 20, 20)


def write_kohya(root: Path, name: str, colour, caption: str, n: int = 4, repeats: int = 1,
                sizes=None) -> Path:
    folder = root / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = sizes[i] if sizes else (64, 64)
        Image.new("RGB", size, colour).save(folder / f"{name}{i}.png")
        (folder / f"{name}{i}.txt").write_text(caption)
    return root


def tiny_config(base: Path, data_dir: Path, out: Path, **sections):
    """A config for the tiny model at 64 px; `sections` = {"adapter": {...}, ...} merged over the defaults."""
    cfg = {
        "model": {"base": str(base)},
        "adapter": {"kind": "lora", "rank": 4, "alpha": 4.0},
        "optimizer": {"name": "adamw", "lr": 1e-3, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(data_dir)}], "resolution": 64, "min_bucket_side": 64,
                 "max_bucket_side": 128},
        "train": {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "device": "cpu", "seed": 0},
        "log": {"progress": False, "tensorboard": False},
        "export": {"formats": ["kohya"], "dtype": "fp32"},
    }
    for key, value in sections.items():
        if key == "data" and "datasets" not in value:
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = {**cfg.get(key, {}), **value}
    return validate_config(cfg)
