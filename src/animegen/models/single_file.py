"""A1111 / Civitai single-file checkpoints: read them offline into diffusers pipelines, and write them.

diffusers' own `from_single_file` fetches configs from the Hub; we never touch the network: the family
is detected from the keys, configs come from the shipped JSON sized by tensor shapes (`detect.py`),
tokenizers from the packaged CLIP vocabulary. LDM -> diffusers uses diffusers' conversion functions;
diffusers -> LDM (saving) uses the maps in `ldm_names.py`, so each direction checks the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from animegen.core.files import PICKLE_SUFFIXES, WeightsFileError, atomic_path, read_weights
from animegen.models.detect import (
    V_PREDICTION_SCORE_BELOW,
    ArchInfo,
    CheckpointError,
    Family,
    detect_architecture,
    family_config,
    infer_configs,
    infer_vae_config,
    scheduler_config,
    unet_v_prediction_score,
)
from animegen.models.family import ModelFamily, family_of, get_family
from animegen.models.ldm_names import (
    UNET_PREFIX,
    VAE_PREFIX,
    clip_state_dict_to_ldm,
    has_text_model_level,
    open_clip_state_dict_to_ldm,
    text_path_for,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
    with_text_model_level,
)

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
_MAX_LISTED = 8


# ---------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and safetensors metadata of a checkpoint file, under the pickle policy of `core.files`.

    Pre-`text_model` CLIP names are renamed as A1111 does on load (`ldm_names.with_text_model_level`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (*SAFE_SUFFIXES, *PICKLE_SUFFIXES):
        raise CheckpointError(f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors "
                              f"(or {', '.join(PICKLE_SUFFIXES)} with --allow-pickle)")
    try:
        tensors, metadata = read_weights(path, allow_pickle=allow_pickle)
    except WeightsFileError as exc:
        raise CheckpointError(str(exc)) from None
    return with_text_model_level(tensors), metadata


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load strictly, naming missing and unexpected keys (weights were created empty, on `meta`)."""
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)}: {_names(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)}: {_names(result.unexpected_keys)}")
    if problems:
        raise CheckpointError(f"{what} weights do not fit the inferred architecture — " + "; ".join(problems))
    return model.eval()


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _subset(state_dict: Mapping[str, torch.Tensor], prefix: str, strip: bool = False) -> dict:
    n = len(prefix) if strip else 0
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _build_unet(sd, config: dict, dtype):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    weights = convert_ldm_unet_checkpoint(_subset(sd, UNET_PREFIX), config)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return _load_into(unet, _cast(weights, dtype), "UNet")


def _build_vae(ldm_vae: dict[str, torch.Tensor], config: dict, dtype):
    """`ldm_vae` has no prefix (`encoder.…`, `decoder.…`)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    weights = convert_ldm_vae_checkpoint(ldm_vae, config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return _load_into(vae, _cast(weights, dtype), "VAE")


def _fit_text_keys(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Match the `text_model.` level to the model (some transformers versions drop it from CLIPTextModel)."""
    level = has_text_model_level(model)
    return {text_path_for(k, level): v for k, v in weights.items() if not k.endswith("position_ids")}


def _build_clip(sd, family: Family, component: str, config: dict, dtype):
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = get_family(family).text_encoder(component)
    prefix = spec.ldm_weights_prefix
    weights = convert_ldm_clip_checkpoint(_subset(sd, prefix), remove_prefix=prefix)
    with init_empty_weights():
        model = CLIPTextModel(CLIPTextConfig(**config))
    return _load_into(model, _cast(_fit_text_keys(weights, model), dtype), f"{component} ({spec.description})")


def _build_open_clip(sd, family: Family, component: str, config: dict, dtype):
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = get_family(family).text_encoder(component)
    prefix = spec.ldm_weights_prefix
    part = _subset(sd, prefix)
    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    if family == "sd2":
        # SD2 reads the penultimate layer: the last block and the projection are never used.
        last = config["num_hidden_layers"]
        part = {k: v for k, v in part.items()
                if not k.startswith(f"{prefix}transformer.resblocks.{last}.") and k != f"{prefix}text_projection"}
    part.pop(f"{prefix}logit_scale", None)
    with init_empty_weights():
        model = cls(CLIPTextConfig(**config))
    weights = convert_open_clip_checkpoint(model, part, prefix=prefix)
    return _load_into(model, _cast(_fit_text_keys(weights, model), dtype), f"{component} ({spec.description})")


def _make_scheduler(config: dict):
    import diffusers

    config = dict(config)
    cls = getattr(diffusers, config.pop("_class_name", "EulerDiscreteScheduler"))
    return cls.from_config(config)


def _resolve_vae(vae: Any, family: Family, dtype, allow_pickle: bool):
    if vae is None or isinstance(vae, torch.nn.Module):
        return vae.to(dtype) if vae is not None else None
    vae_path = Path(vae)
    if vae_path.is_dir():
        from diffusers import AutoencoderKL

        sub = vae_path / "vae" if (vae_path / "vae" / "config.json").is_file() else vae_path
        return AutoencoderKL.from_pretrained(str(sub), dtype=dtype, local_files_only=True)
    return load_vae_file(vae_path, allow_pickle=allow_pickle, dtype=dtype, family=family)


def load_single_file(path: str | Path, *, allow_pickle: bool = False, dtype: torch.dtype | None = None,
                     vae: Any = None):
    """A diffusers pipeline from an A1111/Civitai checkpoint, with no network access.

    Returns a `StableDiffusionPipeline` (SD1.x / SD2.x, no safety checker) or a
    `StableDiffusionXLPipeline`. `dtype` defaults to float32. `vae` (an AutoencoderKL, a VAE file or a
    diffusers folder) replaces the checkpoint's VAE and lets a VAE-less checkpoint load.
    Raises CheckpointError naming the problem for unsupported, incomplete or mismatched files.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from animegen.models.assets import load_tokenizer

    dtype = dtype or torch.float32
    sd, metadata = read_state_dict(path, allow_pickle=allow_pickle)
    arch = detect_architecture(sd, metadata)
    arch.check_complete(vae_given=vae is not None)
    if arch.is_inpainting:
        log.info("%s is an inpainting model (9 input channels): it is given a mask and the masked image "
                 "(generate.kpipeline)", path)
    configs = infer_configs(sd, arch)
    unet = _build_unet(sd, configs["unet"], torch.float32 if arch.needs_unet_test else dtype)
    if arch.needs_unet_test:  # SD2: 512-base (epsilon) or 768-v? A1111's test, in float32 as A1111 runs it
        score = unet_v_prediction_score(unet)
        prediction = "v_prediction" if score < V_PREDICTION_SCORE_BELOW else "epsilon"
        log.info("%s: SD2 %s (A1111's UNet output test: %.3f, v below %.1f)", path, prediction, score,
                 V_PREDICTION_SCORE_BELOW)
        arch = replace(arch, prediction_type=prediction, prediction_source="UNet output test")
        configs["scheduler"] = scheduler_config(arch)
        unet = unet.to(dtype)
    vae_model = _resolve_vae(vae, arch.family, dtype, allow_pickle)
    if vae_model is None:
        vae_model = _build_vae(_subset(sd, VAE_PREFIX, strip=True), configs["vae"], dtype)
    scheduler = _make_scheduler(configs["scheduler"])
    family = get_family(arch.family)
    text: dict[str, Any] = {}
    for te in family.text_encoders:
        build = _build_clip if te.kind == "clip" else _build_open_clip
        text[te.component] = build(sd, family.name, te.component, configs[te.component], dtype)
        text[te.tokenizer] = load_tokenizer(pad_token=te.pad_token)
    if family.is_sdxl:
        pipe = StableDiffusionXLPipeline(vae=vae_model, unet=unet, scheduler=scheduler, **text,
                                         add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae_model, unet=unet, scheduler=scheduler, **text,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.arch_info = arch  # type: ignore[attr-defined]  # what was detected, for infotext / UI
    return pipe


def load_vae_file(path: str | Path, *, allow_pickle: bool = False, dtype: torch.dtype | None = None,
                  family: Family = "sd1"):
    """An AutoencoderKL from a single-file VAE (`encoder.*`/`decoder.*`, optionally `first_stage_model.`).

    The architecture is read off the shapes; `family` only picks the latent scaling factor
    (`ModelFamily.vae_scaling_factor`, via its shipped VAE config), which the weights cannot reveal.
    """
    sd, _ = read_state_dict(path, allow_pickle=allow_pickle)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in sd) else ""
    ldm_vae = _subset(sd, prefix, strip=True)
    if "decoder.conv_in.weight" not in ldm_vae or "encoder.conv_in.weight" not in ldm_vae:
        raise CheckpointError(f"{path}: not a VAE file (no encoder.*/decoder.* weights; "
                              f"found e.g. {_names(list(sd)[:3])})")
    try:
        config = infer_vae_config(ldm_vae, family, prefix="")
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete VAE, no weight {exc.args[0]!r}") from None
    return _build_vae(ldm_vae, config, dtype or torch.float32)


# ---------------------------------------------------------------------------------------- writing


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights under A1111/LDM names (SD1.x and SDXL)."""
    family = family_of(pipe)
    if family.name == "sd2":
        raise CheckpointError("saving SD2.x pipelines as single files is not supported; "
                              "save it as a diffusers folder instead")

    def cpu(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    out: dict[str, torch.Tensor] = {}
    for key, value in unet_state_dict_to_ldm(cpu(pipe.unet), pipe.unet.config).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_state_dict_to_ldm(cpu(pipe.vae), pipe.vae.config).items():
        out[VAE_PREFIX + key] = value
    for te in family.text_encoders:
        encoder = getattr(pipe, te.component)
        ldm = (clip_state_dict_to_ldm(cpu(encoder)) if te.kind == "clip"
               else open_clip_state_dict_to_ldm(cpu(encoder), encoder.config))
        out.update({te.ldm_prefix + key: value for key, value in ldm.items()})
    scheduler = dict(pipe.scheduler.config)
    if scheduler.get("prediction_type") == "v_prediction":
        out["v_pred"] = torch.tensor([])
    if scheduler.get("rescale_betas_zero_snr"):
        out["ztsnr"] = torch.tensor([])
    return out


def save_single_file(pipe, path: str | Path, *, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `pipe` as one A1111/Civitai-layout `.safetensors` file, atomically (temp file + rename).

    `dtype` casts floating weights (e.g. torch.float16 halves the size); `metadata` is merged into the
    safetensors header (non-string values are JSON-encoded).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: single files are written as .safetensors; change the file name")
    family: ModelFamily = family_of(pipe)
    state = pipeline_to_ldm(pipe)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and v.numel() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    header = {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
    }
    for key, value in (metadata or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


__all__ = [
    "ArchInfo",
    "CheckpointError",
    "family_config",
    "load_single_file",
    "load_vae_file",
    "pipeline_to_ldm",
    "read_state_dict",
    "save_single_file",
]
