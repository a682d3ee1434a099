"""Prompt editing, alternation and AND as A1111 1.10 schedules them (`modules/prompt_parser.py`).

Expected values are A1111 1.10's own doctests (`get_learned_conditioning_prompt_schedules`) or worked out by hand
from its rules: a number with a decimal point is a fraction of the pass's steps, one without a step number,
`int()` truncates and caps at the steps, only ends >= 1 are kept; alternation takes option (step - 1) % n; the
hires pass counts step numbers from the start of the first pass and fractions from 1.0; denoiser call k (from 0)
takes the first entry whose end is >= k.
"""

import pytest

from animegen.prompts.schedule import entry_at, get_prompt_schedule, pass_schedules, split_and


def _alternating(steps, texts):
    return [(s, texts[(s - 1) % len(texts)]) for s in range(1, steps + 1)]


@pytest.mark.parametrize("prompt, expected", [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", _alternating(10, ["a", "(b:1.1)"])),
    ("[fe|]male", _alternating(10, ["female", "male"])),
    ("[fe|||]male", _alternating(10, ["female", "male", "male", "male"])),
])
def test_a1111_doctests(prompt, expected):
    assert get_prompt_schedule(prompt, 10) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("[a:b:0.5]", [(10, "a"), (20, "b")]),  # a fraction: 0.5 * 20
    ("[a:b:12]", [(12, "a"), (20, "b")]),  # a step number
    ("[a::0.5]", [(10, "a"), (20, "")]),  # removed after step 10
    ("[a:0.25]", [(5, ""), (20, "a")]),  # added after step 5
    ("x [a:b:3 ] y", [(3, "x a y"), (20, "x b y")]),  # 1.10: white space after the number too
    ("[a:b:1]", [(1, "a"), (20, "b")]),
    ("[a:b:1.0]", [(20, "a")]),  # 1.10: "1.0" is the whole pass, not step 1
    ("[a:b:1.5]", [(20, "a")]),  # 30 steps, capped at 20
    ("[a:b:0]", [(20, "b")]),  # never before: ends below 1 are dropped, every step is past it
    ("[a:b:-3]", [(20, "b")]),
    ("[a:b:1e1]", [(10, "a"), (20, "b")]),  # an exponent without a point is a step number
    ("[a:b:0.26]", [(5, "a"), (20, "b")]),  # int() truncates 5.2
    ("[a:[b:c:0.75]:0.25]", [(5, "a"), (15, "b"), (20, "c")]),
    ("([a:b:10]:1.2) x", [(10, "(a:1.2) x"), (20, "(b:1.2) x")]),  # edits inside emphasis
    ("[a:b:5][c|d]", [(s, ("a" if s <= 5 else "b") + ("c" if s % 2 else "d")) for s in range(1, 21)]),
])
def test_prompt_editing_at_20_steps(prompt, expected):
    assert get_prompt_schedule(prompt, 20) == expected


def test_alternation_cycles_every_step():
    assert get_prompt_schedule("a [x|y|z] b", 6) == [
        (1, "a x b"), (2, "a y b"), (3, "a z b"), (4, "a x b"), (5, "a y b"), (6, "a z b")]
    # Nested: both levels take (step - 1) % n of the same step.
    assert get_prompt_schedule("[a|[b|c]]", 4) == [(1, "a"), (2, "c"), (3, "a"), (4, "c")]


@pytest.mark.parametrize("prompt", [
    "\\[a:b:2\\]",  # escaped brackets are text (and stay escaped for the emphasis parser)
    "[a:b]",  # no number
    "[a:b:3x]",  # not a number
    "[a:b:c:3]",  # three colons
    "[a:[b:c]:3]",  # a malformed inner bracket spoils the outer one
    "a | b",  # `|` outside brackets: the grammar cannot read the prompt at all
    "[a|b",
    "[a:b:2] c \\",  # a trailing lone backslash: unreadable, even with an edit before it
    "(a:b:c)",
])
def test_what_is_not_an_edit_is_kept_as_text(prompt):
    assert get_prompt_schedule(prompt, 10) == [(10, prompt)]


def test_a_bad_bracket_is_text_and_the_rest_is_still_read():
    assert get_prompt_schedule("[x [a:3]", 10) == [(3, "[x "), (10, "[x a")]
    assert get_prompt_schedule("(a:b:c) [d:2]", 10) == [(2, "(a:b:c) "), (10, "(a:b:c) d")]
    assert get_prompt_schedule("[[a:3]", 10) == [(3, "["), (10, "[a")]


def test_an_edit_next_to_stray_brackets_is_always_read():
    # Deliberate difference: A1111's Earley parser finds two readings here and picks one by Python's hash seed
    # (a different schedule in different A1111 processes); we always read the well-formed edit.
    assert get_prompt_schedule("[5:0.5]:):", 10) == [(5, ":):"), (10, "5:):")]


def test_a_huge_number_does_not_crash():
    # A1111 raises OverflowError on int(float("1e400")); it is past every step, so the edit never switches.
    assert get_prompt_schedule("[a:b:1e400]", 10) == [(10, "a")]
    assert get_prompt_schedule("[a:b:-1e400]", 10) == [(10, "b")]


@pytest.mark.parametrize("prompt, expected", [
    ("a [b:.5] c", [(10, "a b c")]),  # A1111 1.10 doctest (10 first-pass steps, 10 hires steps): already over
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),  # A1111 1.10 doctest: halfway through the hires pass
])
def test_hires_pass_a1111_doctests(prompt, expected):
    assert get_prompt_schedule(prompt, 10, hires_steps=10) == expected


def test_hires_pass_counts_step_numbers_from_the_first_pass():
    # First pass 20 steps, hires 8: step 25 is hires step 5; step 5 happened in the first pass.
    assert get_prompt_schedule("[a:b:25]", 20, hires_steps=8) == [(5, "a"), (8, "b")]
    assert get_prompt_schedule("[a:b:5]", 20, hires_steps=8) == [(8, "b")]
    assert get_prompt_schedule("[a|b]", 20, hires_steps=3) == [(1, "a"), (2, "b"), (3, "a")]
    assert get_prompt_schedule("a | b", 20, hires_steps=3) == [(3, "a | b")]


def test_entry_at_is_a1111s_reconstruct_rule():
    ends = [10, 20]
    assert [entry_at(ends, k) for k in (0, 1, 10, 11, 19, 20)] == [0, 0, 0, 1, 1, 1]
    assert entry_at(ends, 21) == 0  # past the last end A1111 falls back to the first entry
    # Alternation over 4 calls: a, a, b, a (the first two calls both take the step-1 entry).
    schedule = get_prompt_schedule("[a|b]", 4)
    assert [schedule[entry_at([e for e, _ in schedule], k)][1] for k in range(4)] == ["a", "a", "b", "a"]


@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a AND b :1.2", [("a", 1.0), (" b", 1.2)]),
    ("a:0.5 AND b: -1 ", [("a", 0.5), (" b", -1.0)]),
    ("a :.5", [("a", 0.5)]),
    ("a:2.", [("a", 2.0)]),
    ("a:1.2:1.3", [("a:1.2", 1.3)]),  # only the last colon-number is the weight
    ("(x:1.2)", [("(x:1.2)", 1.0)]),  # emphasis is not an AND weight
    ("a:1.2.3", [("a:1.2.3", 1.0)]),
    ("cat ANDROID", [("cat ANDROID", 1.0)]),  # AND must be a whole word
    ("a and b", [("a and b", 1.0)]),  # upper case only
    ("AND b", [("", 1.0), (" b", 1.0)]),
    ("x, \n", [("x,", 1.0)]),  # trailing white space is dropped
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


def test_pass_schedules_split_only_the_positive_prompt():
    plan = pass_schedules("[a:b:0.5] AND c:0.7", "bad AND [worse:0.5]", 10)
    assert plan.positive == (([(5, "a"), (10, "b")], 1.0), ([(10, " c")], 0.7))
    assert plan.negative == [(5, "bad AND "), (10, "bad AND worse")]
    assert plan.positive_texts() == ["a", "b", " c"]
    assert plan.negative_texts() == ["bad AND ", "bad AND worse"]
