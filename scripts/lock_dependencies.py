"""Write `constraints.txt`: every package animegen[dev] resolves to, pinned, from the current environment.

CI and the README's install both read `constraints.txt`, so a new upstream release cannot change what they
install until someone re-locks on purpose:

    pip install -e ".[dev]" -c constraints.txt --upgrade  # or a fresh venv with looser pins
    python -m pytest                                       # the suite must pass on the new set
    python scripts/lock_dependencies.py                    # rewrite the pins, review the diff, commit

The closure is walked from animegen's own metadata through each installed distribution's `Requires-Dist`
(markers evaluated for this interpreter), so packages that merely happen to be installed here stay out.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Every package `pip install -c constraints.txt -e ".[dev]"` resolves to, pinned (CI and the README use it).
# torch stays the CPU/GPU 2.13.0 wheel: an unpinned torch pulls GBs of CUDA packages.
# Re-lock on purpose only: see scripts/lock_dependencies.py.
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(root: str, extras: set[str]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (key := (_canonical(name), frozenset(wanted))) in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency whose marker held but that is not installed
        if _canonical(name) != _canonical(root):
            pinned[_canonical(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in (wanted or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return pinned


def main() -> int:
    pins = _closure("animegen", {"dev"})
    torch_version = pins.get("torch", "").split("+")[0]
    if torch_version:
        pins["torch"] = torch_version  # "2.13.0+cpu" -> "2.13.0": the same pin picks the GPU build on a GPU box
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (ROOT / "constraints.txt").write_text(HEADER + "\n".join(lines) + "\n")
    print(f"pinned {len(lines)} packages in constraints.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
