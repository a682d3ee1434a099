"""Annotated preset configs shipped as TOML files (`animegen train init --preset NAME`)."""

from __future__ import annotations

from importlib.resources import files

PRESETS = ("character-ia3", "character-lora-sdxl", "style-lora", "waifu-finetune", "dashanime-two-stage")


def preset_text(name: str) -> str:
    """The annotated TOML text of a preset; ValueError naming the valid presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return (files(__name__) / f"{name}.toml").read_text(encoding="utf-8")
