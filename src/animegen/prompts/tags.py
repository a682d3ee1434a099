"""Danbooru-style tag handling shared by captioning, training and prompting.

Danbooru writes tags with underscores (`long_hair`) while prompts and WD14 captions use spaces
(`long hair`); emoticon tags (kaomoji such as `^_^`) are the exception because the underscore is part
of the face: SmilingWolf's WD14 list (`KAOMOJI`) plus kohya's rule (`--remove_underscore` leaves tags of
3 characters or fewer alone, which covers `;_;` and the other short faces the list misses). Tags
containing brackets must be escaped before they go into a prompt, otherwise the emphasis parser reads
`hatsune miku (cosplay)` as a weight.

It is also the one home of the tag vocabularies that captioning (`data/caption.py`), prompt presets
and tag adherence (`evaluate/tag_adherence.py`) must agree on: counting tags, rating words, Danbooru's
resolution tags (`resolution_tags`) and kohya's `name (series)` split (`expand_character_tag`).
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

#: Danbooru's resolution tags (normalised), which Danbooru derives from the file's pixel size.
RESOLUTION_TAGS: tuple[str, ...] = ("incredibly absurdres", "absurdres", "highres", "lowres")

_COUNT_TAG = re.compile(r"^(\d+\+?\s?(girl|boy|other)s?|multiple (girls|boys|others)|no humans)$")


def is_count_tag(tag: str) -> bool:
    """Counting tags (normalised, lower case): `1girl`, `2boys`, `6+girls`, `multiple others`, `no humans`."""
    return _COUNT_TAG.match(tag) is not None


_ESCAPABLE = re.compile(r"([\\()\[\]])")
_ESCAPED = re.compile(r"\\([\\()\[\]])")


def normalize_tag(tag: str) -> str:
    """`long_hair` -> `long hair`; kaomoji (`^_^`, `;_;`, `(o)_(o)` ...) keep underscores; spaces collapsed."""
    tag = tag.strip()
    if tag in KAOMOJI or len(tag) <= 3:  # kohya: "ignore emoji tags like >_< and ^_^"
        return tag
    return " ".join(tag.replace("_", " ").split())


def resolution_tags(width: int, height: int) -> list[str]:
    """Danbooru's resolution tags for a `width` x `height` image, largest first.

    Danbooru `app/models/post.rb` `add_automatic_tags`: incredibly_absurdres when width or height >= 10000,
    absurdres when width >= 3200 or height >= 2400, highres when width >= 1600 or height >= 1200, lowres when
    width <= 500 and height <= 500 (Danbooru drops these tags from a post and derives them again).
    """
    tags = []
    if width >= 10_000 or height >= 10_000:
        tags.append("incredibly absurdres")
    if width >= 3200 or height >= 2400:
        tags.append("absurdres")
    if width >= 1600 or height >= 1200:
        tags.append("highres")
    if width <= 500 and height <= 500:
        tags.append("lowres")
    return tags


def expand_character_tag(tag: str) -> tuple[str, str | None]:
    """`skadi (arknights)` -> (`skadi`, `arknights`); kohya's `--character_tag_expand` for one tag.

    As kohya: the last bracket is the series, everything before it the character
    (`chara (swimsuit) (series)` -> `chara (swimsuit)`, `series`). No trailing bracket, or nothing before
    it: (tag, None).
    """
    tag = normalize_tag(tag)
    head, _, last = tag.rpartition("(")
    name, series = head.rstrip(" _"), last[:-1].strip()
    if not tag.endswith(")") or not name or not series:
        return tag, None
    return name, series


def tag_key(tag: str) -> str:
    """Comparison key of a tag: `Long_Hair` and `long hair` are the same tag."""
    return normalize_tag(tag).lower()


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
                 keep_tokens_separator: str | None = None, dropout: float = 0.0, shuffle: bool = True) -> str:
    """Shuffle caption tags for training, with kohya-ss sd-scripts semantics.

    The first `keep_tokens` comma-separated tags stay in place, the rest are shuffled with `rng`.
    If `keep_tokens_separator` (kohya's `|||`) occurs in the caption it takes precedence: the tags
    before it are fixed, the tags after it are shuffled, and tags after a second separator are fixed
    at the end. `dropout` drops each shuffled tag with that probability (kohya's caption_tag_dropout).
    `shuffle=False` keeps the order (only the dropout and the separator apply), as kohya without shuffle_caption.
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
    if shuffle:
        rng.shuffle(flex)
    if dropout > 0:
        flex = [tag for tag in flex if rng.random() >= dropout]
    return join_tags(fixed + flex + suffix)
