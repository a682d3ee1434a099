"""Tiny random-weight models of the real SD1.x, SD2.x and SDXL families.

They have the same component classes, block structure and key layout as the real checkpoints
(4-level SD1/SD2 UNet with cross-attention in the first three levels — SD2's with linear projections —,
3-level SDXL UNet with text-time conditioning, 8x VAE, CLIP-L / OpenCLIP-H / OpenCLIP-bigG style text encoders
with the real 49,408-token vocabulary and each family's pad token) but only a few million parameters, so tests
and the quick start run offline on a CPU in seconds. Head sizes follow the families' rules (SD1: 8 heads per
block; SD2/SDXL: 64 channels per head; CLIP: 64 channels per head) so that architecture detection from
checkpoint keys works on them exactly as on real files. GroupNorms keep at least 4 channels per
group, as the real models do (`detect.norm_num_groups`, which single-file loading uses too). The UNet and
text encoders are random; the VAE is not: it is set to an exact linear codec (`tiny_vae`), so a latent's
colour can be read off its decoded image and training on a picture teaches that picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from animegen.core.errors import AnimegenError
from animegen.core.files import atomic_dir
from animegen.models.assets import load_tokenizer
from animegen.models.detect import INPAINTING_IN_CHANNELS, norm_num_groups
from animegen.models.family import SD1, SD2, SDXL, ModelFamily, get_family
from animegen.models.tiny_vae import make_linear_codec

Arch = Literal["sd15", "sd1", "sd2", "sdxl"]  # family names or aliases (`get_family`)

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def _vae(family: ModelFamily):
    """The real VAE layout, set to an exact linear codec (see tiny_vae): random VAE weights would map
    every image to nearly the same latent. Scaling and upcasting are the family's."""
    from diffusers import AutoencoderKL

    channels = (32, 32, 64, 64)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=norm_num_groups(channels),
        sample_size=64,
        scaling_factor=family.vae_scaling_factor,
        force_upcast=family.vae_force_upcast,
    )
    make_linear_codec(vae)
    return vae


def _clip_config(hidden_act: str, projection_dim: int = 64):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def _like_trained_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Give LayerNorms non-trivial scales and biases, as trained encoders have.

    Freshly initialised LayerNorms (weight 1, bias 0) make every CLIP token exactly zero-mean, a
    degenerate case no real checkpoint has (A1111's emphasis normalisation divides by that mean).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.2)
    return model


def _tiny_family(arch: Arch) -> ModelFamily:
    family = get_family(arch)
    if family not in (SD1, SD2, SDXL):
        raise AnimegenError(f"there is no tiny {family.display_name} model; choose sd15, sd2 or sdxl")
    return family


def _tokenizers(family: ModelFamily) -> dict:
    return {te.tokenizer: load_tokenizer(pad_token=te.pad_token) for te in family.text_encoders}


def build_tiny_components(arch: Arch = "sd15", seed: int = 0, inpainting: bool = False) -> dict:
    """Return the diffusers pipeline components of a tiny random-weight model of `arch`; `inpainting`: a 9-channel
    inpainting UNet (latents + mask + masked-image latents, `detect.INPAINTING_IN_CHANNELS`)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    family = _tiny_family(arch)
    torch.manual_seed(seed)
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    in_channels = INPAINTING_IN_CHANNELS if inpainting else 4
    if family in (SD1, SD2):
        channels = (32, 32, 64, 64)
        sd2 = family is SD2  # OpenCLIP-H (gelu), linear projections, 64 channels per head (at least 1 head)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=in_channels,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=channels,
            layers_per_block=2,
            cross_attention_dim=64,
            attention_head_dim=[max(1, c // 64) for c in channels] if sd2 else 8,
            use_linear_projection=sd2,
            norm_num_groups=norm_num_groups(channels),
        )
        return {
            "unet": unet,
            "vae": _vae(family),
            "text_encoder": _like_trained_norms(CLIPTextModel(_clip_config("gelu" if sd2 else "quick_gelu"))),
            **_tokenizers(family),
            "scheduler": scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "image_encoder": None,
        }
    if family is SDXL:
        channels = (64, 64, 128)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=channels,
            layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(1, 1, 2),
            cross_attention_dim=128,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=64 + 6 * 8,
            norm_num_groups=norm_num_groups(channels),
        )
        return {
            "unet": unet,
            "vae": _vae(family),
            "text_encoder": _like_trained_norms(CLIPTextModel(_clip_config("quick_gelu"))),
            "text_encoder_2": _like_trained_norms(CLIPTextModelWithProjection(_clip_config("gelu", projection_dim=64))),
            **_tokenizers(family),
            "scheduler": scheduler,
            "image_encoder": None,
            "feature_extractor": None,
        }


def build_tiny_pipeline(arch: Arch = "sd15", seed: int = 0, inpainting: bool = False):
    """A diffusers StableDiffusionPipeline / StableDiffusionXLPipeline around tiny random weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    components = build_tiny_components(arch, seed, inpainting)
    if _tiny_family(arch).is_sdxl:
        return StableDiffusionXLPipeline(**components)
    return StableDiffusionPipeline(**components, requires_safety_checker=False)


def save_tiny_model(arch: Arch, out: Path | str | None = None, single_file: Path | str | None = None,
                    seed: int = 0, inpainting: bool = False) -> dict[str, Path]:
    """Write a tiny model as a diffusers folder (`out`) and/or an A1111-layout single file (not SD2:
    `single_file.pipeline_to_ldm`)."""
    if out is None and single_file is None:
        raise ValueError("give an output folder, a single-file path, or both")
    if single_file is not None and _tiny_family(arch) is SD2:
        raise AnimegenError("SD2 models are written as diffusers folders only; drop --single-file")
    pipe = build_tiny_pipeline(arch, seed, inpainting)
    written: dict[str, Path] = {}
    if out is not None:
        out = Path(out)
        if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
            raise AnimegenError(f"{out} exists and is not a diffusers model folder; give a new or empty folder "
                                "(an existing model folder is replaced)")
        with atomic_dir(out) as tmp:  # complete or absent, files with the umask's mode
            pipe.save_pretrained(tmp, safe_serialization=True)
        written["folder"] = out
    if single_file is not None:
        from animegen.models.single_file import save_single_file

        single_file = Path(single_file)
        save_single_file(pipe, single_file)
        written["single_file"] = single_file
    return written
