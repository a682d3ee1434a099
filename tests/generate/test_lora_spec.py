"""`PATH[:WEIGHT]` LoRA specs (`--lora` of `animegen generate` and `animegen eval run`): one parser."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from animegen.core.errors import AnimegenError
from animegen.generate.request import parse_lora_spec


@pytest.mark.parametrize(("spec", "want"), [
    ("style.safetensors:0.8", ("style.safetensors", 0.8)),
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("loras/style:-0.5", ("loras/style", -0.5)),
    ("C:\\loras\\x.safetensors:0.8", ("C:\\loras\\x.safetensors", 0.8)),
    ("C:\\loras\\x.safetensors", ("C:\\loras\\x.safetensors", 1.0)),
    ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
    ("name", ("name", 1.0)),
])
def test_lora_specs(spec, want):
    assert parse_lora_spec(spec) == want


@pytest.mark.parametrize("spec", ["style.safetensors:strong", "style.safetensors:", ":0.8", "", "x:nan"])
def test_a_bad_lora_spec_is_a_clear_user_error(spec):
    with pytest.raises(AnimegenError, match="PATH\\[:WEIGHT\\]"):
        parse_lora_spec(spec)


@pytest.mark.parametrize("command", [
    ["generate", "1girl", "--model", "no-such-model", "--lora", "style.safetensors:strong"],
    ["eval", "run", "--model", "no-such-model", "--prompts", "p.txt", "--out", "o",
     "--lora", "style.safetensors:strong"],
])
def test_both_commands_refuse_a_bad_weight_before_loading_anything(command):
    from animegen.cli.main import app

    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "strong" in result.output and "PATH[:WEIGHT]" in result.output
