"""CLIP score on a tiny random CLIP saved as a local folder, against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.evaluate.clip_score import ClipScorer
from animegen.evaluate.metrics import MetricError


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)]


@torch.no_grad()
def reference_scores(folder, imgs, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    pixels = proc(images=imgs, return_tensors="pt")["pixel_values"]
    img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    tok = proc.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    txt = model.text_projection(model.text_model(**tok).pooler_output)
    out = []
    for a, b in zip(img.numpy().astype(np.float64), txt.numpy().astype(np.float64)):
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        out.append(100 * max(cos, 0.0))
    return np.array(out)


def test_clip_score_matches_hand_computation(tiny_clip_dir):
    prompts = ["1girl, blue hair", "a cat on a sofa", "landscape, mountains"]
    scorer = ClipScorer.load(tiny_clip_dir, device="cpu")
    got = scorer.score(images(), prompts, batch_size=2, progress=False)
    np.testing.assert_allclose(got, reference_scores(tiny_clip_dir, images(), prompts), atol=1e-4)
    assert ((got >= 0) & (got <= 100)).all()
    assert scorer.notes == []


def test_long_prompts_are_truncated_and_counted(tiny_clip_dir):
    scorer = ClipScorer.load(tiny_clip_dir, device="cpu")
    long = ", ".join(f"tag{i}" for i in range(120))
    scores = scorer.score(images()[:1], [long], progress=False)
    assert np.isfinite(scores).all()
    assert scorer.truncated == 1 and "truncated" in scorer.notes[0]


def test_bad_inputs(tiny_clip_dir, tmp_path):
    scorer = ClipScorer.load(tiny_clip_dir, device="cpu")
    with pytest.raises(MetricError, match="one prompt per image"):
        scorer.score(images(), ["only one"], progress=False)
    with pytest.raises(MetricError, match="cannot load a CLIP model"):
        ClipScorer.load(tmp_path / "no-such-clip")
