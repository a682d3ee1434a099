"""Helpers every sub-command shares: turn user errors into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]):
    """Bad input (ValueError, unreadable files, refused pickles, `extra` types) → one line, exit code 2."""
    try:
        yield
    except (ValueError, OSError, KeyError, *extra) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
