"""End-to-end runs on the tiny models: SDXL adapter run with samples, validation and logs; full
fine-tune exported as diffusers folder + A1111 single file that load back to the trained weights."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

from animegen.generate import read_png_infotext
from animegen.generate.infotext import parse_infotext
from animegen.models.loading import load_pipeline
from animegen.train.trainer import Trainer


def test_sdxl_run_samples_validates_and_logs(tmp_path, tiny_sdxl_dir):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=6, sizes=[(64, 64)] * 3 + [(96, 64)] * 3)
    cfg = tiny_config(tiny_sdxl_dir, data, tmp_path / "run",
                      adapter={"kind": "loha", "rank": 2, "alpha": 2.0, "train_text_encoder": True},
                      data={"validation_split": 0.34, "random_flip": True, "max_bucket_side": 128},
                      train={"max_steps": 2, "batch_size": 1, "device": "cpu"},
                      sample={"every_steps": 2, "prompts": ["zxq"], "steps": 2, "width": 64, "height": 64,
                              "sampler": "Euler"},
                      validation={"every_steps": 2, "timesteps": [200, 800]},
                      log={"progress": False, "tensorboard": True})
    trainer = Trainer(cfg)
    result = trainer.run()
    assert result.finished and len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert trainer.data.val and list(result.val_losses) == [2]
    from animegen.train.sampling import validation_loss

    assert validation_loss(trainer, trainer.data.val) == result.val_losses[2]  # fixed seeds and timesteps
    [png] = result.samples
    info = parse_infotext(read_png_infotext(png))
    assert info["Prompt"] == "zxq" and int(info["Steps"]) == 2 and info["Sampler"] == "Euler"
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    lora = load_file(result.exported["kohya"])
    assert any(k.startswith("lora_te2_") for k in lora) and any(k.startswith("lora_unet_") for k in lora)


def test_full_finetune_exports_load_back(tmp_path, tiny_sd15_dir):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", adapter={"kind": "full", "ema": True, "ema_decay": 0.5},
                      optimizer={"name": "adafactor", "lr": 1e-3, "scheduler": "constant"},
                      train={"max_steps": 2, "batch_size": 1, "device": "cpu"},
                      export={"formats": ["diffusers", "single_file"], "dtype": "fp32"})
    trainer = Trainer(cfg)
    result = trainer.run()
    trained = {k: v.clone() for k, v in trainer.pipe.unet.state_dict().items()}
    base = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32).unet.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    for key in ("diffusers", "single_file"):
        unet = load_pipeline(result.exported[key], device="cpu", dtype=torch.float32).unet.state_dict()
        for k, value in trained.items():
            torch.testing.assert_close(unet[k], value, atol=1e-6, rtol=1e-6)


def test_runs_in_one_process_may_differ_in_mixed_precision(tmp_path, tiny_sd15_dir):
    """accelerate keeps one process-wide state; a notebook (or this suite) training a bf16 preset after an
    fp32 run must not be refused with 'AcceleratorState has already been initialized'."""
    from animegen.train.trainer import train

    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=2)
    for i, precision in enumerate(("no", "bf16", "no")):
        cfg = tiny_config(tiny_sd15_dir, data, tmp_path / f"run{i}",
                          train={"max_steps": 1, "batch_size": 1, "device": "cpu", "mixed_precision": precision})
        assert train(cfg).finished
