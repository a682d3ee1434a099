"""Every command's --help renders, and shows bracketed words ([less], [serve], [[buckets]]) as written."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from animegen.cli.main import app

runner = CliRunner()


def _commands(command, path: tuple[str, ...] = ()):
    yield path, command
    if hasattr(command, "commands"):  # a group (typer may bring its own copy of click)
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def _plain(text: str) -> str:
    """The help output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_help_shows_its_bracketed_words():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert "\\[" not in result.output, path  # no markup escapes on show
        assert result.exit_code == 0, (path, result.output)
        shown = _plain(result.output)
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params if not p.hidden]
        for text in texts:
            for bracketed in re.findall(r"\[+[^\]\s][^\]]*\]+", text):
                assert bracketed in shown, (path, bracketed)
                checked += 1
    assert checked >= 5  # the prompt's [less], train's [[buckets]], config tables ([serve], ...)
