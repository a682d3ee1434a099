"""Danbooru-style tag handling shared by captioning, training and prompting.

Danbooru writes tags with underscores (`long_hair`) while prompts and WD14 captions use spaces
(`long hair`); emoticon tags (kaomoji such as `^_^`) are the exception because the underscore is part
of the face. Tags containing brackets must be escaped before they go into a prompt, otherwise the
emphasis parser reads `hatsune miku (cosplay)` as a weight.

It is also the one home of the tag vocabularies that captioning (`data/caption.py`), prompt presets
and tag adherence (`evaluate/tag_adherence.py`) must agree on: counting tags and rating words.
"""

from __future__ import annotations

import random
import re

# The emoticon tags whose underscores are kept, as in SmilingWolf's WD14 tagger reference app.
KAOMOJI: frozenset[str] = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})

#: Danbooru's (and WD14's) four ratings, mildest first.
RATINGS: tuple[str, ...] = ("general", "sensitive", "questionable", "explicit")
#: Rating words prompts use (Animagine writes `safe` / `nsfw`) -> the Danbooru rating they mean.
RATING_ALIASES: dict[str, str] = {"safe": "general", "sfw": "general", "nsfw": "explicit"}
#: Every word that states a rating in a prompt or caption.
RATING_TAGS: frozenset[str] = frozenset(RATINGS) | frozenset(RATING_ALIASES)
#: Danbooru rating -> the rating words written into captions (Animagine XL 3.1 convention).
RATING_WORDS: dict[str, str] = {"general": "safe", "sensitive": "sensitive", "questionable": "nsfw",
                                "explicit": "explicit, nsfw"}

_COUNT_TAG = re.compile(r"^(\d+\+?\s?(girl|boy|other)s?|multiple (girls|boys|others)|no humans)$")


def is_count_tag(tag: str) -> bool:
    """Counting tags (normalised, lower case): `1girl`, `2boys`, `6+girls`, `multiple others`, `no humans`."""
    return _COUNT_TAG.match(tag) is not None


_ESCAPABLE = re.compile(r"([\\()\[\]])")
_ESCAPED = re.compile(r"\\([\\()\[\]])")


def normalize_tag(tag: str) -> str:
    """`long_hair` -> `long hair`; kaomoji (`^_^`, `>_<`, ...) keep their underscores; spaces collapsed."""
    tag = tag.strip()
    if tag in KAOMOJI:
        return tag
    return " ".join(tag.replace("_", " ").split())


def escape_tag(tag: str) -> str:
    """Make a tag literal inside a prompt: `\\`, `(`, `)`, `[`, `]` get a backslash (A1111 escapes)."""
    return _ESCAPABLE.sub(r"\\\1", tag)


def unescape_tag(tag: str) -> str:
    """Inverse of `escape_tag`: `hatsune miku \\(cosplay\\)` -> `hatsune miku (cosplay)`."""
    return _ESCAPED.sub(r"\1", tag)


def split_tags(caption: str) -> list[str]:
    """Comma-separated caption -> list of stripped, non-empty tags (order kept, duplicates kept)."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def join_tags(tags: list[str]) -> str:
    """List of tags -> `a, b, c` caption."""
    return ", ".join(tags)


def shuffle_tags(caption: str, keep_tokens: int, rng: random.Random, *,
                 keep_tokens_separator: str | None = None, dropout: float = 0.0) -> str:
    """Shuffle caption tags for training, with kohya-ss sd-scripts semantics.

    The first `keep_tokens` comma-separated tags stay in place, the rest are shuffled with `rng`.
    If `keep_tokens_separator` (kohya's `|||`) occurs in the caption it takes precedence: the tags
    before it are fixed, the tags after it are shuffled, and tags after a second separator are fixed
    at the end. `dropout` drops each shuffled tag with that probability (kohya's caption_tag_dropout).
    """
    if keep_tokens < 0:
        raise ValueError(f"keep_tokens must be >= 0, got {keep_tokens}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be between 0 and 1, got {dropout}")
    suffix: list[str] = []
    if keep_tokens_separator and keep_tokens_separator in caption:
        head, _, rest = caption.partition(keep_tokens_separator)
        middle, _, tail = rest.partition(keep_tokens_separator)
        fixed, flex, suffix = split_tags(head), split_tags(middle), split_tags(tail)
    else:
        tags = split_tags(caption)
        fixed, flex = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(flex)
    if dropout > 0:
        flex = [tag for tag in flex if rng.random() >= dropout]
    return join_tags(fixed + flex + suffix)
