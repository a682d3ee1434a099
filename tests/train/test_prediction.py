"""Training follows the base model's prediction type and zero-terminal-SNR schedule unless the config
says otherwise, and the exported LoRA records what it was trained with (issue 12, item 4)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from train_helpers import RED, tiny_config, write_kohya

from animegen.models.tiny import build_tiny_pipeline
from animegen.train.trainer import Trainer


@pytest.fixture(scope="module")
def vpred_ztsnr_dir(tiny_sd15_dir, tmp_path_factory):
    """The tiny SD1.5 folder with a v-prediction, zero-terminal-SNR scheduler (as NoobAI-XL v-pred ships)."""
    out = tmp_path_factory.mktemp("vpred") / "model"
    shutil.copytree(tiny_sd15_dir, out)
    path = out / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                                "timestep_spacing": "trailing"}))
    return out


def _train(base, tmp_path, **model):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    cfg = tiny_config(base, data, tmp_path / "run", model={"base": str(base), **model},
                      train={"max_steps": 1, "batch_size": 1, "device": "cpu"})
    trainer = Trainer(cfg)
    result = trainer.run()
    with safe_open(str(result.exported["kohya"]), "pt") as f:
        meta = f.metadata()
    return trainer, meta


def _schedule(trainer) -> tuple[str, bool, bool, str, bool]:
    """(target, zero SNR, last alpha_bar is 0) of the training schedule and (target, zero SNR) of sampling."""
    noise = trainer.noise_scheduler
    sample = trainer.pipe.scheduler.config
    return (noise.config.prediction_type, bool(noise.config.rescale_betas_zero_snr),
            float(noise.alphas_cumprod[-1]) == 0.0,
            sample.prediction_type, bool(sample.get("rescale_betas_zero_snr", False)))


def test_unset_config_inherits_v_prediction_and_zero_snr_from_the_base(vpred_ztsnr_dir, tmp_path):
    trainer, meta = _train(vpred_ztsnr_dir, tmp_path)
    assert _schedule(trainer) == ("v_prediction", True, True, "v_prediction", True)
    assert meta["ss_v_parameterization"] == "True" and meta["ss_zero_terminal_snr"] == "True"
    assert meta["ss_base_model_version"] == "sd_v1_v"


def test_explicit_config_overrides_the_base(vpred_ztsnr_dir, tmp_path):
    trainer, meta = _train(vpred_ztsnr_dir, tmp_path, prediction_type="epsilon", zero_terminal_snr=False)
    assert _schedule(trainer) == ("epsilon", False, False, "epsilon", False)
    assert meta["ss_v_parameterization"] == "False" and meta["ss_zero_terminal_snr"] == "False"


def test_explicit_config_turns_v_prediction_on_for_an_epsilon_base(tiny_sd15_dir, tmp_path):
    trainer, meta = _train(tiny_sd15_dir, tmp_path, prediction_type="v_prediction", zero_terminal_snr=True)
    assert _schedule(trainer) == ("v_prediction", True, True, "v_prediction", True)
    assert meta["ss_v_parameterization"] == "True" and meta["ss_zero_terminal_snr"] == "True"


def test_epsilon_base_trains_epsilon_by_default(tiny_sd15_dir, tmp_path):
    trainer, meta = _train(tiny_sd15_dir, tmp_path)
    assert _schedule(trainer) == ("epsilon", False, False, "epsilon", False)
    assert meta["ss_v_parameterization"] == "False" and meta["ss_zero_terminal_snr"] == "False"


def test_single_file_markers_load_as_v_prediction_and_zero_snr(tmp_path):
    from safetensors.torch import load_file, save_file

    from animegen.models.single_file import load_single_file, save_single_file

    path = save_single_file(build_tiny_pipeline("sd15"), tmp_path / "eps.safetensors")
    state = load_file(str(path))
    assert "v_pred" not in state and "ztsnr" not in state
    marked = tmp_path / "vpred.safetensors"
    save_file({**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(marked))
    config = load_single_file(marked).scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    plain = load_single_file(path).scheduler.config
    assert plain.prediction_type == "epsilon" and not plain.get("rescale_betas_zero_snr", False)
