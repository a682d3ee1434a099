"""It learns: fine-tuning a tiny base on a synthetic concept (a light disk on a dark ground, captioned with
the trigger "zxq") lowers the loss and makes the images generated with the trigger show the disk.

Measured on decoded images (the tiny VAE is an exact linear codec, so pixels mean something): the disk
contrast, mean brightness inside the disk minus outside, over the same seeds before and after. The base
is the tiny model after a short pre-training on smooth colour fields (`tiny_world_base`), so its
generations carry no disk, and only a model that learned the disk's shape raises the contrast; a flat
colour concept, say, cannot. The inverted disk (dark on light) must lower it, the proof that the
direction comes from the data. LoRA runs by default; the other families are `slow` (their training and
export code is covered fast by test_export.py and test_resume.py).

Images without the trigger: with a prior-preservation set (`is_reg`: the base's own "1girl" images)
and the adapter on the cross-attention key/value projections only, "1girl" images gain a small fraction of
the contrast the trigger's gain. Without the reg set they gain as much as the trigger's (+0.16): this tiny
base was pre-trained on one caption and ignores its prompt, so the concept leaks everywhere unless the reg set
holds the other prompts in place, as kohya's `reg_data_dir` / DreamBooth's prior loss do for real models.

Why the margins hold on any machine of this kind. The verdicts once flipped between machines: the session
fixture `tiny_world_base` trained with torch's default thread count (set up before the autouse one-thread
fixture), so a 2-core box and `taskset -c 0` built different bases (another float summation order), and the
reg recipe at 120 steps sat near its threshold (trigger gain +0.03..+0.06 on one-thread bases, +0.14 on
the landing machine). The base is now always trained on one thread, and the reg run takes 240 steps.
Measured (contrast gained; fine-tune seeds 0, 1, 2 on the one-thread base, seeds 0, 1 on a two-thread base):
- trigger, LoRA: +0.13..+0.17 (loss ratio 0.58..0.70 against the 0.85 asserted); inverted disk: -0.17..-0.25;
- reg set, 240 steps: trigger +0.12..+0.26 (one-thread base), +0.25..+0.39 (two-thread base); "1girl"
  -0.025..+0.011, at most 0.05 x the trigger's gain.
MIN_GAIN = 0.05 sits at under half the smallest gain measured, and the "1girl" bound (0.4 x the trigger's)
at several times the largest leak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import disk_contrast, disk_image, tiny_config, write_kohya

from animegen.models.loading import load_pipeline
from animegen.models.lora import apply_loras, read_lora, remove_loras
from animegen.train.trainer import train

# (kind, targets, lr). (IA)^3 only rescales existing activations, so it needs a far larger step.
FAMILIES = [
    pytest.param("lora", "attention_ff", 2e-2, id="lora"),
    pytest.param("locon", "attention_ff_conv", 1e-2, id="locon", marks=pytest.mark.slow),
    pytest.param("loha", "attention_ff", 2e-2, id="loha", marks=pytest.mark.slow),
    pytest.param("lokr", "attention_ff", 2e-2, id="lokr", marks=pytest.mark.slow),
    pytest.param("ia3", "attention_ff", 6e-1, id="ia3", marks=pytest.mark.slow),
    pytest.param("dora", "attention_ff", 2e-2, id="dora", marks=pytest.mark.slow),
    pytest.param("full", "attention", 1e-3, id="full", marks=pytest.mark.slow),
]
MIN_GAIN = 0.05  # contrast gained by the trigger's images; the base's own is ~0.02 (0.92 is the data's)


def _generate(pipe, prompt: str, seeds=range(4)) -> np.ndarray:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe([prompt] * len(gens), num_inference_steps=8, guidance_scale=1.0, height=64, width=64,
                generator=gens, output_type="np").images


def _fine_tune(tmp_path, base, image, kind="lora", targets="attention_ff", lr=2e-2, steps=30, reg=None):
    export = {"formats": ["diffusers"] if kind == "full" else ["kohya"], "dtype": "fp32"}
    datasets = [{"path": str(write_kohya(tmp_path / "data", "zxq", image, "zxq"))}]
    if reg is not None:
        datasets.append({"path": str(reg), "is_reg": True})
    cfg = tiny_config(base, tmp_path / "data", tmp_path / "run",
                      adapter={"kind": kind, "rank": 4, "alpha": 4.0, "targets": targets},
                      optimizer={"name": "adamw", "lr": lr, "scheduler": "constant"},
                      data={"datasets": datasets}, train={"max_steps": steps, "batch_size": 2, "device": "cpu"},
                      export=export)
    return train(cfg)


def _with_result(base, result, kind):
    if kind == "full":
        return load_pipeline(result.exported["diffusers"], device="cpu", dtype=torch.float32)
    pipe = load_pipeline(base, device="cpu", dtype=torch.float32)
    apply_loras(pipe, [(read_lora(result.exported["kohya"]), 1.0)])
    return pipe


@pytest.mark.parametrize("kind,targets,lr", FAMILIES)
def test_trigger_images_show_the_learned_concept(tmp_path, tiny_world_base, kind, targets, lr):
    base_pipe = load_pipeline(tiny_world_base, device="cpu", dtype=torch.float32)
    before = _generate(base_pipe, "zxq")
    result = _fine_tune(tmp_path, tiny_world_base, disk_image(), kind, targets, lr)
    first, last = np.mean(result.losses[:8]), np.mean(result.losses[-8:])
    assert last < 0.85 * first, (first, last)

    pipe = _with_result(tiny_world_base, result, kind)
    after = _generate(pipe, "zxq")
    print(f"{kind}: contrast {disk_contrast(before):.3f} -> {disk_contrast(after):.3f}, loss {first:.3f} -> {last:.3f}")
    assert disk_contrast(after) > disk_contrast(before) + MIN_GAIN, (disk_contrast(before), disk_contrast(after))
    if kind != "full":
        remove_loras(pipe)
        np.testing.assert_allclose(_generate(pipe, "zxq"), before, atol=1e-5)  # the base is untouched


def test_the_direction_comes_from_the_data(tmp_path, tiny_world_base):
    """A dark disk on a light ground lowers the contrast: the change is the concept's, not the training's."""
    base_pipe = load_pipeline(tiny_world_base, device="cpu", dtype=torch.float32)
    before = disk_contrast(_generate(base_pipe, "zxq"))
    result = _fine_tune(tmp_path, tiny_world_base, disk_image(inside=(15, 15, 15), outside=(240, 240, 240)))
    after = disk_contrast(_generate(_with_result(tiny_world_base, result, "lora"), "zxq"))
    print(f"inverted disk: contrast {before:.3f} -> {after:.3f}")
    assert after < before - MIN_GAIN, (before, after)


def test_with_a_reg_set_images_without_the_trigger_keep_clear_of_the_concept(tmp_path, tiny_world_base):
    base_pipe = load_pipeline(tiny_world_base, device="cpu", dtype=torch.float32)
    reg = tmp_path / "reg" / "1_girl"
    reg.mkdir(parents=True)
    for i, image in enumerate(_generate(base_pipe, "1girl", seeds=range(100, 108))):  # the base's own images
        Image.fromarray((image * 255).round().astype(np.uint8)).save(reg / f"g{i}.png")
        (reg / f"g{i}.txt").write_text("1girl")
    before = {p: disk_contrast(_generate(base_pipe, p)) for p in ("zxq", "1girl")}
    result = _fine_tune(tmp_path, tiny_world_base, disk_image(), targets="cross_attention", lr=3e-2, steps=240,
                        reg=reg.parent)
    pipe = _with_result(tiny_world_base, result, "lora")
    gain = {p: disk_contrast(_generate(pipe, p)) - before[p] for p in ("zxq", "1girl")}
    print(f"contrast gained with reg set: trigger {gain['zxq']:.3f}, without trigger {gain['1girl']:.3f}")
    assert gain["zxq"] > MIN_GAIN, gain
    assert gain["1girl"] < 0.4 * gain["zxq"], gain
