"""Seeds derived from names have one home (`animegen.core.seeds`); training's draws keep their values."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from animegen.core.seeds import derive_rng, derive_seed, derive_unit

SRC = Path(__file__).resolve().parents[2] / "src" / "animegen"


def test_the_derivations_keep_the_values_training_has_always_drawn():
    # the formulas the trainer used inline before they had one home: a resumed run depends on them
    digest = hashlib.sha256(b"noise/3/5/1").digest()
    assert derive_seed("noise", 3, 5, 1) == int.from_bytes(digest[:7], "little")
    assert derive_rng(3, 5, 1).random() == random.Random(hashlib.sha256(b"3/5/1").digest()).random()
    assert derive_unit("a", 1) == int.from_bytes(hashlib.sha256(b"a/1").digest()[:8], "little") / 2**64


def test_derived_seeds_differ_by_every_part_and_fit_a_torch_generator():
    seeds = {derive_seed("noise", seed, step, slot) for seed in range(3) for step in range(3) for slot in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**56 for s in seeds)
    assert 0 <= derive_unit("x") < 1


def test_training_draws_through_the_one_derivation():
    from animegen.train.data import step_rng
    from animegen.train.loss import sample_generator

    assert sample_generator(3, 5, 1).initial_seed() == derive_seed("noise", 3, 5, 1)
    assert step_rng(3, 5, 1).random() == derive_rng(3, 5, 1).random()


def test_no_other_module_hashes_its_own_seeds():
    pattern = re.compile(r"(Random|manual_seed|from_bytes)\(\s*hashlib\.sha256|sha256\(repr\(")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8")) and p.name != "seeds.py"]
    assert offenders == []
