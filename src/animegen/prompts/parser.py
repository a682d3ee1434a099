"""Prompt syntax shared by generation and training: A1111 emphasis and `<lora:...>` tags.

The emphasis grammar follows AUTOMATIC1111's `modules/prompt_parser.py` so that prompts copied from
A1111 / Civitai infotexts produce the same per-token weights here:

* `(text)` multiplies by 1.1, `[text]` divides by 1.1, `(text:1.3)` multiplies by 1.3; nesting multiplies.
* `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters; any other backslash is dropped (as in A1111).
* Unclosed brackets apply their multiplier to everything after them; stray closers are literal text.
* `BREAK` (a whole word, upper case) becomes the marker `("BREAK", -1.0)`: the encoder starts a new chunk.
* Adjacent fragments with exactly equal weights are merged.

Two deliberate differences from A1111, both where A1111 produces garbage: a malformed weight such as
`(x:1.2.3)` is kept as literal text instead of raising, and `BREAK` inside brackets still breaks
(A1111 multiplies the marker's -1 and then encodes the word "BREAK" with a negative weight).
"""

from __future__ import annotations

import re

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)

# One lexical unit of the emphasis grammar; the order of the alternatives matters (escapes first).
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])      # escaped bracket or backslash -> literal character
    | (?P<lone_backslash>\\)      # any other backslash is dropped
    | (?P<open_round>\()
    | (?P<open_square>\[)
    | :(?P<weight>[+-]?[.\d]+)\)  # ':1.3)' closes a round bracket with an explicit weight
    | (?P<close_round>\))
    | (?P<close_square>\])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into `(fragment, weight)` pairs with A1111's emphasis rules (see module docstring)."""
    pieces: list[list] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    def add_text(fragment: str) -> None:
        for i, part in enumerate(_BREAK.split(fragment)):
            if i > 0:
                pieces.append([BREAK_MARKER[0], BREAK_MARKER[1], True])
            pieces.append([part, 1.0, False])

    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "escape":
            pieces.append([match.group(0)[1], 1.0, False])
        elif kind == "lone_backslash":
            continue
        elif kind == "open_round":
            round_open.append(len(pieces))
        elif kind == "open_square":
            square_open.append(len(pieces))
        elif kind == "weight" and round_open and _is_float(match.group("weight")):
            scale_from(round_open.pop(), float(match.group("weight")))
        elif kind == "close_round" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif kind == "close_square" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(match.group(0))

    # Unclosed brackets apply to the rest of the prompt, innermost first as A1111 does.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    if not pieces:
        return [("", 1.0)]

    merged: list[list] = [pieces[0]]
    for piece in pieces[1:]:
        last = merged[-1]
        if not piece[2] and not last[2] and piece[1] == last[1]:
            last[0] += piece[0]
        else:
            merged.append(piece)
    return [(piece[0], piece[1]) for piece in merged]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# A1111's extra-network syntax: `<type:arg1:arg2...>`; we consume the `lora` and `lyco` types.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TYPES = {"lora", "lyco"}


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:name[:weight...]>` / `<lyco:...>` tags; return (clean prompt, [(name, weight)]).

    The weight is the first number (A1111's text-encoder multiplier; `<lora:x:te:unet>` gives `te`),
    or a `te=` named argument, and defaults to 1.0. Other extra networks (e.g. `<hypernet:...>`) are
    left in the prompt. The separators the tags leave behind are tidied so that `a, <lora:x>, b`
    becomes `a, b` rather than `a, , b` (which would encode an extra comma token).
    """
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        if match.group(1).lower() not in _LORA_TYPES:
            return match.group(0)
        found.append(_lora_from_args(match.group(0), match.group(2)))
        return "\0"  # placeholder so tidying only touches the places where a tag was

    marked = _EXTRA_NETWORK.sub(take, prompt)
    if not found:
        return prompt, []
    return _tidy_removed(marked), found


def _lora_from_args(tag: str, args: str) -> tuple[str, float]:
    parts = [part.strip() for part in args.split(":")]
    name = parts[0]
    if not name:
        raise ValueError(f"LoRA tag {tag!r} has no name: write it as <lora:NAME:WEIGHT>")
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    raw = named.get("te", positional[0] if positional else None)
    if raw is None or raw.strip() == "":
        return name, 1.0
    try:
        return name, float(raw)
    except ValueError:
        raise ValueError(
            f"LoRA tag {tag!r} has weight {raw!r}, which is not a number: write it as <lora:{name}:0.8>"
        ) from None


def _tidy_removed(marked: str) -> str:
    """Drop the placeholders left by removed tags together with the separator they leave dangling."""
    text = re.sub(r"[ \t]*\0+[ \t]*", "\0", marked)  # one placeholder per run of tags, spaces eaten
    text = re.sub(r",\0(?=,)", "", text)  # "a, <lora>, b": keep one of the two commas
    text = re.sub(r"^\0,?|,?\0$", "", text)  # a tag at either end takes its comma with it
    text = text.replace("\0,", ",").replace(",\0", ", ").replace("\0", " ")
    text = re.sub(r"[ \t]+(?=\n)", "", text)
    return text.strip(" \t")
