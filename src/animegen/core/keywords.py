"""Typo'd keyword arguments named, with the nearest valid one: `GenerationRequest(promt=...)` says "did you mean
'prompt'?" and lists every keyword it takes, instead of Python's bare "unexpected keyword argument".

`checked_keywords` decorates a function or a class (its `__init__`, e.g. a dataclass's); the real signature stays
visible to `help()`, `inspect.signature` and IDEs (`functools.wraps`). An unknown keyword raises
`UnknownKeywordError`: a `TypeError`, as Python's own, and an `AnimegenError`, so the CLI prints it as a user
error. `aliases` maps names other tools use (diffusers' `guidance_scale`, A1111's `sampler_name`) to ours, for
when spelling alone would suggest the wrong one.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from animegen.core.errors import AnimegenError

T = TypeVar("T")


class UnknownKeywordError(AnimegenError, TypeError):
    """A call named a keyword its callee does not take; the message names the nearest valid ones."""


def nearest_keyword(name: str, valid: Collection[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The valid keyword `name` most likely meant: an alias, a close spelling, else one it begins or is begun by."""
    if aliases and aliases.get(name) in valid:
        return aliases[name]
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    if close:
        return close[0]
    prefixed = sorted((v for v in valid if v.startswith(name) or name.startswith(v)), key=len)
    return prefixed[0] if prefixed else None


def check_keywords(owner: str, given: Iterable[str], valid: Collection[str],
                   aliases: Mapping[str, str] | None = None, hint: Callable[[str], str | None] | None = None) -> None:
    """Raise `UnknownKeywordError` naming every keyword of `given` not in `valid`, each with its nearest valid one
    (or `hint(name)`'s advice), then the valid keywords; nothing when all are valid."""
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return
    parts = []
    for name in unknown:
        advice = hint(name) if hint is not None else None
        meant = None if advice else nearest_keyword(name, valid, aliases)
        parts.append(f"{name!r}" + (f" ({advice})" if advice else f" (did you mean {meant!r}?)" if meant else ""))
    noun = "an unknown keyword" if len(unknown) == 1 else "unknown keywords"
    raise UnknownKeywordError(f"{owner} got {noun} {', '.join(parts)}; "
                              f"valid keywords: {', '.join(valid)}")


def checked_keywords(target: T | None = None, *, aliases: Mapping[str, str] | None = None,
                     hint: Callable[[str], str | None] | None = None):
    """Decorate a function or a class so an unknown keyword raises `UnknownKeywordError` (see the module doc).

    Use bare (`@checked_keywords`) or with `aliases=` / `hint=`; on a class put it above `@dataclass`. Not for a
    callee that takes `**kwargs`: only its named parameters would count as valid.
    """

    def decorate(obj):
        cls = obj if inspect.isclass(obj) else None
        func = obj.__init__ if cls is not None else obj
        params = inspect.signature(func).parameters.values()
        valid = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                      and p.name != "self")
        name = cls.__qualname__ if cls is not None else func.__qualname__.removesuffix(".__init__")
        name = name.replace(".__call__", " call")  # "Generator call got an unknown keyword ..."

        @functools.wraps(func)
        def checked(*args, **kwargs):
            if kwargs:
                check_keywords(name, kwargs, valid, aliases, hint)
            return func(*args, **kwargs)

        if cls is None:
            return checked
        cls.__init__ = checked
        return cls

    return decorate if target is None else decorate(target)


__all__ = ["UnknownKeywordError", "check_keywords", "checked_keywords", "nearest_keyword"]
