"""`data.cache_text_encoder_outputs`: every caption encoded before the first step, then the text encoders leave
the training device (kohya's `--cache_text_encoder_outputs`; issue #18's memory budget: SDXL's two encoders
are 1.6 GB of fp16 weights an SDXL LoRA does not need on an 8 GB GPU once its captions are encoded).

Contract. With frozen text encoders (`adapter.train_text_encoder = false`) and captions that do not change
from showing to showing by chance beyond a finite set, `cache_and_release(trainer)` encodes every caption a
training image can be shown with, and the validation captions, into the trainer's `TextEmbeddingCache`,
then seals it (a caption it does not hold is a bug, raised, never a silent encoder call) and moves the
text encoders to the CPU. Previews generate through the encoders, so `encoders_on_device(trainer)` brings
them back for that and sends them away again. The run's numbers are those of the uncached run: the cache
holds exactly what the encoders would return (`TextEmbeddingCache` stores per caption).

Which captions an image can be shown with is found by running `data.make_caption` itself under a
`_ChoiceTree` instead of a random generator: each `randrange(n)` / `random()` it asks is a branch, and every
path through the tree is walked once (multi-caption candidates, caption dropout, multi-line captions,
wildcards; kohya's `keep_tokens_separator` reordering needs no draw). No second copy of the caption rules
exists here. `shuffle_tags` and `caption_tag_dropout_rate` draw per tag (n! or 2^n captions), so they are
refused by the config, as kohya refuses `--shuffle_caption` with cached outputs; an image with more than
`MAX_VARIANTS` captions is refused with its path.

Where we differ from kohya: on a CPU-only run the encoders already live in host memory, so nothing moves
(the cache is still filled first and sealed, which is what the tests check); kohya's
`--cache_text_encoder_outputs_to_disk` is the precompute-to-shards path of the streaming data plane.
"""

from __future__ import annotations

import contextlib
import random

import torch

from animegen.core.errors import AnimegenError

HOST = torch.device("cpu")  # where released encoders wait
MAX_VARIANTS = 256  # captions per image; above it the cache would cost more than the encoders it frees


class CaptionVariantsError(AnimegenError):
    """An image's possible captions are too many to encode ahead."""


class _ChoiceTree(random.Random):
    """A stand-in generator that answers each draw from a fixed path of choices and records each draw's
    number of outcomes, so the caller can walk every path of a function's decisions."""

    def __init__(self, path: list[int]):
        super().__init__(0)
        self.path, self.arity, self.depth = path, [], 0

    def _choose(self, n: int) -> int:
        choice = self.path[self.depth] if self.depth < len(self.path) else 0
        self.arity.append(n)
        self.depth += 1
        return choice

    def _randbelow(self, n: int) -> int:  # what randrange, choice and friends draw through
        return self._choose(n)

    def getrandbits(self, k: int) -> int:
        raise CaptionVariantsError("a caption rule draws raw random bits, whose outcomes cannot be listed; "
                                   "set data.cache_text_encoder_outputs = false")

    def random(self) -> float:  # two outcomes: "below any probability" (0.0) or "above it" (just under 1)
        return (0.0, 1.0 - 1e-12)[self._choose(2)]

    def shuffle(self, x, random=None):
        raise CaptionVariantsError("captions shuffle their tags per showing (data.shuffle_tags): too many "
                                   "to encode ahead; set data.cache_text_encoder_outputs = false")


def caption_variants(item, data_cfg) -> set[str]:
    """Every caption `make_caption` can give `item` under `data_cfg` (walks all paths of its draws)."""
    from animegen.train.data import make_caption

    found: set[str] = set()
    todo: list[list[int]] = [[]]
    while todo:
        path = todo.pop()
        tree = _ChoiceTree(path)
        found.add(make_caption(item, data_cfg, tree))
        # branch at every draw past the fixed prefix: the prefix's siblings were queued by its parent
        for depth in range(len(path), len(tree.arity)):
            taken = tree.path[:depth] + [0] * max(0, depth - len(tree.path))
            todo += [taken + [c] for c in range(1, tree.arity[depth])]
        if len(found) > MAX_VARIANTS or len(todo) > 16 * MAX_VARIANTS:
            raise CaptionVariantsError(f"{item.source}: more than {MAX_VARIANTS} possible captions (wildcards / "
                                       "alternative lines); fewer alternatives, or set "
                                       "data.cache_text_encoder_outputs = false")
    return found


def cache_and_release(trainer) -> int:
    """Fill and seal the trainer's text cache with every training and validation caption, then move the
    text encoders off an accelerator. Returns how many captions were encoded."""
    from tqdm.auto import tqdm

    cfg = trainer.config.data
    captions = {""}  # the empty chunk pads shorter captions in a batch
    for item in trainer.data.train:
        captions |= caption_variants(item, cfg)
    captions |= {item.captions[0] for item in trainer.data.val}  # validation encodes the first caption as is
    with torch.no_grad():
        for caption in tqdm(sorted(captions), desc="caching text encoder outputs",
                            disable=not trainer.accelerator.is_main_process or not trainer.config.log.progress):
            trainer.text_cache.get(caption, trainer._encode_text_uncached)
    trainer.text_cache.sealed = True
    _move_encoders(trainer, HOST)
    return len(captions)


def _move_encoders(trainer, device: torch.device) -> None:
    if trainer.device == HOST:
        return  # already in host memory
    for name in trainer.family.components:
        getattr(trainer.pipe, name).to(device)
    if device == HOST and torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def encoders_on_device(trainer):
    """The text encoders on the training device for the duration (previews), then away again."""
    released = trainer.config.data.cache_text_encoder_outputs
    if released:
        _move_encoders(trainer, trainer.device)
    try:
        yield
    finally:
        if released:
            _move_encoders(trainer, HOST)
