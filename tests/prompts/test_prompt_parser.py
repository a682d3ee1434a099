"""Emphasis parsing and extra-network tags, checked against A1111 1.10's own code (hand-derived results).

References: `modules/prompt_parser.py` (`re_attention`, `parse_prompt_attention`), `modules/extra_networks.py`
(`re_extra_net`, `parse_prompt`, `ExtraNetworkParams`) and `extensions-builtin/Lora/extra_networks_lora.py`.
"""

import re

import pytest

from animegen.core.errors import AnimegenError
from animegen.prompts.parser import (
    ExtraNetworkTag,
    LoraTag,
    extract_lora_tags,
    parse_extra_networks,
    parse_prompt_attention,
)


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


# A1111 >= 1.6: `re_attention`'s weight closer is `:\s*([+-]?[.\d]+)\s*\)`: white space may surround the number.
@pytest.mark.parametrize("text, expected", [
    ("(masterpiece: 1.4)", [("masterpiece", 1.4)]),
    ("(a:1.4 )", [("a", 1.4)]),
    ("( a : 1.4 )", [(" a ", 1.4)]),  # the text keeps its spaces: only the weight closer eats white space
    ("(a:\t1.2\n)", [("a", 1.2)]),
    ("best, (masterpiece: 1.4), 1girl", [("best, ", 1.0), ("masterpiece", 1.4), (", 1girl", 1.0)]),
    ("((a: 0.5))", [("a", 0.55)]),
    # Not a weight closer: the colon and the rest stay text inside a x1.1 group.
    ("(a : 1.4x)", [("a : 1.4x", 1.1)]),
    ("(a: 1.4 2)", [("a: 1.4 2", 1.1)]),
    # A weight closer with no open round bracket is text.
    ("a: 1.2 )", [("a: 1.2 )", 1.0)]),
])
def test_weight_may_have_white_space_around_it(text, expected):
    assert parse_prompt_attention(text) == _approx(expected)


def test_malformed_weight_with_spaces_is_still_kept_as_text():
    # Our deliberate difference (A1111 raises on float("1.2.3")), now also with A1111's white space.
    assert parse_prompt_attention("(x: 1.2.3)") == [("x: 1.2.3)", 1.1)]


def test_backslash_before_a_colon_escapes_nothing():
    # `\:` is not one of A1111's escapes: the lone backslash becomes an empty fragment (weight 1.0, scaled by
    # its brackets) and `:1.2)` still closes the bracket with weight 1.2. The empty fragment keeps "x" and "y"
    # apart, so they are tokenized as two words, not as "xy".
    assert parse_prompt_attention("x(\\:1.2)y") == [("x", 1.0), ("", 1.2), ("y", 1.0)]
    # Not followed by a weight, the colon is plain text inside the x1.1 group.
    assert parse_prompt_attention("(a\\:b)") == [("a:b", 1.1)]
    assert parse_prompt_attention("\\(a\\:1.2\\)") == [("(a:1.2)", 1.0)]
    # Next to a different weight the empty fragment stays (A1111 only merges equal weights).
    assert parse_prompt_attention("(a)\\") == [("a", 1.1), ("", 1.0)]


# A1111's extra_networks.parse_prompt replaces each `<name:args>` with "" and nothing else.
@pytest.mark.parametrize("prompt, text, loras", [
    ("1girl, <lora:style:0.8>, smile", "1girl, , smile", [LoraTag("style", 0.8, 0.8)]),
    ("<lora:a> 1girl", " 1girl", [LoraTag("a", 1.0, 1.0)]),
    ("1girl, <lyco:b:0.3:0.7>", "1girl, ", [LoraTag("b", 0.3, 0.7)]),
    ("1girl <lora:a:1><lora:my lora v2:-0.5>, smile", "1girl , smile",
     [LoraTag("a", 1.0, 1.0), LoraTag("my lora v2", -0.5, -0.5)]),
    ("a, <lora:x:1>,\nBREAK b", "a, ,\nBREAK b", [LoraTag("x", 1.0, 1.0)]),
    ("plain (prompt:1.2)", "plain (prompt:1.2)", []),
    ("I <3 you, <not a tag>", "I <3 you, <not a tag>", []),  # no `name:` inside: not an extra network
])
def test_tags_are_removed_and_nothing_else(prompt, text, loras):
    parsed = parse_extra_networks(prompt)
    assert (parsed.text, parsed.loras, parsed.unsupported) == (text, loras, [])


def test_removed_tag_keeps_its_comma_so_break_chunks_see_it():
    # "a, <lora:x:1>, BREAK b": A1111 encodes "a, ," before the BREAK (two commas), not "a,".
    text = parse_extra_networks("a, <lora:x:1>, BREAK b").text
    assert parse_prompt_attention(text) == [("a, ,", 1.0), ("BREAK", -1.0), ("b", 1.0)]


@pytest.mark.parametrize("prompt, text, unsupported", [
    ("a <hypernet:h:1> b", "a  b", [ExtraNetworkTag("hypernet", ("h", "1"))]),
    ("<foo:bar:x=1>x", "x", [ExtraNetworkTag("foo", ("bar", "x=1"))]),
    # Network names are case-sensitive in A1111's registry: `<LoRA:...>` is an unknown network, not a LoRA.
    ("x, <LoRA:s:0.5>", "x, ", [ExtraNetworkTag("LoRA", ("s", "0.5"))]),
])
def test_every_extra_network_tag_is_stripped_and_the_unsupported_are_returned(prompt, text, unsupported):
    parsed = parse_extra_networks(prompt)
    assert (parsed.text, parsed.loras, parsed.unsupported) == (text, [], unsupported)
    assert str(unsupported[0]) in prompt  # the tag as written, for the caller's warning


def test_mixed_tags_keep_their_order():
    parsed = parse_extra_networks("<hypernet:h:1>a<lora:x:0.5>b<lyco:y>c")
    assert parsed.text == "abc"
    assert parsed.loras == [LoraTag("x", 0.5, 0.5), LoraTag("y", 1.0, 1.0)]
    assert parsed.unsupported == [ExtraNetworkTag("hypernet", ("h", "1"))]


# extra_networks_lora.py: te = positional[1] or 1; named te overrides; unet = positional[2] or that te;
# named unet overrides; dyn = positional[3] or named dyn. `a=b` is named, `a=b=c` is positional.
@pytest.mark.parametrize("tag, expected", [
    ("<lora:x>", LoraTag("x", 1.0, 1.0)),
    ("<lora:x:0.6>", LoraTag("x", 0.6, 0.6)),
    ("<lora:x:0.4:0.7>", LoraTag("x", 0.4, 0.7)),
    ("<lora:x:0:1>", LoraTag("x", 0.0, 1.0)),
    ("<lora:x:te=0.5>", LoraTag("x", 0.5, 0.5)),
    ("<lora:x:0.3:te=0.5>", LoraTag("x", 0.5, 0.5)),
    ("<lora:x:1:unet=0>", LoraTag("x", 1.0, 0.0)),
    ("<lora:x:te=0.4:unet=1>", LoraTag("x", 0.4, 1.0)),
    ("<lora:x:unet=0.2:0.9>", LoraTag("x", 0.9, 0.2)),
    ("<lora:x: 0.5>", LoraTag("x", 0.5, 0.5)),  # float() ignores the spaces, as in A1111
    ("<lora:x:1:1:8>", LoraTag("x", 1.0, 1.0, 8)),
    ("<lora:x:dyn=4>", LoraTag("x", 1.0, 1.0, 4)),
])
def test_lora_multipliers(tag, expected):
    assert parse_extra_networks(tag).loras == [expected]


def test_lora_multiplier_for_apply_loras():
    assert LoraTag("x", 0.5, 0.5).multiplier == 0.5
    assert LoraTag("x", 0.0, 1.0).multiplier == {"text_encoder": 0.0, "unet": 1.0}


def test_names_and_keys_are_stripped():
    # Our deliberate difference: A1111 looks up " my lora " and key "te " verbatim (so finds neither).
    assert parse_extra_networks("<lora: my lora :te = 0.5>").loras == [LoraTag("my lora", 0.5, 0.5)]


@pytest.mark.parametrize("tag", ["<lora:x:heavy>", "<lora:x:>", "<lora:x:1:unet=big>", "<lora:x:a=b=c>",
                                 "<lora:x:1:1:1.5>", "<lora: :1>", "<lora:te=1>"])
def test_unreadable_lora_tag_raises_naming_it(tag):
    # A1111 logs the error and generates without any LoRA; we refuse the prompt instead.
    with pytest.raises(AnimegenError, match=re.escape(tag)):
        parse_extra_networks(f"a {tag} b")


def test_every_unreadable_tag_is_named_in_one_error():
    with pytest.raises(AnimegenError) as info:
        parse_extra_networks("<lora:x:heavy> <lora:y:1:light>")
    assert "<lora:x:heavy>" in str(info.value) and "<lora:y:1:light>" in str(info.value)


def test_extract_lora_tags_gives_the_text_encoder_multiplier():
    # The one-multiplier view used by callers that take (name, weight).
    assert extract_lora_tags("1girl, <lora:a:0.3:0.7>, <hypernet:h:1>") == ("1girl, , ", [("a", 0.3)])
