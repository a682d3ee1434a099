"""`constraints.txt` pins the whole resolved dependency set that CI and the README install.

If a dependency is added (or an upstream release is installed) without re-locking, CI would install a set
nobody tested; this test names the packages whose pin is missing or differs from what is installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_dependencies", ROOT / "scripts" / "lock_dependencies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_resolved_dependency_is_pinned_to_what_is_installed():
    installed = _lock_script()._closure("animegen", {"dev"})
    pins = _pins()
    assert "torch" in installed and len(installed) > 50  # the walk really followed Requires-Dist
    missing = sorted(set(installed) - set(pins))
    assert not missing, f"not pinned in constraints.txt (run scripts/lock_dependencies.py): {missing}"
    differ = {n: (pins[n], v) for n, v in installed.items() if pins[n] != v.split("+")[0]}
    assert not differ, f"constraints.txt pin != installed (pin, installed): {differ}"


def test_torch_is_pinned_without_a_local_build_tag():
    """`torch==2.13.0` matches the CPU wheel here and the CUDA wheel on a GPU box; `+cpu` would not."""
    assert _pins()["torch"] == "2.13.0"
