"""Fine-tuning: LoRA-family adapters (peft) and full fine-tunes of SD1.x / SDXL.

`load_config(path, overrides)` -> `TrainConfig`; `train(config, resume=False)` -> `TrainResult`.
"""

from animegen.train.config import ConfigError, TrainConfig, load_config, validate_config
from animegen.train.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["ConfigError", "NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "load_config", "train",
           "validate_config"]
