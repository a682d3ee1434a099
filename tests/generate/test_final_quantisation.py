"""The 8-bit image is A1111's: `(255 * clamp(x, 0, 1)).astype(uint8)` truncates (processing.py,
process_images_inner), where diffusers' `numpy_to_pil` rounds. Rounding moves about half the pixels by one level,
so a pasted infotext would give an image that differs from A1111's PNG in every other byte."""

from __future__ import annotations

import numpy as np

from animegen.generate import GenerationRequest


def test_final_image_truncates_like_a1111(sd15_engine):
    out = sd15_engine(GenerationRequest("1girl, red hair", sampler="Euler", steps=2, seed=7, width=64,
                                        height=64, rng="CPU"))[0]
    pixels = np.asarray(out.image)
    truncated = (np.clip(out.array, 0, 1) * 255).astype(np.uint8)
    rounded = (np.clip(out.array, 0, 1) * 255).round().astype(np.uint8)
    assert not np.array_equal(truncated, rounded)  # the check below can tell the two apart
    assert np.array_equal(pixels, truncated)
