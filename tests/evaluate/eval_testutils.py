"""Helpers shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def write_images(folder, n, seed, sizes=((64, 64),), fmt="png"):
    """n random RGB images (smooth blobs + noise so features vary) cycling through `sizes`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = rng.integers(0, 256, size=(3,), dtype=np.int64)
        yy, xx = np.mgrid[0:h, 0:w]
        grad = (xx[..., None] * rng.uniform(-2, 2, 3) + yy[..., None] * rng.uniform(-2, 2, 3))
        arr = np.clip(base + grad + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.{fmt}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
