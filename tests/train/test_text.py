"""Weighted training captions (`data.weighted_captions`) are encoded exactly as generation encodes prompts:
A1111 emphasis, 75-token chunks (`data.max_chunks`), SDXL pooled output (plain captions, the default:
`test_captions_plain.py`). The reference is the generation path itself
(`animegen.prompts.encode.encode_prompts` on a freshly loaded pipeline, as `animegen generate` uses it)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import RED, tiny_config, write_kohya

from animegen.models.loading import load_pipeline
from animegen.prompts.encode import encode_prompts
from animegen.train.trainer import Trainer

EMPHASIS = "zxq, (red hair:1.2), [blue eyes], ((smile))"
PLAIN = "zxq, red hair, blue eyes, smile"
LONG = ", ".join(f"tag{i} word{i}" for i in range(30))  # 189 tokens: chunks of 71 + 70 + 48 (comma back-tracking)
TOL = {"atol": 1e-5, "rtol": 1e-5}  # batch shapes differ (generation encodes prompt + negative together)


def _trainer(tmp_path, model_dir, **sections) -> Trainer:
    data = write_kohya(tmp_path / "data", "red", RED, "zxq", n=1)
    trainer = Trainer(tiny_config(model_dir, data, tmp_path / "run", **sections))
    trainer.setup()
    return trainer


def test_sd15_caption_emphasis_and_chunks_match_generation(tmp_path, tiny_sd15_dir):
    trainer = _trainer(tmp_path, tiny_sd15_dir, data={"weighted_captions": True})
    gen = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ours, _ = trainer.encode_text([EMPHASIS])
        plain, _ = trainer.encode_text([PLAIN])
        ref = encode_prompts(gen, EMPHASIS, "").prompt_embeds
        torch.testing.assert_close(ours, ref, **TOL)
        assert (ours - plain).abs().max() > 100 * TOL["atol"]  # the weights were applied, not parsed away
        # a long caption chunks (3 x 77 tokens) and a shorter batch mate is padded as generation pads it
        batch, _ = trainer.encode_text([LONG, EMPHASIS])
        ref = encode_prompts(gen, [LONG, EMPHASIS], "").prompt_embeds
    assert batch.shape == ref.shape == (2, 3 * 77, ours.shape[-1])
    torch.testing.assert_close(batch, ref, **TOL)


def test_max_chunks_truncates_like_kohya_max_token_length(tmp_path, tiny_sd15_dir):
    trainer = _trainer(tmp_path, tiny_sd15_dir, data={"max_chunks": 1})
    gen = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ours, _ = trainer.encode_text([LONG])
        ref = encode_prompts(gen, LONG, "").prompt_embeds
    assert ours.shape[1] == 77  # each chunk is encoded on its own, so the first chunk is generation's first
    torch.testing.assert_close(ours, ref[:, :77], **TOL)


def test_sdxl_caption_matches_generation_and_trains_the_text_encoders(tmp_path, tiny_sdxl_dir):
    trainer = _trainer(tmp_path, tiny_sdxl_dir, adapter={"kind": "lora", "rank": 2, "alpha": 2.0,
                                                         "train_text_encoder": True},
                       data={"weighted_captions": True})
    gen = load_pipeline(tiny_sdxl_dir, device="cpu", dtype=torch.float32)
    for module in (trainer.pipe.text_encoder, trainer.pipe.text_encoder_2):
        module.eval()  # adapter dropout is 0 anyway; eval makes the comparison independent of that
    hidden, pooled = trainer.encode_text([EMPHASIS])
    with torch.no_grad():
        ref = encode_prompts(gen, EMPHASIS, "")
    torch.testing.assert_close(hidden.detach(), ref.prompt_embeds, **TOL)
    torch.testing.assert_close(pooled.detach(), ref.pooled_prompt_embeds, **TOL)
    (hidden.square().mean() + pooled.square().mean()).backward()  # gradients reach both encoders' adapters
    te1, te2 = trainer.pipe.text_encoder, trainer.pipe.text_encoder_2
    last = f"layers.{te1.config.num_hidden_layers - 1}."  # SDXL conditions on TE1's penultimate layer
    for module, unused in ((te1, last), (te2, None)):
        grads = {n: p.grad for n, p in module.named_parameters() if "lora_B" in n}
        used = {n: g for n, g in grads.items() if unused is None or unused not in n}
        assert used and all(g is not None and float(g.abs().max()) > 0 for g in used.values())
        assert all(grads[n] is None for n in grads.keys() - used.keys())

@pytest.mark.parametrize("max_chunks,expected", [(1, "None"), (3, "225")])
def test_kohya_metadata_records_the_token_length(max_chunks, expected):
    from animegen.train.config import validate_config
    from animegen.train.export import kohya_metadata

    cfg = validate_config({"data": {"max_chunks": max_chunks}})
    meta = kohya_metadata(cfg, family="sd1", steps=1, num_images=1, started_at=0.0, tag_frequency={})
    assert meta["ss_max_token_length"] == expected
