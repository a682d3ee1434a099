"""Files shipped inside the package so that single-file checkpoints load with no network.

`clip_tokenizer/` holds the real CLIP BPE vocabulary (49,408 tokens; MIT licence, from OpenAI CLIP via
open_clip's `bpe_simple_vocab_16e6.txt.gz`) in the Hugging Face `vocab.json` + `merges.txt` form.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

ASSETS = Path(str(files(__name__)))
CLIP_TOKENIZER_DIR = ASSETS / "clip_tokenizer"


def load_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP tokenizer. SD1.x and SDXL's first encoder pad with `<|endoftext|>`; SDXL's second with `!`."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), pad_token=pad_token)
