"""Attach trainable adapters (peft) or unfreeze weights for a full fine-tune.

Target presets follow kohya/LyCORIS practice: `cross_attention` = only the cross-attention key/value
projections, which read the text (the adapter then changes images only through the prompt, the least
drift for prompts without the trigger); `attention` = the q/k/v/out projections of every
attention layer; `attention_ff` adds the transformer blocks' feed-forward and proj_in/proj_out;
`attention_ff_conv` (and adapter kind `locon`) adds the ResNet and resampler convolutions; IA3 follows
the (IA)^3 paper (keys, values, feed-forward hidden activations). Text
encoders get the same treatment on their own q/k/v/out (and fc1/fc2) projections.

fp8 base (`model.base_dtype = "fp8"`, kohya's `--fp8_base`): kohya stores the frozen UNet in
float8_e4m3fn (`unet.to(torch.float8_e4m3fn)`; `--fp8_base_unet` leaves the text encoders in the mixed
precision dtype, as here) and computes in bf16/fp16, relying on autocast to upcast each weight per op, so
it needs mixed precision. `store_frozen_fp8` keeps the frozen nn.Linear / nn.Conv2d weights of a module in
float8_e4m3fn (a quarter of fp32's bytes; biases, norms and the adapter's own weights stay in their dtype)
and upcasts each one to the compute dtype whenever it is read (`torch.nn.utils.parametrize`), so it also
works without autocast (fp32 compute on CPU) and code that reads `base_layer.weight` outside the
forward (DoRA's weight norm) sees the upcast weight too. The weights stay `Parameter`s (frozen): DDP
broadcasts them once, not every step as it does buffers. The rounding costs precision: e4m3 keeps 3
mantissa bits (a relative step of 2^-4) and weights below 2^-6 become subnormal; the tiny UNet's output
moves by 8-10% relative L2 with plain weights rounded by 2.6% RMS (random tiny weights; tested bound 30%,
tests/train/test_fp8_base.py). The upcast copy of each weight is transient, but a
forward kept for the backward holds on to it as it holds activations (gradient checkpointing frees both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from animegen.models.family import family_of
from animegen.train.config import AdapterSection

UNET_CROSS_ATTN = ["attn2.to_k", "attn2.to_v"]  # where the text enters: changes follow the prompt
UNET_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_FF = ["ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
UNET_CONV = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
TE_FF = ["fc1", "fc2"]
ADAPTER_PARAM_MARKERS = ("lora_", "hada_", "lokr_", "ia3_")


def unet_targets(cfg: AdapterSection) -> list[str]:
    if cfg.targets == "cross_attention" and cfg.kind != "locon":
        return list(UNET_CROSS_ATTN)
    if cfg.kind == "ia3":  # (IA)^3 proper: scale keys, values and the feed-forward's hidden activations
        return ["to_k", "to_v"] + (["ff.net.2"] if cfg.targets != "attention" else [])
    targets = list(UNET_ATTN)
    if cfg.targets in ("attention_ff", "attention_ff_conv") or cfg.kind == "locon":
        targets += UNET_FF
    if cfg.targets == "attention_ff_conv" or cfg.kind == "locon":
        targets += UNET_CONV
    return targets


def text_encoder_targets(cfg: AdapterSection) -> list[str]:
    if cfg.kind == "ia3":
        return ["k_proj", "v_proj"] + (["fc2"] if cfg.targets != "attention" else [])
    return TE_ATTN + (TE_FF if cfg.targets != "attention" else [])


def peft_config(cfg: AdapterSection, targets: list[str], feedforward: list[str]):
    """The peft config of one component for the configured adapter kind."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    kind = cfg.kind
    if kind in ("lora", "locon", "dora"):
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          init_lora_weights=True, use_dora=kind == "dora")
    if kind == "loha":
        return LoHaConfig(r=cfg.rank, alpha=cfg.alpha, module_dropout=cfg.dropout, target_modules=targets,
                          init_weights=True)
    if kind == "lokr":
        return LoKrConfig(r=cfg.rank, alpha=cfg.alpha, module_dropout=cfg.dropout, target_modules=targets,
                          init_weights=True)
    if kind == "ia3":
        ff = [t for t in feedforward if t in targets]
        return IA3Config(target_modules=targets, feedforward_modules=ff, init_ia3_weights=True)
    raise ValueError(f"adapter.kind {kind!r} has no peft adapter")


def attach(model: torch.nn.Module, cfg: AdapterSection, targets: list[str], feedforward: list[str]) -> None:
    """Inject the adapter into `model` in place and leave only adapter weights trainable."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(cfg, targets, feedforward), model, adapter_name="default")
    for name, p in model.named_parameters():
        p.requires_grad_(any(m in name for m in ADAPTER_PARAM_MARKERS))


def prepare_models(pipe, cfg: AdapterSection, gradient_checkpointing: bool) -> dict[str, torch.nn.Module]:
    """Set up every component for training; returns {component name: module} of those that train."""
    text_encoders = family_of(pipe).components
    for name in ("vae", "unet", *text_encoders):
        getattr(pipe, name).requires_grad_(False)
    trained: dict[str, torch.nn.Module] = {}
    if cfg.kind == "full":
        if cfg.train_unet:
            pipe.unet.requires_grad_(True)
            trained["unet"] = pipe.unet
        if cfg.train_text_encoder:
            for n in text_encoders:
                getattr(pipe, n).requires_grad_(True)
                trained[n] = getattr(pipe, n)
    else:
        if cfg.train_unet:
            attach(pipe.unet, cfg, unet_targets(cfg), ["ff.net.2"])
            trained["unet"] = pipe.unet
        if cfg.train_text_encoder:
            for n in text_encoders:
                attach(getattr(pipe, n), cfg, text_encoder_targets(cfg), ["fc2"])
                trained[n] = getattr(pipe, n)
    if gradient_checkpointing:
        if "unet" in trained:
            pipe.unet.enable_gradient_checkpointing()
        for n in text_encoders:
            if n in trained:
                getattr(pipe, n).gradient_checkpointing_enable()
    return trained


class _Upcast(torch.nn.Module):
    """A parametrization: the stored (fp8) weight, read as the compute dtype."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


def store_frozen_fp8(module: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Store the frozen nn.Linear / nn.Conv2d weights of `module` as float8_e4m3fn, read as `compute_dtype`.

    Trainable weights (the adapter's) are left alone. Returns the number of weights converted."""
    from torch.nn.utils import parametrize

    count = 0
    for sub in list(module.modules()):
        if not isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) or parametrize.is_parametrized(sub, "weight"):
            continue
        if sub.weight.requires_grad:
            continue
        sub.weight = torch.nn.Parameter(sub.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
        # unsafe: the parametrization changes the dtype on purpose
        parametrize.register_parametrization(sub, "weight", _Upcast(compute_dtype), unsafe=True)
        count += 1
    return count


@contextmanager
def plain_weight(layer: torch.nn.Module) -> Iterator[None]:
    """Within the block, an fp8-stored `layer.weight` is an ordinary Parameter of the compute dtype (peft's
    `merge` writes into `weight.data` in place, which an upcast copy would drop); stored back in fp8 after
    (exactly, when the block restored the values: every fp8 value is exact in fp32/bf16/fp16). One layer at a
    time, so an export never holds more than one upcast weight. Other layers pass through unchanged."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(layer, "weight"):
        yield
        return
    dtype = layer.parametrizations.weight[0].dtype
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)  # the fp8 Parameter again
    layer.weight = torch.nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        store_frozen_fp8(layer, dtype)


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def adapter_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the trained (adapter, or all for full fine-tunes) weights of a module, by parameter name."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
