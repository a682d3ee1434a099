"""The package's public surface: the README's library line works, exports keep their real signatures,
and `import animegen` stays light (no torch) until a name that needs it is used."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_library_call() -> str:
    """The `animegen.xxx("1girl", model=...)` call the README shows as the library entry point."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"Python library: `(animegen\.\w+\(\"1girl\", model=\.\.\.\))`", text)
    assert match, "README no longer shows the one-shot library call"
    return match.group(1)


def test_the_readme_library_line_generates_an_image(tiny_sd15_dir):
    call = _readme_library_call().replace("model=...", "model=MODEL, steps=2, width=64, height=64, seed=3")
    namespace = {"MODEL": str(tiny_sd15_dir)}
    exec("import animegen\nimages = " + call, namespace)  # noqa: S102 - the README's own line, literally
    images = namespace["images"]
    assert len(images) == 1 and images[0].image.size == (64, 64) and images[0].seed == 3
    assert "Seed: 3" in images[0].infotext


def _exports():
    """Every (package, name) the packages declare in __all__."""
    for package in ("animegen", "animegen.generate", "animegen.evaluate", "animegen.prompts"):
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            yield package, name


@pytest.mark.parametrize(("package", "name"), list(_exports()))
def test_every_export_resolves_to_the_object_itself(package, name):
    exported = getattr(importlib.import_module(package), name)
    assert name in dir(importlib.import_module(package))
    if inspect.isfunction(exported):  # not a forwarding wrapper: the real function with its real signature
        assert "args" not in inspect.signature(exported).parameters
        home = importlib.import_module(exported.__module__)
        assert getattr(home, exported.__name__) is exported


def test_evaluate_exports_keep_their_signatures():
    import animegen.evaluate
    from animegen.evaluate import run

    assert animegen.evaluate.run_eval is run.run_eval
    assert inspect.signature(animegen.evaluate.compare) == inspect.signature(run.compare)


def test_importing_a_submodule_does_not_hide_the_one_shot_function():
    import animegen

    before = animegen.generate_images
    importlib.import_module("animegen.generate.engine")
    assert animegen.generate_images is before and callable(animegen.generate_images)
    assert inspect.ismodule(animegen.generate)  # the subpackage keeps its name


def test_unknown_names_raise_attribute_error():
    import animegen

    with pytest.raises(AttributeError, match="no_such_thing"):
        animegen.no_such_thing  # noqa: B018


@pytest.mark.parametrize("module", ["animegen", "animegen.generate", "animegen.evaluate", "animegen.prompts"])
def test_importing_the_packages_does_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", f"import {module} loaded torch"
