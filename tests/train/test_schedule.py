"""The trainer's pieces that need no model: "is it due?" predicates, `frozen_eval`, validation's interface."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from animegen.train.config import validate_config
from animegen.train.loss import make_noise_scheduler
from animegen.train.sampling import frozen_eval, validation_loss
from animegen.train.trainer import needs_checkpoint, needs_log, needs_samples, needs_validation


def _cfg(every: int, max_steps: int = 10, prompts=("zxq",)):
    return validate_config({"train": {"max_steps": max_steps}, "validation": {"every_steps": every},
                            "sample": {"every_steps": every, "prompts": list(prompts)},
                            "checkpoint": {"every_steps": every}, "log": {"every_steps": max(every, 1)}})


def _due(predicate, cfg) -> list[int]:
    return [s for s in range(cfg.train.max_steps + 1) if predicate(cfg, s)]


def test_predicates_at_edge_steps():
    cfg = _cfg(every=4, max_steps=10)
    assert _due(needs_validation, cfg) == [4, 8, 10]  # and after the last step
    assert _due(needs_samples, cfg) == [4, 8]
    assert _due(needs_checkpoint, cfg) == [4, 8]  # the last step is the export, not a checkpoint
    assert _due(needs_log, cfg) == [4, 8, 10]
    exact = _cfg(every=5, max_steps=10)  # the last step is also an "every" step: due once
    assert _due(needs_validation, exact) == [5, 10] and _due(needs_checkpoint, exact) == [5, 10]


def test_zero_means_never_and_samples_need_prompts():
    off = _cfg(every=0)
    for predicate in (needs_validation, needs_samples, needs_checkpoint):
        assert _due(predicate, off) == []
    assert _due(needs_samples, _cfg(every=2, prompts=())) == []
    every_step = _cfg(every=1, max_steps=3)
    assert _due(needs_samples, every_step) == [1, 2, 3]  # never at step 0: nothing trained yet


def test_frozen_eval_restores_each_flag_after_an_exception():
    trained = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    trained[0].eval()  # a submodule the caller keeps in eval mode must stay so
    other = torch.nn.Linear(2, 2).eval()
    before = [m.training for m in (*trained.modules(), other)]
    assert before == [True, False, True, False]
    with pytest.raises(RuntimeError, match="boom"), frozen_eval([trained, other]):
        assert not any(m.training for m in trained.modules()) and not torch.is_grad_enabled()
        raise RuntimeError("boom")
    assert [m.training for m in (*trained.modules(), other)] == before and torch.is_grad_enabled()


def test_validation_loss_needs_only_a_predictor():
    """A fake model predicting the exact target has loss 0; predicting zeros, the target's mean square."""
    cfg = validate_config({"validation": {"timesteps": [100, 900]}})
    scheduler = make_noise_scheduler({"num_train_timesteps": 1000}, "epsilon", False)
    items = [SimpleNamespace(captions=["zxq"]), SimpleNamespace(captions=["red"])]
    latents = [torch.full((4, 8, 8), 0.5), torch.full((4, 8, 8), -0.5)]
    module = torch.nn.Dropout(0.5)
    seen = []

    class Fake:
        config, noise_scheduler, device, trained = cfg, scheduler, torch.device("cpu"), {"unet": module}

        def __init__(self, exact):
            self.exact = exact

        def latent_for(self, item, flip, rng):
            return latents[items.index(item)], (0, 0)

        def predict(self, noisy, timesteps, captions, batch_items, crops):
            seen.append((captions[0], int(timesteps[0]), module.training))
            lat = latents[items.index(batch_items[0])][None]
            noise = (noisy - scheduler.alphas_cumprod[timesteps].sqrt() * lat) / (
                1 - scheduler.alphas_cumprod[timesteps]).sqrt()
            return noise if self.exact else torch.zeros_like(noisy)

    assert validation_loss(Fake(exact=True), items) == pytest.approx(0.0, abs=1e-6)
    assert module.training  # restored after validation
    assert seen == [("zxq", 100, False), ("zxq", 900, False), ("red", 100, False), ("red", 900, False)]
    zero = validation_loss(Fake(exact=False), items)
    assert zero == pytest.approx(validation_loss(Fake(exact=False), items))  # same noise every time
    assert 0.5 < zero < 1.5  # mean square of unit Gaussian noise
