"""Emphasis parsing and LoRA tag extraction, checked against A1111's documented results."""

import pytest

from animegen.prompts.parser import extract_lora_tags, parse_prompt_attention


def _approx(pairs):
    return [(text, pytest.approx(weight, abs=1e-12)) for text, weight in pairs]


# Expected values are A1111's own doctest results in modules/prompt_parser.py.
@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_a1111_doctest_examples(text, expected):
    assert parse_prompt_attention(text) == _approx(expected)


def test_nesting_multiplies_and_square_brackets_divide():
    assert parse_prompt_attention("((x))") == [("x", 1.1 * 1.1)]
    assert parse_prompt_attention("[x]") == _approx([("x", 1 / 1.1)])
    assert parse_prompt_attention("[[x]]") == _approx([("x", 1 / 1.1 / 1.1)])
    assert parse_prompt_attention("(x:1.3)") == [("x", 1.3)]
    assert parse_prompt_attention("((x:0.5))") == _approx([("x", 0.55)])
    assert parse_prompt_attention("(a [b] c)") == _approx([("a ", 1.1), ("b", 1.0), (" c", 1.1)])


def test_escapes_and_stray_closers_are_literal():
    assert parse_prompt_attention("a \\\\ b") == [("a \\ b", 1.0)]
    assert parse_prompt_attention("\\[x\\]") == [("[x]", 1.0)]
    assert parse_prompt_attention("a) b]") == [("a) b]", 1.0)]
    assert parse_prompt_attention("x:1.2)") == [("x:1.2)", 1.0)]  # weight closer without an opener
    assert parse_prompt_attention("time: 5") == [("time: 5", 1.0)]
    # A1111 drops a backslash that escapes nothing.
    assert parse_prompt_attention("a\\b") == [("ab", 1.0)]


def test_unclosed_square_bracket_divides_the_rest():
    assert parse_prompt_attention("a [b c") == _approx([("a ", 1.0), ("b c", 1 / 1.1)])


def test_break_marker_and_merging():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    # BREAK must be a whole upper-case word.
    assert parse_prompt_attention("BREAKING break") == [("BREAKING break", 1.0)]
    # Inside brackets it still breaks and keeps its marker weight (A1111 would scale the marker).
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]


def test_empty_prompt_and_malformed_weight():
    assert parse_prompt_attention("") == [("", 1.0)]
    # A1111 raises on float('1.2.3'); we keep the text literally inside the (unclosed) bracket.
    assert parse_prompt_attention("(x:1.2.3)") == [("x:1.2.3)", 1.1)]


@pytest.mark.parametrize("prompt, clean, loras", [
    ("1girl, <lora:style:0.8>, smile", "1girl, smile", [("style", 0.8)]),
    ("<lora:a> 1girl", "1girl", [("a", 1.0)]),
    ("1girl, <lyco:b:0.3:0.7>", "1girl", [("b", 0.3)]),
    ("1girl <lora:a:1><lora:my lora v2:-0.5>, smile", "1girl, smile", [("a", 1.0), ("my lora v2", -0.5)]),
    ("x <lora:c:te=0.4:unet=1>", "x", [("c", 0.4)]),
    ("a <hypernet:h:1> b", "a <hypernet:h:1> b", []),
    ("plain (prompt:1.2)", "plain (prompt:1.2)", []),
])
def test_extract_lora_tags(prompt, clean, loras):
    assert extract_lora_tags(prompt) == (clean, loras)


def test_extract_lora_tags_bad_weight_names_the_tag():
    with pytest.raises(ValueError, match="<lora:x:heavy>"):
        extract_lora_tags("a <lora:x:heavy>")
