"""A1111 1.10 prompt schedules: prompt editing `[a:b:N]`, alternation `[a|b]` and composable `AND`.

What (`modules/prompt_parser.py`: `get_learned_conditioning_prompt_schedules`, `get_multicond_prompt_list`,
`reconstruct_cond_batch`; semantics learned from it, the parser is our own recursive descent over its grammar,
linear in the prompt's length and never more than a few calls deep):

* `get_prompt_schedule(prompt, steps)` -> `[(end_step, text), ...]`: the text to encode up to each end step.
  - `[a:b:N]` is a until N, then b; `[a:N]` adds a after N; `[a::N]` removes a after N. A number with a decimal
    point is a fraction of the pass's steps (`0.5` of 20 = 10, `1.5` = 30, capped at 20), one without is a step
    number (`12`); `int()` truncates, and an end below step 1 (`0`, `0.01`) means b from the start. This is
    A1111 1.10's default timeline; A1111 before 1.7 (and 1.10's "old" timeline option) read N < 1 as a
    fraction and anything else as a step, which differs only for numbers like `1.0`, `1.5`.
  - `[a|b|c]` takes option (step - 1) % 3 at every step; options may be empty (`[fe|]male`).
  - Nesting is allowed anywhere (`[a:[b:c:2]:1]`, `([a:b:3]:1.2)`); emphasis brackets and weights are kept as
    text for `parser.parse_prompt_attention`, as are escapes (`\\[` stays `\\[`).
  - A prompt the grammar cannot read as a whole (a `|` outside brackets, a trailing lone backslash) is one
    entry with the prompt unchanged; a bracket that is not editing/alternation/emphasis (`[a:b]`, `[a:3 x]`,
    an unclosed `[`) is kept as literal text and the rest of the prompt is still read.
  - Where A1111's Earley parser finds two readings (an edit next to stray brackets or colons, `[5:0.5]:):`)
    its choice depends on Python's hash seed, i.e. differs between A1111 processes; we always read every
    well-formed bracket. A number too large for `int()` (`1e400`) is past every step; A1111 raises.
    Checked against A1111's lark grammar (a dev-time comparison, not a dependency): 10,000 random prompts
    equal; 3,000 bracket-heavy ones under 12 hash seeds equal wherever A1111 itself is deterministic.
  - Hires pass (`hires_steps=`): A1111 schedules the second pass with its own steps; a step number counts from
    the start of the first pass (`25` with 20 first-pass steps = hires step 5), a fraction from 1.0 = the
    start of the hires pass (`1.5` = halfway through it), so `0.5` is already over.
* `entry_at(ends, step)`: which entry a denoiser call uses. A1111 counts its denoiser calls from 0 and takes the
  first entry whose end step is >= the count (the first entry past the last end), so `[a:b:10]` at 20 steps
  conditions calls 0..10 on a (eleven calls) and alternation gives a, a, b, a, b, ... We keep these rules
  exactly: they are what makes an infotext give A1111's image. A sampler's steps count calls: second-order
  samplers schedule twice the steps (`generate.conditioning.schedule_steps`).
* `split_and(prompt)` -> `[(text, weight), ...]`: `\\bAND\\b` splits the prompt; each part may end in
  `:weight` (white space around the colon allowed, `1`, `1.`, `.5`, `-0.5`), trailing white space is dropped.
  Only the positive prompt is split; the negative prompt's "AND" is text, as in A1111.
* `pass_schedules(prompt, negative, steps)` puts both together for one sampling pass.

Pure text, no torch: `generate.conditioning` plans each pass with it, encodes the texts
(`encode.encode_pass_texts`) and picks them per denoiser call (`generate.denoiser`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

Schedule = list[tuple[int, str]]

# Lark's SIGNED_NUMBER (A1111's NUMBER): [+-] then an integer, a decimal (1. / 1.5 / .5) with an optional
# exponent, or an integer with an exponent.
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)")
_EDIT_END = re.compile(r"\s*(" + _NUMBER.pattern + r")\s*\]")  # ': [WS] NUMBER [WS] ]' after the colon
_SPECIAL = "\\[]():|"


# ---- the tree ------------------------------------------------------------------------------------------------
@dataclass
class _Edit:
    """`[before:after:number]` (before is None in `[after:number]`); `when` is set per pass."""

    before: list | None
    after: list
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list  # a node list per option (an empty option is an empty list)


_Node = str | list | _Edit | _Alternate  # a list is a group of nodes (a bracket kept as text, with its content)


class _Unreadable(Exception):
    """The whole prompt is outside the grammar: A1111 then uses it unchanged."""


_RAISES = object()  # memo value: parsing this bracket reaches a part of the prompt the grammar cannot read


class _Parser:
    """Recursive descent over A1111's lark grammar (`schedule_parser`), in linear time and bounded depth.

    Inside brackets everything must parse; at the top level a bracket that does not is one literal
    character (the grammar's `/[][():]/+`), and `|` or an unescapable backslash make the prompt unreadable.
    What a bracket parses to depends only on where it starts, so each is parsed once, right to left before
    the top level is read: a nested bracket is then always a lookup, never a recursive call (no recursion
    limit, and no bracket re-read when its parent fails and the top level tries the next character).
    """

    def __init__(self, text: str):
        self.text = text
        self.brackets: dict[int, object] = {}
        for i in reversed(_unescaped_openers(text)):
            try:
                self.brackets[i] = self._bracket(i)
            except _Unreadable:
                self.brackets[i] = _RAISES

    def bracket(self, i: int) -> tuple[list[_Node], int] | None:
        """What the bracket at i parses to (see `_bracket`), from the table built at start."""
        parsed = self.brackets[i]
        if parsed is _RAISES:
            raise _Unreadable
        return parsed

    def top(self) -> list[_Node]:
        nodes: list[_Node] = []
        i, n = 0, len(self.text)
        while i < n:
            ch = self.text[i]
            if ch in "[(":
                parsed = self.bracket(i)
                if parsed is not None:
                    node, i = parsed
                    nodes.append(node)
                    continue
                nodes.append(ch)
                i += 1
            elif ch in "]):":
                nodes.append(ch)
                i += 1
            elif ch == "|":
                raise _Unreadable
            else:
                text, i = self.plain(i)
                nodes.append(text)
        return nodes

    def plain(self, i: int) -> tuple[str, int]:
        """A run of ordinary characters; a backslash takes the next character with it (never a newline)."""
        start, n = i, len(self.text)
        while i < n and self.text[i] not in _SPECIAL[1:]:
            if self.text[i] == "\\":
                if i + 1 >= n or self.text[i + 1] == "\n":
                    raise _Unreadable
                i += 2
            else:
                i += 1
        return self.text[start:i], i

    def prompt(self, i: int) -> tuple[list[_Node], int] | None:
        """The grammar's `prompt` from i: it ends at the first `]`, `)`, `:`, `|` of its level, or at the end."""
        nodes: list[_Node] = []
        n = len(self.text)
        while i < n:
            ch = self.text[i]
            if ch in "[(":
                parsed = self.bracket(i)
                if parsed is None:
                    return None
                node, i = parsed
                nodes.append(node)
            elif ch in "]):|":
                break
            else:
                text, i = self.plain(i)
                nodes.append(text)
        return nodes, i

    def _bracket(self, i: int) -> tuple[list[_Node], int] | None:
        """Emphasis `(p)` / `(p:p)` / `[p]` (kept as text), editing or alternation starting at i; None if none fits."""
        text, opener = self.text, self.text[i]
        first = self.prompt(i + 1)
        if first is None:
            return None
        p1, j = first
        close = ")" if opener == "(" else "]"
        if j >= len(text):
            return None
        if text[j] == close:
            return [opener, p1, close], j + 1
        if opener == "(":
            if text[j] != ":":
                return None
            second = self.prompt(j + 1)
            if second is None or second[1] >= len(text) or text[second[1]] != ")":
                return None
            return ["(", p1, ":", second[0], ")"], second[1] + 1
        if text[j] == "|":
            options = [p1]
            while text[j] == "|":
                more = self.prompt(j + 1)
                if more is None or more[1] >= len(text):
                    return None
                options.append(more[0])
                j = more[1]
            return ([_Alternate(options)], j + 1) if text[j] == "]" else None
        if text[j] != ":":
            return None
        end = _EDIT_END.match(text, j + 1)  # `[after:N]`
        if end:
            return [_Edit(None, p1, end.group(1))], end.end()
        second = self.prompt(j + 1)
        if second is None or second[1] >= len(text) or text[second[1]] != ":":
            return None
        end = _EDIT_END.match(text, second[1] + 1)
        return ([_Edit(p1, second[0], end.group(1))], end.end()) if end else None


def _unescaped_openers(text: str) -> list[int]:
    """Positions of the `[` and `(` that are not escaped (after an odd run of backslashes): the only ones the
    parser can read as brackets, since `plain` takes a backslash and the character after it together."""
    openers, backslashes = [], 0
    for i, ch in enumerate(text):
        if ch in "[(" and backslashes % 2 == 0:
            openers.append(i)
        backslashes = backslashes + 1 if ch == "\\" else 0
    return openers


def _walk(nodes: list[_Node]):
    """Every node of the tree (iteratively: a prompt may nest thousands deep)."""
    stack = [nodes]
    while stack:
        for node in stack.pop():
            if isinstance(node, list):
                stack.append(node)
            elif isinstance(node, _Edit):
                yield node
                stack.extend((node.before or [], node.after))
            elif isinstance(node, _Alternate):
                yield node
                stack.extend(node.options)


def _text_at(nodes: list[_Node], step: int) -> str:
    parts: list[str] = []
    stack = [iter(nodes)]
    while stack:
        for node in stack[-1]:
            if isinstance(node, str):
                parts.append(node)
                continue
            if isinstance(node, list):
                chosen = node
            elif isinstance(node, _Edit):
                chosen = (node.before or []) if step <= node.when else node.after
            else:
                chosen = node.options[(step - 1) % len(node.options)]
            stack.append(iter(chosen))
            break
        else:
            stack.pop()
    return "".join(parts)


def get_prompt_schedule(prompt: str, steps: int, *, hires_steps: int | None = None) -> Schedule:
    """`[(end_step, text), ...]` for one prompt over `steps` (or a hires pass of `hires_steps` after `steps`)."""
    int_offset, fraction_offset, total = (0, 0.0, steps) if hires_steps is None else (steps, 1.0, hires_steps)
    try:
        tree = _Parser(prompt).top()
    except _Unreadable:
        return [(total, prompt)]
    ends = {total}
    for node in _walk(tree):
        if isinstance(node, _Edit):
            value = float(node.number)
            value = (value - fraction_offset) * total if "." in node.number else value - int_offset
            node.when = int(max(-1.0, min(total, value)))  # clamped first: A1111's int() overflows on 1e400
            if node.when >= 1:
                ends.add(node.when)
        elif isinstance(node, _Alternate):
            ends.update(range(1, total + 1))
    return [(end, _text_at(tree, end)) for end in sorted(ends)]


def entry_at(ends: Sequence[int], step: int) -> int:
    """Index of the schedule entry denoiser call `step` (0-based) uses: the first whose end is >= step, else 0."""
    return next((i for i, end in enumerate(ends) if step <= end), 0)


_AND = re.compile(r"\bAND\b")
_WEIGHT_NUMBER = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable-diffusion parts of a positive prompt: `(text, weight)` per `AND`-separated part."""
    return [_part_weight(part) for part in _AND.split(prompt)]


def _part_weight(part: str) -> tuple[str, float]:
    """A1111's `re.search(r"\\s*:\\s*([-+]?(?:\\d+\\.?|\\d*\\.\\d+))\\s*$", part)`, scanned from the end in linear time
    (the regex tries every start in a run of white space against the whole run)."""
    text = part.rstrip()
    colon = text.rfind(":")  # the weight has no colon: only the last one can start it
    if colon >= 0 and _WEIGHT_NUMBER.fullmatch(number := text[colon + 1:].lstrip()):
        return text[:colon].rstrip(), float(number)
    return text, 1.0


@dataclass(frozen=True)
class PassSchedules:
    """One sampling pass: each AND part's schedule with its weight, and the negative prompt's schedule."""

    positive: tuple[tuple[Schedule, float], ...]
    negative: Schedule

    def positive_texts(self) -> list[str]:
        """The distinct texts of the positive parts, in order of first use (each is encoded once)."""
        return list(dict.fromkeys(text for schedule, _ in self.positive for _, text in schedule))

    def negative_texts(self) -> list[str]:
        return list(dict.fromkeys(text for _, text in self.negative))


def pass_schedules(prompt: str, negative: str, steps: int, *, hires_steps: int | None = None) -> PassSchedules:
    """A1111's conditioning plan for one pass: the prompt split at AND, both prompts scheduled over the steps."""
    positive = tuple((get_prompt_schedule(text, steps, hires_steps=hires_steps), weight)
                     for text, weight in split_and(prompt))
    return PassSchedules(positive, get_prompt_schedule(negative, steps, hires_steps=hires_steps))
