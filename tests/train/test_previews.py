"""Sample previews during training: they show the model being trained and never change its training.

The generation speed-up defaults are forced to their CUDA values here (fused QKV, channels_last), as on a
GPU, where fusing the q/k/v projections of the pipe being trained cut the q/k/v adapters out of the graph.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

import animegen.train.sampling as sampling_mod
from animegen.generate.speed import SpeedupConfig
from animegen.train.trainer import Trainer

PREVIEW = {"prompts": ["zxq"], "steps": 1, "width": 64, "height": 64, "sampler": "Euler"}


@pytest.fixture
def cuda_defaults(monkeypatch):
    """Every speed-up left at its default resolves as it would on CUDA (channels_last, fuse_qkv on)."""
    real = SpeedupConfig.resolve
    monkeypatch.setattr(SpeedupConfig, "resolve", lambda self, device: real(self, "cuda"))


def _pipe_tree(pipe) -> list:
    unet = pipe.unet
    return ([(n, id(m)) for n, m in unet.named_modules()] + [(n, id(p)) for n, p in unet.named_parameters()]
            + [("scheduler", id(pipe.scheduler))])


def test_previews_leave_qkv_adapters_training_exactly_as_without_them(tmp_path, tiny_sd15_dir, cuda_defaults,
                                                                      monkeypatch):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=2)

    def run(name, sample):
        cfg = tiny_config(tiny_sd15_dir, data, tmp_path / name, adapter={"kind": "lora", "rank": 2, "alpha": 2.0,
                                                                         "targets": "attention"},
                          train={"max_steps": 3, "batch_size": 1, "device": "cpu"}, sample=sample)
        return Trainer(cfg).run()

    real_write = sampling_mod.write_samples
    trees = []

    def watched(pipe, *args, **kwargs):
        before = _pipe_tree(pipe)
        out = real_write(pipe, *args, **kwargs)
        trees.append((before, _pipe_tree(pipe)))
        return out

    monkeypatch.setattr(sampling_mod, "write_samples", watched)
    plain = run("plain", {"every_steps": 0})
    previewed = run("previewed", {"every_steps": 1, **PREVIEW})
    assert len(previewed.samples) == 3 and len(trees) == 3
    assert all(before == after for before, after in trees)  # sampling swapped no module, parameter or scheduler

    a, b = load_file(plain.exported["kohya"]), load_file(previewed.exported["kohya"])
    # the q/k/v adapters learned something. Not the mid block's self-attention q/k: at 64 px its latent is
    # 1x1, a softmax over one token is constant, so their gradient is exactly zero in exact arithmetic (and
    # rounding noise, or nothing, depending on the machine's attention kernel)
    one_token = tuple(f"mid_block_attentions_0_transformer_blocks_0_attn1_to_{p}." for p in "qk")
    qkv = [k for k in a if "lora_up" in k and any(f"_to_{p}." in k for p in "qkv")
           and not any(t in k for t in one_token)]
    assert len(qkv) > 50 and all(float(a[k].abs().max()) > 0 for k in qkv)
    for k in a:  # and previews changed nothing of it
        assert torch.equal(a[k], b[k]), k


def test_a_failing_preview_is_a_warning_after_the_checkpoint_is_written(tmp_path, tiny_sd15_dir, monkeypatch,
                                                                       caplog):
    from animegen.generate.engine import Generator
    from animegen.train.checkpoint import list_checkpoints

    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_sd15_dir, data, out, train={"max_steps": 2, "batch_size": 1, "device": "cpu"},
                      sample={"every_steps": 1, **PREVIEW}, checkpoint={"every_steps": 1, "keep_last": 5})
    written_before = []

    def broken(self, request, **kwargs):
        written_before.append([p.name for p in list_checkpoints(out)])
        raise RuntimeError("the decoder broke")

    monkeypatch.setattr(Generator, "__call__", broken)
    with caplog.at_level("WARNING", logger="animegen.train.trainer"):
        result = Trainer(cfg).run()
    assert result.finished and result.samples == [] and result.exported["kohya"].is_file()
    assert written_before == [["step-00000001"], ["step-00000001", "step-00000002"]]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("the decoder broke" in m for m in warned) and "step 1" in warned[0]
