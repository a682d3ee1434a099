"""Helpers for the training tests: synthetic kohya folders and tiny-model configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from animegen.train.config import validate_config

RED = (230, 20, 20)
SIDE = 64
_yy, _xx = np.mgrid[0:SIDE, 0:SIDE]
DISK = (_yy - (SIDE - 1) / 2) ** 2 + (_xx - (SIDE - 1) / 2) ** 2 < (SIDE * 5 / 16) ** 2  # radius 20 px


def disk_image(inside=(240, 240, 240), outside=(15, 15, 15)) -> Image.Image:
    """The synthetic concept: a light disk on a dark ground."""
    return Image.fromarray(np.where(DISK[..., None], np.array(inside), np.array(outside)).astype(np.uint8))


def disk_contrast(images: np.ndarray) -> float:
    """Mean brightness inside the disk minus outside, over a batch of HxWx3 images in [0, 1]."""
    lum = images.mean(axis=-1)
    return float(lum[:, DISK].mean() - lum[:, ~DISK].mean())


def write_world(root: Path, n: int = 32, seed: int = 0, caption: str = "1girl") -> Path:
    """A kohya folder of smooth random colour fields (2x2 colours, bilinear): the tiny base's "world"."""
    folder = root / "1_world"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        corners = Image.fromarray(rng.integers(25, 230, size=(2, 2, 3), dtype=np.uint8))
        corners.resize((SIDE * 2, SIDE * 2), Image.BILINEAR).crop((SIDE // 2,) * 2 + (SIDE * 3 // 2,) * 2).save(
            folder / f"w{i}.png")
        (folder / f"w{i}.txt").write_text(caption)
    return root


def write_kohya(root: Path, name: str, colour, caption: str, n: int = 4, repeats: int = 1,
                sizes=None) -> Path:
    """`n` images of one flat `colour` (or copies of `colour` when it is a PIL image), captioned alike."""
    folder = root / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if isinstance(colour, Image.Image):
            image = colour
        else:
            image = Image.new("RGB", sizes[i] if sizes else (64, 64), colour)
        image.save(folder / f"{name}{i}.png")
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
