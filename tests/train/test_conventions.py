"""Exports carry their prompt convention: trigger words, caption preset, vocabulary and recommended settings,
as ModelSpec keys plus `animegen.convention`, derived from the captions and config (issue #16)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file
from train_helpers import tiny_config

from animegen.core.files import safetensors_metadata
from animegen.prompts.conventions import Convention, read_convention
from animegen.prompts.presets import auto_preset_name, build_prompt, detect_preset, get_preset
from animegen.train.conventions import trigger_words
from animegen.train.trainer import train

# 10 captions: zxq in 10, "red hair" in 9, smile in 8, 1girl (a count tag) and masterpiece (quality) in all
CAPTIONS = [f"1girl, zxq, {'red hair' if i else 'blue hair'}, {'smile, ' if i > 1 else ''}masterpiece"
            + (", very aesthetic, safe" if i % 3 == 0 else "") for i in range(10)]
SAMPLE = {"sampler": "DPM++ 2M Karras", "steps": 12, "cfg_scale": 5.5, "width": 64, "height": 96}


def _dataset(root: Path) -> Path:
    folder = root / "1_zxq"
    folder.mkdir(parents=True)
    for i, caption in enumerate(CAPTIONS):
        Image.new("RGB", (64, 64), (20 * i, 40, 200)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return root


def _caption_files(root: Path) -> list[list[str]]:
    """Each caption file's tags, read back from disk: the test's own view of the captions."""
    return [[t.strip() for t in p.read_text().split(",") if t.strip()] for p in sorted(root.rglob("*.txt"))]


def _expected_triggers(captions: list[list[str]]) -> list[str]:
    counts = Counter(t for tags in captions for t in set(tags))
    words = {"1girl", "masterpiece", "best quality", "very aesthetic", "absurdres", "safe"}
    return [t for t, c in counts.most_common() if c >= 0.9 * len(captions) and t not in words]


def _present(captions: list[list[str]], vocabulary: set[str]) -> list[str]:
    counts = Counter(t for tags in captions for t in set(tags) if t in vocabulary)
    order = [t for tags in captions for t in tags]
    return sorted(counts, key=lambda t: (-counts[t], order.index(t)))


def test_trigger_rule_is_ninety_percent_without_counts_or_quality():
    assert trigger_words(["a, b, 1girl, masterpiece"] * 9 + ["a, 1girl, masterpiece"]) == ("a", "b")  # 9/10
    assert trigger_words(["a, b"] * 8 + ["a"]) == ("a",)  # b: 8/9 < 90 %
    assert trigger_words(["Red_Hair, x", "red hair, x"]) == ("Red_Hair", "x")  # one tag, first spelling
    assert trigger_words([]) == ()


def test_lora_export_header_carries_the_convention(tmp_path, tiny_sd15_dir):
    data = _dataset(tmp_path / "data")
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", train={"max_steps": 1, "batch_size": 1},
                      data={"clip_skip": 2}, sample=SAMPLE, export={"name": "zxq-lora", "formats": ["kohya"]})
    path = train(cfg).exported["kohya"]
    meta = safetensors_metadata(path)
    captions = _caption_files(data)
    triggers = _expected_triggers(captions)
    assert triggers == ["zxq", "red hair"]  # what the captions above were written to give
    assert meta["modelspec.trigger_phrase"] == ", ".join(triggers)
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.title"] == "zxq-lora"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.resolution"] == "64x96" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.encoder_layer"] == "2"
    assert "zxq, red hair" in meta["modelspec.usage_hint"]
    conv = meta["animegen.convention"]  # a JSON object (safetensors_metadata decodes it)
    assert conv["trigger_words"] == triggers and conv["preset"] == "none" and conv["tag_order"] == []
    assert conv["quality"] == _present(captions, {"masterpiece", "best quality", "absurdres"})
    assert conv["aesthetic"] == ["very aesthetic"] and conv["rating"] == ["safe"]
    assert (conv["sampler"], conv["steps"], conv["cfg_scale"]) == ("DPM++ 2M Karras", 12, 5.5)
    assert (conv["width"], conv["height"], conv["clip_skip"]) == (64, 96, 2)
    assert read_convention(path).trigger_words == tuple(triggers)
    assert meta["ss_output_name"] == "zxq-lora"  # the kohya keys are still there


def test_checkpoint_export_carries_preset_and_auto_picks_it(tmp_path, tiny_sd15_dir):
    data = _dataset(tmp_path / "data")
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", adapter={"kind": "full"},
                      train={"max_steps": 1, "batch_size": 1}, data={"caption_preset": "animagine"},
                      sample=SAMPLE, export={"formats": ["single_file"]})
    path = train(cfg).exported["single_file"]
    meta = safetensors_metadata(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    raw = _caption_files(data)
    trained = [[t.strip() for t in build_prompt("animagine", ", ".join(tags)).split(",")] for tags in raw]
    conv = read_convention(path)
    assert conv.preset == "animagine" and conv.tag_order == get_preset("animagine").tag_order
    assert list(conv.trigger_words) == _expected_triggers(raw)  # from the captions as written
    assert list(conv.quality) == _present(trained, {"masterpiece", "best quality", "absurdres"})
    assert list(conv.aesthetic) == ["very aesthetic"] and list(conv.rating) == ["safe"]
    # the file's name says nothing; its convention names the preset, for detect_preset and preset="auto"
    assert path.name == "model.safetensors"
    assert detect_preset(path) == "animagine"
    assert auto_preset_name(path) == "animagine" and get_preset("auto", model=path).name == "animagine"


def test_read_convention_round_trip(tmp_path):
    import torch

    conv = Convention(title="t", architecture="stable-diffusion-xl-v1-base/lora", trigger_words=("zxq", "a b"),
                      preset="animagine", tag_order=("count", "general"), quality=("masterpiece",),
                      sampler="Euler a", steps=28, cfg_scale=5.0, width=832, height=1216, clip_skip=2,
                      prediction_type="v")
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata=conv.to_metadata(implementation="diffusers"))
    assert read_convention(path) == conv
    assert json.loads(json.dumps(safetensors_metadata(path)["animegen.convention"])) == json.loads(conv.to_json())
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain), metadata={"modelspec.title": "x"})
    assert read_convention(plain) is None and read_convention(tmp_path / "x.ckpt") is None


@pytest.mark.parametrize("preset,expected", [("none", None), ("not-a-preset", None), ("pony-v6", "pony-v6")])
def test_detect_preset_uses_a_known_convention_preset_only(preset, expected):
    meta = {"animegen.convention": Convention(preset=preset).to_json()}
    assert detect_preset("model.safetensors", meta) == expected
    # a convention naming a preset wins over the title's name rule; "none" leaves the title to decide
    titled = {**meta, "modelspec.title": "Animagine XL 4.0"}
    assert detect_preset("model.safetensors", titled) == (expected or "animagine-xl-4.0")
