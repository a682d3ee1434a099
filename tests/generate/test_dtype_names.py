"""One dtype vocabulary (`animegen.models.loading.dtype_by_name`) for generate, serve, train and export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from animegen.core.errors import AnimegenError
from animegen.models.loading import dtype_by_name, parse_dtype

SRC = Path(__file__).resolve().parents[2] / "src" / "animegen"


@pytest.mark.parametrize(("short", "long", "want"), [
    ("fp32", "float32", torch.float32), ("fp16", "float16", torch.float16), ("bf16", "bfloat16", torch.bfloat16),
])
def test_short_names_and_torch_long_names_are_the_same_dtype(short, long, want):
    assert dtype_by_name(short) is want and dtype_by_name(long) is want
    assert parse_dtype(short, "cpu") is want and parse_dtype(long, "cpu") is want


def test_auto_and_unknown_names():
    assert parse_dtype("auto", "cpu") is torch.float32 and parse_dtype(None, "cpu") is torch.float32
    with pytest.raises(AnimegenError, match="fp32, fp16, bf16"):
        dtype_by_name("half")


def test_no_module_keeps_its_own_dtype_map():
    pattern = re.compile(r"[\"'](fp16|bf16|float16|bfloat16)[\"']\s*:\s*torch\.")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == ["models/loading.py"]


def test_serve_offers_the_same_words():
    from typer.testing import CliRunner

    from animegen.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0 and all(word in result.output for word in ("auto", "fp32", "fp16", "bf16"))
