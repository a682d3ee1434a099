"""Noise as A1111 1.10 draws it: the sources GPU, CPU and NV ("RNG:" in infotext), one generator per image, ENSD.

Contract (A1111 `modules/rng.py`, `modules/rng_philox.py`):

- `ImageRNG(seeds, source=...)` holds one generator per image, seeded with that image's seed. Its first draw,
  `first_noise(shape)`, is the image's starting noise (txt2img's initial latents; the noise img2img and the
  hires pass add to the encoded image); every later draw, `next_noise()` (or `noise_sampler(sigma, sigma_next)`,
  k-diffusion's signature), is the fresh noise an ancestral step asks for, where A1111 patches k-diffusion's
  `torch.randn_like`. Image k of a batch therefore gets the noise it gets when generated alone.
- ENSD (eta noise seed delta, NovelAI's 31337): when non-zero, right after the first draw each image's
  generator is replaced by one seeded with seed + ENSD. It changes ancestral noise, never the starting noise.
- Sources. "CPU": torch's CPU generator, the same on every machine. "NV": A1111's CPU re-implementation of
  CUDA's `torch.randn`: Philox4x32-10 (Salmon et al. 2011) with counter (call index, 0, element index, 0) and
  key (seed low word, seed high word), one normal per element from the first output of curand's Box-Muller,
  u = x·2⁻³² + 2⁻³³, v = y·2π·2⁻³² + π·2⁻³², n = √(−2 ln u)·sin v, computed in float64 and rounded to
  float32 as A1111 does. "GPU", A1111's default: a CUDA generator when the noise is drawn for a CUDA device;
  on any other device NV, the same numbers computed on the CPU.
- Variation seed (A1111's subseed, subseed strength): the first noise is slerped towards the subseed's first draw.
- `randn_local(seed, shape, source)`: a fresh generator's first draw, no state kept; what A1111 hands torchsde's
  Brownian tree (the DPM++ SDE samplers) for each seed it asks for.

Why: A1111 draws GPU noise by default and most shared infotexts carry no "RNG" (meaning GPU); without NV no
CPU-only machine could reproduce them.

Where we deliberately differ:
- A1111's "GPU" on a machine without CUDA (or on Apple MPS) draws CPU noise, so an NVIDIA user's infotext gives
  another image there; ours draws NV, the NVIDIA card's noise.
- NV and CUDA agree on every Philox output bit; the normals agree to float32 rounding, not bit for bit (CUDA
  evaluates Box-Muller in float32 with fast `__sincosf`; A1111's NV, and ours, in float64). Like A1111's NV, the
  counter layout is torch's while a tensor has no more elements than the card runs threads at once (SM count
  × 2048: 270k on an H200, 126k on an RTX 3090), which covers latents up to 4×128×128; past that torch's
  grid-stride loop reorders the CUDA values and neither NV follows.
- "Seed resize from" is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from animegen.core.errors import AnimegenError

SOURCES = ("GPU", "CPU", "NV")
A1111_DEFAULT_SOURCE = "GPU"  # what an infotext without "RNG:" means

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_TWO_POW32_INV = float(np.float32(2.3283064e-10))  # curand's CURAND_2POW32_INV
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))  # CURAND_2POW32_INV_2PI, as A1111 rounds it


def rng_source(value: object, field: str = "RNG") -> str:
    """The canonical source name for `value` (any case), or an error naming `field` and the choices."""
    name = str(value).strip().upper()
    if name not in SOURCES:
        raise AnimegenError(f"{field} {value!r} is not a noise source; use GPU (A1111's default), CPU or NV")
    return name


def ensd_value(value: object, field: str = "ENSD") -> int:
    """An eta noise seed delta (an int, or its text in an infotext), or an error naming `field`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise AnimegenError(f"{field} {value!r} is not a whole number (e.g. 31337; 0 = off)")


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32 with 10 rounds, column-wise: counter (4, n) and key (2, n) uint32 words -> (4, n) uint32."""
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(*(np.asarray(w, dtype=np.uint32) for w in (*counter, *key)))
    with np.errstate(over="ignore"):
        for _ in range(10):
            product0 = c0.astype(np.uint64) * _PHILOX_M[0]
            product1 = c2.astype(np.uint64) * _PHILOX_M[1]
            c0, c1, c2, c3 = ((product1 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0, product1.astype(np.uint32),
                              (product0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1, product0.astype(np.uint32))
            k0, k1 = k0 + _PHILOX_W[0], k1 + _PHILOX_W[1]  # uint32: wraps mod 2^32
    return np.stack([c0, c1, c2, c3])


class PhiloxGenerator:
    """NV: the numbers `torch.randn(..., device="cuda")` gives a CUDA generator seeded `seed`, on the CPU.

    Its whole state is the seed and how many tensors it has drawn (`offset`): each `randn` call is one
    Philox counter block, element i of the call its thread i.
    """

    def __init__(self, seed: int, offset: int = 0):
        self.seed = int(seed) % 2**64
        self.offset = int(offset)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = math.prod(shape)
        if n > 2**32:
            raise ValueError(f"NV noise of {n} elements: at most 2**32 per tensor")
        index = np.arange(n, dtype=np.uint64)
        counter = (self.offset & _MASK32, self.offset >> 32, index.astype(np.uint32), (index >> np.uint64(32)))
        x, y, _, _ = philox4x32_10(counter, (self.seed & _MASK32, self.seed >> 32))
        self.offset += 1
        u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        normal = (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
        return torch.from_numpy(normal.reshape(tuple(shape)))


def _kind(source: str, device: torch.device) -> str:
    """The generator behind a source on a device: "CPU", "CUDA" or "NV"."""
    if source == "GPU":
        return "CUDA" if device.type == "cuda" else "NV"
    return source


def _generator(kind: str, seed: int, device: torch.device):
    seed = int(seed) % 2**64
    if kind == "NV":
        return PhiloxGenerator(seed)
    return torch.Generator(device if kind == "CUDA" else "cpu").manual_seed(seed)


def _draw(kind: str, generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if kind == "NV":
        return generator.randn(shape).to(device)
    if kind == "CUDA":
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def randn_local(seed: int, shape: Sequence[int], source: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """The first draw of a fresh generator seeded `seed` (float32 on `device`), A1111's `randn_local`."""
    device = torch.device(device)
    kind = _kind(rng_source(source), device)
    return _draw(kind, _generator(kind, seed, device), tuple(shape), device)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed blend of one image's (C, H, W) noise: spherical, per vector along dim 1."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cos = (low_unit * high_unit).sum(1)
    if cos.mean() > 0.9995:  # nearly parallel: A1111 blends linearly (with these weights)
        return low * t + high * (1 - t)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin).unsqueeze(1) * low + (torch.sin(t * omega) / sin).unsqueeze(1) * high


class ImageRNG:
    """One noise generator per image of a batch, for one sampling pass (A1111 makes a new one for the hires pass).

    `first_noise((batch, C, H, W))` once, then `next_noise()` (or `noise_sampler`) for each ancestral draw.
    Noise is float32 on `device`; the sampler casts it to the latents' dtype.
    """

    def __init__(self, seeds: Sequence[int], *, source: str, eta_noise_seed_delta: int = 0,
                 subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                 device: str | torch.device = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.source = rng_source(source)
        self.device = torch.device(device)
        self.kind = _kind(self.source, self.device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta)
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self._generators = [_generator(self.kind, s, self.device) for s in self.seeds]
        self._shape: tuple[int, ...] | None = None

    def first_noise(self, shape: Sequence[int]) -> torch.Tensor:
        """The starting noise of every image: shape (batch, ...) with one seed per batch entry."""
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2 or shape[0] != len(self.seeds):
            raise ValueError(f"noise shape {shape} must start with the batch size: {len(self.seeds)} seeds")
        if self._shape is not None:
            raise RuntimeError("first_noise was already drawn; make a new ImageRNG for each pass, as A1111 does")
        self._shape = shape[1:]
        images = []
        for i, generator in enumerate(self._generators):
            noise = _draw(self.kind, generator, self._shape, self.device)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0  # A1111: past the list, subseed 0
                noise = slerp(self.subseed_strength, noise, randn_local(subseed, self._shape, self.source, self.device))
            images.append(noise)
        if self.eta_noise_seed_delta:
            self._generators = [_generator(self.kind, s + self.eta_noise_seed_delta, self.device) for s in self.seeds]
        return torch.stack(images)

    def next_noise(self) -> torch.Tensor:
        """Fresh noise for an ancestral/SDE step, the shape of `first_noise`, from each image's generator."""
        if self._shape is None:
            raise RuntimeError("draw first_noise(shape) before next_noise(): the first draw is the starting noise")
        return torch.stack([_draw(self.kind, g, self._shape, self.device) for g in self._generators])

    def noise_sampler(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """k-diffusion's `noise_sampler(sigma, sigma_next)`: the next draw (the sigmas do not matter)."""
        return self.next_noise()
