"""Lazy re-exports for packages (PEP 562): `package.Name` imports its home module on first use.

A package lists `{name: submodule}` once and gets a module `__getattr__` that returns the object
itself (not a wrapper), so `inspect.signature(animegen.evaluate.run_eval)` is the real one and
importing the package costs nothing until a name that needs torch is used. `__dir__` lists the names
too, so tab completion and `dir()` see them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str | Iterable[str]]
                 ) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """`(__all__, __getattr__, __dir__)` for `package` from `{submodule: names}`.

    Submodules are relative to `package` (`"engine"` -> `package.engine`); names are given alone or in
    an iterable. Nothing is cached in the package: each access asks the home module, so there is one
    binding per name and a wrapper can never drift from what it forwards to.
    """
    homes: dict[str, str] = {}
    for submodule, names in exports.items():
        for name in ([names] if isinstance(names, str) else names):
            homes[name] = f"{package}.{submodule}"
    public = sorted(homes)

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    def __dir__() -> list[str]:
        module = importlib.import_module(package)
        return sorted(set(vars(module)) | set(public))

    return public, __getattr__, __dir__
