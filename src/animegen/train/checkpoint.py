"""Training checkpoints: written atomically (temp folder + rename), the last K kept.

A checkpoint holds exactly what an exact resume needs: trained weights, optimizer, LR scheduler, EMA
and the global RNG state. The data order and per-sample noise are pure functions of (seed, step), so
they need no state of their own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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


def save_checkpoint(output_dir: str | Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
                    scheduler_state: dict, extra: dict[str, Any], keep_last: int,
                    ema_state: dict | None = None) -> Path:
    """Write `checkpoints/step-XXXXXXXX/` atomically, then drop all but the newest `keep_last`."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state, "ema": ema_state,
                    "torch_rng": torch.get_rng_state()}, tmp / "training_state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    training = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    return {"step": int(state["step"]), "state": state, "weights": load_file(str(path / "weights.safetensors")),
            **training}
