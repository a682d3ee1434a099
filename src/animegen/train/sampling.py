"""Sample images and validation loss during a run.

Samples use the generation engine (`animegen.generate.Generator`) on the in-memory pipeline whose
UNet/text encoders carry the adapters being trained, so they look as `animegen generate` will and
carry the same infotext. Validation loss uses fixed timesteps and per-(image, timestep) seeds, so the
number is comparable across steps and across runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from animegen.train.config import SampleSection, TrainConfig
from animegen.train.loss import sample_generator


def write_samples(pipe, cfg: SampleSection, model_name: str, out_dir: Path, step: int) -> list[Path]:
    from animegen.generate import GenerationRequest, Generator, save_png

    generator = Generator(model_name, pipe=pipe)
    paths = []
    modules = [m for m in (getattr(pipe, n, None) for n in ("unet", "text_encoder", "text_encoder_2")) if m]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        for i, prompt in enumerate(cfg.prompts):
            request = GenerationRequest(prompt=prompt, negative_prompt=cfg.negative_prompt, sampler=cfg.sampler,
                                        steps=cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed + i,
                                        width=cfg.width, height=cfg.height)
            with torch.no_grad():
                for image in generator(request):
                    paths.append(save_png(image, out_dir / f"step{step:08d}-{i:02d}.png"))
    finally:
        for m, flag in zip(modules, was_training, strict=True):
            m.train(flag)
    return paths


@torch.no_grad()
def validation_loss(trainer, items) -> float:
    """Mean loss over held-out items x fixed timesteps, same noise every time (dropout off)."""
    from animegen.train.loss import diffusion_loss, target_for

    cfg: TrainConfig = trainer.config
    modules = list(trainer.trained.values())
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    total, count = 0.0, 0
    try:
        for idx, item in enumerate(items):
            latent, crop = trainer.latent_for(item, flip=False, rng=None)
            caption = item.captions[0]
            for t in cfg.validation.timesteps:
                g = sample_generator(cfg.validation.seed, idx, t)
                noise = torch.randn(latent.shape, generator=g)[None].to(trainer.device)
                lat = latent[None].to(trainer.device)
                ts = torch.tensor([t], device=trainer.device)
                noisy = trainer.noise_scheduler.add_noise(lat, noise, ts)
                pred = trainer.predict(trainer.unet_eval, noisy, ts, [caption], [item], [crop])
                target = target_for(trainer.noise_scheduler, lat, noise, ts)
                total += float(diffusion_loss(pred, target, ts, trainer.noise_scheduler, cfg.loss))
                count += 1
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)
    return total / max(count, 1)
