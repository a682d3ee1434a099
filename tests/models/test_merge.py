"""Checkpoint merges (models/merge.py) against hand-computed references on tiny SD1.5 and SDXL files."""

from __future__ import annotations

import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from animegen.models import merge as merge_module
from animegen.models.merge import MergeError, block_names, block_weights, merge_checkpoints

UNET = "model.diffusion_model."


def _perturbed(src, dst, seed: int, drop=(), add=None, dtype=None):
    """A copy of checkpoint `src` with every float tensor moved by seeded noise (a 'fine-tune' of it)."""
    g = torch.Generator().manual_seed(seed)
    sd = load_file(str(src))
    out = {}
    for k, v in sd.items():
        if k in drop:
            continue
        if v.is_floating_point() and v.numel():
            v = v + 0.1 * torch.randn(v.shape, generator=g)
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    out.update(add or {})
    save_file(out, str(dst))
    return dst


@pytest.fixture(scope="module")
def sd15_files(tmp_path_factory):
    from animegen.models.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("merge_sd15")
    a = root / "a.safetensors"
    save_tiny_model("sd15", single_file=a, seed=0)
    return a, _perturbed(a, root / "b.safetensors", 1), _perturbed(a, root / "c.safetensors", 2)


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory):
    from animegen.models.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("merge_sdxl")
    a = root / "a.safetensors"
    save_tiny_model("sdxl", single_file=a, seed=0)
    return a, _perturbed(a, root / "b.safetensors", 1)


def _float_keys(sd):
    return [k for k, v in sd.items() if v.is_floating_point() and not k.endswith("position_ids")]


def test_weighted_sum_is_one_minus_alpha_a_plus_alpha_b(sd15_files, tmp_path):
    a, b, _ = sd15_files
    out = tmp_path / "ws.safetensors"
    report = merge_checkpoints(a, b, alpha=0.3, out=out)
    A, B, M = load_file(str(a)), load_file(str(b)), load_file(str(out))
    assert M.keys() == A.keys()
    for k in _float_keys(A):
        torch.testing.assert_close(M[k], (1 - 0.3) * A[k] + 0.3 * B[k], rtol=0, atol=1e-6)
        assert M[k].dtype == A[k].dtype
    assert report.merged == len(_float_keys(A))


def test_add_difference_is_a_plus_alpha_b_minus_c(sd15_files, tmp_path):
    a, b, c = sd15_files
    out = tmp_path / "ad.safetensors"
    merge_checkpoints(a, b, c, mode="add_difference", alpha=0.7, out=out)
    A, B, C, M = (load_file(str(p)) for p in (a, b, c, out))
    for k in _float_keys(A):
        torch.testing.assert_close(M[k], A[k] + 0.7 * (B[k] - C[k]), rtol=0, atol=1e-6)


def _distinct_alphas(names):
    return {n: round(0.01 * (i + 1), 2) for i, n in enumerate(names)}


def test_block_weights_follow_supermerger_blocks_sd15(sd15_files, tmp_path):
    from animegen.models.family import SD1

    a, b, _ = sd15_files
    names = block_names(SD1.config("unet"))
    assert names[:2] == ("BASE", "IN00") and "IN11" in names and "M00" in names and names[-2:] == ("OUT11", "VAE")
    alphas = _distinct_alphas([n for n in names if n != "VAE"])
    out = tmp_path / "mbw.safetensors"
    merge_checkpoints(a, b, alpha=alphas, out=out)
    A, B, M = (load_file(str(p)) for p in (a, b, out))

    def expect(key, block):
        w = alphas[block]
        torch.testing.assert_close(M[key], (1 - w) * A[key] + w * B[key], rtol=0, atol=1e-6)

    in03 = [k for k in A if k.startswith(UNET + "input_blocks.3.")]
    assert in03
    for k in in03:
        expect(k, "IN03")
    for k in [k for k in A if k.startswith(UNET + "output_blocks.7.")]:
        expect(k, "OUT07")
    expect(UNET + "middle_block.1.proj_in.weight", "M00")
    expect(UNET + "time_embed.0.weight", "IN00")
    expect(UNET + "out.2.weight", "OUT11")
    te = [k for k in _float_keys(A) if k.startswith("cond_stage_model.")]
    for k in te:
        expect(k, "BASE")
    expect("first_stage_model.decoder.conv_out.weight", "BASE")  # VAE takes BASE unless named


def test_block_weights_sdxl_have_nine_in_and_out_blocks(sdxl_files, tmp_path):
    from animegen.models.family import SDXL

    a, b = sdxl_files
    names = block_names(SDXL.config("unet"))
    assert names == ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)), "VAE")
    alphas = _distinct_alphas(names)
    out = tmp_path / "xl.safetensors"
    merge_checkpoints(a, b, alpha=alphas, out=out)
    A, B, M = (load_file(str(p)) for p in (a, b, out))
    for key, block in ((UNET + "input_blocks.8.1.proj_in.weight", "IN08"),
                       (UNET + "output_blocks.8.0.skip_connection.weight", "OUT08"),
                       (UNET + "label_emb.0.0.weight", "IN00"),
                       ("conditioner.embedders.1.model.ln_final.weight", "BASE"),
                       ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", "BASE"),
                       ("first_stage_model.decoder.conv_out.weight", "VAE")):
        w = alphas[block]
        torch.testing.assert_close(M[key], (1 - w) * A[key] + w * B[key], rtol=0, atol=1e-6)


def test_supermerger_comma_list(sd15_files):
    from animegen.models.family import SD1

    config = SD1.config("unet")
    weights = block_weights(",".join(str(i / 100) for i in range(26)), config)
    assert weights["BASE"] == 0.0 and weights["IN03"] == 0.04 and weights["M00"] == 0.13 and weights["OUT11"] == 0.25
    with pytest.raises(MergeError, match="need 26 numbers"):
        block_weights("0.5,0.5", config)


def test_block_weight_errors_name_the_blocks(sd15_files, tmp_path):
    a, b, _ = sd15_files
    with pytest.raises(MergeError, match="unknown block"):
        merge_checkpoints(a, b, alpha={"IN12": 0.5}, out=tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="miss"):
        merge_checkpoints(a, b, alpha={"BASE": 0.5, "IN03": 0.2}, out=tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="needs a third model"):
        merge_checkpoints(a, b, mode="add_difference", out=tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_checkpoints(a, b, out=a)
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_keys_as_supermerger(sd15_files, tmp_path):
    a, _, _ = sd15_files
    gone = UNET + "input_blocks.1.1.proj_in.weight"
    b = _perturbed(a, tmp_path / "b_partial.safetensors", 3, drop={gone}, add={"extra.only_in_b": torch.ones(3)})
    out = tmp_path / "m.safetensors"
    report = merge_checkpoints(a, b, alpha=0.5, out=out)
    A, M = load_file(str(a)), load_file(str(out))
    assert torch.equal(M[gone], A[gone])  # missing in B: A's tensor
    assert torch.equal(M["extra.only_in_b"], torch.ones(3))  # only in B: copied from B
    assert gone in report.kept_from_a and report.added_from_b == ["extra.only_in_b"]


def test_dtype_of_a_is_kept(sd15_files, tmp_path):
    a, b, _ = sd15_files
    a16 = _perturbed(a, tmp_path / "a16.safetensors", 4, dtype=torch.float16)
    out = tmp_path / "m16.safetensors"
    merge_checkpoints(a16, b, alpha=0.25, out=out)
    A, B, M = (load_file(str(p)) for p in (a16, b, out))
    k = UNET + "input_blocks.4.1.proj_in.weight"
    assert M[k].dtype == torch.float16
    torch.testing.assert_close(M[k], ((0.75 * A[k].float() + 0.25 * B[k]).half()), rtol=0, atol=0)


def test_merge_streams_a_few_tensors_at_a_time(sd15_files, tmp_path, monkeypatch):
    a, b, c = sd15_files
    live = {"now": 0, "max": 0, "read": 0}

    def dead():
        live["now"] -= 1

    class Counting:
        def __init__(self, handle):
            self._h = handle

        def __enter__(self):
            self._inner = self._h.__enter__()
            return self

        def __exit__(self, *exc):
            return self._h.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def get_tensor(self, key):
            t = self._inner.get_tensor(key)
            live["now"] += 1
            live["read"] += 1
            live["max"] = max(live["max"], live["now"])
            weakref.finalize(t, dead)
            return t

    real = merge_module._open_safetensors
    monkeypatch.setattr(merge_module, "_open_safetensors", lambda path: Counting(real(path)))
    out = tmp_path / "stream.safetensors"
    merge_checkpoints(a, b, c, mode="add_difference", alpha=0.5, out=out)
    n_keys = len(load_file(str(a)))
    assert live["read"] >= 3 * len(_float_keys(load_file(str(a))))  # every tensor went through the reader
    assert live["max"] <= 4, f"{live['max']} tensors alive at once (of {n_keys} keys per model)"


def test_merged_file_loads_with_the_project_loader(sd15_files, tmp_path):
    from animegen.models.loading import load_pipeline

    a, b, _ = sd15_files
    out = tmp_path / "load.safetensors"
    merge_checkpoints(a, b, alpha=0.5, out=out)
    pipe = load_pipeline(out, device="cpu", dtype="float32")
    A, B = load_file(str(a)), load_file(str(b))
    k = UNET + "input_blocks.1.1.proj_in.weight"
    torch.testing.assert_close(pipe.unet.down_blocks[0].attentions[0].proj_in.weight.detach(),
                               0.5 * A[k] + 0.5 * B[k], rtol=0, atol=1e-6)


def test_diffusers_folders_merge_per_block(tiny_sd15_dir, tmp_path):
    import shutil

    from animegen.models.loading import load_pipeline

    b_dir = tmp_path / "b"
    shutil.copytree(tiny_sd15_dir, b_dir)
    for f in b_dir.rglob("*.safetensors"):
        _perturbed(f, f, 5)
    names = block_names(__import__("json").loads((tiny_sd15_dir / "unet" / "config.json").read_text()))
    alphas = _distinct_alphas([n for n in names if n != "VAE"])
    out = tmp_path / "merged"
    merge_checkpoints(tiny_sd15_dir, b_dir, alpha=alphas, out=out)
    ua = load_file(str(tiny_sd15_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    ub = load_file(str(b_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    um = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    k = "down_blocks.1.attentions.0.proj_in.weight"  # LDM input_blocks.4.1 -> IN04
    w = alphas["IN04"]
    torch.testing.assert_close(um[k], (1 - w) * ua[k] + w * ub[k], rtol=0, atol=1e-6)
    k = "up_blocks.3.resnets.2.conv2.weight"  # LDM output_blocks.11.0 -> OUT11
    w = alphas["OUT11"]
    torch.testing.assert_close(um[k], (1 - w) * ua[k] + w * ub[k], rtol=0, atol=1e-6)
    ta = load_file(str(tiny_sd15_dir / "text_encoder" / "model.safetensors"))
    tb = load_file(str(b_dir / "text_encoder" / "model.safetensors"))
    tm = load_file(str(out / "text_encoder" / "model.safetensors"))
    k = next(k for k in ta if k.endswith("fc1.weight"))
    w = alphas["BASE"]
    torch.testing.assert_close(tm[k], (1 - w) * ta[k] + w * tb[k], rtol=0, atol=1e-6)
    pipe = load_pipeline(out, device="cpu", dtype="float32")
    assert pipe.unet is not None and (out / "tokenizer").is_dir()


def test_cli_merge_with_block_overrides(sd15_files, tmp_path):
    from typer.testing import CliRunner

    from animegen.cli.tools import tools_app

    a, b, _ = sd15_files
    out = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(tools_app, ["merge", str(a), str(b), "--out", str(out), "--alpha", "0.2",
                                            "--block", "IN03=0.9"])
    assert result.exit_code == 0, result.output
    A, B, M = (load_file(str(p)) for p in (a, b, out))
    for key, w in ((UNET + "input_blocks.3.0.op.weight", 0.9), (UNET + "input_blocks.4.1.proj_in.weight", 0.2)):
        torch.testing.assert_close(M[key], (1 - w) * A[key] + w * B[key], rtol=0, atol=1e-6)
    bad = CliRunner().invoke(tools_app, ["merge", str(a), str(b), "--out", str(out), "--block", "IN99=1"])
    assert bad.exit_code == 2 and "unknown block" in bad.output


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, animegen.cli.tools; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
