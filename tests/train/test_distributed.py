"""2 CPU processes (gloo, launched by torchrun) gives the same weights as one process with the same
global batch: each process takes its slice of the global batch, noise is keyed by global slot, DDP
averages the gradients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

from animegen.train.trainer import train


def _logged_losses(run_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.xfail(strict=True, reason=(
    "known bug: step-1 loss matches (data slicing, per-slot noise) and the all-reduced gradients equal the "
    "single-process ones when probed after backward, yet after the optimizer step the lora_up weights of "
    "down-block modules differ (mid/up-block modules match); cause not found yet"))
def test_two_gloo_processes_equal_one_process(tmp_path, tiny_sd15_dir):
    write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=3)
    write_kohya(tmp_path / "data", "blue", (0, 0, 255), "blue", n=3)
    # Adam divides each element by its own gradient size; a large eps keeps float-order noise in near-zero
    # gradients (the all-reduce sums in another order) from being blown up into full-size steps
    common = dict(optimizer={"name": "adamw", "lr": 0.1, "eps": 1e-2, "scheduler": "constant"},
                  data={"shuffle_tags": True, "random_flip": True},
                  log={"progress": False, "tensorboard": True, "every_steps": 1})
    one = tiny_config(tiny_sd15_dir, tmp_path / "data", tmp_path / "one",
                      train={"max_steps": 1, "batch_size": 4, "device": "cpu"}, **common)
    two = tiny_config(tiny_sd15_dir, tmp_path / "data", tmp_path / "two",
                      train={"max_steps": 1, "batch_size": 2, "device": "cpu"}, **common)
    cfg_file = tmp_path / "two.toml"
    cfg_file.write_text(tomli_w.dumps(two.model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        # torchrun: what `accelerate launch --multi_gpu` runs underneath (its --cpu mode needs MPI instead)
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "animegen.cli.main", "train", str(cfg_file)],
        env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(one)
    assert _logged_losses(tmp_path / "two") == pytest.approx(single.losses, rel=1e-5)  # same samples, same noise
    a = load_file(single.exported["kohya"])
    b = load_file(tmp_path / "two" / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_up" in k)
    assert moved > 1e-4
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-3)
