"""`animegen --help`, `samplers`, `presets` stay light: they never import torch, diffusers or the engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "animegen.generate.engine")
PROBE = """
import json, sys
from typer.testing import CliRunner
from animegen.cli.main import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output,
                  "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.mark.parametrize("args", [["--help"], ["samplers"], ["presets"], ["presets", "animagine"],
                                  ["generate", "--help"], ["serve", "--help"], ["eval", "run", "--help"]])
def test_light_commands_import_nothing_heavy(args):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, result["output"]
    assert result["heavy"] == [], f"animegen {' '.join(args)} imported {result['heavy']}"


def test_presets_with_a_user_file_stays_light(tmp_path):
    presets = tmp_path / "presets.toml"
    presets.write_text('[presets.mine]\ntemplate = "{prompt}, masterpiece"\nsampler = "DPM++ 2M Karras"\n')
    done = subprocess.run([sys.executable, "-c", PROBE, "presets", "--file", str(presets)], capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and "mine" in result["output"], result["output"]
    assert result["heavy"] == []


def test_samplers_lists_the_a1111_table():
    done = subprocess.run([sys.executable, "-c", PROBE, "samplers"], capture_output=True, text=True, check=True)
    output = json.loads(done.stdout.strip().splitlines()[-1])["output"]
    for text in ("Euler a", "k_euler_a", "DPM++ 2M ", "Automatic = Karras", "DPM++ 2M SDE ", "Automatic = Exponential",
                 "UniPC", "(ignores Schedule type)", "Align Your Steps"):
        assert text in output
