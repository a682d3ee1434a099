"""Training checkpoints: written atomically (`core.files.atomic_dir`), the last K kept.

A checkpoint holds exactly what an exact resume needs: trained weights, optimizer, LR scheduler, EMA
and the global RNG state. The data order and per-sample noise are pure functions of (seed, step), so
they need no state of their own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from animegen.core.files import atomic_dir, load_torch_file
from animegen.core.tensors import non_finite

PREFIX = "step-"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with `state.json`), oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def last_good_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose trained weights are all finite (None if there is none)."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            if not non_finite(load_file(str(path / "weights.safetensors"))):
                return path
        except (OSError, ValueError, RuntimeError):  # unreadable: not good either
            continue
    return None


def prepare_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, clear: bool = True) -> None:
    """Refuse to reuse an output folder silently (before any model is loaded).

    `resume` needs a checkpoint to continue from: like kohya's `--resume`, a missing state is an error,
    not a fresh start (a mistyped folder would otherwise train from scratch for hours). A run without
    `resume` refuses a folder that holds an earlier run's export or checkpoints unless `overwrite`, which
    deletes both (else a later `--resume` would continue the earlier run's newer checkpoint); `clear`
    False only checks (the other processes of a distributed run).
    """
    from animegen.core.errors import AnimegenError

    out = Path(output_dir)
    found = list_checkpoints(out)
    export = out / "export"
    if resume and overwrite:
        raise AnimegenError("--resume continues the run in train.output_dir and --overwrite replaces it; pass one")
    if resume:
        if not found:
            raise AnimegenError(f"--resume: no checkpoint in {checkpoint_dir(out)} to continue from (was "
                                "checkpoint.every_steps 0, or train.output_dir another folder?); run without "
                                "--resume to start a new run")
        return
    earlier = [str(p) for p in (export, checkpoint_dir(out)) if p.is_dir() and any(p.iterdir())]
    if earlier and not overwrite:
        raise AnimegenError(f"train.output_dir {out} already holds an earlier run ({', '.join(earlier)}); "
                            f"{'pass --resume to continue its checkpoint, ' if found else ''}choose another "
                            "train.output_dir, or pass --overwrite (train.overwrite = true) to replace it")
    for path in (export, checkpoint_dir(out)) if clear else ():
        if path.is_dir():
            shutil.rmtree(path)


def save_checkpoint(output_dir: str | Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
                    scheduler_state: dict, extra: dict[str, Any], keep_last: int,
                    ema_state: dict | None = None) -> Path:
    """Write `checkpoints/step-XXXXXXXX/` atomically, then drop all but the newest `keep_last`.

    The training state holds only tensors and plain containers, so `load_checkpoint` reads it with
    `weights_only=True` (a doctored checkpoint cannot run code). A failed write (a full disk) leaves
    every earlier checkpoint as it was; the error names the checkpoint folder.
    """
    final = checkpoint_dir(output_dir) / f"{PREFIX}{step:08d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state, "ema": ema_state,
                    "torch_rng": torch.get_rng_state()}, tmp / "training_state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`; the training state is read with `weights_only=True`."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    # animegen wrote this file itself: reading it is allowed, but only as tensors and plain containers
    training = load_torch_file(path / "training_state.pt", allow_pickle=True)
    return {"step": int(state["step"]), "state": state, "weights": load_file(str(path / "weights.safetensors")),
            **training}
