"""NaN / inf never reach the weights (issue #12 item 11): a LoRA file holding them is refused naming every
module that does, and a LoRA weight that is not a finite number is refused, before anything is merged."""

from __future__ import annotations

import math

import pytest
import torch
from lora_testutils import save_lora, unet_out

from animegen.core.errors import AnimegenError
from animegen.models.lora import LoraFile, LoraFormatError, LoraModule, apply_loras, read_lora

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"


def _lora_tensors(name: str, up_value: float = 0.1) -> dict[str, torch.Tensor]:
    k = "lora_unet_" + name.replace(".", "_")
    return {f"{k}.lora_down.weight": torch.full((2, 32), 0.1), f"{k}.lora_up.weight": torch.full((32, 2), up_value)}


def test_a_file_with_nan_or_inf_is_refused_naming_each_module(tmp_path):
    tensors = {**_lora_tensors(Q, up_value=math.nan), **_lora_tensors(K)}
    tensors["lora_unet_" + K.replace(".", "_") + ".alpha"] = torch.tensor(math.inf)
    with pytest.raises(LoraFormatError, match="non-finite") as info:
        read_lora(save_lora(tmp_path, tensors))
    assert f"unet.{Q}" in str(info.value) and f"unet.{K}" in str(info.value)
    assert "lora_up.weight" in str(info.value) and "alpha" in str(info.value)
    read_lora(save_lora(tmp_path, {**_lora_tensors(Q), **_lora_tensors(K)}, name="ok.safetensors"))


@pytest.mark.parametrize("weight", [math.nan, math.inf, {"unet": math.nan}])
def test_a_weight_that_is_not_finite_is_refused_before_merging(sd15, weight):
    module = LoraModule(f"unet.{Q}", "lora", {"lora_down.weight": torch.full((2, 32), 0.1),
                                             "lora_up.weight": torch.full((32, 2), 0.1)})
    before = unet_out(sd15.unet)
    with pytest.raises(AnimegenError, match="LoRA weight .* not a finite number"):
        apply_loras(sd15, [(LoraFile({module.target: module}), weight)])
    assert torch.equal(unet_out(sd15.unet), before)
