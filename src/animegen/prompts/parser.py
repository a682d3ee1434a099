"""Prompt syntax shared by generation and training: A1111 emphasis and `<name:...>` extra-network tags.

Both follow AUTOMATIC1111 1.10's own code (not diffusers) so that prompts copied from A1111 / Civitai
infotexts produce the same per-token weights and the same text here. Prompt editing `[a:b:N]`, alternation
`[a|b]` and composable `AND` are `prompts.schedule`: as in A1111 they are resolved first (extra-network tags
removed, AND split, each part scheduled per step) and each resulting text is then parsed for emphasis here.

Emphasis (`modules/prompt_parser.py`, `parse_prompt_attention`):

* `(text)` multiplies by 1.1, `[text]` divides by 1.1, `(text:1.3)` multiplies by 1.3; nesting multiplies.
  White space may surround the weight: `(text: 1.3)`, `(text:1.3 )` (A1111 >= 1.6); the text keeps its own.
* `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters. Any other backslash escapes nothing: it leaves an
  empty fragment (so `x(\\:1.2)y` is `x`, `""` at 1.2, `y`: the colon still closes with a weight).
* Unclosed brackets apply their multiplier to everything after them; stray closers are literal text.
* `BREAK` (a whole word, upper case) becomes the marker `("BREAK", -1.0)`: the encoder starts a new chunk.
* Adjacent fragments with exactly equal weights are merged.

Extra networks (`modules/extra_networks.py`, `extensions-builtin/Lora/extra_networks_lora.py`):

* Every `<name:arg:...>` tag is removed and nothing else (the comma after it stays), whatever the name.
* `lora` and its alias `lyco` (case-sensitive, as A1111's registry) are LoRAs: `<lora:NAME:te:unet:dyn>`,
  `te=` / `unet=` / `dyn=` named arguments override; te defaults to 1, unet to te.
* Any other network (`hypernet`, unknown names) is returned as unsupported so callers can warn.

Where we deliberately differ from A1111, each where A1111 produces garbage or fails quietly (the test that
pins it, in tests/prompts/test_prompt_parser.py, in brackets):

* a malformed weight such as `(x:1.2.3)` is kept as literal text where A1111 raises on `float("1.2.3")`
  (`test_empty_prompt_and_malformed_weight`, `test_malformed_weight_with_spaces_is_still_kept_as_text`);
* `BREAK` inside brackets still breaks (A1111 multiplies the marker's -1 and then encodes the word
  "BREAK" with a negative weight) (`test_break_marker_and_merging`);
* a LoRA tag A1111 cannot read (no name, a multiplier that is not a number) raises naming the tag, where
  A1111 logs the error and generates without any LoRA (`test_unreadable_lora_tag_raises_naming_it`);
* white space around a LoRA name or argument key is ignored (A1111 looks up `" x "` / `"te "` verbatim and
  finds nothing) (`test_names_and_keys_are_stripped`).

The schedule grammar's own differences (an ambiguous parse A1111 resolves by Python's hash seed; `1e400`) are in
`prompts.schedule`'s docstring, pinned in tests/prompts/test_prompt_schedule.py.
"""

from __future__ import annotations

import logging
import math
import re
from typing import NamedTuple

from animegen.core.errors import AnimegenError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)

# One lexical unit of the emphasis grammar; the order of the alternatives matters (escapes first).
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])      # escaped bracket or backslash -> literal character
    | (?P<lone_backslash>\\)      # any other backslash escapes nothing: an empty fragment
    | (?P<open_round>\()
    | (?P<open_square>\[)
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)  # ': 1.3 )' closes a round bracket with an explicit weight
    | (?P<close_round>\))
    | (?P<close_square>\])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\bBREAK\b")
EXACT_DEPTH = 32  # up to this many brackets around a fragment its weight is multiplied in A1111's order


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into `(fragment, weight)` pairs with A1111's emphasis rules (see module docstring).

    Linear time: A1111 multiplies every fragment inside a bracket when the bracket closes (quadratic in the
    nesting); here each bracket is recorded as a range and `_range_weights` multiplies once per fragment.
    """
    pieces: list[str] = []
    is_break: list[bool] = []
    ranges: list[tuple[int, int, float]] = []  # (first piece, end piece, factor) in A1111's order of applying
    round_open: list[int] = []
    square_open: list[int] = []

    def add_text(fragment: str) -> None:
        for i, part in enumerate(_split_break(fragment)):
            if i > 0:
                pieces.append(BREAK_MARKER[0])
                is_break.append(True)
            pieces.append(part)
            is_break.append(False)

    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "escape":
            pieces.append(match.group(0)[1])
            is_break.append(False)
        elif kind == "lone_backslash":
            pieces.append("")  # as A1111: it still separates what is around it from merging
            is_break.append(False)
        elif kind == "open_round":
            round_open.append(len(pieces))
        elif kind == "open_square":
            square_open.append(len(pieces))
        elif kind == "weight" and round_open and _is_float(match.group("weight")):
            ranges.append((round_open.pop(), len(pieces), float(match.group("weight"))))
        elif kind == "close_round" and round_open:
            ranges.append((round_open.pop(), len(pieces), ROUND_MULTIPLIER))
        elif kind == "close_square" and square_open:
            ranges.append((square_open.pop(), len(pieces), SQUARE_MULTIPLIER))
        else:
            add_text(match.group(0))

    # Unclosed brackets apply to the rest of the prompt, in opening order as A1111 does.
    ranges.extend((start, len(pieces), ROUND_MULTIPLIER) for start in round_open)
    ranges.extend((start, len(pieces), SQUARE_MULTIPLIER) for start in square_open)

    if not pieces:
        return [("", 1.0)]

    merged: list[tuple[str, float]] = []
    run: list[str] = []  # adjacent fragments with exactly equal weights are merged
    run_weight = 1.0
    for piece, weight, marker in zip(pieces, _range_weights(len(pieces), ranges), is_break):
        if run and (marker or weight != run_weight):
            merged.append(("".join(run), run_weight))
            run = []
        if marker:
            merged.append(BREAK_MARKER)
        else:
            run.append(piece)
            run_weight = weight
    if run:
        merged.append(("".join(run), run_weight))
    return merged


def _split_break(fragment: str) -> list[str]:
    """`re.split(r"\\s*\\bBREAK\\b\\s*", fragment)` without its quadratic backtracking over runs of white space."""
    if "BREAK" not in fragment:
        return [fragment]
    parts, last = [], 0
    for match in _BREAK_WORD.finditer(fragment):
        start, end = match.start(), match.end()
        while start > last and fragment[start - 1].isspace():
            start -= 1
        while end < len(fragment) and fragment[end].isspace():
            end += 1
        parts.append(fragment[last:start])
        last = end
    parts.append(fragment[last:])
    return parts


def _range_weights(count: int, ranges: list[tuple[int, int, float]]) -> list[float]:
    """Each piece's weight: 1.0 times the factor of every range containing it, in the order of `ranges`.

    A fragment inside at most `EXACT_DEPTH` brackets gets A1111's value bit for bit (the same multiplications in
    the same order); deeper ones (weights past 1.1**32, about 21, that no prompt means) get the same product
    from a running sum of logarithms, equal up to rounding, so that the whole parse stays linear.
    """
    starting: dict[int, list[int]] = {}
    ending: dict[int, list[int]] = {}
    for index, (start, end, _) in enumerate(ranges):
        if start < end:
            starting.setdefault(start, []).append(index)
            ending.setdefault(end, []).append(index)
    active: dict[int, float] = {}
    log_sum, negative, zero, infinite = 0.0, 0, 0, 0

    def account(factor: float, sign: int) -> None:
        nonlocal log_sum, negative, zero, infinite
        if factor == 0:
            zero += sign
        elif math.isinf(factor):
            infinite += sign
        else:
            log_sum += sign * math.log(abs(factor))
        if factor < 0:
            negative += sign

    weights: list[float] = []
    weight = 1.0
    for position in range(count):
        changed = False
        for index in ending.get(position, ()):
            account(active.pop(index), -1)
            changed = True
        for index in starting.get(position, ()):
            active[index] = ranges[index][2]
            account(ranges[index][2], 1)
            changed = True
        if changed:
            if len(active) <= EXACT_DEPTH:
                weight = 1.0
                for index in sorted(active):
                    weight *= active[index]
            elif zero:
                weight = math.nan if infinite else 0.0
            else:
                magnitude = math.inf if infinite or log_sum > 709.0 else math.exp(log_sum)
                weight = -magnitude if negative % 2 else magnitude
        weights.append(weight)
    return weights


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# A1111's `re_extra_net`: `<type:arg1:arg2...>`. A1111 registers `lyco` as an alias of `lora`.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_NETWORKS = ("lora", "lyco")


class LoraTag(NamedTuple):
    """One `<lora:...>` tag: text-encoder and UNet multipliers, and A1111's dynamic rank (`dyn`, or None)."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    @property
    def multiplier(self) -> float | dict[str, float]:
        """What `apply_loras` takes: one float, or per component when te and unet differ."""
        return self.te if self.te == self.unet else {"text_encoder": self.te, "unet": self.unet}


class ExtraNetworkTag(NamedTuple):
    """An extra-network tag animegen does not apply (`<hypernet:name:1>`, unknown names), as written."""

    network: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"<{self.network}:{':'.join(self.args)}>"


class ExtraNetworks(NamedTuple):
    """A prompt with every extra-network tag removed, its LoRA tags, and the tags of other networks."""

    text: str
    loras: list[LoraTag]
    unsupported: list[ExtraNetworkTag]

    def warn_ignored(self) -> None:
        """Log what the prompt asked for that animegen does not apply (other networks, LoRA `dyn=`)."""
        log = logging.getLogger(__name__)
        for tag in self.unsupported:
            log.warning("ignoring %s: animegen applies only <lora:...> / <lyco:...> extra networks", tag)
        for tag in self.loras:
            if tag.dyn is not None:
                log.warning("ignoring dyn=%d of <lora:%s>: animegen merges a LoRA at its full rank", tag.dyn, tag.name)


def parse_extra_networks(prompt: str) -> ExtraNetworks:
    """Remove every `<name:...>` tag from `prompt` as A1111's `extra_networks.parse_prompt` does.

    Raises `AnimegenError` naming every LoRA tag that cannot be read.
    """
    loras: list[LoraTag] = []
    unsupported: list[ExtraNetworkTag] = []
    problems: list[str] = []

    def take(match: re.Match) -> str:
        network, args = match.group(1), match.group(2).split(":")
        if network not in LORA_NETWORKS:
            unsupported.append(ExtraNetworkTag(network, tuple(args)))
        else:
            try:
                loras.append(_lora_from_args(args))
            except ValueError as e:
                problems.append(f"{match.group(0)} {e}")
        return ""

    # Every tag ends at a `>`: past the last one nothing can match, and leaving it out keeps the scan linear
    # (A1111's regex tries every `<` against the whole rest of a prompt that has no `>` left).
    end = prompt.rfind(">") + 1
    text = _EXTRA_NETWORK.sub(take, prompt[:end]) + prompt[end:]
    if problems:
        raise AnimegenError(f"unreadable LoRA tag(s): {'; '.join(problems)}; write them as "
                            "<lora:NAME:WEIGHT>, <lora:NAME:TE:UNET> or <lora:NAME:te=W:unet=W>")
    return ExtraNetworks(text, loras, unsupported)


def _lora_from_args(args: list[str]) -> LoraTag:
    """A1111's `ExtraNetworkParams` split (`k=v` is named, anything else positional) and LoRA defaults."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0].strip()] = parts[1]
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValueError("has no name")

    def number(key: str, index: int, default, kind=float):
        raw = named.get(key, positional[index] if len(positional) > index else None)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"has {key} {raw!r}, which is not {'an integer' if kind is int else 'a number'}") from None

    te = number("te", 1, 1.0)
    unet = number("unet", 2, te)
    return LoraTag(name, te, unet, number("dyn", 3, None, int))


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """`parse_extra_networks` for callers that take one multiplier per LoRA: (text, [(name, te)])."""
    text, loras, _ = parse_extra_networks(prompt)
    return text, [(lora.name, lora.te) for lora in loras]
