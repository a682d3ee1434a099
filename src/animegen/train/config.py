"""Typed training configuration, loaded from one TOML file.

Every option has exactly one name: the TOML key `optimizer.lr` is also the CLI override
`--set optimizer.lr=1e-4`. Validation (pydantic v2, `extra="forbid"`) happens before any model is
loaded, and every error names the offending key and, for choices, the valid values.

Settings that belong to the base model (`model.prediction_type`, `model.zero_terminal_snr`) are
"unset = inherit": left out (or "auto"), training follows the base, as kohya does for v-pred/ZTSNR
checkpoints read by A1111/Forge/ComfyUI; a value in the config overrides the base.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from animegen.core.errors import AnimegenError
from animegen.data.sidecar import CAPTION_EXTENSIONS
from animegen.train.select_config import CheckpointEvalSection

AdapterKind = Literal["lora", "locon", "loha", "lokr", "ia3", "dora", "full"]
TargetPreset = Literal["cross_attention", "attention", "attention_ff", "attention_ff_conv"]


EIGHT_BIT = ("adamw8bit", "paged_adamw8bit")
PER_TENSOR_OPTIMIZERS = ("adamw", "adafactor", *EIGHT_BIT)  # a tensor's update needs only its own gradient


class ConfigError(AnimegenError):
    """A bad configuration key or value; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    base: str = Field("", description="Hub id, diffusers folder or A1111 single .safetensors to fine-tune.")
    vae: str | None = None
    allow_pickle: bool = False
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = Field("auto", description=(
        "What the UNet predicts. 'auto' (the default) = the base model's own: its scheduler config "
        "(diffusers folder) or its `v_pred` marker key (single file, e.g. NoobAI-XL v-pred)."))
    zero_terminal_snr: bool | None = Field(None, description=(
        "Rescale the betas so the last timestep is pure noise (Lin et al. 2023). Unset (the default) = the "
        "base model's own: `rescale_betas_zero_snr` in its scheduler config or its `ztsnr` marker key; "
        "true/false overrides it."))
    base_dtype: Literal["auto", "fp8"] = Field("auto", description=(
        "How the frozen UNet's weights are stored while an adapter trains. 'auto' (the default) = the compute "
        "dtype (train.mixed_precision); 'fp8' = kohya's --fp8_base (--fp8_base_unet: text encoders untouched): "
        "its Linear/Conv2d weights in float8_e4m3fn, a quarter of fp32's bytes, upcast to the compute dtype "
        "per forward (small numeric changes). For adapters only; the adapter itself trains in fp32."))


class AdapterSection(_Section):
    kind: AdapterKind = "lora"
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: TargetPreset = "attention"
    train_unet: bool = True
    train_text_encoder: bool = False
    ema: bool = False
    ema_decay: float = Field(0.9999, gt=0.0, lt=1.0)


class OptimizerSection(_Section):
    name: Literal["adamw", "adamw8bit", "paged_adamw8bit", "prodigy", "adafactor"] = Field("adamw", description=(
        "adamw8bit / paged_adamw8bit: bitsandbytes' AdamW8bit / PagedAdamW8bit (kohya's names), both moments "
        "in one byte per element; paged state moves to host RAM under GPU memory pressure (on CPU = adamw8bit)."))
    min_8bit_size: int = Field(4096, ge=1, description=(
        "8-bit optimizers: tensors with fewer elements keep 32-bit moments (bitsandbytes' name and default)."))
    lr: float = Field(1e-4, ge=0)
    text_encoder_lr: float | None = Field(None, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    prodigy_d0: float = Field(1e-6, gt=0)
    prodigy_safeguard_warmup: bool = False
    prodigy_use_bias_correction: bool = True
    max_grad_norm: float = Field(1.0, ge=0)
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                       "polynomial"] = "constant_with_warmup"
    warmup_steps: int = Field(0, ge=0)
    fused_backward: bool = Field(False, description=(
        "Run each parameter's optimizer step inside the backward pass, as soon as its gradient is complete, "
        "and free that gradient (kohya's --fused_backward_pass): gradient memory is one tensor's instead of "
        "all of them, with the same update. For adamw and adafactor; needs optimizer.max_grad_norm = 0, "
        "train.gradient_accumulation_steps = 1, no fp16 and one process (each needs every gradient at once)."))


class LossSection(_Section):
    type: Literal["l2", "huber", "smooth_l1"] = "l2"
    huber_c: float = Field(0.1, gt=0)
    min_snr_gamma: float = Field(0.0, ge=0, description="0 turns min-SNR weighting off; 5 is the paper's value.")
    noise_offset: float = Field(0.0, ge=0)
    prior_loss_weight: float = Field(1.0, ge=0, description="Loss weight of samples from `is_reg` datasets (kohya's name).")
    multires_noise_iterations: int = Field(0, ge=0, description=(
        "Multi-resolution (pyramid) noise levels added to the noise, kohya's name; 0 = off, 6-10 typical."))
    multires_noise_discount: float = Field(0.3, gt=0, le=1, description=(
        "Weight ratio of each coarser pyramid level (kohya's name and default); 0.3-0.8 typical."))
    ip_noise_gamma: float = Field(0.0, ge=0, description=(
        "Input-perturbation noise (Ning et al. 2023, kohya's name): the UNet input is noised with "
        "noise + gamma * randn while the target stays noise; 0 = off, 0.1 is the paper's value."))
    debiased_estimation_loss: bool = Field(False, description=(
        "Weight each sample by 1/sqrt(SNR) (v-prediction: 1/(SNR+1)), SNR clamped at 1000 (kohya's name)."))
    min_timestep: int = Field(0, ge=0, description="Training timesteps are drawn uniformly in [min, max).")
    max_timestep: int | None = Field(None, ge=1, description=(
        "Exclusive upper end of the training timesteps; unset = the scheduler's num_train_timesteps (1000)."))

    @model_validator(mode="after")
    def _timestep_range(self) -> LossSection:
        if self.max_timestep is not None and self.min_timestep >= self.max_timestep:
            raise ValueError(f"loss.min_timestep ({self.min_timestep}) must be below loss.max_timestep "
                             f"({self.max_timestep}): timesteps are drawn in [min, max)")
        return self


class DatasetEntry(_Section):
    path: str
    kind: Literal["auto", "kohya", "manifest", "webdataset"] = "auto"
    repeats: int = Field(1, ge=1)
    weight: float = Field(1.0, gt=0)
    caption_extension: list[str] = Field(default_factory=lambda: list(CAPTION_EXTENSIONS), description=(
        "kohya folders: the caption file of `img.png` is `img<ext>`, the first of these that exists (one "
        "extension or a list; the leading dot may be left out, as in kohya). kohya's own default is "
        "`.caption`; both are looked for, `.txt` first as `animegen data ingest` reads sidecars."))
    caption_columns: list[str] = Field(default_factory=lambda: ["caption"])
    is_reg: bool = Field(False, description=(
        "A regularisation (prior-preservation) set, kohya's `reg_data_dir`: the base model's own images for a "
        "class prompt (e.g. '1girl'), captioned with it. Keeps prompts without the trigger where they were; "
        "its loss is scaled by loss.prior_loss_weight and it is never held out for validation."))

    @field_validator("caption_extension", mode="before")
    @classmethod
    def _extensions(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            if not v or not all(isinstance(e, str) and e.strip(".") for e in v):
                raise ValueError("give one file extension or a non-empty list, e.g. \".txt\" or [\".txt\", \".caption\"]")
            v = [e if e.startswith(".") else "." + e for e in v]
        return v


class DataSection(_Section):
    datasets: list[DatasetEntry] = Field(default_factory=list)
    resolution: int = Field(512, ge=64)
    bucket_step: int = Field(64, ge=8)
    min_bucket_side: int = Field(256, ge=8)
    max_bucket_side: int = Field(2048, ge=64)
    bucket_no_upscale: bool = False
    random_crop: bool = False
    random_flip: bool = False
    shuffle_tags: bool = False
    keep_tokens: int = Field(0, ge=0)
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)
    caption_tag_dropout_rate: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Drop each tag after the kept ones with this probability (kohya's name); the keep_tokens / "
        "keep_tokens_separator head and suffix are never dropped."))
    keep_tokens_separator: str = Field("", description=(
        "kohya's `|||`: in a caption `a, b ||| c, d ||| e`, the tags before it are kept in front and those "
        "after a second one at the end; only the middle is shuffled and dropped. Overrides keep_tokens for "
        "captions that contain it, and is removed from the caption. Empty = off."))
    caption_preset: str = "none"
    max_chunks: int = Field(3, ge=1, description=(
        "Captions are encoded like generation prompts (A1111): 75-token chunks, each its own 77-token pass. "
        "Longer captions are cut after this many chunks; 1 = kohya's default 75-token truncation, 2/3 = "
        "kohya's max_token_length 150/225. Default 3 so long tag captions train as they are prompted."))
    clip_skip: int = Field(1, ge=1, description="A1111 numbering (1 = no skip), as in `animegen generate`.")
    weighted_captions: bool = Field(False, description=(
        "Read captions as A1111 prompt syntax: `(tag:1.2)` weights, `\\(` escapes, BREAK (kohya's "
        "`--weighted_captions`). Off (the default), the text encoder sees exactly the caption's characters, "
        "so a tag like `skadi (arknights)` trains as written; typed later as a prompt it is `skadi \\(arknights\\)`."))
    emphasis: Literal["Original", "No norm", "Ignore", "None"] = Field("Original", description=(
        "With weighted_captions = true: how the weights are applied, as in generation."))
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    cache_text_encoder_outputs: bool = Field(False, description=(
        "Encode every caption before the first step and move the text encoders off the GPU (kohya's name): "
        "their memory is free for training. Needs frozen text encoders and no per-tag shuffling or dropout "
        "(data.shuffle_tags, data.caption_tag_dropout_rate); wildcards, alternative lines and caption "
        "dropout are fine (each possible caption is encoded once)."))
    cache_dir: str | None = None
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)


class TrainSection(_Section):
    output_dir: str = "runs/train"
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    device: str | None = None
    overwrite: bool = Field(False, description=(
        "Replace an earlier run's export and checkpoints in output_dir (CLI --overwrite); without it a "
        "second run into the same folder is refused."))


class SampleSection(_Section):
    every_steps: int = Field(0, ge=0)
    prompts: list[str] = Field(default_factory=list)
    negative_prompt: str = ""
    steps: int = Field(20, ge=1)
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    seed: int = 0
    width: int = Field(512, ge=64)
    height: int = Field(512, ge=64)


class ValidationSection(_Section):
    every_steps: int = Field(0, ge=0)
    seed: int = 1234
    timesteps: list[int] = Field(default_factory=lambda: [100, 300, 500, 700, 900])

    @field_validator("timesteps")
    @classmethod
    def _in_range(cls, v: list[int]) -> list[int]:
        if not v or any(t < 0 or t >= 1000 for t in v):
            raise ValueError("timesteps must be a non-empty list of integers in [0, 999]")
        return v


class CheckpointSection(_Section):
    every_steps: int = Field(0, ge=0)
    keep_last: int = Field(3, ge=1)


class ExportSection(_Section):
    name: str = "model"
    formats: list[Literal["kohya", "diffusers", "single_file"]] = Field(
        default_factory=lambda: ["kohya", "diffusers"])
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"


class LogSection(_Section):
    tensorboard: bool = True
    every_steps: int = Field(10, ge=1)
    progress: bool = True


class TrainConfig(_Section):
    """The whole run. `stages` (optional) run one after another, each a partial override of the rest."""

    model: ModelSection = Field(default_factory=ModelSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    loss: LossSection = Field(default_factory=LossSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    export: ExportSection = Field(default_factory=ExportSection)
    log: LogSection = Field(default_factory=LogSection)
    checkpoint_eval: CheckpointEvalSection = Field(default_factory=CheckpointEvalSection)
    stages: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.adapter.kind == "ia3" and self.adapter.targets == "attention_ff_conv":
            raise ValueError("adapter.targets: 'attention_ff_conv' is not supported by ia3; "
                             "choose 'attention' or 'attention_ff'")
        if self.data.cache_text_encoder_outputs:
            _check_cached_text_outputs(self)
        if self.model.base_dtype == "fp8" and self.adapter.kind == "full":
            raise ValueError("model.base_dtype: 'fp8' stores the frozen UNet for adapter training, and "
                             "adapter.kind = 'full' trains (and exports) the UNet's own weights; set "
                             "model.base_dtype = 'auto' or train an adapter (e.g. adapter.kind = 'lora')")
        if self.optimizer.name in EIGHT_BIT:
            _require_bitsandbytes()
        if self.optimizer.fused_backward:
            _check_fused_backward(self)
        if not (self.adapter.train_unet or self.adapter.train_text_encoder):
            raise ValueError("adapter.train_unet and adapter.train_text_encoder are both false: nothing to train")
        bad = [f for f in self.export.formats if f == "single_file" and self.adapter.kind != "full"]
        if bad:
            raise ValueError("export.formats: 'single_file' is for adapter.kind = 'full'; "
                             "use 'kohya' and/or 'diffusers' for adapters")
        for i, stage in enumerate(self.stages):
            try:
                stage_config(self, i)
            except ConfigError as exc:
                raise ValueError(f"stages[{i}]: {exc}") from None
        return self


def _check_cached_text_outputs(cfg: TrainConfig) -> None:
    """What encoding every caption ahead cannot serve (kohya refuses the same with cached outputs)."""
    d, problems = cfg.data, []
    if cfg.adapter.train_text_encoder:
        problems.append("adapter.train_text_encoder = true (a trained encoder's outputs change every step)")
    if d.shuffle_tags or d.caption_tag_dropout_rate:
        problems.append("data.shuffle_tags / data.caption_tag_dropout_rate (a new caption per showing)")
    if not d.cache_text_embeddings:
        problems.append("data.cache_text_embeddings = false (the cache it fills)")
    if problems:
        raise ValueError("data.cache_text_encoder_outputs: not with " + "; ".join(problems) +
                         "; change those or set data.cache_text_encoder_outputs = false")


def _check_fused_backward(cfg: TrainConfig) -> None:
    """What a step taken per parameter during the backward pass cannot do: anything that has to see every
    gradient before the first update (kohya refuses the same)."""
    o, t = cfg.optimizer, cfg.train
    if o.name not in PER_TENSOR_OPTIMIZERS:
        raise ValueError(f"optimizer.fused_backward: not with optimizer.name = {o.name!r} (prodigy estimates "
                         "one step size from all gradients; only adamw's, adamw8bit's and adafactor's update of "
                         "a tensor depends on that tensor alone); use one of those, or set "
                         "optimizer.fused_backward = false")
    if o.max_grad_norm > 0:
        raise ValueError("optimizer.fused_backward: optimizer.max_grad_norm clips by the norm of all gradients "
                         "together, and each step runs before the others exist; set optimizer.max_grad_norm = 0 "
                         "or optimizer.fused_backward = false")
    if t.gradient_accumulation_steps > 1:
        raise ValueError("optimizer.fused_backward: train.gradient_accumulation_steps > 1 keeps gradients "
                         "across backward passes, and the fused step frees them in the first; set "
                         "train.gradient_accumulation_steps = 1 (a larger train.batch_size) or "
                         "optimizer.fused_backward = false")
    if t.mixed_precision == "fp16":
        raise ValueError("optimizer.fused_backward: fp16's loss scaler checks every gradient for overflow "
                         "before any step; use train.mixed_precision = 'bf16' or 'no'")


def _require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("optimizer.name: the 8-bit optimizers need bitsandbytes, which is not installed; "
                         "`pip install \"animegen[8bit]\"` or use 'adamw' or 'adafactor'")


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            valid = _valid_keys(parent)
            msg = f"unknown key; valid keys here: {', '.join(valid)}"
        elif err["type"] == "literal_error":
            msg = f"invalid value {err.get('input')!r}; {msg}"
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def _valid_keys(loc: tuple) -> list[str]:
    model: Any = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        model = next((a for a in (ann, *inner) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)


def validate_config(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain data, turning pydantic errors into one ConfigError."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value). Values are read as TOML, else Python literals, else strings."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    return key.split("."), value


def set_key(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set a dotted key in nested dicts; unknown keys are caught by validation afterwards."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config (or start from `base`), apply `--set` overrides, validate."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; write one with "
                              "`animegen train init --preset NAME --out FILE`")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides or []:
        keys, value = parse_override(item)
        set_key(data, keys, value)
    return validate_config(data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def stage_config(config: TrainConfig, index: int) -> TrainConfig:
    """The effective config of stage `index`: the base config with that stage's table merged over it."""
    base = config.model_dump(exclude={"stages"})
    stage = dict(config.stages[index])
    stage.pop("name", None)
    merged = _deep_merge(base, stage)
    merged["stages"] = []
    return validate_config(merged)


def stage_names(config: TrainConfig) -> list[str]:
    return [str(s.get("name", f"stage{i + 1}")) for i, s in enumerate(config.stages)]
