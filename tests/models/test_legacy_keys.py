"""SD1 checkpoints with the pre-`text_model` CLIP key names (NovelAI-era files) load like modern ones.

Reference: A1111 1.10 `modules/sd_models.py` `checkpoint_dict_replacements_sd1` renames
`cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}.` to
`cond_stage_model.transformer.text_model.…` when it reads a checkpoint. The legacy file here is the tiny SD1
single file with exactly those keys renamed back.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from animegen.models.single_file import load_single_file
from animegen.models.tiny import save_tiny_model

MODERN = "cond_stage_model.transformer.text_model."
LEGACY = "cond_stage_model.transformer."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy")
    modern = save_tiny_model("sd15", single_file=folder / "modern.safetensors")["single_file"]
    tensors = load_file(str(modern))
    renamed = {(LEGACY + k[len(MODERN):] if k.startswith(MODERN) else k): v for k, v in tensors.items()}
    assert sum(k.startswith(LEGACY + "encoder.") for k in renamed) > 0 and not any(k.startswith(MODERN)
                                                                                  for k in renamed)
    legacy = folder / "legacy.safetensors"
    save_file(renamed, str(legacy))
    return modern, legacy


def test_legacy_clip_names_load_with_the_same_text_encoder(files):
    modern, legacy = (load_single_file(f) for f in files)
    ours, reference = legacy.text_encoder.state_dict(), modern.text_encoder.state_dict()
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key
    ids = modern.tokenizer("1girl, silver hair", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(legacy.text_encoder(ids).last_hidden_state,
                                   modern.text_encoder(ids).last_hidden_state, rtol=0, atol=0)
    assert legacy.arch_info.family == "sd1"
