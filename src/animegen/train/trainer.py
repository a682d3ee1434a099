"""The training loop, run through `accelerate.Accelerator` so `accelerate launch` scales it out.

`train.batch_size` is per process; each step the data stream yields one global batch
(batch_size x processes) and process r takes its slice. Every random choice is keyed by (seed, step,
slot in the global batch), and the global torch RNG (adapter dropout) is reseeded per step, so a run
is a pure function of its config: resumed runs and N-process runs reproduce the single uninterrupted run.

One optimizer step is `Trainer.train_step`; what else happens after a step is decided by the named
"is it due?" predicates below (`needs_validation`, `needs_samples`, `needs_checkpoint`, `needs_log`),
pure functions of (config, step) as in OneTrainer, so the schedule is testable without a model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from animegen.core.files import atomic_write
from animegen.core.seeds import derive_seed
from animegen.models.family import family_of
from animegen.models.loading import dtype_by_name
from animegen.prompts.encode import final_layer_norm
from animegen.train import adapters as adapters_mod
from animegen.train import text_outputs
from animegen.train.cache import LatentCache, TextEmbeddingCache, module_fingerprint
from animegen.train.checkpoint import (
    last_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    non_finite,
    prepare_output_dir,
    save_checkpoint,
)
from animegen.train.config import TrainConfig, stage_config, stage_names
from animegen.train.data import (
    DataSummary,
    TrainData,
    make_caption,
    open_item_image,
    resize_to_bucket,
    step_rng,
)
from animegen.train.loss import diffusion_loss, draw_noise, make_noise_scheduler, sample_generator, target_for
from animegen.train.optim import make_lr_scheduler, make_optimizer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the trained weights became NaN/inf; the run stopped without touching the last good
    checkpoint (the newest one whose weights are finite: weights can overflow before the loss does)."""


def _reseed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the global generator the step's random ops draw from. On CPU only the CPU one: `torch.manual_seed`
    also queues a seed for every uninitialised accelerator, formatting a stack trace each time (a third of a
    millisecond per step for nothing)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _every(every: int, step: int) -> bool:
    return bool(every) and step > 0 and step % every == 0


def needs_validation(config: TrainConfig, step: int) -> bool:
    """Validation loss every `validation.every_steps` steps and after the last step (0 = never)."""
    every = config.validation.every_steps
    return _every(every, step) or (bool(every) and step == config.train.max_steps)


def needs_samples(config: TrainConfig, step: int) -> bool:
    """Preview images every `sample.every_steps` steps, when there are prompts (0 = never)."""
    return bool(config.sample.prompts) and _every(config.sample.every_steps, step)


def needs_checkpoint(config: TrainConfig, step: int) -> bool:
    """A checkpoint every `checkpoint.every_steps` steps (0 = never; the end of a run is the export)."""
    return _every(config.checkpoint.every_steps, step)


def needs_log(config: TrainConfig, step: int) -> bool:
    """Scalars to TensorBoard every `log.every_steps` steps and after the last step."""
    return _every(config.log.every_steps, step) or step == config.train.max_steps


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)
    exported: dict[str, Path] = field(default_factory=dict)
    samples: list[Path] = field(default_factory=list)
    finished: bool = True
    dataset_summary: DataSummary | None = None  # what was printed before step 1


class _CallThrough:
    """A text encoder for `encode_text`: calls go through the DDP wrapper (so gradients are synchronised),
    attribute reads (`config`, `text_model`, parameters) go to the bare module."""

    def __init__(self, call, module: torch.nn.Module):
        self._call, self._module = call, module

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def load_base(config: TrainConfig, device: str):
    """The base pipeline in float32 (trainable weights need full precision; frozen parts are cast later)."""
    from animegen.models.loading import load_pipeline

    return load_pipeline(config.model.base, vae=config.model.vae, device=device, dtype=torch.float32,
                         allow_pickle=config.model.allow_pickle)


class Trainer:
    def __init__(self, config: TrainConfig, *, accelerator=None):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.state import AcceleratorState

        self.config = config
        if accelerator is None:
            # accelerate keeps one process-wide state and refuses another mixed precision for a second run
            # in the same process (a notebook, stages, tests); each run starts its own. The distributed
            # part (PartialState: process group, rank) is kept.
            AcceleratorState._reset_state(reset_partial_state=False)
        t = config.train
        # Trained text encoders have layers the conditioning never reads (SDXL: TE1's last layer; clip
        # skip > 1), whose weights get no gradient; DDP must be told, or it waits for them forever.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=config.adapter.train_text_encoder)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
            cpu=t.device == "cpu", step_scheduler_with_optimizer=False, kwargs_handlers=[ddp])
        self.device = self.accelerator.device
        self.output_dir = Path(t.output_dir)
        self.weight_dtype = dtype_by_name("fp32" if t.mixed_precision == "no" else t.mixed_precision)
        if self.device.type == "cpu":
            self.weight_dtype = torch.float32 if t.mixed_precision != "bf16" else torch.bfloat16

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        if cfg.optimizer.fused_backward and self.accelerator.num_processes > 1:
            from animegen.train.config import ConfigError

            raise ConfigError(f"optimizer.fused_backward: {self.accelerator.num_processes} processes average "
                              "their gradients after the backward pass, and the fused step runs inside it; "
                              "train in one process or set optimizer.fused_backward = false")
        self.data = TrainData.load(cfg.data, cfg.train.seed)
        self.pipe = load_base(cfg, str(self.device))
        self.family = family_of(self.pipe)
        self.is_sdxl = self.family.is_sdxl  # pooled text + size/crop conditioning
        self.noise_scheduler = make_noise_scheduler(self.pipe.scheduler.config, cfg.model.prediction_type,
                                                    cfg.model.zero_terminal_snr)
        if cfg.model.prediction_type != "auto" or cfg.model.zero_terminal_snr is not None:
            # sampling must use the same parameterisation/betas the model is being trained for
            self.pipe.scheduler = self.pipe.scheduler.from_config(
                self.pipe.scheduler.config, prediction_type=self.noise_scheduler.config.prediction_type,
                rescale_betas_zero_snr=self.noise_scheduler.config.rescale_betas_zero_snr)
        torch.manual_seed(cfg.train.seed)  # adapter initialisation (e.g. LoRA's kaiming A) is then reproducible
        self.trained = adapters_mod.prepare_models(self.pipe, cfg.adapter, cfg.train.gradient_checkpointing)
        full = cfg.adapter.kind == "full"
        for name in ("vae", "unet", *self.family.components):
            module = getattr(self.pipe, name, None)
            if module is None:
                continue
            if name not in self.trained or not full:
                dtype = self.weight_dtype if name != "vae" or not module.config.get("force_upcast") else torch.float32
                if module.dtype != dtype:
                    module.to(self.device, dtype=dtype)
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            if name.startswith("text_encoder") and name in self.trained and not full:
                # accelerate hands a prepared model's outputs back in fp32, and the final LayerNorm runs
                # after the forward (clip skip), outside it: fp32 weights take either input on CPU and GPU
                final_layer_norm(module).float()
        if cfg.model.base_dtype == "fp8":  # kohya's --fp8_base: after the casts above, which would undo it
            adapters_mod.store_frozen_fp8(self.pipe.unet, self.weight_dtype)
        vae = self.pipe.vae
        self.latent_cache = LatentCache(
            (Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.output_dir / "cache" / "latents")
            if cfg.data.cache_latents and not cfg.data.random_crop else None,
            module_fingerprint(vae))
        frozen_text = not cfg.adapter.train_text_encoder
        self.text_cache = TextEmbeddingCache(frozen_text and cfg.data.cache_text_embeddings)
        groups = []
        for name, module in self.trained.items():
            lr = cfg.optimizer.lr if name == "unet" else (cfg.optimizer.text_encoder_lr or cfg.optimizer.lr)
            groups.append({"params": adapters_mod.trainable_parameters(module), "lr": lr})
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = make_optimizer(groups, cfg.optimizer)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg.optimizer, cfg.train.max_steps)
        self.ema = None
        if cfg.adapter.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.adapter.ema_decay)
        names = list(self.trained)
        # a fused-backward optimizer steps in the gradient hooks: accelerate's wrapper (its step under
        # accumulation, the fp16 scaler) has nothing to wrap
        fused = cfg.optimizer.fused_backward
        objects = [*(self.trained[n] for n in names), *([] if fused else [self.optimizer])]
        prepared = self.accelerator.prepare(*objects)
        prepared = prepared if len(objects) > 1 else (prepared,)  # one object comes back bare
        self.wrapped = dict(zip(names, prepared[:len(names)], strict=True))
        self.optimizer = self.optimizer if fused else prepared[-1]
        self.unet_eval = self.pipe.unet
        self.unet_train = self.wrapped.get("unet", self.pipe.unet)
        self.pipe.unet.train("unet" in self.trained)
        for n in self.family.components:
            getattr(self.pipe, n).train(n in self.trained)
        self.pipe.vae.eval()

    # ------------------------------------------------------------------ data -> tensors
    @torch.no_grad()
    def _encode_image(self, item, flip: bool, rng=None) -> tuple[torch.Tensor, tuple[int, int]]:
        pixels, crop = resize_to_bucket(open_item_image(item), item.bucket, rng, flip)
        vae = self.pipe.vae
        dist = vae.encode(pixels[None].to(self.device, vae.dtype)).latent_dist
        latent = dist.mean[0].float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latent - shift) * vae.config.scaling_factor).cpu(), crop

    def latent_for(self, item, flip: bool, rng) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.config.data.random_crop:
            return self._encode_image(item, flip, rng)
        return self.latent_cache.get(item, flip, self._encode_image)

    def precache(self) -> None:
        """Encode every image once (main process first, so others only read the shared cache)."""
        if self.latent_cache.root is None:
            return
        from tqdm.auto import tqdm

        items = self.data.train + self.data.val
        flips = (False, True) if self.config.data.random_flip else (False,)
        with self.accelerator.main_process_first():
            todo = [(it, f) for it in items for f in flips]
            for it, f in tqdm(todo, desc="caching latents", disable=not self.accelerator.is_main_process
                              or not self.config.log.progress):
                self.latent_cache.get(it, f, self._encode_image)

    def _encode_text_uncached(self, caption: str) -> tuple[torch.Tensor, ...]:
        """One caption through the prompt encoder generation uses (75-token chunks, clip skip), with the
        (possibly DDP-wrapped, trained) text encoders; gradients flow when they train. The caption is plain
        text (every character to the tokenizer, as kohya) unless `data.weighted_captions`: then A1111
        emphasis applies, as in a prompt. Long captions chunk as generation chunks a prompt (A1111's comma
        back-tracking), not at kohya's fixed 75-token cuts, so a caption and the same prompt match."""
        from animegen.prompts.encode import encode_text

        pipe, d = self.pipe, self.config.data
        names = self.family.components
        encoders = [_CallThrough(self.wrapped.get(n, getattr(pipe, n)), getattr(pipe, n)) for n in names]
        tokenizers = [getattr(pipe, te.tokenizer) for te in self.family.text_encoders]
        emphasis = d.emphasis if d.weighted_captions else "None"  # "None": no parsing at all, as A1111
        out = encode_text(tokenizers, encoders, [caption], clip_skip=d.clip_skip, emphasis=emphasis,
                          arch=self.family.name, max_chunks=d.max_chunks)
        return (out.embeds[0],) if out.pooled is None else (out.embeds[0], out.pooled[0])

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 77 * chunks, C) hidden states and SDXL pooled; shorter captions are padded with the
        encoding of an empty chunk, exactly as `encode_text` pads a batch (so caching per caption is exact)."""
        outs = [self.text_cache.get(c, self._encode_text_uncached) for c in captions]
        longest = max(o[0].shape[0] for o in outs)
        hidden = []
        for o in outs:
            h = o[0]
            if h.shape[0] < longest:
                empty = self.text_cache.get("", self._encode_text_uncached)[0]
                h = torch.cat([h, empty.repeat((longest - h.shape[0]) // empty.shape[0], 1)])
            hidden.append(h)
        pooled = torch.stack([o[1] for o in outs]) if self.is_sdxl else None
        return torch.stack(hidden), pooled

    def predict(self, noisy, timesteps, captions, items, crops, unet=None) -> torch.Tensor:
        """The UNet's output for a batch; `unet` defaults to the bare (not DDP-wrapped) one, for evaluation."""
        unet = self.unet_eval if unet is None else unet
        # the text encoders run under autocast too: with mixed precision their frozen weights are
        # bf16/fp16 while trained adapters (and their outputs) are fp32
        with self.accelerator.autocast():
            hidden, pooled = self.encode_text(captions)
            kwargs = {}
            if self.is_sdxl:  # sizes stay exact in fp32 (bf16 rounds e.g. 1517 to 1520)
                time_ids = [[it.size[1], it.size[0], top, left, it.bucket[1], it.bucket[0]]
                            for it, (top, left) in zip(items, crops, strict=True)]
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.tensor(
                    time_ids, device=self.device, dtype=torch.float32)}
            return unet(noisy, timesteps, hidden, **kwargs).sample

    # ------------------------------------------------------------------ state
    def trained_weights(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{k}": v for n, m in self.trained.items() for k, v in adapters_mod.adapter_state_dict(m).items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        named = {f"{n}.{k}": p for n, m in self.trained.items() for k, p in m.named_parameters() if p.requires_grad}
        missing = named.keys() - weights.keys()
        if missing:
            raise ValueError(f"checkpoint does not match this config: {len(missing)} trained weights missing "
                             f"(e.g. {min(missing)}); was adapter.* changed since it was written?")
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(weights[k])

    def stopped(self, what: str, step: int) -> NonFiniteLossError:
        """The error that ends a run gone non-finite, naming the checkpoint to go back to."""
        good = last_good_checkpoint(self.output_dir)
        where = f"the last good checkpoint is {good}" if good else "no good checkpoint was written yet"
        return NonFiniteLossError(
            f"{what} at step {step}; stopped the run ({where}). Lower optimizer.lr, use mixed_precision = "
            "'bf16' instead of 'fp16', or set optimizer.max_grad_norm, then `--resume`.")

    def check_finite(self, step: int) -> dict[str, torch.Tensor]:
        """The trained weights, or `NonFiniteLossError` when any is NaN/inf (never save or export those)."""
        weights = self.trained_weights()
        bad = non_finite(weights)
        if bad:
            raise self.stopped(f"trained weights became non-finite ({len(bad)} tensors, e.g. {bad[0]})", step)
        return weights

    def save(self, step: int) -> Path | None:
        weights = self.check_finite(step)  # on every process, so all stop together
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.output_dir, step, weights, self.optimizer.state_dict(),
                                   self.lr_scheduler.state_dict(), {"config": self.config.model_dump(mode="json")},
                                   self.config.checkpoint.keep_last,
                                   self.ema.state_dict() if self.ema is not None else None)
        self.accelerator.wait_for_everyone()
        return path

    def restore(self) -> int:
        ckpt = load_checkpoint(list_checkpoints(self.output_dir)[-1])  # `run` checked that there is one
        written = bool(ckpt["state"].get("config", {}).get("optimizer", {}).get("fused_backward", False))
        if written != self.config.optimizer.fused_backward:
            from animegen.train.config import ConfigError

            raise ConfigError(f"--resume: the checkpoint was written with optimizer.fused_backward = "
                              f"{str(written).lower()} (its optimizer state has that layout); resume with the same")
        self.load_weights(ckpt["weights"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["torch_rng"])
        return ckpt["step"]

    # ------------------------------------------------------------------ loop
    def micro_batch(self, micro: int, global_batch: list[int]):
        acc, cfg = self.accelerator, self.config
        b = cfg.train.batch_size
        slots = range(acc.process_index * b, (acc.process_index + 1) * b)
        items, captions, latents, crops, gens = [], [], [], [], []
        for slot in slots:
            item = self.data.train[global_batch[slot]]
            rng = step_rng(cfg.train.seed, micro, slot)
            flip = cfg.data.random_flip and rng.random() < 0.5
            latent, crop = self.latent_for(item, flip, rng)
            items.append(item)
            captions.append(make_caption(item, cfg.data, rng))
            latents.append(latent)
            crops.append(crop)
            gens.append(sample_generator(cfg.train.seed, micro, slot))
        return items, captions, torch.stack(latents), crops, gens

    def loss_for(self, micro: int, global_batch: list[int]) -> torch.Tensor:
        items, captions, latents, crops, gens = self.micro_batch(micro, global_batch)
        noise, noise_in, timesteps = draw_noise(tuple(latents.shape[1:]), gens,
                                                self.noise_scheduler.config.num_train_timesteps, self.config.loss)
        latents, noise, timesteps = latents.to(self.device), noise.to(self.device), timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise_in.to(self.device), timesteps)  # ip_noise_gamma
        pred = self.predict(noisy, timesteps, captions, items, crops, unet=self.unet_train)
        target = target_for(self.noise_scheduler, latents, noise, timesteps)
        weights = None
        if any(it.is_reg for it in items):
            weights = torch.tensor([self.config.loss.prior_loss_weight if it.is_reg else 1.0 for it in items])
        return diffusion_loss(pred, target, timesteps, self.noise_scheduler, self.config.loss, weights)

    def train_step(self, step: int, micro_batches: list[tuple[int, list[int]]]) -> float:
        """Optimizer step number `step` over its (micro index, global batch) micro-batches; the mean loss.

        A NaN/inf loss raises `NonFiniteLossError` before the weights are touched."""
        acc, cfg = self.accelerator, self.config
        step_loss = 0.0
        for micro, batch in micro_batches:
            _reseed_global_rng(derive_seed("dropout", cfg.train.seed, micro, acc.process_index), self.device)
            with acc.accumulate(*self.wrapped.values()):
                loss = self.loss_for(micro, batch)
                mean_loss = acc.reduce(loss.detach(), "mean")
                if not torch.isfinite(mean_loss):
                    raise self.stopped(f"loss became {float(mean_loss)}", step)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optimizer.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, cfg.optimizer.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            step_loss += float(mean_loss) / len(micro_batches)
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.params)
        return step_loss

    def previews(self, step: int) -> list[Path]:
        """The sample images for `step`, under the training autocast (the dtype the weights were cast for:
        frozen bf16/fp16 parts next to fp32 adapters). A preview that fails is a logged warning, never
        the end of the run."""
        from animegen.train.sampling import write_samples

        cfg = self.config
        try:
            with self.accelerator.autocast(), text_outputs.encoders_on_device(self):
                return write_samples(self.pipe, cfg.sample, cfg.model.base, self.output_dir / "samples", step)
        except Exception as exc:  # noqa: BLE001 - a preview must not end a run that is training fine
            log.warning("sample preview at step %d failed, training continues: %s: %s", step,
                        type(exc).__name__, exc)
            return []

    def run(self, resume: bool = False, stop_at: int | None = None) -> TrainResult:
        from tqdm.auto import tqdm

        from animegen.train.sampling import validation_loss

        cfg, acc = self.config, self.accelerator
        prepare_output_dir(self.output_dir, resume=resume, overwrite=cfg.train.overwrite, clear=acc.is_main_process)
        acc.wait_for_everyone()
        self.setup()
        summary = self.data.summary()
        if acc.is_main_process:  # before the latents are cached: a wrong dataset shows before any work
            acc.print(summary.format())
            summary.log()
        start = self.restore() if resume else 0
        self.precache()
        if cfg.data.cache_text_encoder_outputs:
            text_outputs.cache_and_release(self)
        writer = None
        if cfg.log.tensorboard and acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.output_dir / "logs"))
        result = TrainResult(self.output_dir, start, dataset_summary=summary)
        started = time.time()
        accum = cfg.train.gradient_accumulation_steps
        global_bs = cfg.train.batch_size * acc.num_processes
        stream = self.data.batch_stream(global_bs, start * accum)
        bar = tqdm(total=cfg.train.max_steps, initial=start, desc="train", unit="step",
                   disable=not acc.is_main_process or not cfg.log.progress)
        step = start
        while step < cfg.train.max_steps:
            step += 1
            step_loss = self.train_step(step, [(micro, batch) for micro, _epoch, batch in islice(stream, accum)])
            result.losses.append(step_loss)
            lr = self.lr_scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if writer is not None and needs_log(cfg, step):
                writer.add_scalar("train/loss", step_loss, step)
                writer.add_scalar("train/lr", lr, step)
            if needs_validation(cfg, step) and self.data.val:
                if acc.is_main_process:
                    result.val_losses[step] = validation_loss(self, self.data.val)
                    if writer is not None:
                        writer.add_scalar("val/loss", result.val_losses[step], step)
                acc.wait_for_everyone()
            if needs_checkpoint(cfg, step):  # before the previews: a failing preview never costs the checkpoint
                self.save(step)
            if needs_samples(cfg, step):
                if acc.is_main_process:
                    result.samples += self.previews(step)
                acc.wait_for_everyone()
            if stop_at is not None and step >= stop_at and step < cfg.train.max_steps:
                if not needs_checkpoint(cfg, step):
                    self.save(step)
                result.step, result.finished = step, False
                bar.close()
                return result
        bar.close()
        result.step = step
        if writer is not None:
            writer.close()
        if self.ema is not None:
            self.ema.copy_to(self.params)
        self.check_finite(step)
        result.exported = self.export(started)
        return result

    def export(self, started: float) -> dict[str, Path]:
        from animegen.train.conventions import convention_metadata
        from animegen.train.export import export_adapters, export_full, kohya_metadata, tag_frequency

        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return {}
        cfg = self.config
        concept = [it for it in self.data.train if not it.is_reg]
        reg = [it for it in self.data.train if it.is_reg]
        trained_with = self.noise_scheduler.config  # the base's schedule unless the config overrode it
        # kohya counts images x repeats (a fractional weight: its expected showings, rounded)
        meta = kohya_metadata(cfg, family=self.family, steps=cfg.train.max_steps,
                              num_images=round(sum(it.repeats for it in concept)), started_at=started,
                              tag_frequency=tag_frequency(concept),
                              v_prediction=trained_with.prediction_type == "v_prediction",
                              zero_terminal_snr=bool(trained_with.rescale_betas_zero_snr))
        meta["ss_num_reg_images"] = str(round(sum(it.repeats for it in reg)))
        meta |= convention_metadata(cfg, concept, family=self.family,  # trigger words, preset, settings
                                    v_prediction=trained_with.prediction_type == "v_prediction")
        meta["ss_prior_loss_weight"] = str(cfg.loss.prior_loss_weight)
        out = self.output_dir / "export"
        if cfg.adapter.kind == "full":
            return export_full(self.pipe, cfg, out, meta)
        return export_adapters(self.trained, cfg, out, meta)


def _stage_done(output_dir: Path) -> bool:
    return (output_dir / "export" / "DONE").is_file()


def train(config: TrainConfig, resume: bool = False, *, stop_at: int | None = None) -> TrainResult:
    """Run a training config (all its stages); `stop_at` stops after that step with a checkpoint, as a
    preempted job would, so a later `resume=True` call finishes the run."""
    from animegen.train.config import ConfigError

    if not config.model.base:
        raise ConfigError("model.base is empty: set it to a hub id, a diffusers folder or a .safetensors file")
    if not config.stages:
        return Trainer(config).run(resume=resume, stop_at=stop_at)
    result = None
    base = config.model.base
    root = Path(config.train.output_dir)
    names = stage_names(config)
    if resume and not any(_stage_done(root / n) or list_checkpoints(root / n) for n in names):
        raise ConfigError(f"--resume: no stage under {root} has a checkpoint or a finished export to continue "
                          "from; run without --resume to start a new run")
    for i, name in enumerate(names):
        stage = stage_config(config, i)
        if len(names) > 1 and (stage.adapter.kind != "full" or "diffusers" not in stage.export.formats):
            raise ConfigError(f"stages[{i}]: multi-stage runs chain full fine-tunes through a diffusers folder; "
                              "set adapter.kind = 'full' and include 'diffusers' in export.formats")
        stage.train.output_dir = str(root / name)
        stage.model.base = base
        out = Path(stage.train.output_dir)
        if resume and _stage_done(out):
            result = TrainResult(out, stage.train.max_steps)
        else:
            # a stage not reached yet (no checkpoint) starts fresh; the run as a whole was checked above
            result = Trainer(stage).run(resume=resume and bool(list_checkpoints(out)), stop_at=stop_at)
            if not result.finished:
                return result
            atomic_write(out / "export" / "DONE", "ok")
        base = str(out / "export" / f"{stage.export.name}_diffusers")
    assert result is not None
    return result
