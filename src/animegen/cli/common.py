"""The one place where user errors become one line and exit code 2, for every sub-command.

The library raises `AnimegenError` (a ValueError) for user-caused problems; the root command group
(`UserErrorGroup`, used by `cli/main.py`) runs every sub-command under `user_errors()`, which prints
`error: <message>` on one line and exits with 2. OS errors on user paths (a read-only `--out`, a full
disk, a missing file) are shown the same way, with the path and a hint. Plain ValueError/KeyError are
still mapped, because some layers raise them for bad input; anything else is a bug and keeps its
traceback. Command code reports its own problems with `fail(...)`, which raises into the same path.
"""

from __future__ import annotations

import contextlib
import errno
from typing import NoReturn

import click
import typer
from typer.core import TyperGroup

from animegen.core.errors import AnimegenError

#: What a user can cause and fix; everything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (AnimegenError, ValueError, OSError, KeyError)

_OS_HINTS = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space or choose another folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "it is on a read-only file system; choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENOENT: "no such file or folder",
}


class CommandError(AnimegenError):
    """A problem the command itself found; carries the exit code (2 unless said otherwise)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 2) -> NoReturn:
    """Stop the command with `error: message` and exit code `code`."""
    raise CommandError(message, code)


def error_line(exc: BaseException) -> str:
    """The one line shown for a user error: the message, or for OS errors the path, the reason and a hint."""
    if isinstance(exc, OSError) and not isinstance(exc, AnimegenError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        hint = _OS_HINTS.get(exc.errno or 0)
        text = f"{where}{exc.strerror}" + (f" ({hint})" if hint and hint.lower() != exc.strerror.lower() else "")
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]):
    """User errors (and `extra` types) inside the block → `error: ...` on one line, exit code 2."""
    try:
        yield
    except click.exceptions.Exit:  # a RuntimeError: never mistake a deliberate exit for an error
        raise
    except (*USER_ERRORS, *extra) as exc:
        typer.secho(f"error: {error_line(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(exc.code if isinstance(exc, CommandError) else 2) from None


class UserErrorGroup(TyperGroup):
    """The root command group: every sub-command runs under `user_errors()`."""

    def invoke(self, ctx):
        with user_errors():
            return super().invoke(ctx)
