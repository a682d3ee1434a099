"""One pickle policy: pickles are refused unless allowed, and even then read with `weights_only=True`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from animegen.core.errors import AnimegenError
from animegen.core.files import PickleRefusedError, WeightsFileError, load_torch_file, read_safetensors

SRC = Path(__file__).resolve().parents[2] / "src" / "animegen"
NAME = "lora_unet_down_blocks_0_attentions_0_proj_in"
LORA = {f"{NAME}.lora_down.weight": torch.full((2, 8), 0.5), f"{NAME}.lora_up.weight": torch.full((8, 2), 0.25),
        f"{NAME}.alpha": torch.tensor(2.0)}


class _RunsCode:
    """Unpickling this creates `marker`: what a doctored checkpoint would do with a worse callable."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_torch_file_refuses_without_permission_and_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.ones(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        load_torch_file(path, allow_pickle=False)
    with pytest.raises(WeightsFileError, match="more than tensors"):
        load_torch_file(path, allow_pickle=True)
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3)}, plain)
    assert torch.equal(load_torch_file(plain, allow_pickle=True)["w"], torch.arange(3))


def test_a_truncated_safetensors_file_is_explained(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(AnimegenError, match="truncated"):
        read_safetensors(path)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_read_lora_refuses_pickles_unless_allowed(tmp_path, suffix):
    from animegen.models.lora import read_lora

    safe, pickled = tmp_path / "l.safetensors", tmp_path / f"l{suffix}"
    save_file(LORA, str(safe))
    torch.save(LORA, pickled)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        read_lora(pickled)
    assert read_lora(pickled, allow_pickle=True).modules == read_lora(safe).modules


def test_a_doctored_training_state_is_refused(tmp_path):
    from animegen.train.checkpoint import load_checkpoint, save_checkpoint

    final = save_checkpoint(tmp_path, 2, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {}, {}, keep_last=1)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": {}, "scheduler": {}, "ema": None, "torch_rng": _RunsCode(marker)},
               final / "training_state.pt")
    with pytest.raises(AnimegenError, match="training_state.pt"):
        load_checkpoint(final)
    assert not marker.exists()


def _folder_with_pickled_unet(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), dst / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return dst


def test_a_diffusers_folder_with_pickled_weights_needs_allow_pickle(tmp_path, tiny_sd15_dir):
    from animegen.models.loading import load_pipeline

    folder = _folder_with_pickled_unet(tiny_sd15_dir, tmp_path / "model")
    with pytest.raises(PickleRefusedError, match="--allow-pickle") as err:
        load_pipeline(folder, device="cpu")
    assert "diffusion_pytorch_model.bin" in str(err.value)
    pipe = load_pipeline(folder, device="cpu", allow_pickle=True)
    reference = load_file(str(tiny_sd15_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(v, reference[k]) for k, v in pipe.unet.state_dict().items())


def test_every_torch_load_goes_through_the_policy():
    """`torch.load` appears in src only inside `core/files.py`."""
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "files.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"(?<!`)\btorch\.load\(", line) and not line.lstrip().startswith("#")]
    assert offenders == []
