"""Which model a single-file checkpoint holds, and the diffusers configs that fit its tensors.

A1111/Civitai files carry no config: the family comes from key names and every size from tensor
shapes. We start from the real released configs (shipped in `configs/`) and override what the shapes
reveal, so fine-tunes, pruned files and the tiny test models all load through the same code. Head
counts cannot be read off weights; they follow the family rules (SD1: 8 heads per attention,
SD2/SDXL: 64 channels per head, CLIP: 64 channels per head).

Prediction type, in this order (A1111 1.10 `sd_models_config.py`, ComfyUI `supported_models.SD20`):
1. the file says so: a `v_pred` key (A1111/ComfyUI convention) or `modelspec.prediction_type` metadata;
2. SD1 and SDXL: epsilon; SD2 with other than 4 UNet input channels (inpainting, depth): epsilon;
3. SD2 with 4 input channels: the keys cannot tell 512-base (epsilon) from 768-v, so `load_single_file` runs
   A1111's UNet output test (`unet_v_prediction_score`) on the loaded UNet. Keys alone
   (`detect_architecture`) report the shipped SD2 config's v-prediction, marked
   `prediction_source="family default"`.
Deliberately not followed: A1111's `<checkpoint>.yaml` beside the file (we read no LDM yaml configs);
ComfyUI's weight-statistic heuristic (std of one norm bias > 0.09), which names a real-size block.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from animegen.core.errors import AnimegenError
from animegen.models.family import FAMILIES, SD1, SD2, SDXL, TextEncoderSpec, get_family
from animegen.models.ldm_names import UNET_PREFIX, VAE_PREFIX

Family = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]
PredictionSource = Literal["file", "family default", "UNet output test"]

_SDXL_TE2 = SDXL.text_encoder("text_encoder_2").ldm_weights_prefix


INPAINTING_IN_CHANNELS = 9  # an inpainting UNet's input: 4 latent + 1 mask + 4 masked-image latent channels


def is_inpainting_unet(unet) -> bool:
    """Whether a loaded diffusers UNet (from a single file or a diffusers folder) is a 9-channel inpainting one."""
    return int(unet.config.in_channels) == INPAINTING_IN_CHANNELS


class CheckpointError(AnimegenError):
    """A checkpoint file that cannot be used, with what was found and what to do instead."""


@dataclass(frozen=True)
class ArchInfo:
    """What a checkpoint is, from its keys alone."""

    family: Family
    prediction_type: PredictionType
    in_channels: int = 4
    prediction_source: PredictionSource = "family default"
    zero_terminal_snr: bool = False
    has_unet: bool = True
    has_vae: bool = True
    missing_text_encoders: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_unet_test(self) -> bool:
        """SD2 text-to-image with no prediction mark: only the UNet's output tells epsilon from v."""
        return self.family == "sd2" and self.in_channels == 4 and self.prediction_source == "family default"

    @property
    def is_inpainting(self) -> bool:
        """9 input channels: latents + mask + masked-image latents (an inpainting model)."""
        return self.in_channels == INPAINTING_IN_CHANNELS

    def check_complete(self, *, vae_given: bool = False) -> None:
        """Raise CheckpointError naming the part a full pipeline needs but this file lacks."""
        name = get_family(self.family).display_name
        if not self.has_unet:
            raise CheckpointError(f"this {name} file has no UNet ({UNET_PREFIX}* keys): it is not a full checkpoint")
        if self.missing_text_encoders:
            parts = " and ".join(self.missing_text_encoders)
            raise CheckpointError(
                f"this {name} checkpoint has no {parts} weights (UNet-only file); "
                "load a full checkpoint or the model's diffusers folder instead")
        if not self.has_vae and not vae_given:
            raise CheckpointError(
                f"this {name} checkpoint has no VAE ({VAE_PREFIX}* keys); "
                "give a VAE file or folder with --vae (e.g. the family's standard VAE)")


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _sample(keys, n: int = 5) -> str:
    tops = sorted({".".join(k.split(".")[:2]) for k in keys})
    return ", ".join(tops[:n]) + (f" (+{len(tops) - n} more)" if len(tops) > n else "")


def _reject_foreign(keys: list[str]) -> None:
    """Name the kind of file when it is not an SD1/SD2/SDXL checkpoint."""
    if not keys:
        raise CheckpointError("the file holds no tensors")
    if any("joint_blocks." in k for k in keys):
        raise CheckpointError("this is an SD3 / SD3.5 (MMDiT) checkpoint; only SD1.x, SD2.x and SDXL are supported")
    if any("double_blocks." in k or "single_blocks." in k for k in keys):
        raise CheckpointError("this is a Flux checkpoint; only SD1.x, SD2.x and SDXL are supported")
    if _has_prefix(keys, "conditioner.embedders.0.model.") and not _has_prefix(keys, _SDXL_TE2):
        raise CheckpointError("this is an SDXL refiner checkpoint; only SDXL base-type models are supported")
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        raise CheckpointError("this is a LoRA, not a checkpoint; load a base model and add it with --lora")
    if not _has_prefix(keys, UNET_PREFIX):
        if all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", VAE_PREFIX, "loss."))
               for k in keys):
            raise CheckpointError("this is a standalone VAE, not a checkpoint; pass it with --vae")
        if any(k.startswith(("down_blocks.", "mid_block.", "unet.", "conv_in.")) for k in keys):
            raise CheckpointError(
                "this is a diffusers-format weights file, not an A1111/Civitai checkpoint; "
                "point at the model's diffusers folder instead")


def _family_from_unet(sd: Mapping) -> Family | None:
    """UNet-only files: the cross-attention width is the text encoders' (768 / 1024 / 2048)."""
    if f"{UNET_PREFIX}label_emb.0.0.weight" in sd:
        return "sdxl"
    widths = {f.config("unet")["cross_attention_dim"]: f.name for f in FAMILIES.values()}
    for key, value in sd.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return widths.get(int(value.shape[1]))
    return None


def _missing(keys, te: TextEncoderSpec) -> list[str]:
    if _has_prefix(keys, te.ldm_weights_prefix):
        return []
    return [f"{te.component} ({te.description}, {te.ldm_weights_prefix}*)"]


def detect_architecture(state_dict: Mapping, metadata: Mapping[str, str] | None = None) -> ArchInfo:
    """Family and prediction type of an LDM-layout state dict (raises CheckpointError if unsupported).

    Prediction type: see the module docstring (SD2 text-to-image files without a mark need
    `unet_v_prediction_score`, `ArchInfo.needs_unet_test`). A `ztsnr` key marks zero-terminal-SNR training.
    """
    keys = list(state_dict.keys())
    _reject_foreign(keys)
    if _has_prefix(keys, _SDXL_TE2):
        family: Family | None = "sdxl"
    elif _has_prefix(keys, SD2.text_encoders[0].ldm_weights_prefix):
        family = "sd2"
    elif _has_prefix(keys, SD1.text_encoders[0].ldm_weights_prefix):
        family = "sdxl" if f"{UNET_PREFIX}label_emb.0.0.weight" in state_dict else "sd1"
    else:
        family = _family_from_unet(state_dict)
    if family is None:
        raise CheckpointError(
            "cannot tell which model this is: no SD1 (cond_stage_model.transformer.*), SD2 "
            "(cond_stage_model.model.*) or SDXL (conditioner.embedders.1.model.*) keys; "
            f"found top-level keys {_sample(keys)}")
    missing = [m for te in FAMILIES[family].text_encoders for m in _missing(keys, te)]
    conv_in = state_dict.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    in_channels = int(conv_in.shape[1]) if conv_in is not None else 4
    prediction: PredictionType = FAMILIES[family].config("scheduler").get("prediction_type", "epsilon")
    if in_channels != 4:  # SD2 inpainting / depth releases are epsilon (A1111, ComfyUI)
        prediction = "epsilon"
    source: PredictionSource = "family default"
    meta_pred = (metadata or {}).get("modelspec.prediction_type", "").lower()
    if "v_pred" in state_dict or meta_pred in ("v", "v_prediction", "v-prediction"):
        prediction, source = "v_prediction", "file"
    elif meta_pred in ("epsilon", "eps"):
        prediction, source = "epsilon", "file"
    return ArchInfo(
        family=family,
        prediction_type=prediction,
        prediction_source=source,
        in_channels=in_channels,
        zero_terminal_snr="ztsnr" in state_dict,
        has_unet=conv_in is not None,
        has_vae=_has_prefix(keys, VAE_PREFIX + "decoder."),
        missing_text_encoders=tuple(missing),
    )


V_PREDICTION_SCORE_BELOW = -1.0
"""A1111's threshold: an SD2 UNet whose `unet_v_prediction_score` is below it predicts v."""


def unet_v_prediction_score(unet) -> float:
    """A1111's `is_using_v_parameterization_for_sd2` test on a diffusers UNet: mean(out - x) at t = 999 for
    x = 0.5 (1, C, 8, 8) and a 2-token context of 0.5. Released SD2 768-v models score below -1, 512-base above."""
    import torch

    weight = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=weight.dtype, device=weight.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=weight.device), encoder_hidden_states=context).sample
    return float((out.float() - x.float()).mean())


def family_config(family: Family, component: str) -> dict:
    """A copy of the released diffusers config of `component` for `family` (`ModelFamily.config`)."""
    return get_family(family).config(component)


# ---------------------------------------------------------------------------------- config inference


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def norm_num_groups(block_out_channels) -> int:
    """GroupNorm groups for these widths: 32 in every real SD family (>= 128 channels); narrower test-size
    models keep the 4 channels per group the real ones have at least (1 per group is an instance norm,
    which erases each channel's mean: flat colours could not pass through)."""
    return max(1, min(32, min(block_out_channels) // 4))


def _infer_unet(sd: Mapping, family: Family, te2_proj_dim: int | None) -> dict:
    cfg = family_config(family, "unet")
    p = UNET_PREFIX
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    conv_in = sd[f"{p}input_blocks.0.0.weight"]
    cfg["in_channels"], cfg["out_channels"] = int(conv_in.shape[1]), int(sd[f"{p}out.2.weight"].shape[0])
    inputs = [i for i in _indices(keys, r"input_blocks\.(\d+)\.") if i > 0]
    ops = [i for i in inputs if f"{p}input_blocks.{i}.0.op.weight" in sd]
    n_levels = len(ops) + 1
    layers = (ops[0] - 1) if ops else len(inputs)
    channels, has_attn, depth = [], [], []
    for level in range(n_levels):
        first = 1 + level * (layers + 1)
        for i in range(first, first + layers):
            if f"{p}input_blocks.{i}.0.out_layers.3.weight" not in sd:
                raise CheckpointError(f"UNet level {level} does not have {layers} blocks like level 0; "
                                      "unequal layers per level are not supported")
        channels.append(int(sd[f"{p}input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attn = f"input_blocks.{first}.1."
        has_attn.append(f"{p}{attn}proj_in.weight" in sd)
        depth.append(len(_indices(keys, re.escape(attn) + r"transformer_blocks\.(\d+)\.")) or 1)
    cfg["block_out_channels"], cfg["layers_per_block"] = channels, layers
    cfg["norm_num_groups"] = norm_num_groups(channels)
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    cfg["transformer_layers_per_block"] = depth if any(d != 1 for d in depth) else 1
    if not any(k.startswith("middle_block.1.") for k in keys):
        raise CheckpointError("the UNet has no middle-block attention; this layout is not supported")
    proj_in = sd[f"{p}middle_block.1.proj_in.weight"]
    cfg["use_linear_projection"] = proj_in.ndim == 2
    cfg["cross_attention_dim"] = int(sd[f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1])
    cfg["attention_head_dim"] = 8 if family == "sd1" else [max(1, c // 64) for c in channels]
    time_dim = int(sd[f"{p}time_embed.0.weight"].shape[0])
    if time_dim != channels[0] * 4:
        cfg["time_embedding_dim"] = time_dim
    label = sd.get(f"{p}label_emb.0.0.weight")
    if label is not None:
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = int(label.shape[1])
        if te2_proj_dim is not None:
            extra = int(label.shape[1]) - te2_proj_dim
            if extra <= 0 or extra % 6:
                raise CheckpointError(f"label_emb input {label.shape[1]} does not fit pooled size {te2_proj_dim} "
                                      "+ 6 size/crop embeddings")
            cfg["addition_time_embed_dim"] = extra // 6
    return cfg


def _infer_vae(sd: Mapping, family: Family, prefix: str) -> dict:
    cfg = family_config(family, "vae")
    keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    cfg["block_out_channels"] = [int(sd[f"{prefix}encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    cfg["norm_num_groups"] = norm_num_groups(cfg["block_out_channels"])
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["layers_per_block"] = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    cfg["in_channels"] = int(sd[f"{prefix}encoder.conv_in.weight"].shape[1])
    cfg["out_channels"] = int(sd[f"{prefix}decoder.conv_out.weight"].shape[0])
    cfg["latent_channels"] = int(sd[f"{prefix}decoder.conv_in.weight"].shape[1])
    return cfg


def infer_vae_config(state_dict: Mapping, family: Family = "sd1", prefix: str | None = None) -> dict:
    """The AutoencoderKL config of LDM VAE weights (`first_stage_model.` prefix optional)."""
    if prefix is None:
        prefix = VAE_PREFIX if _has_prefix(state_dict, VAE_PREFIX) else ""
    return _infer_vae(state_dict, family, prefix)


def _infer_clip(sd: Mapping, family: Family, component: str) -> dict:
    cfg = family_config(family, component)
    pre = get_family(family).text_encoder(component).ldm_weights_prefix + "text_model."
    token = sd[f"{pre}embeddings.token_embedding.weight"]
    cfg["vocab_size"], cfg["hidden_size"] = int(token.shape[0]), int(token.shape[1])
    cfg["max_position_embeddings"] = int(sd[f"{pre}embeddings.position_embedding.weight"].shape[0])
    cfg["num_hidden_layers"] = len(_indices(sd, re.escape(pre) + r"encoder\.layers\.(\d+)\."))
    cfg["intermediate_size"] = int(sd[f"{pre}encoder.layers.0.mlp.fc1.weight"].shape[0])
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    return cfg


def _infer_open_clip(sd: Mapping, family: Family, component: str) -> dict:
    cfg = family_config(family, component)
    spec = get_family(family).text_encoder(component)
    pre = spec.ldm_weights_prefix
    token = sd[f"{pre}token_embedding.weight"]
    cfg["vocab_size"], cfg["hidden_size"] = int(token.shape[0]), int(token.shape[1])
    cfg["max_position_embeddings"] = int(sd[f"{pre}positional_embedding"].shape[0])
    blocks = len(_indices(sd, re.escape(pre) + r"transformer\.resblocks\.(\d+)\."))
    # SD2 conditions on the penultimate layer: diffusers' encoder simply stops one block early.
    cfg["num_hidden_layers"] = blocks - 1 if family == "sd2" else blocks
    cfg["intermediate_size"] = int(sd[f"{pre}transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    if f"{pre}text_projection" in sd and spec.with_projection:
        cfg["projection_dim"] = int(sd[f"{pre}text_projection"].shape[1])
    return cfg


def infer_configs(state_dict: Mapping, arch: ArchInfo) -> dict[str, dict]:
    """diffusers configs (unet, vae, text_encoder[, text_encoder_2], scheduler) sized to this state dict.

    Components the file lacks are left out; the scheduler follows the detected prediction type.
    """
    family = arch.family
    out: dict[str, dict] = {}
    try:
        for te in get_family(family).text_encoders:
            if _has_prefix(state_dict, te.ldm_weights_prefix):
                infer = _infer_clip if te.kind == "clip" else _infer_open_clip
                out[te.component] = infer(state_dict, family, te.component)
        te2 = out.get("text_encoder_2", {}).get("projection_dim")
        if arch.has_unet:
            out["unet"] = _infer_unet(state_dict, family, te2)
        if arch.has_vae:
            out["vae"] = _infer_vae(state_dict, family, VAE_PREFIX)
    except KeyError as exc:
        raise CheckpointError(f"the {get_family(family).display_name} checkpoint lacks the weight {exc.args[0]!r}; "
                              "the file is incomplete or damaged") from None
    out["scheduler"] = scheduler_config(arch)
    return copy.deepcopy(out)


def scheduler_config(arch: ArchInfo) -> dict:
    """The family's shipped scheduler config with the checkpoint's prediction type and zero-terminal SNR."""
    scheduler = family_config(arch.family, "scheduler")
    scheduler["prediction_type"] = arch.prediction_type
    if arch.zero_terminal_snr:
        scheduler["rescale_betas_zero_snr"] = True
        scheduler["timestep_spacing"] = "trailing"
    return scheduler
