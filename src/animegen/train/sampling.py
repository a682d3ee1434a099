"""Sample images and validation loss during a run.

Samples use the generation engine (`animegen.generate.Generator`) on the in-memory pipeline whose
UNet/text encoders carry the adapters being trained, so they look as `animegen generate` will and
carry the same infotext; the engine leaves a pipe it is lent as it is (no fused QKV: the q/k/v adapters
keep training). Validation loss uses fixed timesteps and per-(image, timestep) seeds, so the number is
comparable across steps and across runs; it asks only a small `Predictor` interface of the model. Both
run inside `frozen_eval`, which restores every module's training flag afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

from animegen.models.family import family_of
from animegen.train.config import SampleSection, TrainConfig
from animegen.train.loss import sample_generator


@contextmanager
def frozen_eval(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Eval mode (dropout off) and no autograd inside the block; on exit, also on error, every module
    and submodule gets back its own training flag (a frozen text encoder stays in eval mode)."""
    modules = list(modules)
    flags = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for sub, flag in flags:
            sub.training = flag


def write_samples(pipe, cfg: SampleSection, model_name: str, out_dir: Path, step: int) -> list[Path]:
    """One preview per prompt, through the generation engine on the pipe being trained (left unchanged)."""
    from animegen.generate import GenerationRequest, Generator, save_png

    generator = Generator(model_name, pipe=pipe)
    paths = []
    modules = [getattr(pipe, n) for n in ("unet", *family_of(pipe).components)]
    with frozen_eval(modules):
        for i, prompt in enumerate(cfg.prompts):
            request = GenerationRequest(prompt=prompt, negative_prompt=cfg.negative_prompt, sampler=cfg.sampler,
                                        steps=cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed + i,
                                        width=cfg.width, height=cfg.height)
            for image in generator(request):
                paths.append(save_png(image, out_dir / f"step{step:08d}-{i:02d}.png"))
    return paths


class Predictor(Protocol):
    """What validation needs of a model in training (`Trainer` is one; a test can fake one)."""

    config: TrainConfig  # validation.timesteps/seed and the loss settings
    noise_scheduler: Any  # add_noise and the prediction type the target follows
    device: torch.device
    trained: dict[str, torch.nn.Module]  # put in eval mode while validating

    def latent_for(self, item, flip: bool, rng) -> tuple[torch.Tensor, tuple[int, int]]: ...

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, captions: list[str], items: list,
                crops: list[tuple[int, int]]) -> torch.Tensor: ...


def validation_loss(model: Predictor, items) -> float:
    """Mean loss over held-out items x fixed timesteps, same noise every time (dropout off)."""
    from animegen.train.loss import diffusion_loss, target_for

    cfg, scheduler, device = model.config, model.noise_scheduler, model.device
    total, count = 0.0, 0
    with frozen_eval(model.trained.values()):
        for idx, item in enumerate(items):
            latent, crop = model.latent_for(item, flip=False, rng=None)
            for t in cfg.validation.timesteps:
                g = sample_generator(cfg.validation.seed, idx, t)
                noise = torch.randn(latent.shape, generator=g)[None].to(device)
                lat = latent[None].to(device)
                ts = torch.tensor([t], device=device)
                noisy = scheduler.add_noise(lat, noise, ts)
                pred = model.predict(noisy, ts, [item.captions[0]], [item], [crop])
                target = target_for(scheduler, lat, noise, ts)
                total += float(diffusion_loss(pred, target, ts, scheduler, cfg.loss))
                count += 1
    return total / max(count, 1)
