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


@pytest.mark.parametrize("optimizer", ["prodigy", "adafactor"])
def test_resume_reads_every_optimizer_and_ema_state_weights_only(tmp_path, tiny_sd15_dir, optimizer):
    """`training_state.pt` is read with `weights_only=True`; what the trainer saves for Prodigy, Adafactor,
    the LR schedule, EMA and the RNG must load that way and resume exactly."""
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=2)
    sections = dict(adapter={"kind": "lora", "rank": 2, "alpha": 2.0, "ema": True, "ema_decay": 0.9},
                    optimizer={"name": optimizer, "lr": 1.0 if optimizer == "prodigy" else 1e-3,
                               "scheduler": "cosine", "warmup_steps": 1})
    straight = train(tiny_config(tiny_sd15_dir, data, tmp_path / "a", train={"max_steps": 4, "batch_size": 1,
                                                                              "device": "cpu"}, **sections))
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "b", train={"max_steps": 4, "batch_size": 1, "device": "cpu"},
                      checkpoint={"every_steps": 2, "keep_last": 1}, **sections)
    assert not train(cfg, stop_at=2).finished
    rest = train(cfg, resume=True)
    assert rest.finished and rest.losses == straight.losses[2:]


def test_non_finite_weights_are_never_checkpointed_nor_called_good(tmp_path, tiny_sd15_dir, monkeypatch):
    """IA3 at a huge lr: weights go to inf a step before the loss is NaN. The checkpoint of that step must
    not be written, and the error must name the newest checkpoint whose weights are finite."""
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", train={"max_steps": 6, "batch_size": 1,
                                                                    "device": "cpu"},
                      checkpoint={"every_steps": 1, "keep_last": 5})
    real_step = trainer_mod.Trainer.train_step

    def blow_up_at_2(self, step, micro_batches):
        loss = real_step(self, step, micro_batches)
        if step == 2:
            with torch.no_grad():
                self.params[0].fill_(float("inf"))
        return loss

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", blow_up_at_2)
    with pytest.raises(NonFiniteLossError, match="at step 2") as e:
        train(cfg)
    assert "step-00000001" in str(e.value) and "step-00000002" not in str(e.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001"]


def test_the_last_good_checkpoint_is_the_newest_with_finite_weights(tmp_path):
    from safetensors.torch import save_file

    from animegen.train.checkpoint import last_good_checkpoint, save_checkpoint

    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.ones(2)}, {}, {}, {}, keep_last=5)
    assert last_good_checkpoint(tmp_path).name == "step-00000003"
    for step, bad in ((3, float("nan")), (2, float("inf"))):  # e.g. written by an older version
        save_file({"w": torch.tensor([1.0, bad])}, str(tmp_path / "checkpoints" / f"step-0000000{step}" /
                                                     "weights.safetensors"))
    assert last_good_checkpoint(tmp_path).name == "step-00000001"
