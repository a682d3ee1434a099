"""UNet module names LDM <-> diffusers follow the UNet's config, for single files and kohya LoRA keys alike.

Oracle: diffusers' own `convert_ldm_unet_checkpoint` (LDM -> diffusers), written independently of ours.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from animegen.models.family import get_family
from animegen.models.ldm_names import UNET_PREFIX, unet_module_map, unet_state_dict_to_ldm
from animegen.models.lora.names import (
    diffusers_to_ldm_unet,
    kohya_to_target,
    ldm_to_diffusers_unet,
    target_to_kohya,
)


def _unet(**overrides) -> UNet2DConditionModel:
    """3 layers per block (every released family has 2), attention only in the first level."""
    torch.manual_seed(0)
    config = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 3,
                  "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  "up_block_types": ("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                  "block_out_channels": (32, 32, 64), "cross_attention_dim": 16, "attention_head_dim": 4, "norm_num_groups": 8}
    return UNet2DConditionModel(**{**config, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"layers_per_block": 4, "down_block_types": (
    "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), "up_block_types": (
    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}])
def test_unet_paths_map_both_ways_by_the_config(overrides):
    unet = _unet(**overrides)
    original = unet.state_dict()
    ldm = unet_state_dict_to_ldm(original, unet.config)
    back = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in ldm.items()}, dict(unet.config))
    assert set(back) == set(original)  # our names are the ones diffusers' converter reads
    pairs = {}
    for (diffusers_key, value), (ldm_key, ldm_value) in zip(original.items(), ldm.items(), strict=True):
        assert value is ldm_value
        pairs[diffusers_key.rpartition(".")[0]] = ldm_key.rpartition(".")[0]
    assert any(".resnets.2." in d for d in pairs)  # a layer index the 2-per-block layout does not have
    for module, ldm_module in pairs.items():
        assert diffusers_to_ldm_unet(module, unet.config) == ldm_module, module
        assert ldm_to_diffusers_unet(ldm_module, unet.config) == module, ldm_module
        kohya = target_to_kohya(f"unet.{module}", sdxl=True, unet_config=unet.config)
        assert kohya == "lora_unet_" + ldm_module.replace(".", "_")
        assert kohya_to_target(kohya, unet_config=unet.config) == f"unet.{module}"


def test_sd1_style_ldm_names_map_through_the_sd1_layout():
    """kohya files read without a model use the shipped SDXL layout; names it lacks go through SD1's."""
    sd1 = unet_module_map(get_family("sd1").config("unet"))
    xl = unet_module_map(get_family("sdxl").config("unet"))
    sd1_only = {ldm: d for d, ldm in sd1.items() if ldm not in set(xl.values())}
    assert "output_blocks.2.1.conv" in sd1_only and "input_blocks.1.1.proj_in" in sd1_only
    for ldm, diffusers_name in sd1_only.items():
        assert ldm_to_diffusers_unet(ldm) == diffusers_name, ldm
        if diffusers_name not in xl:  # e.g. SD1's attentions in up_blocks.2
            assert diffusers_to_ldm_unet(diffusers_name) == ldm, diffusers_name
    # where both layouts have an LDM name they agree on its diffusers name, so the fallback order is safe
    xl_inverse = {ldm: d for d, ldm in xl.items()}
    assert all(xl_inverse[ldm] == d for d, ldm in sd1.items() if ldm in xl_inverse)


def test_unknown_ldm_name_is_an_error():
    with pytest.raises(ValueError, match="input_blocks.99.0"):
        ldm_to_diffusers_unet("input_blocks.99.0")
