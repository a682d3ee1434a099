"""Every prompt parser runs in linear time on adversarial input (issue #14), so no prompt can hold a worker.

Each test times parsing n and 4n characters of one adversarial shape and asserts the ratio is below 10 (linear
gives ~4, quadratic 16), in CPU time without garbage collection, best of 5 interleaved runs, so that a busy
machine does not fail it, plus a generous absolute bound at the server's prompt limit (32,768 characters). The inputs are the shapes that were quadratic, exponential or
recursive before: unclosed and nested brackets, unterminated `<lora:` tags, runs of colons, backslashes and
white space, AND and BREAK storms.
"""

from __future__ import annotations

import gc
import math
import time

import pytest

from animegen.prompts.parser import parse_extra_networks, parse_prompt_attention
from animegen.prompts.schedule import get_prompt_schedule, pass_schedules, split_and

LIMIT = 32_768  # ServeLimits.max_prompt_chars


def _best_times(function, small: str, large: str, rounds: int = 5) -> tuple[float, float]:
    """The fastest of `rounds` CPU-second timings of each input, the two interleaved so that a slow spell of a
    shared machine (cache pressure, frequency changes: thread CPU time does not hide those) hits both alike;
    the garbage collector is paused: its passes over every live object are not the parser's algorithm."""
    best_small = best_large = math.inf
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for text, is_large in ((small, False), (large, True)):
                start = time.thread_time()
                function(text)
                elapsed = time.thread_time() - start
                if is_large:
                    best_large = min(best_large, elapsed)
                else:
                    best_small = min(best_small, elapsed)
    finally:
        gc.enable()
    return best_small, best_large


def _assert_linear(function, make, absolute_s: float = 2.0) -> None:
    """`make(k)` builds an input of about k characters; 4x the input must cost < 10x the time (linear ~4,
    n log n ~5, quadratic 16)."""
    small, large = make(LIMIT // 4), make(LIMIT)
    assert len(large) >= LIMIT - 64
    t_small, t_large = _best_times(function, small, large)
    t_small = max(t_small, 1e-4)  # below 0.1 ms the ratio is noise
    assert t_large < absolute_s, f"{len(large)} characters took {t_large:.2f} s"
    assert t_large / t_small < 10, f"{t_small * 1e3:.1f} ms -> {t_large * 1e3:.1f} ms: not linear"


def _repeat(unit: str, prefix: str = "", suffix: str = ""):
    return lambda k: prefix + unit * max(1, (k - len(prefix) - len(suffix)) // len(unit)) + suffix


ADVERSARIAL = {
    "unclosed round": _repeat("(a"),
    "unclosed square": _repeat("[a"),
    "nested round": lambda k: "(" * (k // 2) + "a" + ")" * (k // 2),
    "nested weights": lambda k: "(" * (k // 6) + "a" + ":1.1)" * (k // 6),
    "crossing brackets": _repeat("(a[b)c]"),
    "lora openers": _repeat("<lora:"),
    "lora colons": _repeat(":", prefix="<lora:x"),
    "backslashes": _repeat("\\"),
    "escapes": _repeat("\\("),
    "spaces": _repeat(" ", prefix="a", suffix="b"),
    "colon spaces": _repeat(": "),
    "weight digits": _repeat("1", prefix="(a:"),
    "nested edits": lambda k: "[a:" * (k // 6) + "b" + ":1]" * (k // 6),
    "edit openers": _repeat("[a:b:"),
    "alternation": lambda k: "[" * (k // 2) + "a|b" + "]" * (k // 2),
    "and storm": _repeat("a AND "),
    "break storm": _repeat("a BREAK "),
    "break spaces": _repeat("BREAK   "),
}


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_emphasis_parser_is_linear(shape):
    _assert_linear(parse_prompt_attention, ADVERSARIAL[shape])


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_extra_network_parser_is_linear(shape):
    def parse(text):
        try:
            parse_extra_networks(text)
        except ValueError:
            pass  # an unreadable LoRA tag is a clear error; only the time matters here

    _assert_linear(parse, ADVERSARIAL[shape])


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_schedule_parser_is_linear_and_never_recurses_out(shape):
    _assert_linear(lambda text: get_prompt_schedule(text, 4), ADVERSARIAL[shape])


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_and_split_is_linear(shape):
    _assert_linear(split_and, ADVERSARIAL[shape])


def test_deep_nesting_keeps_its_meaning():
    depth = 5000  # far past Python's recursion limit
    assert get_prompt_schedule("[a:" * depth + "b" + ":1]" * depth, 4) == [(1, "a"), (4, "b")]
    assert get_prompt_schedule("(" * depth + "x" + ")" * depth, 4) == [(4, "(" * depth + "x" + ")" * depth)]
    plan = pass_schedules("[" * depth + "a|b" + "]" * depth, "", 2)  # emphasis around an alternation
    around = "[" * (depth - 1), "]" * (depth - 1)
    assert plan.positive == (([(1, "a".join(around)), (2, "b".join(around))], 1.0),)
    # Deep emphasis: the weight is still the product of every bracket around the text.
    [(text, weight)] = parse_prompt_attention("(" * 300 + "x" + ")" * 300)
    assert text == "x" and weight == pytest.approx(1.1 ** 300, rel=1e-9)
    pieces = parse_prompt_attention("[a" * 200)
    assert [t for t, _ in pieces] == ["a"] * 200
    assert [w for _, w in pieces] == pytest.approx([(1 / 1.1) ** (k + 1) for k in range(200)], rel=1e-9)


def test_shallow_nesting_is_bit_exact_with_a1111_order():
    # Up to 32 levels the weights are multiplied in A1111's order (each closing bracket in turn), bit for bit.
    expected = 1.0
    for _ in range(32):
        expected *= 1.1
    assert parse_prompt_attention("(" * 32 + "x" + ")" * 32) == [("x", expected)]
    mixed = 1.0
    for factor in (1.3, 1 / 1.1, 1.1):  # inner weight closes first, then ], then the outer (
        mixed *= factor
    assert parse_prompt_attention("([(x:1.3)])") == [("x", mixed)]


def test_white_space_around_break_is_still_removed():
    assert parse_prompt_attention("a" + " " * 1000 + "BREAK" + " " * 1000 + "b") == [
        ("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert split_and("a" + " " * 1000) == [("a", 1.0)]
    assert split_and("a  : 0.5 " + " " * 1000) == [("a", 0.5)]
