"""The one base for user-caused problems.

Every layer raises `AnimegenError` (or a subclass) when the user can fix the problem: a missing or
unreadable input, a bad option, a pickle without permission. The message is one line that names the
problem and the fix. The CLI turns exactly these (and OSError on user paths) into `error: ...` and
exit code 2, in one place (`cli/common.py`); anything else is a bug and keeps its traceback.

It subclasses ValueError so callers that caught ValueError before keep working.
"""

from __future__ import annotations


class AnimegenError(ValueError):
    """A user-caused problem; the message names the problem and the fix."""


__all__ = ["AnimegenError"]
