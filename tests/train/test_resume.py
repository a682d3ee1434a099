"""Run management on CPU: exact resume, keep-last-K checkpoints, NaN stop keeping the last good checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

import animegen.train.trainer as trainer_mod
from animegen.train.checkpoint import list_checkpoints
from animegen.train.trainer import NonFiniteLossError, train

# everything random at once: adapter dropout, flips, tag shuffling, caption dropout, noise offset
RANDOM_BITS = dict(
    adapter={"kind": "lora", "rank": 4, "alpha": 4.0, "dropout": 0.2},
    data={"random_flip": True, "shuffle_tags": True, "keep_tokens": 1, "caption_dropout": 0.3},
    loss={"noise_offset": 0.05, "min_snr_gamma": 5.0},
    optimizer={"name": "adamw", "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 2},
)


def test_killed_and_resumed_run_is_bit_identical(tmp_path, tiny_sd15_dir):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, red, square, plain", n=3)
    straight = tiny_config(tiny_sd15_dir, data, tmp_path / "a", train={"max_steps": 6, "batch_size": 2,
                                                                        "device": "cpu"}, **RANDOM_BITS)
    resumed = tiny_config(tiny_sd15_dir, data, tmp_path / "b", train={"max_steps": 6, "batch_size": 2,
                                                                       "device": "cpu"},
                          checkpoint={"every_steps": 2, "keep_last": 1}, **RANDOM_BITS)
    full = train(straight)
    part = train(resumed, stop_at=3)
    assert not part.finished and part.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000003"]  # keep_last = 1
    torch.manual_seed(12345)  # a resumed process starts with unrelated global RNG state
    rest = train(resumed, resume=True)
    assert rest.finished and rest.step == 6
    assert rest.losses == full.losses[3:]
    a, b = load_file(full.exported["kohya"]), load_file(rest.exported["kohya"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_up" in k)  # something was learned


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, tiny_sd15_dir, monkeypatch):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", train={"max_steps": 6, "batch_size": 1,
                                                                    "device": "cpu"},
                      checkpoint={"every_steps": 2, "keep_last": 3})
    real = trainer_mod.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_mod, "diffusion_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 3") as e:
        train(cfg)
    assert "step-00000002" in str(e.value)
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-00000002"]
    weights = load_file(kept[0] / "weights.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "run" / "export").exists()
