"""Textual-inversion embeddings as A1111 1.10 uses them, on the tiny SD1.5 / SDXL models.

The reference is written here, independently of `prompts.encode`: token ids laid out by hand as A1111's
`tokenize_line` does (BOS + 75 + EOS per chunk, the embedding's vectors in place of its name, moved whole
to the next chunk when they do not fit), the vectors put into the token-embedding output by hand, and the
rest of the text encoder called through transformers' own modules (`embeddings(inputs_embeds=...)`, the
encoder layers, the final layer norm, the projection). Embedding files are built here with random vectors.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from animegen.core.errors import AnimegenError
from animegen.core.files import PickleRefusedError
from animegen.models.tiny import build_tiny_pipeline
from animegen.prompts.embeddings import EmbeddingLibrary, read_embedding
from animegen.prompts.encode import encode_prompts, tokenize_prompt

WIDTH = 64  # the tiny models' text encoder width


@pytest.fixture(scope="module")
def sd15():
    return build_tiny_pipeline("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_pipeline("sdxl")


def vectors(n: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


# ---- the independent reference -------------------------------------------------------------------------


def text_model(encoder):
    return encoder.text_model if hasattr(encoder, "text_model") else encoder  # transformers < 5 nests it


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def chunk_of(tokenizer, content: list) -> tuple[list[int], dict[int, torch.Tensor]]:
    """77 ids for `content` (token ids and (N, C) vector blocks), and where each vector block goes."""
    filler = ids(tokenizer, "a")[0]  # any id but EOS: the vectors replace its embedding
    out, blocks = [tokenizer.bos_token_id], {}
    for item in content:
        if isinstance(item, torch.Tensor):
            blocks[len(out)] = item
            out += [filler] * item.shape[0]
        else:
            out.append(item)
    assert len(out) <= 76
    pad = tokenizer.pad_token_id
    return out + [tokenizer.eos_token_id] + [pad] * (76 - len(out)), blocks


def run_encoder(encoder, chunk_ids: list[int], blocks: dict[int, torch.Tensor]):
    """All hidden states of one chunk with `blocks` of vectors in place of their token embeddings, and the
    final-layer-norm output."""
    tm = text_model(encoder)
    input_ids = torch.tensor([chunk_ids])
    with torch.no_grad():
        inputs_embeds = tm.embeddings.token_embedding(input_ids).clone()
        for start, block in blocks.items():
            inputs_embeds[0, start:start + block.shape[0]] = block
        h = tm.embeddings(inputs_embeds=inputs_embeds)  # + position embeddings
        n = h.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
        states = [h]
        for layer in tm.encoder.layers:
            h = layer(h, causal)
            h = h[0] if isinstance(h, tuple) else h
            states.append(h)
        return states, tm.final_layer_norm(states[-1])


def reference_sd1(pipe, chunks: list[list], weights: list[list[float]] | None = None) -> torch.Tensor:
    """SD1 conditioning (clip skip 1: last layer + final norm) of hand-laid chunks, with A1111's emphasis."""
    out = []
    for i, content in enumerate(chunks):
        chunk_ids, blocks = chunk_of(pipe.tokenizer, content)
        _, z = run_encoder(pipe.text_encoder, chunk_ids, blocks)
        if weights is not None:
            w = torch.tensor([1.0, *weights[i]] + [1.0] * (76 - len(weights[i])))
            scaled = z * w[None, :, None]
            z = scaled * (z.mean() / scaled.mean())
        out.append(z)
    return torch.cat(out, dim=1)


def reference_sdxl(pipe, content_l: list, content_g: list) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning of one chunk: penultimate layer of both encoders side by side, pooled from the second."""
    ids_l, blocks_l = chunk_of(pipe.tokenizer, content_l)
    ids_g, blocks_g = chunk_of(pipe.tokenizer_2, content_g)
    states_l, _ = run_encoder(pipe.text_encoder, ids_l, blocks_l)
    states_g, last_g = run_encoder(pipe.text_encoder_2, ids_g, blocks_g)
    eos = ids_g.index(pipe.tokenizer_2.eos_token_id)
    with torch.no_grad():
        pooled = pipe.text_encoder_2.text_projection(last_g[:, eos])
    return torch.cat([states_l[-2], states_g[-2]], dim=-1), pooled


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


def test_the_reference_is_the_encoder_on_plain_text(sd15, sdxl):
    """The hand-run encoder equals our conditioning where no embedding is involved (guards the reference)."""
    tok = ids(sd15.tokenizer, "1girl, smile")
    close(encode_prompts(sd15, "1girl, smile", "").prompt_embeds, reference_sd1(sd15, [tok]))
    cond = encode_prompts(sdxl, "1girl, smile", "lowres")
    embeds, pooled = reference_sdxl(sdxl, tok, ids(sdxl.tokenizer_2, "1girl, smile"))
    close(cond.prompt_embeds, embeds)
    close(cond.pooled_prompt_embeds, pooled)


# ---- files ------------------------------------------------------------------------------------------------


def write(path, data) -> None:
    if path.suffix == ".safetensors":
        save_file(data, str(path))
    else:
        torch.save(data, path)


@pytest.mark.parametrize("filename, layout", [
    ("a1111.pt", "string_to_param"),
    ("kohya.safetensors", "emb_params"),
    ("concept.bin", "diffusers-1d"),
    ("concept2.safetensors", "diffusers"),
])
def test_sd1_layouts_are_read_by_file_stem(tmp_path, filename, layout):
    vec = vectors(3 if layout != "diffusers-1d" else 1, seed=1)
    data = {
        "string_to_param": {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "other", "step": 500},
        "emb_params": {"emb_params": vec},
        "diffusers-1d": {"<cat-toy>": vec[0]},
        "diffusers": {"<cat-toy>": vec},
    }[layout]
    path = tmp_path / filename
    write(path, data)
    embedding = read_embedding(path, allow_pickle=True)
    assert embedding.name == path.stem  # A1111 names it by file, not by the name stored inside
    close(embedding.vectors, vec)
    assert embedding.count == vec.shape[0] and embedding.shape == WIDTH
    if layout == "string_to_param":
        assert embedding.step == 500


def test_pickled_embeddings_follow_the_pickle_policy(tmp_path):
    path = tmp_path / "easynegative.pt"
    write(path, {"string_to_param": {"*": vectors(2, seed=0)}})
    with pytest.raises(PickleRefusedError, match="easynegative.pt.*--allow-pickle"):
        read_embedding(path)
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": vectors(1, seed=0)}, "code": print}, evil)  # not weights-only
    with pytest.raises(AnimegenError, match="evil.pt.*weights-only"):
        read_embedding(evil, allow_pickle=True)


def test_sdxl_files_keep_one_set_of_vectors_per_encoder(tmp_path):
    path = tmp_path / "negativeXL.safetensors"
    write(path, {"clip_l": vectors(2, seed=1), "clip_g": vectors(2, seed=2, width=80)})
    embedding = read_embedding(path)
    close(embedding.vectors["clip_l"], vectors(2, seed=1))
    close(embedding.vectors["clip_g"], vectors(2, seed=2, width=80))
    assert embedding.count == 2 and embedding.shape == WIDTH + 80  # A1111's shape: the widths summed


@pytest.mark.parametrize("data, message", [
    ({"a": vectors(1, 0), "b": vectors(1, 1)}, "not a textual-inversion embedding.*found a, b"),
    ({"clip_l": vectors(2, 0), "clip_g": vectors(3, 1)}, "clip_l has 2 vectors but clip_g 3"),
    ({"emb_params": torch.zeros(2, 3, 4)}, "shape \\(vectors, width\\), found \\(2, 3, 4\\)"),
])
def test_files_that_are_not_embeddings_are_refused_naming_the_file(tmp_path, data, message):
    path = tmp_path / "thing.safetensors"
    write(path, data)
    with pytest.raises(AnimegenError, match=f"thing.safetensors.*{message}") as info:
        read_embedding(path)
    assert "\n" not in str(info.value)


def library_with(tmp_path, files: dict[str, dict], **kwargs) -> EmbeddingLibrary:
    folder = tmp_path / "embeddings"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        write(folder / name, data)
    return EmbeddingLibrary(folder, **kwargs)


@pytest.mark.parametrize("arch, data, expected", [
    ("sd15", {"emb_params": vectors(2, 0, width=768)}, "768 wide.*needs 64 wide \\(CLIP-L\\).*another model family"),
    ("sd15", {"clip_l": vectors(2, 0), "clip_g": vectors(2, 1)}, "is an SDXL embedding.*use an embedding made for SD1"),
    ("sdxl", {"emb_params": vectors(2, 0)}, ("one-encoder \\(SD1/SD2\\) embedding.*needs clip_l 64 wide "
                                             "\\(CLIP-L\\) and clip_g 64 wide \\(OpenCLIP-bigG\\): use an SDXL embedding")),
    ("sdxl", {"clip_l": vectors(2, 0), "clip_g": vectors(2, 1, width=1280)}, "clip_g 1280 wide.*another model"),
])
def test_an_embedding_of_another_family_or_width_is_refused_naming_the_file(
        tmp_path, sd15, sdxl, arch, data, expected):
    pipe = sd15 if arch == "sd15" else sdxl
    library = library_with(tmp_path, {"wrongfit.safetensors": data})
    with pytest.raises(AnimegenError, match=f"'wrongfit' \\(.*wrongfit.safetensors\\).*{expected}") as info:
        encode_prompts(pipe, "1girl, wrongfit", "", embeddings=library)
    assert "\n" not in str(info.value)
    encode_prompts(pipe, "1girl, smile", "", embeddings=library)  # unused, it is no problem
    assert library.listing(pipe)["skipped"] == {"wrongfit": {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
        "shape": sum(t.shape[1] for t in data.values()), "vectors": 2}}


# ---- prompts ----------------------------------------------------------------------------------------------


def test_sd1_name_becomes_its_vectors_in_prompt_and_negative(tmp_path, sd15):
    vec = vectors(3, seed=5)
    library = library_with(tmp_path, {"easynegative.safetensors": {"emb_params": vec}})
    tok = sd15.tokenizer
    cond = encode_prompts(sd15, "1girl, EasyNegative, smile", "easynegative", embeddings=library)
    close(cond.prompt_embeds, reference_sd1(sd15, [[*ids(tok, "1girl,"), vec, *ids(tok, ", smile")]]))
    close(cond.negative_prompt_embeds, reference_sd1(sd15, [[vec]]))
    # a longer word is not the name: A1111 matches whole tokens
    plain = encode_prompts(sd15, "easynegatives", "").prompt_embeds
    close(encode_prompts(sd15, "easynegatives", "", embeddings=library).prompt_embeds, plain)


def test_weights_apply_to_the_vectors(tmp_path, sd15):
    vec = vectors(2, seed=6)
    library = library_with(tmp_path, {"easynegative.safetensors": {"emb_params": vec}})
    tok = sd15.tokenizer
    head = ids(tok, "lowres,")
    cond = encode_prompts(sd15, "lowres, (easynegative:1.2)", "", embeddings=library)
    expected = reference_sd1(sd15, [[*head, vec]], weights=[[1.0] * len(head) + [1.2, 1.2]])
    close(cond.prompt_embeds, expected)


def test_the_longest_name_wins(tmp_path, sd15):
    library = library_with(tmp_path, {"bad.safetensors": {"emb_params": vectors(1, 1)},
                                      "bad_prompt.safetensors": {"emb_params": vectors(4, 2)}})
    chunk = tokenize_prompt(sd15.tokenizer, "bad_prompt, bad anatomy, badly drawn", embeddings=library)[0]
    assert [(offset, e.name) for offset, e in chunk.fixes] == [(0, "bad_prompt"), (5, "bad")]
    assert len(chunk.tokens) == 4 + 1 + 1 + 1 + 1 + 2  # vectors, ",", bad, anatomy, ",", badly drawn


def test_an_embedding_is_never_split_across_chunks(tmp_path, sd15):
    vec = vectors(5, seed=7)
    library = library_with(tmp_path, {"charname.safetensors": {"emb_params": vec}})
    cat = ids(sd15.tokenizer, "cat")
    cond = encode_prompts(sd15, "cat " * 73 + "charname", "", embeddings=library)
    close(cond.prompt_embeds, reference_sd1(sd15, [cat * 73, [vec]]), tol=2e-5)  # 73 + 5 > 75: next chunk


def test_comma_backtracking_moves_the_embedding_with_its_vectors(tmp_path, sd15):
    """Deliberately unlike A1111 (see `prompts.encode`): its vectors follow the words moved to the next chunk."""
    vec = vectors(5, seed=8)
    library = library_with(tmp_path, {"charname.safetensors": {"emb_params": vec}})
    tok = sd15.tokenizer
    cat, dog, bird, comma = ids(tok, "cat"), ids(tok, "dog"), ids(tok, "bird"), ids(tok, ",")
    prompt = "cat " * 60 + ", dog charname " + "cat " * 8 + "bird"  # 75 tokens before bird, last comma 15 back
    cond = encode_prompts(sd15, prompt, "", embeddings=library)
    expected = reference_sd1(sd15, [cat * 60 + comma, [*dog, vec, *(cat * 8), *bird]])
    close(cond.prompt_embeds, expected, tol=2e-5)


def test_sdxl_encoders_each_get_their_own_vectors(tmp_path, sdxl):
    vec_l, vec_g = vectors(2, seed=9), vectors(2, seed=10)
    library = library_with(tmp_path, {"negativeXL.safetensors": {"clip_l": vec_l, "clip_g": vec_g}})
    cond = encode_prompts(sdxl, "1girl, negativexl", "negativeXL", embeddings=library)
    head_l, head_g = ids(sdxl.tokenizer, "1girl,"), ids(sdxl.tokenizer_2, "1girl,")
    embeds, pooled = reference_sdxl(sdxl, [*head_l, vec_l], [*head_g, vec_g])
    close(cond.prompt_embeds, embeds)
    close(cond.pooled_prompt_embeds, pooled)
    neg_embeds, neg_pooled = reference_sdxl(sdxl, [vec_l], [vec_g])
    close(cond.negative_prompt_embeds, neg_embeds)
    close(cond.negative_pooled_prompt_embeds, neg_pooled)


# ---- generation, CLI, server ------------------------------------------------------------------------------

SMALL = ["--steps", "1", "--width", "64", "--height", "64", "--device", "cpu"]


def test_cli_embeddings_dir_and_ti_hashes_infotext(tmp_path, tiny_sd15_dir):
    from typer.testing import CliRunner

    from animegen.cli.main import app
    from animegen.generate.infotext import parse_infotext, read_png_infotext

    library = library_with(tmp_path, {"easynegative.safetensors": {"emb_params": vectors(2, 11)},
                                      "bad:hands.pt": {"string_to_param": {"*": vectors(1, 12)}}})
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["generate", "1girl", "--negative-prompt", "easynegative, bad:hands", "--model", str(tiny_sd15_dir),
            "--embeddings-dir", str(library.folder), "--seed", "1", "--out", str(out), "--layout", "flat", *SMALL]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "bad:hands.pt" in refused.output and "--allow-pickle" in refused.output
    r = runner.invoke(app, [*args, "--allow-pickle"])
    assert r.exit_code == 0, r.output
    params = parse_infotext(read_png_infotext(out / "00000-1.png"))
    digest = {n: hashlib.sha256((library.folder / n).read_bytes()).hexdigest()[:12]
              for n in ("easynegative.safetensors", "bad:hands.pt")}
    # A1111: "name: shorthash", with ':' and ',' taken out of the name
    assert params["TI hashes"] == (f"easynegative: {digest['easynegative.safetensors']}, "
                                   f"badhands: {digest['bad:hands.pt']}")


def test_server_lists_and_uses_embeddings(tmp_path, tiny_sd15_dir):
    from fastapi.testclient import TestClient

    from animegen.generate.infotext import parse_infotext
    from animegen.serve.app import create_app
    from animegen.serve.config import ServeConfig

    library = library_with(tmp_path, {"easynegative.safetensors": {"emb_params": vectors(2, 13)},
                                      "negativeXL.safetensors": {"clip_l": vectors(1, 1), "clip_g": vectors(1, 2)},
                                      "old.pt": {"string_to_param": {"*": vectors(1, 3)}}})
    outside = tmp_path / "outside.safetensors"
    write(outside, {"emb_params": vectors(1, 4)})
    (library.folder / "leak.safetensors").symlink_to(outside)
    config = ServeConfig(model=str(tiny_sd15_dir), embeddings_dir=library.folder, ui=False)
    with TestClient(create_app(config)) as client:
        listing = client.get("/sdapi/v1/embeddings").json()
        assert listing["loaded"] == {"easynegative": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                      "shape": WIDTH, "vectors": 2}}
        assert set(listing["skipped"]) == {"negativeXL", "old"}  # the server never unpickles; no symlink escape
        body = {"prompt": "1girl", "negative_prompt": "easynegative", "steps": 1, "width": 64, "height": 64}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        infotext = json.loads(response.json()["info"])["infotexts"][0]
        assert parse_infotext(infotext)["TI hashes"].startswith("easynegative: ")
