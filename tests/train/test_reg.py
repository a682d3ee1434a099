"""Regularisation (prior-preservation) sets and the cross-attention target preset: the tools users take
against drift of prompts without the trigger (kohya's `reg_data_dir`, `prior_loss_weight`)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from train_helpers import RED, write_kohya

from animegen.models.tiny import build_tiny_pipeline
from animegen.train.adapters import prepare_models
from animegen.train.config import AdapterSection, DataSection, DatasetEntry, LossSection, validate_config
from animegen.train.data import TrainData
from animegen.train.loss import diffusion_loss


def test_prior_loss_weight_scales_only_reg_samples():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    ts = torch.tensor([10, 500, 900])
    sched = DDPMScheduler()
    per_sample = [float(((pred[i] - target[i]) ** 2).mean()) for i in range(3)]
    got = diffusion_loss(pred, target, ts, sched, LossSection(), torch.tensor([1.0, 0.25, 1.0]))
    want = (per_sample[0] + 0.25 * per_sample[1] + per_sample[2]) / 3
    assert abs(float(got) - want) < 1e-6
    assert abs(float(diffusion_loss(pred, target, ts, sched, LossSection())) - sum(per_sample) / 3) < 1e-6


def test_reg_images_are_flagged_and_never_held_out(tmp_path):
    write_kohya(tmp_path / "concept", "red", RED, "zxq", n=6)
    write_kohya(tmp_path / "reg", "girl", (128, 128, 128), "1girl", n=6)
    cfg = DataSection(datasets=[DatasetEntry(path=str(tmp_path / "concept")),
                                DatasetEntry(path=str(tmp_path / "reg"), is_reg=True)],
                      resolution=64, min_bucket_side=64, max_bucket_side=128, validation_split=0.9)
    data = TrainData.load(cfg, seed=0)
    assert all(it.is_reg == ("girl" in it.source) for it in data.train + data.val)
    assert sum(it.is_reg for it in data.train) == 6 and not any(it.is_reg for it in data.val)
    assert data.val  # the split did hold out concept images


def test_cross_attention_preset_adapts_only_text_reading_projections():
    pipe = build_tiny_pipeline("sd15")
    trained = prepare_models(pipe, AdapterSection(kind="lora", rank=2, alpha=2.0, targets="cross_attention"),
                             gradient_checkpointing=False)
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in trained["unet"].named_parameters() if p.requires_grad}
    assert adapted and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in adapted)
    # every cross-attention layer of the UNet got both
    n_cross = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("attn2"))
    assert len(adapted) == 2 * n_cross
    validate_config({"adapter": {"targets": "cross_attention"}})
