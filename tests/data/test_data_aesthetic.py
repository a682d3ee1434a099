"""Aesthetic scorer (tiny random CLIP + MLP), score tags by cut-off and percentile, the min-score filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datakit import noise_image, write_tiny_scorer

from animegen.data.aesthetic import (
    AestheticMLP,
    AestheticScorer,
    ScoreTagConfig,
    aesthetic_tag,
    load_predictor,
    quality_tags,
    score_dataset,
)
from animegen.data.ingest import ingest
from animegen.data.manifest import load_manifest


@pytest.fixture(scope="module")
def scorer_files(tmp_path_factory):
    return write_tiny_scorer(tmp_path_factory.mktemp("aesthetic"))


def _numpy_mlp(sd, x):
    """The improved-aesthetic-predictor head by hand: five Linear layers, no activations (eval: no dropout)."""
    for i in (0, 2, 4, 6, 7):
        x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    return x[:, 0]


def test_scores_match_hand_computation(scorer_files):
    clip_dir, pred = scorer_files
    scorer = AestheticScorer.from_pretrained(pred, clip_dir, device="cpu")
    images = [noise_image(i, (40, 36)) for i in range(3)]
    got = scorer.score(images)

    from safetensors.numpy import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels)
        emb = model.visual_projection(out.pooler_output).double().numpy()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sd = {k: v.astype(np.float64) for k, v in load_file(str(pred)).items()}
    np.testing.assert_allclose(got, _numpy_mlp(sd, emb), rtol=1e-4, atol=1e-4)
    assert len(set(np.round(got, 6))) == 3


def test_predictor_pth_and_shape_check(tmp_path, scorer_files):
    mlp = AestheticMLP(input_size=12)
    torch.save(mlp.state_dict(), tmp_path / "p.pth")
    loaded = load_predictor(tmp_path / "p.pth")
    assert loaded.layers[0].in_features == 12 and loaded.layers[7].out_features == 1
    with pytest.raises(ValueError, match="does not match"):
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        AestheticScorer(CLIPVisionModelWithProjection.from_pretrained(scorer_files[0]),
                        CLIPImageProcessor.from_pretrained(scorer_files[0]), loaded)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="layers.0.weight"):
        load_predictor(tmp_path / "bad.pth")


def test_aesthetic_cutoffs():
    cut = ScoreTagConfig().aesthetic_cutoffs
    assert aesthetic_tag(7.0, cut) == "very aesthetic"
    assert aesthetic_tag(6.5, cut) == "very aesthetic"
    assert aesthetic_tag(6.49, cut) == "aesthetic"
    assert aesthetic_tag(5.0, cut) == "displeasing"
    assert aesthetic_tag(2.0, cut) == "very displeasing"
    assert aesthetic_tag(-1.0, cut) == "very displeasing"


def test_quality_percentiles():
    scores = list(range(1, 21))  # 20 images: percentile of score s is 5 * s
    tags = quality_tags(scores, ScoreTagConfig().quality_percentiles)
    assert tags[19] == "masterpiece"  # top 5 %
    assert tags[17:19] == ["best quality"] * 2  # 90, 95
    assert tags[15:17] == ["great quality"] * 2
    assert tags[10:15] == ["good quality"] * 5
    assert tags[5:10] == ["normal quality"] * 5
    assert tags[2:5] == ["low quality"] * 3
    assert tags[:2] == ["worst quality"] * 2
    assert quality_tags([3.0, 3.0], {"a": 50, "b": 0}) == ["a", "a"]  # ties share the higher tag


def test_config_from_toml(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[score]\naesthetic_cutoffs = { "good" = 5.0, "bad" = 0.0 }\n')
    cfg = ScoreTagConfig.from_toml(p)
    assert cfg.aesthetic_cutoffs == {"good": 5.0, "bad": 0.0} and "masterpiece" in cfg.quality_percentiles
    p.write_text('[score]\ncutoffs = {}\n')
    with pytest.raises(ValueError, match="unknown key"):
        ScoreTagConfig.from_toml(p)


class _FixedScorer:
    def __init__(self, by_width):
        self.by_width, self.calls = by_width, 0

    def score(self, images):
        self.calls += len(images)
        return [self.by_width[im.width] for im in images]


def test_score_dataset_filter_and_refilter(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    widths = [20, 21, 22, 23]
    for i, w in enumerate(widths):
        noise_image(i, (w, 20)).save(src / f"{i}.png")
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    scorer = _FixedScorer({20: 4.0, 21: 5.8, 22: 6.2, 23: 7.0})
    rep = score_dataset(ds, scorer, min_score=6.0, progress=False)
    assert (rep.scored, rep.filtered, rep.kept) == (4, 2, 2)
    rows = {r.width: r for r in load_manifest(ds)}
    assert rows[20].status == rows[21].status == "filtered" and "< --min-score 6" in rows[21].reason
    assert rows[22].aesthetic_tag == "aesthetic" and rows[23].aesthetic_tag == "very aesthetic"
    assert rows[23].quality_tag == "masterpiece" and rows[22].quality_tag == "normal quality"  # 2 kept: 50 % is not > 50
    # lowering the bar later restores rows without scoring anything again
    rep = score_dataset(ds, scorer, min_score=5.0, progress=False)
    assert scorer.calls == 4 and rep.kept == 3 and rep.skipped == 4
    rows = {r.width: r for r in load_manifest(ds)}
    assert rows[21].status == "ok" and rows[21].reason is None and rows[20].status == "filtered"
