"""Helpers every sub-command shares: turn user errors into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Bad input (ValueError, missing files, refused pickles) → a one-line error, not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
