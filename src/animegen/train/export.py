"""Export trained weights: adapters as kohya/A1111 `.safetensors` (with `ss_*` training metadata) and
diffusers-format LoRA files; full fine-tunes as a diffusers folder and an A1111 single file.

Each file is named for what loads it (`LOADERS`, docs/training-exports.md): `NAME.safetensors` is the
kohya/LyCORIS file (A1111 and animegen load every kind, ComfyUI all but IA3); `NAME_diffusers.safetensors`
is written only for LoRA/LoCon, the kinds diffusers' `pipe.load_lora_weights` loads. diffusers has no IA3, LoHa,
LoKr or full-diff loader, so for those kinds a requested "diffusers" export is skipped and the trainer's
final message says why (earlier versions wrote one anyway; animegen still reads those files).

Adapters go through `animegen.models.lora` so generation loads exactly what was trained. Each peft
layer's effective weight change is measured by merging it into a copy of the base weight (peft's
own merge, so DoRA and IA3's bias scaling are included); the layer is then stored in its native
LyCORIS form (`lora_down/up`, `hada_*`, `lokr_*`, IA3 `weight`) when that reproduces the change, and as
a full `diff` (+ `diff_b`) otherwise. DoRA is stored as LyCORIS stores it (`dora_wd`): the layer's LoRA
`lora_down/up` + `alpha` and peft's magnitude vector as ``dora_scale``, one per output row (LyCORIS'
`wd_on_out`; shape (out, 1) for a Linear, (out, 1, 1, 1) for a conv), the orientation of peft's
W' = m · V / ‖V‖ with V = W + ΔW and the norm over each output row (`models.lora.dora`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from animegen.core.files import atomic_dir
from animegen.models.family import ModelFamily, get_family
from animegen.models.loading import dtype_by_name
from animegen.train.adapters import plain_weight
from animegen.train.config import TrainConfig

# adapter kinds the trainer offers that are stored as another LoRA algorithm (`models.lora.algorithms`)
_LORA_KIND = {"locon": "lora", "dora": "lora"}

#: adapter kinds whose diffusers-layout file diffusers' `pipe.load_lora_weights` loads
DIFFUSERS_LORA_KINDS = frozenset({"lora", "locon"})

_ALL = "A1111, ComfyUI and animegen"
#: (kind, export format) -> what loads that file; tests/train/test_export_loads.py checks the diffusers and
#: animegen claims, A1111's and ComfyUI's LoRA loaders (network_*.py, comfy/lora.py) are the reference for theirs
LOADERS: dict[tuple[str, str], str] = {
    **{(k, "kohya"): "A1111, ComfyUI, diffusers' load_lora_weights and animegen" for k in DIFFUSERS_LORA_KINDS},
    **{(k, "diffusers"): "diffusers' load_lora_weights and animegen" for k in DIFFUSERS_LORA_KINDS},
    ("loha", "kohya"): _ALL, ("lokr", "kohya"): _ALL,
    ("dora", "kohya"): _ALL + " (LyCORIS DoRA: lora_down/up + dora_scale)",
    ("ia3", "kohya"): "A1111 and animegen; ComfyUI has no IA3 loader",
    ("full", "diffusers"): "diffusers' from_pretrained and animegen",
    ("full", "single_file"): _ALL,
}
_NO_DIFFUSERS_LOADER = {"ia3": "has no IA3 loader", "loha": "has no LoHa loader", "lokr": "has no LoKr loader",
                        "dora": "drops DoRA's magnitudes (dora_scale) and loads a different model"}


def _peft_layers(module: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer):
            yield name, layer


def _merged_delta(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(W0, ΔW, Δb or None) of one peft layer, by merging into the base weight and restoring it exactly."""
    base = layer.get_base_layer()
    w0 = base.weight.data.clone()
    b0 = base.bias.data.clone() if getattr(base, "bias", None) is not None else None
    layer.merge(adapter_names=["default"])
    dw = base.weight.data.float() - w0.float()
    db = base.bias.data.float() - b0.float() if b0 is not None else None
    layer.merged_adapters = []
    base.weight.data = w0
    if b0 is not None:
        base.bias.data = b0
    if db is not None and not torch.any(db):
        db = None
    return w0, dw, db


def _native_tensors(layer, kind: str) -> tuple[dict[str, torch.Tensor], float | None] | None:
    """The layer's adapter tensors under their LyCORIS names (None if the kind has no native form here)."""
    def param(attr: str) -> torch.Tensor | None:
        holder = getattr(layer, attr, None)
        if holder is None or "default" not in holder:
            return None
        value = holder["default"]
        return (value.weight if hasattr(value, "weight") else value).detach().float().cpu()

    if kind in ("lora", "locon", "dora"):
        tensors = {"lora_down.weight": param("lora_A"), "lora_up.weight": param("lora_B")}
        if kind == "dora":  # peft's magnitude, one per output row: LyCORIS' wd_on_out (out, 1[, 1, 1])
            magnitude = param("lora_magnitude_vector")
            if magnitude is None:
                return None
            tensors["dora_scale"] = magnitude.reshape(-1, *[1] * (tensors["lora_up.weight"].dim() - 1))
        return tensors, float(layer.lora_alpha["default"]) if hasattr(layer, "lora_alpha") else None
    if kind == "loha":
        tensors = {k: param(k) for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}
        return {k: v for k, v in tensors.items() if v is not None}, float(layer.alpha["default"])
    if kind == "lokr":
        names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        tensors = {k: v for k in names if (v := param(k)) is not None}
        if "lokr_w1" in tensors and "lokr_w2" in tensors:
            # both factors full: LyCORIS applies no alpha/rank scale then, peft still does -> bake it in
            tensors["lokr_w2"] = tensors["lokr_w2"] * float(layer.scaling["default"])
        return tensors, float(layer.alpha["default"])
    if kind == "ia3":
        scale = param("ia3_l")
        return {"weight": (scale - 1.0).flatten(),
                "on_input": torch.tensor(bool(layer.is_feedforward))}, None
    return None


def adapters_to_lora_file(modules: dict[str, torch.nn.Module], kind: str, metadata: dict[str, str] | None = None):
    """peft-injected components -> `LoraFile` with component-prefixed diffusers module targets."""
    from animegen.models.lora import LoraFile, LoraModule

    out: dict[str, Any] = {}
    for component, module in modules.items():
        for name, layer in _peft_layers(module):
            target = f"{component}.{name}"
            with plain_weight(layer.get_base_layer()):  # an fp8-stored base (model.base_dtype) merges upcast
                w0, dw, db = _merged_delta(layer)
            lm = None
            native = _native_tensors(layer, kind)
            if native is not None and db is None:
                tensors, alpha = native
                try:
                    candidate = LoraModule(target, _LORA_KIND.get(kind, kind), tensors, alpha)
                    if torch.allclose(candidate.delta_weight(w0.float().cpu()), dw.cpu(), rtol=1e-4, atol=1e-6):
                        lm = candidate
                except (ValueError, RuntimeError):
                    lm = None
            if lm is None:
                tensors = {"diff": dw.cpu()}
                if db is not None:
                    tensors["diff_b"] = db.cpu()
                lm = LoraModule(target, "full", tensors, None)
            out[target] = lm
    return LoraFile(out, dict(metadata or {}))


def kohya_metadata(config: TrainConfig, *, family: ModelFamily | str, steps: int, num_images: int,
                   started_at: float, tag_frequency: dict[str, dict[str, int]] | None = None,
                   v_prediction: bool | None = None, zero_terminal_snr: bool | None = None) -> dict[str, str]:
    """The `ss_*` header keys kohya sd-scripts writes, so A1111/Civitai tools show the training settings.

    The network keys come from `models.lora.kohya_header.network_metadata`, the builder `write_lora`
    uses too, given what was trained (kind, rank, alpha); the training keys are added on top.
    `family` (a `ModelFamily` or its name) gives ``ss_base_model_version``. `v_prediction` and
    `zero_terminal_snr` are what the run trained with (the trainer's noise scheduler, which may have
    inherited them from the base); left None, the config's explicit values are recorded.
    """
    from animegen.models.lora.kohya_header import network_metadata

    a, o, d, t = config.adapter, config.optimizer, config.data, config.train
    family = get_family(family)
    conv = a.kind == "locon" or a.targets == "attention_ff_conv"
    if v_prediction is None:
        v_prediction = config.model.prediction_type == "v_prediction"
    if zero_terminal_snr is None:
        zero_terminal_snr = bool(config.model.zero_terminal_snr)
    meta = network_metadata(
        kinds=[_LORA_KIND.get(a.kind, a.kind)], dim=a.rank, alpha=a.alpha, family=family,
        v_prediction=v_prediction, conv_dim=a.rank if conv else None, conv_alpha=a.alpha if conv else None,
        dora=a.kind == "dora", network_args={"dropout": a.dropout, "targets": a.targets})
    meta |= {
        "ss_network_dropout": str(a.dropout),
        "ss_v_parameterization": str(v_prediction),
        "ss_zero_terminal_snr": str(zero_terminal_snr),
        "ss_sd_model_name": Path(config.model.base).name or config.model.base,
        "ss_output_name": config.export.name,
        "ss_learning_rate": str(o.lr),
        "ss_unet_lr": str(o.lr if a.train_unet else 0),
        "ss_text_encoder_lr": str((o.text_encoder_lr or o.lr) if a.train_text_encoder else 0),
        "ss_optimizer": o.name,
        "ss_lr_scheduler": o.scheduler,
        "ss_lr_warmup_steps": str(o.warmup_steps),
        "ss_max_grad_norm": str(o.max_grad_norm),
        "ss_max_train_steps": str(t.max_steps),
        "ss_steps": str(steps),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_mixed_precision": t.mixed_precision,
        "ss_seed": str(t.seed),
        "ss_num_train_images": str(num_images),
        "ss_resolution": f"({d.resolution}, {d.resolution})",
        "ss_enable_bucket": "True",
        "ss_bucket_no_upscale": str(d.bucket_no_upscale),
        "ss_min_bucket_reso": str(d.min_bucket_side),
        "ss_max_bucket_reso": str(d.max_bucket_side),
        "ss_shuffle_caption": str(d.shuffle_tags),
        "ss_keep_tokens": str(d.keep_tokens),
        "ss_max_token_length": "None" if d.max_chunks == 1 else str(75 * d.max_chunks),
        "ss_clip_skip": "None" if d.clip_skip == 1 else str(d.clip_skip),
        "ss_caption_dropout_rate": str(d.caption_dropout),
        "ss_flip_aug": str(d.random_flip),
        "ss_random_crop": str(d.random_crop),
        "ss_noise_offset": str(config.loss.noise_offset),
        "ss_min_snr_gamma": str(config.loss.min_snr_gamma),
        "ss_multires_noise_iterations": str(config.loss.multires_noise_iterations),
        "ss_multires_noise_discount": str(config.loss.multires_noise_discount),
        "ss_ip_noise_gamma": str(config.loss.ip_noise_gamma),
        "ss_debiased_estimation": str(config.loss.debiased_estimation_loss),
        "ss_caption_tag_dropout_rate": str(d.caption_tag_dropout_rate),
        "ss_fp8_base": str(config.model.base_dtype == "fp8"),
        "ss_loss_type": config.loss.type,
        "ss_huber_c": str(config.loss.huber_c),
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_tag_frequency": json.dumps(tag_frequency or {}),
        "ss_training_comment": "trained with animegen",
    }
    return meta


def tag_frequency(items) -> dict[str, dict[str, int]]:
    """kohya's `ss_tag_frequency`: per dataset, how often each caption tag occurs."""
    from animegen.prompts.tags import split_tags

    freq: dict[str, dict[str, int]] = {}
    for it in items:
        bucket = freq.setdefault(f"dataset_{it.dataset}", {})
        for tag in split_tags(it.captions[0]):
            bucket[tag] = bucket.get(tag, 0) + 1
    return freq


def export_adapters(modules: dict[str, torch.nn.Module], config: TrainConfig, out_dir: Path,
                    metadata: dict[str, str]) -> dict[str, Path]:
    from animegen.models.lora import write_lora

    lora = adapters_to_lora_file(modules, config.adapter.kind, metadata)
    dtype = dtype_by_name(config.export.dtype)
    for m in lora.modules.values():
        m.tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in m.tensors.items()}
    written: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in config.export.formats:
        if fmt == "diffusers" and config.adapter.kind not in DIFFUSERS_LORA_KINDS:
            continue  # a file named for diffusers that diffusers cannot load; `export_summary` says so
        suffix = "" if fmt == "kohya" else "_diffusers"
        path = out_dir / f"{config.export.name}{suffix}.safetensors"
        write_lora(lora, path, format=fmt, metadata=metadata)
        written[fmt] = path
    return written


def export_summary(config: TrainConfig, written: dict[str, Path]) -> list[str]:
    """The trainer's final lines: each written file and what loads it, and each requested format not written."""
    kind = config.adapter.kind
    lines = [f"{fmt}: {path} (loads in {LOADERS.get((kind, fmt), 'animegen')})" for fmt, path in written.items()]
    if "diffusers" in config.export.formats and "diffusers" not in written and kind in _NO_DIFFUSERS_LOADER:
        lines.append(f"diffusers: not written: diffusers' load_lora_weights {_NO_DIFFUSERS_LOADER[kind]}; use the "
                     "kohya file above (docs/training-exports.md)")
    return lines


def export_full(pipe, config: TrainConfig, out_dir: Path, metadata: dict[str, str]) -> dict[str, Path]:
    dtype = dtype_by_name(config.export.dtype)
    written: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if "diffusers" in config.export.formats:
        folder = out_dir / f"{config.export.name}_diffusers"
        with atomic_dir(folder) as tmp:  # complete or absent, files with the umask's mode
            pipe.save_pretrained(tmp, safe_serialization=True)
        written["diffusers"] = folder
    if "single_file" in config.export.formats or "kohya" in config.export.formats:
        from animegen.models.single_file import save_single_file

        path = out_dir / f"{config.export.name}.safetensors"
        save_single_file(pipe, path, dtype=dtype, metadata=metadata)
        written["single_file"] = path
    return written
