"""CLIP score: how well each image matches its prompt, as torchmetrics defines it (100 * max(cos, 0)).

Works with any `transformers` CLIP checkpoint, local folder or hub id. Prompts longer than the
text encoder's context are truncated (and counted), as torchmetrics does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.evaluate.metrics import MetricError


@dataclass
class ClipScorer:
    """A CLIP model + processor ready to score (image, prompt) pairs."""

    model: object
    processor: object
    device: torch.device
    name: str
    truncated: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, model: str | Path, device: str | torch.device | None = None) -> ClipScorer:
        from transformers import CLIPModel, CLIPProcessor

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            clip = CLIPModel.from_pretrained(str(model))
            processor = CLIPProcessor.from_pretrained(str(model))
        except (OSError, ValueError) as err:
            raise MetricError(f"cannot load a CLIP model from '{model}': {str(err).splitlines()[0]}. "
                              "Pass a local CLIP folder (config.json, weights, tokenizer, "
                              "preprocessor_config.json) or a hub id that is cached.") from err
        clip.eval().requires_grad_(False).to(device)
        return cls(clip, processor, device, str(model))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        out = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        return _features(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        full = self.processor.tokenizer(list(texts), padding=False, truncation=False)["input_ids"]
        self.truncated += sum(len(ids) > max_len for ids in full)
        tok = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len,
                                       return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return _features(out)

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str], *, batch_size: int = 32,
              progress: bool = True) -> np.ndarray:
        """Per-pair scores in [0, 100]."""
        from tqdm.auto import tqdm

        if len(images) != len(prompts):
            raise MetricError(f"CLIP score needs one prompt per image: {len(images)} images, "
                              f"{len(prompts)} prompts")
        if not images:
            raise MetricError("CLIP score: no images")
        scores = []
        for start in tqdm(range(0, len(images), batch_size), desc="CLIP score", disable=not progress):
            img = self.embed_images(images[start:start + batch_size])
            txt = self.embed_texts(prompts[start:start + batch_size])
            cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
            scores.append((100 * cos.clamp(min=0)).cpu().numpy())
        values = np.concatenate(scores).astype(np.float64)
        if not np.isfinite(values).all():
            raise MetricError("CLIP score produced NaN/inf; the CLIP model or images are broken")
        if self.truncated:
            self.notes = [f"{self.truncated} prompt(s) were longer than CLIP's context and were truncated."]
        return values


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor, transformers 5 an output whose pooler_output is projected."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
