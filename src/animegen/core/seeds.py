"""Seeds derived from names: one derivation for every "random, but a pure function of (run seed, ...)".

Training draws its noise, dropout, caption shuffles and batch order from seeds derived from the run
seed and where it is (step, slot, epoch), so a resumed or re-sharded run replays exactly. All of
them hash the same text, the parts joined by `/`, with sha256; the views below only differ in how
much of the digest they use. The values are fixed: changing the encoding changes every run.
"""

from __future__ import annotations

import hashlib
import random


def seed_digest(*parts: object) -> bytes:
    """sha256 of `part1/part2/...` (each part as `str`)."""
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def derive_seed(*parts: object) -> int:
    """A 56-bit seed (fits `torch.Generator.manual_seed` and every int64) for `parts`."""
    return int.from_bytes(seed_digest(*parts)[:7], "little")


def derive_rng(*parts: object) -> random.Random:
    """A `random.Random` seeded with the whole digest of `parts`."""
    return random.Random(seed_digest(*parts))


def derive_unit(*parts: object) -> float:
    """A number in [0, 1), uniform over `parts`: stable membership tests such as a held-out split."""
    return int.from_bytes(seed_digest(*parts)[:8], "little") / 2**64
