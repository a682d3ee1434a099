"""animegen: curate a dataset, fine-tune, generate, evaluate and serve anime SD1.x / SDXL models."""

__version__ = "0.1.0"
