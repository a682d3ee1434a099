"""A DoRA trained by animegen exports as a LyCORIS DoRA file (issue #16): per layer `lora_down`/`lora_up`/
`alpha` plus the magnitude `dora_scale` (one per output row, LyCORIS' `wd_on_out`: (out, 1) for a Linear,
(out, 1, 1, 1) for a conv), never a full weight difference; the header says so as LyCORIS writes it
(`lycoris.kohya`, `{"algo": "lora", "dora_wd": "True"}`). Read back by our reader and merged into a fresh
base, it gives the UNet output of the trained adapter (peft's own merge of it, and its unmerged forward).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from train_helpers import RED, tiny_config, write_kohya

from animegen.models.lora import LoraFile, apply_loras, read_lora, remove_loras, write_lora
from animegen.models.tiny import build_tiny_pipeline
from animegen.train.adapters import prepare_models
from animegen.train.checkpoint import list_checkpoints, load_checkpoint
from animegen.train.trainer import train


def _unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, hidden = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, pipe.unet.config.cross_attention_dim,
                                                                     generator=g)
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([500]), hidden).sample


@pytest.fixture(scope="module")
def dora_run(tiny_sd15_dir, tmp_path_factory):
    """A 4-step DoRA run (attention, feed-forward and convolutions) and the trained weights at its end."""
    root = tmp_path_factory.mktemp("dora")
    cfg = tiny_config(tiny_sd15_dir, write_kohya(root / "data", "red", RED, "zxq, 1girl"), root / "run",
                      adapter={"kind": "dora", "rank": 4, "alpha": 2.0, "targets": "attention_ff_conv"},
                      optimizer={"name": "adamw", "lr": 2e-2, "scheduler": "constant"},
                      checkpoint={"every_steps": 4, "keep_last": 1})
    result = train(cfg)
    weights = load_checkpoint(list_checkpoints(result.output_dir)[-1])["weights"]
    return cfg, result.exported["kohya"], weights


def _trained_pipe(cfg, weights):
    """The tiny base with the trained peft DoRA adapter in it (what the run ended with)."""
    pipe = build_tiny_pipeline("sd15", seed=0)
    modules = prepare_models(pipe, cfg.adapter, gradient_checkpointing=False)
    with torch.no_grad():
        for component, module in modules.items():
            for name, p in module.named_parameters():
                if p.requires_grad:
                    p.copy_(weights[f"{component}.{name}"])
    return pipe, modules


def test_dora_file_holds_dora_scale_and_no_full_weights(dora_run):
    cfg, path, weights = dora_run
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert not {k for k in keys if k.endswith((".diff", ".diff_b"))}
    modules = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".dora_scale")}
    assert len(modules) >= 10  # every adapted layer, not a few
    for base in modules:
        assert {f"{base}.lora_down.weight", f"{base}.lora_up.weight", f"{base}.alpha"} <= keys
        out = shapes[f"{base}.lora_up.weight"][0]
        conv = len(shapes[f"{base}.lora_down.weight"]) == 4
        assert shapes[f"{base}.dora_scale"] == ((out, 1, 1, 1) if conv else (out, 1))
    assert any(len(shapes[f"{b}.lora_down.weight"]) == 4 for b in modules)  # convs too
    assert all(k.rsplit(".", 2)[0] in modules or k.rsplit(".", 1)[0] in modules for k in keys)
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == "lora" and args["dora_wd"] == "True"
    # one magnitude per adapted layer, each exported (the checkpoint holds what was trained)
    magnitudes = [v for k, v in weights.items() if "lora_magnitude_vector" in k]
    assert magnitudes and len(magnitudes) == len(modules)


def test_dora_file_reproduces_the_trained_adapter(dora_run):
    cfg, path, weights = dora_run
    trained, modules = _trained_pipe(cfg, weights)
    unmerged = _unet_out(trained)
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in modules["unet"].modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.merge(adapter_names=["default"])  # peft's own DoRA merge: W' = m · V / ‖V‖ per output row
    merged = _unet_out(trained)

    base = build_tiny_pipeline("sd15", seed=0)
    before = _unet_out(base)
    lora = read_lora(path)
    assert {m.kind for m in lora.modules.values()} == {"lora"}
    assert all("dora_scale" in m.tensors for m in lora.modules.values())
    apply_loras(base, [(lora, 1.0)])
    try:
        got = _unet_out(base)
    finally:
        remove_loras(base)
    assert (merged - before).abs().max() > 1e-3  # the training did change the output
    torch.testing.assert_close(got, merged, atol=1e-5, rtol=0)  # measured: 5e-7 of an effect of 0.85
    torch.testing.assert_close(got, unmerged, atol=1e-5, rtol=0)  # peft's own forward, the run's model


def test_dora_file_is_much_smaller_than_full_differences(dora_run):
    cfg, path, weights = dora_run
    trained, modules = _trained_pipe(cfg, weights)
    from peft.tuners.tuners_utils import BaseTunerLayer

    full_bytes = sum(4 * layer.get_base_layer().weight.numel()  # fp32 `diff` of every adapted weight
                     for layer in modules["unet"].modules() if isinstance(layer, BaseTunerLayer))
    with safe_open(str(path), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert stored < 0.5 * full_bytes, (stored, full_bytes)
    assert path.stat().st_size < 0.6 * full_bytes


def test_rewritten_dora_file_keeps_its_lycoris_header(dora_run, tmp_path):
    """`write_lora` derives the header from the modules alone: their dora_scale makes it a LyCORIS DoRA."""
    cfg, path, weights = dora_run
    lora = read_lora(path)
    write_lora(LoraFile(lora.modules, {}), tmp_path / "again.safetensors")
    with safe_open(str(tmp_path / "again.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": "lora", "dora_wd": "True"}
    assert read_lora(tmp_path / "again.safetensors") == lora
