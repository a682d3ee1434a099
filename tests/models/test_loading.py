"""Model references: folders, single files, hub ids; pickles refused; missing models explained."""

import pytest
import torch

from animegen.models.loading import (ModelLoadError, PickleRefusedError, classify_model_ref, load_pipeline,
                                     model_hash, parse_dtype)


def test_diffusers_folder_loads_fp32_on_cpu(tiny_sd15_dir):
    pipe = load_pipeline(tiny_sd15_dir, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.safety_checker is None


def test_sdxl_folder_loads(tiny_sdxl_dir):
    pipe = load_pipeline(tiny_sdxl_dir, device="cpu", dtype="bf16")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.dtype == torch.bfloat16
    assert pipe.tokenizer_2.pad_token == "!"


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickles_refused_without_permission(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        load_pipeline(path, device="cpu")


def test_missing_local_path_names_what_was_tried(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError, match="no such file or folder") as e:
        load_pipeline(missing, device="cpu")
    assert str(missing) in str(e.value)


def test_folder_without_model_index_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(tmp_path, device="cpu")


def test_hub_id_offline_and_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache.*offline"):
        load_pipeline("someorg/some-anime-model", device="cpu")


def test_classify_refs(tiny_sd15_dir, tmp_path):
    assert classify_model_ref(tiny_sd15_dir).kind == "folder"
    assert classify_model_ref("cagliostrolab/animagine-xl-3.1").kind == "hub"
    with pytest.raises(ModelLoadError):
        classify_model_ref("not a model")


def test_dtype_names():
    assert parse_dtype("auto", "cpu") == torch.float32
    assert parse_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'half8'"):
        parse_dtype("half8", "cpu")


def test_model_hash_is_a1111_short_sha256(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"abc" * 1000)
    assert model_hash(f) == hashlib.sha256(b"abc" * 1000).hexdigest()[:10]
    assert model_hash(f) == hashlib.sha256(b"abc" * 1000).hexdigest()[:10]  # cached path agrees


def test_single_file_with_vae_override_generates_like_folder(tiny_sd15_dir, tmp_path):
    """The single-file route and a VAE override (taken from the folder) give the folder's image."""
    import numpy as np

    from animegen.generate import GenerationRequest, Generator
    from animegen.models.single_file import save_single_file

    folder_pipe = load_pipeline(tiny_sd15_dir, device="cpu")
    single = tmp_path / "tiny.safetensors"
    save_single_file(folder_pipe, single)
    req = GenerationRequest("1girl, red hair", sampler="Euler", steps=2, seed=9, width=64, height=64)
    a = Generator(tiny_sd15_dir, device="cpu")(req)[0]
    b = Generator(single, device="cpu", vae=tiny_sd15_dir)(req)[0]
    # same weights, but the converted tensors' memory layout changes float32 rounding (~7e-7 per UNet call),
    # which A1111's first sigma (14.6) amplifies in the pixels
    assert np.abs(a.array - b.array).max() <= 1e-4
    assert f"Model hash: {model_hash(single)}" in b.infotext and "Model: tiny," in b.infotext
