"""Memory ledger (not a test): bytes of weights, gradients and optimizer state per training configuration.

Counted, not measured: real-size SD1.5 and SDXL (UNet, text encoders, VAE) are built on the meta device from
the shipped architecture configs (`animegen/models/configs`), the adapter is attached the way the trainer
attaches it (`train.adapters.attach`, same targets), and each byte is counted as the trainer keeps it:

- frozen weights at the base dtype (fp32 / bf16 / fp8 = 4 / 2 / 1 bytes); the VAE stays fp32 where its
  config says `force_upcast` (as `Trainer.setup` does); a full fine-tune's UNet is trained, not frozen;
- trained weights in fp32 (the trainer casts every trainable parameter to fp32), gradients the same;
  with `optimizer.fused_backward` (adamw / adafactor / adamw8bit) the gradients held at once are at most the
  largest trained tensor's (`*_fused_backward_*` columns; None for the optimizers it refuses);
- optimizer state as each optimizer allocates it on its first step: AdamW (torch) 2 fp32 moments + a
  4-byte step per tensor; Adafactor (transformers, no first moment as the trainer builds it) factored
  row + column second moments for tensors of ≥ 2 dims, a full one otherwise, and a 4-byte RMS; Prodigy `s`, `p0` (one
  number for a tensor that starts all zero, as peft's LoRA up weights), both moments; 8-bit AdamW
  (bitsandbytes) one byte per moment element and an fp32 absmax per 256-element block for tensors of at
  least 4096 elements (fp32 moments below), plus two shared 256-entry code books.

Activations are not counted: they depend on batch, resolution and attention kernel, and gradient
checkpointing changes only them (its column says which presets turn it on). `--check` tests the counting
against torch's CPU allocator (`torch.profiler`, `profile_memory=True`) on the tiny model's real `Trainer`:
the net bytes allocated by the first optimizer step (= optimizer state) and by the first backward pass
(= gradients: the profiler sees only frees of what it saw allocated, so the forward's saved activations,
allocated before it started, do not net out), next to the ledger's count for the same parameters.

    python bench/memory.py               # the ledger (JSON), seconds, no weights allocated
    python bench/memory.py --check       # + the allocator check on the tiny model (~1 min on one core)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB, MIB = 2**30, 2**20
BASE_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
METHODS = {  # name: adapter section as the presets set it (targets as in presets/*.toml)
    "lora-r16": {"kind": "lora", "rank": 16, "alpha": 16.0, "targets": "attention_ff"},
    "ia3": {"kind": "ia3", "targets": "attention_ff"},
    "full": {"kind": "full"},
}
OPTIMIZERS = ("adamw", "adafactor", "prodigy", "adamw8bit")
GRADIENT_CHECKPOINTING = {"sd15": "off in the presets", "sdxl": "on in character-lora-sdxl"}


def optimizer_state_bytes(name: str, params: list[tuple[str, tuple[int, ...]]]) -> int | None:
    """Bytes of optimizer state for fp32 parameters (name, shape) after the first step; None = not counted."""
    total = 0
    for pname, shape in params:
        n = math.prod(shape)
        if name == "adamw":
            total += 2 * 4 * n + 4  # exp_avg, exp_avg_sq, the step as a float32 tensor
        elif name == "adafactor":  # + the RMS it keeps per tensor as a 0-dim float32 tensor
            if len(shape) >= 2:
                total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + 4
            else:
                total += 4 * n + 4
        elif name in ("adamw8bit", "paged_adamw8bit"):  # bitsandbytes, min_8bit_size 4096, blocks of 256
            total += 2 * n + 2 * 4 * math.ceil(n / 256) if n >= 4096 else 2 * 4 * n
        elif name == "prodigy":
            starts_zero = "lora_B" in pname  # peft's LoRA up weights start at zero: p0 is then one number
            total += 4 * (3 * n + (1 if starts_zero else n))  # s, exp_avg, exp_avg_sq, p0
        else:
            return None
    if name in ("adamw8bit", "paged_adamw8bit") and any(math.prod(s) >= 4096 for _, s in params):
        total += 2 * 256 * 4  # the two dynamic-quantisation code books, shared by every tensor
    return total


def _attach(components: dict, method: str) -> None:
    from animegen.train import adapters
    from animegen.train.config import AdapterSection

    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    cfg = AdapterSection(**METHODS[method])
    if cfg.kind == "full":
        components["unet"].requires_grad_(True)
        return
    with torch.device("meta"):  # peft builds the adapter layers on the default device
        adapters.attach(components["unet"], cfg, adapters.unet_targets(cfg), ["ff.net.2"])


def _trainable(components: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{c}.{n}", tuple(p.shape)) for c, m in components.items() if isinstance(m, torch.nn.Module)
            for n, p in m.named_parameters() if p.requires_grad]


def ledger_rows(arch: str) -> list[dict]:
    from real_size import real_components

    rows = []
    for method in METHODS:
        comps = {k: v for k, v in real_components(arch, device="meta").items() if isinstance(v, torch.nn.Module)}
        _attach(comps, method)
        trained = _trainable(comps)
        n_trained = sum(math.prod(s) for _, s in trained)
        largest = max(math.prod(s) for _, s in trained)  # the most gradient a fused backward pass holds
        frozen_by_part: dict[str, int] = {}
        for name, module in comps.items():
            frozen_by_part[name] = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        upcast_vae = bool(comps["vae"].config.get("force_upcast"))
        for base, width in BASE_BYTES.items():
            frozen = sum(n * (4 if name == "vae" and upcast_vae else width) for name, n in frozen_by_part.items())
            for opt in OPTIMIZERS:
                state = optimizer_state_bytes(opt, trained)
                weights = frozen + 4 * n_trained
                fusable = opt in ("adamw", "adafactor", "adamw8bit") and state is not None
                rows.append({
                    "arch": arch, "method": method, "optimizer": opt, "base_dtype": base,
                    "trained_params_M": round(n_trained / 1e6, 3),
                    "frozen_weights_gib": round(frozen / GIB, 3), "trained_weights_mib": round(4 * n_trained / MIB, 1),
                    "gradients_mib": round(4 * n_trained / MIB, 1),
                    "optimizer_state_mib": None if state is None else round(state / MIB, 1),
                    "total_gib": None if state is None else round((weights + 4 * n_trained + state) / GIB, 3),
                    "gradients_fused_backward_mib": round(4 * largest / MIB, 1) if fusable else None,
                    "total_fused_backward_gib": round((weights + 4 * largest + state) / GIB, 3) if fusable else None,
                    "gradient_checkpointing": GRADIENT_CHECKPOINTING[arch],
                })
    return rows


def _net_allocated(fn) -> int:
    """Net bytes the CPU allocator handed out during `fn()` (allocations minus frees), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # allocations count in the op that made them ("self"), frees outside any op in the "[memory]" row
    return sum(k.self_cpu_memory_usage for k in prof.key_averages())


def allocator_check_one(method: str, opt: str) -> dict:
    """The tiny SD1.5's `Trainer` with `method` and `opt`: allocator bytes vs the ledger. Run once per process:
    the profiler keeps the sizes of blocks it saw allocated, so in a second run a reused address can be
    reported as freed with a stale size."""
    from train import make_data

    from animegen.models.tiny import save_tiny_model
    from animegen.train.config import validate_config
    from animegen.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_tiny_model("sd15", tmp / "model")
        data = make_data(tmp / "data", 64, n=2)
        trainer = Trainer(validate_config({
            "model": {"base": str(tmp / "model")}, "adapter": METHODS[method],
            "optimizer": {"name": opt, "lr": 1.0 if opt == "prodigy" else 1e-4},
            "data": {"datasets": [{"path": str(data)}], "resolution": 64, "min_bucket_side": 64},
            "train": {"output_dir": str(tmp / "run"), "max_steps": 1, "batch_size": 1, "device": "cpu"},
            "log": {"progress": False, "tensorboard": False}, "export": {"formats": ["kohya"]}}))
        (tmp / "run").mkdir()
        trainer.setup()
        trained = [(f"{c}.{n}", tuple(p.shape)) for c, m in trainer.trained.items()
                   for n, p in m.named_parameters() if p.requires_grad]
        loss = trainer.loss_for(0, [0])
        grads_alloc = _net_allocated(lambda: trainer.accelerator.backward(loss))
        grads = sum(p.grad.numel() * p.grad.element_size() for p in trainer.params if p.grad is not None)
        state_alloc = _net_allocated(trainer.optimizer.step)
        return {"method": method, "optimizer": opt, "trained_tensors": len(trained),
                "ledger_optimizer_state_bytes": optimizer_state_bytes(opt, trained),
                "allocator_first_step_net_bytes": state_alloc,
                "ledger_gradient_bytes": 4 * sum(math.prod(s) for _, s in trained),
                "grad_tensor_bytes": grads, "allocator_backward_net_bytes": grads_alloc}


def allocator_check(optimizers=("adamw", "adafactor", "prodigy", "adamw8bit")) -> list[dict]:
    """`allocator_check_one` for LoRA r16 and iA3 with each optimizer, each in a fresh process."""
    out = []
    for method in ("lora-r16", "ia3"):
        for opt in optimizers:
            got = subprocess.run([sys.executable, __file__, "--check-one", method, opt], check=True,
                                 capture_output=True, text=True)
            out.append(json.loads(got.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="also the allocator check on the tiny model")
    ap.add_argument("--check-one", nargs=2, metavar=("METHOD", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_one:
        print(json.dumps(allocator_check_one(*args.check_one)))
        return
    result = {"ledger": [row for arch in ("sd15", "sdxl") for row in ledger_rows(arch)],
              "bitsandbytes_installed": importlib.util.find_spec("bitsandbytes") is not None}
    if args.check:
        result["allocator_check_tiny_sd15"] = allocator_check()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
