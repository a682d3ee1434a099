"""Names of the same weights in diffusers and in the original LDM / A1111 / Civitai single-file layout.

The one name-mapping module: single-file checkpoints (`single_file.py`), kohya SDXL LoRA keys
(`lora/names.py`) and A1111 extensions all speak LDM names (`input_blocks.4.1.proj_in`); diffusers speaks
its own (`down_blocks.1.attentions.0.proj_in`). The maps here are computed from a diffusers config (a walk
of the empty model it builds), so they hold for any number of levels, layers per block or attention
placement, not only for the three released families; `unet_path_to_ldm` / `unet_path_from_ldm` translate
one module path either way. Callers without a model use the family's shipped config (`ModelFamily.config`).
The rule for the CLIP `text_model.` level, which transformers versions disagree on, is here too.

Module maps go from a diffusers *module path* to an LDM module path. UNet and VAE paths have no prefix
(add `UNET_PREFIX` / `VAE_PREFIX` for a whole checkpoint); text-encoder paths start at the embedder
(`transformer.text_model…` for CLIP-L, `model.transformer.resblocks…` for OpenCLIP) and the
component prefix is in `TEXT_ENCODER_PREFIXES`. Text-encoder maps are keyed by the canonical Hugging Face
names (`text_model.encoder.layers.0.self_attn.q_proj`), as found in HF checkpoints and LoRA files, even
where a transformers version drops the `text_model.` level from `CLIPTextModel`.

OpenCLIP fuses q/k/v into one `attn.in_proj_weight` / `attn.in_proj_bias` (rows q, then k, then v):
q_proj, k_proj and v_proj all map to the pseudo-module `….attn.in_proj`; LDM parameter names are then
`<module>_weight` / `<module>_bias`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch

from animegen.models.family import FAMILIES, get_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# family -> component -> embedder prefix (the family descriptions own them; this is a view for lookups)
TEXT_ENCODER_PREFIXES: dict[str, dict[str, str]] = {
    f.name: {te.component: te.ldm_prefix for te in f.text_encoders} for f in FAMILIES.values()}
# OpenCLIP's logit scale after training (exp() is clamped to 100); SDXL files carry it, no one reads it.
OPEN_CLIP_LOGIT_SCALE = 4.605170249938965

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
               "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"]
_OPEN_CLIP_LAYER = {
    "self_attn.q_proj": "attn.in_proj",
    "self_attn.k_proj": "attn.in_proj",
    "self_attn.v_proj": "attn.in_proj",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _cfg(config: Any) -> dict:
    """A plain dict from a diffusers FrozenDict, a transformers config or a dict."""
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(config)


def _per_level(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


# ----------------------------------------------------------------------------------------------- UNet


def _unet_prefixes(cfg: dict) -> dict[str, tuple[str, str]]:
    """diffusers block path -> (LDM block path, kind) where kind is resnet / attention / plain."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    n = len(down)
    layers = _per_level(cfg.get("layers_per_block", 2), n)
    out: dict[str, tuple[str, str]] = {}
    idx = 1
    for i, block_type in enumerate(down):
        for j in range(layers[i]):
            out[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{idx}.0", "resnet")
            if "CrossAttn" in block_type:
                out[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{idx}.1", "plain")
            idx += 1
        if i < n - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{idx}.0.op", "plain")
            idx += 1
    mid_type = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type == "UNetMidBlock2DCrossAttn":
        out["mid_block.resnets.0"] = ("middle_block.0", "resnet")
        out["mid_block.attentions.0"] = ("middle_block.1", "plain")
        out["mid_block.resnets.1"] = ("middle_block.2", "resnet")
    elif mid_type is not None:
        raise ValueError(f"mid_block_type {mid_type!r} has no LDM equivalent here; only UNetMidBlock2DCrossAttn")
    up_layers = [x + 1 for x in reversed(layers)]
    idx = 0
    for i, block_type in enumerate(up):
        has_attention = "CrossAttn" in block_type
        for j in range(up_layers[i]):
            out[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{idx}.0", "resnet")
            if has_attention:
                out[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{idx}.1", "plain")
            if j == up_layers[i] - 1 and i < n - 1:
                slot = 2 if has_attention else 1
                out[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{idx}.{slot}.conv", "plain")
            idx += 1
    for name, ldm in _UNET_FIXED.items():
        out[name] = (ldm, "plain")
    return out


def _map_path(name: str, prefixes: Mapping[str, tuple[str, str]], inner: Mapping[str, Mapping[str, str]]):
    """Map `name` by its longest known block prefix; inner maps rename the first sub-path within a kind."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head not in prefixes:
            continue
        ldm, kind = prefixes[head]
        rest = ".".join(parts[cut:])
        if not rest:
            return ldm
        renames = inner.get(kind, {})
        for old in sorted(renames, key=len, reverse=True):
            if rest == old or rest.startswith(old + "."):
                rest = renames[old] + rest[len(old):]
                break
        return f"{ldm}.{rest}"
    return None


def _map_model_modules(model_class, cfg: dict, prefixes: dict, inner: dict) -> dict[str, str]:
    """Walk an empty (meta-device) model built from `cfg` and map each weighted module / block path."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_class.from_config(cfg)
    result = {}
    for name, module in model.named_modules():
        if not name or not (any(True for _ in module.parameters(recurse=False)) or name in prefixes):
            continue
        ldm = _map_path(name, prefixes, inner)
        if ldm is not None:
            result[name] = ldm
    return result


@lru_cache(maxsize=16)
def _unet_map_cached(config_json: str) -> dict[str, str]:
    from diffusers import UNet2DConditionModel

    cfg = json.loads(config_json)
    return _map_model_modules(UNet2DConditionModel, cfg, _unet_prefixes(cfg), {"resnet": _UNET_RESNET})


def _config_key(config: Any) -> str:
    return json.dumps(_cfg(config), sort_keys=True, default=str)


def unet_module_map(unet_config: Any) -> dict[str, str]:
    """Every diffusers UNet module that holds weights (and every block) -> its LDM module path.

    e.g. `down_blocks.1.attentions.0.proj_in -> input_blocks.4.1.proj_in`,
    `mid_block.resnets.0.conv1 -> middle_block.0.in_layers.2`, `add_embedding.linear_1 -> label_emb.0.0`.
    """
    return dict(_unet_map_cached(_config_key(unet_config)))


@lru_cache(maxsize=16)
def _unet_inverse_cached(config_json: str) -> dict[str, str]:
    inverse: dict[str, str] = {}
    for diffusers_name, ldm in _unet_map_cached(config_json).items():
        if inverse.setdefault(ldm, diffusers_name) != diffusers_name:
            raise ValueError(f"two diffusers modules ({inverse[ldm]}, {diffusers_name}) map to LDM {ldm!r}")
    return inverse


def unet_path_to_ldm(path: str, unet_config: Any) -> str:
    """One diffusers UNet module path -> its LDM path, for the UNet that `unet_config` builds (ValueError if
    that UNet has no such module)."""
    try:
        return _unet_map_cached(_config_key(unet_config))[path]
    except KeyError:
        raise ValueError(f"the UNet of this config has no module {path!r} (no LDM name for it)") from None


def unet_path_from_ldm(path: str, unet_config: Any) -> str:
    """One LDM UNet module path (`input_blocks.4.1.proj_in`) -> the diffusers path, for the UNet that
    `unet_config` builds (ValueError if that UNet has no such module)."""
    try:
        return _unet_inverse_cached(_config_key(unet_config))[path]
    except KeyError:
        raise ValueError(f"the UNet of this config has no LDM module {path!r}") from None


# ------------------------------------------------------------------------------------------------ VAE


def _vae_prefixes(cfg: dict) -> dict[str, tuple[str, str]]:
    n_down, n_up = len(cfg["down_block_types"]), len(cfg["up_block_types"])
    layers = cfg.get("layers_per_block", 2)
    out: dict[str, tuple[str, str]] = {}
    for i in range(n_down):
        for j in range(layers):
            out[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", "resnet")
        if i < n_down - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", "plain")
    for i in range(n_up):
        level = n_up - 1 - i
        for j in range(layers + 1):
            out[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{level}.block.{j}", "resnet")
        if i < n_up - 1:
            out[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{level}.upsample.conv", "plain")
    for part in ("encoder", "decoder"):
        out[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", "resnet")
        out[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", "resnet")
        out[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", "attention")
        out[f"{part}.conv_in"] = (f"{part}.conv_in", "plain")
        out[f"{part}.conv_out"] = (f"{part}.conv_out", "plain")
        out[f"{part}.conv_norm_out"] = (f"{part}.norm_out", "plain")
    out["quant_conv"] = ("quant_conv", "plain")
    out["post_quant_conv"] = ("post_quant_conv", "plain")
    return out


@lru_cache(maxsize=16)
def _vae_map_cached(config_json: str) -> dict[str, str]:
    from diffusers import AutoencoderKL

    cfg = json.loads(config_json)
    inner = {"resnet": _VAE_RESNET, "attention": _VAE_ATTENTION}
    return _map_model_modules(AutoencoderKL, cfg, _vae_prefixes(cfg), inner)


def vae_module_map(vae_config: Any) -> dict[str, str]:
    """Every diffusers AutoencoderKL module with weights (and every block) -> its LDM module path.

    e.g. `decoder.up_blocks.0.resnets.2.conv2 -> decoder.up.3.block.2.conv2`,
    `encoder.mid_block.attentions.0.to_q -> encoder.mid.attn_1.q` (LDM: 1x1 conv, diffusers: Linear).
    """
    return dict(_vae_map_cached(_config_key(vae_config)))


# ------------------------------------------------------------------------------------- text encoders


def _num_layers(text_config: Any) -> int:
    if isinstance(text_config, int):
        return text_config
    return int(_cfg(text_config)["num_hidden_layers"])


def clip_module_map(text_config: Any) -> dict[str, str]:
    """CLIP-L (HF `CLIPTextModel`) module -> LDM path under the embedder (`transformer.` + same name).

    `text_config` is a CLIPTextConfig, its dict, or the number of layers.
    """
    names = ["text_model.embeddings.token_embedding", "text_model.embeddings.position_embedding",
             "text_model.final_layer_norm"]
    for i in range(_num_layers(text_config)):
        names += [f"text_model.encoder.layers.{i}.{sub}" for sub in _CLIP_LAYER]
    return {name: f"transformer.{name}" for name in names}


def open_clip_module_map(text_config: Any) -> dict[str, str]:
    """HF CLIP names -> OpenCLIP names (`model.transformer.resblocks.N.…`) for SD2 and SDXL's second encoder.

    `text_model.embeddings.position_embedding` maps to the bare parameter `model.positional_embedding` and
    `text_projection` to the bare, transposed `model.text_projection`.
    """
    out = {
        "text_model.embeddings.token_embedding": "model.token_embedding",
        "text_model.embeddings.position_embedding": "model.positional_embedding",
        "text_model.final_layer_norm": "model.ln_final",
        "text_projection": "model.text_projection",
    }
    for i in range(_num_layers(text_config)):
        for sub, ldm in _OPEN_CLIP_LAYER.items():
            out[f"text_model.encoder.layers.{i}.{sub}"] = f"model.transformer.resblocks.{i}.{ldm}"
    return out


def text_encoder_module_map(family: str, component: str, text_config: Any) -> dict[str, str]:
    """Full LDM paths (with the component prefix) for `text_encoder` / `text_encoder_2` of a family."""
    spec = get_family(family).text_encoder(component)
    base = open_clip_module_map(text_config) if spec.kind == "open_clip" else clip_module_map(text_config)
    return {k: spec.ldm_prefix + v for k, v in base.items()}


# ------------------------------------------------------------------ the CLIP `text_model.` level
# transformers 5 dropped the `text_model` module from `CLIPTextModel` (not from the projection variant), so
# the same weight is `text_model.encoder.layers.0…` or `encoder.layers.0…` depending on the class and the
# installed version. The canonical name (HF checkpoints, kohya and LoRA targets) has the level; code that
# talks to a model converts with `text_path_for`; checkpoints saved without the level are renamed on reading
# (`with_text_model_level`).

TEXT_MODEL_LEVEL = "text_model."
_CLIP_ROOTS = ("encoder.", "embeddings.", "final_layer_norm")


def canonical_text_path(path: str) -> str:
    """A CLIP module/parameter path with the `text_model.` level (`encoder.layers.0…` -> `text_model.encoder…`)."""
    return TEXT_MODEL_LEVEL + path if path.startswith(_CLIP_ROOTS) else path


def text_path_for(path: str, has_level: bool) -> str:
    """`path` as a CLIP model with (`has_level`) or without the `text_model` module names it."""
    canonical = canonical_text_path(path)
    return canonical if has_level else canonical.removeprefix(TEXT_MODEL_LEVEL)


def with_text_model_level(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's keys with the `text_model.` level under every CLIP-L embedder, as A1111 renames on load.

    NovelAI-era SD1 files were saved by transformers versions before the level existed
    (`cond_stage_model.transformer.encoder.layers.0…`); A1111's `checkpoint_dict_replacements_sd1` inserts it.
    We apply the same rule to SDXL's CLIP-L embedder too, where no other reading is possible.
    """
    prefixes = tuple(dict.fromkeys(te.ldm_weights_prefix for f in FAMILIES.values() for te in f.text_encoders
                                   if te.kind == "clip"))
    out = {}
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        out[key if prefix is None else prefix + canonical_text_path(key[len(prefix):])] = value
    return out


def has_text_model_level(text_encoder: torch.nn.Module) -> bool:
    """Whether this CLIP model nests its layers under a `text_model` module."""
    return isinstance(getattr(text_encoder, "text_model", None), torch.nn.Module)


def clip_text_model(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """The module holding `embeddings`, `encoder` and `final_layer_norm` (the model itself on transformers 5)."""
    return text_encoder.text_model if has_text_model_level(text_encoder) else text_encoder


@lru_cache(maxsize=2)
def clip_class_has_text_model_level(with_projection: bool) -> bool:
    """`has_text_model_level` of the installed transformers' CLIP class, when no model is at hand
    (writing diffusers-layout LoRA keys that peft must find)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    config = CLIPTextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                            num_attention_heads=1, max_position_embeddings=4, projection_dim=8)
    return has_text_model_level(cls(config))


# ----------------------------------------------------------------------- state dicts: diffusers -> LDM


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _require(mapping: Mapping[str, str], module: str, key: str, what: str) -> str:
    if module not in mapping:
        raise KeyError(f"{what} weight {key!r} has no LDM name (module {module!r} is not in the map)")
    return mapping[module]


def unet_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor], unet_config: Any) -> dict[str, torch.Tensor]:
    """diffusers UNet weights -> LDM names (without `UNET_PREFIX`); shapes are identical."""
    mapping = unet_module_map(unet_config)
    out = {}
    for key, value in state_dict.items():
        module, param = _split(key)
        out[f"{_require(mapping, module, key, 'UNet')}.{param}"] = value
    return out


def vae_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor], vae_config: Any) -> dict[str, torch.Tensor]:
    """diffusers VAE weights -> LDM names (without `VAE_PREFIX`); mid-block attention Linear -> 1x1 conv."""
    mapping = vae_module_map(vae_config)
    out = {}
    for key, value in state_dict.items():
        module, param = _split(key)
        ldm = _require(mapping, module, key, "VAE")
        if ".mid.attn_1." in ldm + "." and param == "weight" and value.ndim == 2:
            value = value[:, :, None, None]
        out[f"{ldm}.{param}"] = value
    return out


def _canonical_text_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {canonical_text_path(k): v for k, v in state_dict.items() if not k.endswith("position_ids")}


def clip_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel weights -> LDM names under the embedder (`transformer.text_model.…`)."""
    return {f"transformer.{k}": v for k, v in _canonical_text_keys(state_dict).items()}


def open_clip_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor], text_config: Any,
                                *, logit_scale: bool = True) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel(WithProjection) weights -> OpenCLIP names under the embedder (`model.…`).

    q/k/v are concatenated into `in_proj_weight`/`in_proj_bias`, the projection is transposed.
    """
    sd = _canonical_text_keys(state_dict)
    mapping = open_clip_module_map(text_config)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        module, param = _split(key)
        ldm = _require(mapping, module, key, "text encoder")
        if ldm.endswith(".attn.in_proj"):
            fused.setdefault(f"{ldm}_{param}", {})[module.rsplit(".", 1)[1]] = value
        elif ldm == "model.text_projection":
            out[ldm] = value.T.contiguous()
        elif ldm in ("model.positional_embedding",):
            out[ldm] = value
        else:
            out[f"{ldm}.{param}"] = value
    for ldm, parts in fused.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise KeyError(f"{ldm}: need q_proj, k_proj and v_proj, found {sorted(parts)}")
        out[ldm] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    if logit_scale:
        ref = next(iter(out.values()))
        out["model.logit_scale"] = torch.tensor(OPEN_CLIP_LOGIT_SCALE, dtype=ref.dtype)
    return out
