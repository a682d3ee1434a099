"""Every LoRA-family format (LoRA/LoCon, LoHa, LoKr, IA3, full diff, norm layers, DoRA on any of them)
in kohya/A1111/LyCORIS or diffusers/peft layout: read (auto-detected), write, merge into a pipeline
and restore. The algorithms are a registry (`algorithms`): one module each, one contract."""

from animegen.models.lora import algorithms
from animegen.models.lora.apply import LoraTargetError, applied_lora_count, apply_loras, remove_loras
from animegen.models.lora.formats import (
    lora_from_state_dict,
    lora_hash,
    lora_to_state_dict,
    read_lora,
    write_lora,
)
from animegen.models.lora.module import KINDS, LoraFile, LoraFormatError, LoraModule, detect_kind

__all__ = [
    "KINDS", "LoraFile", "LoraFormatError", "LoraModule", "LoraTargetError", "algorithms", "applied_lora_count",
    "apply_loras", "detect_kind", "lora_from_state_dict", "lora_hash", "lora_to_state_dict",
    "read_lora", "remove_loras", "write_lora",
]
