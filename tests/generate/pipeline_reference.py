"""A1111's txt2img / img2img written out by hand over a diffusers pipeline's modules, for engine tests.

Conditioning comes from diffusers' own `pipe.encode_prompt` (or given embeddings), sampling from the
independent reference (`a1111_reference`), the UNet and VAE are the pipeline's; nothing from
animegen's sampling code is used.
"""

from __future__ import annotations

import a1111_reference as ref
import numpy as np
import torch


def _model(pipe, sdxl: bool):
    cfg = pipe.scheduler.config
    return ref.Model(cfg["beta_start"], cfg["beta_end"], ztsnr=bool(cfg.get("rescale_betas_zero_snr")), sdxl=sdxl)


def a1111_images(pipe, sampler, prompt, negative, steps, cfg, seed, *, width, height, schedule="Automatic",
                 prompt_embeds=None, negative_embeds=None, init_image=None, strength=None, init_latents=None,
                 fixed_steps=False):
    """Decoded float32 HxWx3 images in [0, 1] for one seed, as A1111 1.10 samples them (img2img from
    `init_image`, or from scaled `init_latents`; `fixed_steps` as the hires pass runs)."""
    sdxl = hasattr(pipe, "text_encoder_2")
    for label in ref.SCHEDULES:  # a pre-1.9 name: "DPM++ 2M Karras" = DPM++ 2M with the Karras schedule
        if sampler not in ref.A1111_SAMPLERS and sampler.endswith(" " + label):
            sampler, schedule = sampler[: -len(label) - 1], label
    with torch.no_grad():
        extra = {}
        if prompt_embeds is None:
            out = pipe.encode_prompt(prompt, "cpu", 1, True, negative) if not sdxl else \
                pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                   negative_prompt=negative)
            prompt_embeds, negative_embeds = out[0], out[1]
            if sdxl:
                extra = {"pos": out[2], "neg": out[3]}
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def unet(x_in, t, which):
        emb = prompt_embeds if which == "pos" else negative_embeds
        added = {"added_cond_kwargs": {"text_embeds": extra[which], "time_ids": time_ids}} if sdxl else {}
        with torch.no_grad():
            return pipe.unet(x_in.to(torch.float32), torch.tensor([float(t)]), encoder_hidden_states=emb,
                             **added).sample.to(torch.float64)

    init = init_latents
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    if init_image is not None:
        pixels = pipe.image_processor.preprocess(init_image)
        with torch.no_grad():
            init = vae.encode(pixels).latent_dist.mean * sf
    shape = (pipe.unet.config.in_channels, height // 8, width // 8)
    v = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    latents = ref.a1111_sample(sampler, schedule, steps, unet, _model(pipe, sdxl), "pos", "neg", cfg, [seed], shape,
                               v=v, init=init, strength=strength, fixed_steps=fixed_steps)
    with torch.no_grad():
        image = vae.decode(latents.to(torch.float32) / sf).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)[0], latents
