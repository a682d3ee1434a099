"""The one registration rule for plug-in modules behind a contract (LoRA algorithms, upscaler architectures):
a module names everything the contract lists, and a name is taken by one module only (LyCORIS-style registries)."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType


def register_module(registry: dict[str, ModuleType], module: ModuleType, *, key: str, contract: Iterable[str],
                    what: str) -> ModuleType:
    """Add `module` to `registry` under its attribute `key`; TypeError naming what it lacks of `contract`,
    ValueError if another module holds its name. `what` names the kind of module in both messages."""
    missing = [name for name in contract if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{module.__name__} lacks {', '.join(missing)} of the {what} contract")
    name = getattr(module, key)
    if name in registry and registry[name] is not module:
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise ValueError(f"{article} {what} called {name!r} is already registered")
    registry[name] = module
    return module
