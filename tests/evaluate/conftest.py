"""Fixtures for the evaluation tests: one random-weight FID network and small synthetic image folders."""

from __future__ import annotations

import pytest
from eval_testutils import write_images


@pytest.fixture(scope="session")
def fid_net():
    from animegen.evaluate.inception import build_fid_inception

    return build_fid_inception(None, seed=0, device="cpu")


@pytest.fixture
def image_dirs(tmp_path):
    real = tmp_path / "real"
    fake = tmp_path / "fake"
    write_images(real, 6, seed=1, sizes=((64, 64), (80, 48)))
    write_images(fake, 5, seed=2, sizes=((72, 72),))
    return real, fake


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP (model + processor with the real CLIP tokenizer) saved as a local folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from animegen.models.assets import load_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    out = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(out)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=load_tokenizer())
    processor.save_pretrained(out)
    return out
