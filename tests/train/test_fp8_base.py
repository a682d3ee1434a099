"""`model.base_dtype = "fp8"` (kohya's `--fp8_base`): the frozen UNet's Linear/Conv weights stored as float8_e4m3fn.

Measured on the tiny SD1.5 UNet with a rank-4 LoRA, fp8 storage vs fp32, relative L2 error of the UNet's output
over seeds 0, 1, 2: 0.082, 0.091, 0.099 (random tiny weights; e4m3 rounds each weight by up to 2^-4 relative, the
weights as a whole by 2.6% RMS, and the tiny net amplifies that); the bound below is 3x the worst, 0.30.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config, write_kohya

from animegen.train import adapters
from animegen.train.config import AdapterSection, ConfigError, validate_config
from animegen.train.trainer import Trainer

TOLERANCE = 0.30  # 3x the worst measured relative error (0.099, see the module docstring)


def _lora_unet(kind: str = "lora"):
    from animegen.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15")
    cfg = AdapterSection(kind=kind, rank=4, alpha=4.0)
    torch.manual_seed(0)
    adapters.attach(pipe.unet, cfg, adapters.unet_targets(cfg), ["ff.net.2"])
    return pipe.unet


def _frozen_bytes(unet) -> tuple[int, int]:
    """(bytes of the frozen Linear/Conv2d weights, bytes of every frozen parameter), by element size."""
    weights = total = 0
    for name, p in unet.named_parameters():
        if p.requires_grad:
            continue
        size = p.numel() * p.element_size()
        total += size
        if name.endswith((".weight", ".parametrizations.weight.original")) and p.dim() in (2, 4):
            weights += size
    return weights, total


def _inputs(unet, seed: int):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([100, 700]), hidden


def test_frozen_weights_take_a_quarter_of_the_bytes():
    unet = _lora_unet()
    adapter_before = {n: (p.dtype, p.numel()) for n, p in unet.named_parameters() if p.requires_grad}
    weights_fp32, total_fp32 = _frozen_bytes(unet)
    converted = adapters.store_frozen_fp8(unet, torch.float32)
    weights_fp8, total_fp8 = _frozen_bytes(unet)
    assert converted > 0
    assert weights_fp32 == 4 * weights_fp8
    assert total_fp32 / total_fp8 > 3.8  # measured 3.88: biases and norms (kept as they are) are the rest
    # the adapter's own weights are untouched, and the model still reports its compute dtype
    assert {n: (p.dtype, p.numel()) for n, p in unet.named_parameters() if p.requires_grad} == adapter_before
    assert unet.dtype == torch.float32
    assert adapters.store_frozen_fp8(unet, torch.float32) == 0  # idempotent


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_forward_with_fp8_storage_stays_close_to_fp32(kind):
    unet = _lora_unet(kind)
    with torch.no_grad():
        reference = [unet(*_inputs(unet, s)).sample for s in range(3)]
        adapters.store_frozen_fp8(unet, torch.float32)
        errors = [float((unet(*_inputs(unet, s)).sample - ref).norm() / ref.norm()) for s, ref in enumerate(reference)]
    assert all(0 < e < TOLERANCE for e in errors), errors  # > 0: the weights really were rounded


def test_full_fine_tune_with_fp8_base_is_refused():
    with pytest.raises(ConfigError, match=r"model\.base_dtype"):
        validate_config({"model": {"base": "x", "base_dtype": "fp8"}, "adapter": {"kind": "full"}})
    assert validate_config({"model": {"base": "x", "base_dtype": "fp8"}}).model.base_dtype == "fp8"


def _unet_output(unet) -> torch.Tensor:
    with torch.no_grad():
        return unet(*_inputs(unet, 0)).sample


def test_short_run_with_fp8_base_trains_the_adapter_and_exports_a_loadable_lora(tiny_sd15_dir, tmp_path):
    from animegen.models.lora import apply_loras, read_lora
    from animegen.train.trainer import load_base

    data = write_kohya(tmp_path / "data", "red", (230, 20, 20), "sks, 1girl", n=4)
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run", model={"base_dtype": "fp8"}, train={"max_steps": 3})
    start = Trainer(cfg)
    start.setup()  # the same seed initialises the adapter the run starts from
    unet = start.pipe.unet
    stored = [p.dtype for n, p in unet.named_parameters() if n.endswith(".original")]
    assert set(stored) == {torch.float8_e4m3fn}
    assert {p.dtype for p in start.params} == {torch.float32}  # the adapter trains in fp32
    assert {p.dtype for p in start.pipe.text_encoder.parameters()} == {torch.float32}  # not touched
    initial = start.trained_weights()

    trainer = Trainer(cfg)
    result = trainer.run()
    trained = trainer.trained_weights()
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(not torch.equal(trained[k], initial[k]) for k in trained if "lora_B" in k)  # all started at 0

    fp8 = [p for n, p in trainer.pipe.unet.named_parameters() if n.endswith(".original")]
    assert [p.dtype for p in fp8] == stored  # every one stored in fp8 again after the export merged it

    lora_file = result.exported["kohya"]
    assert all("lora" in k or k.endswith(".alpha") for k in load_file(str(lora_file)))  # the base is not exported
    base = load_base(cfg, "cpu")  # an ordinary fp32 base, as generation loads it
    before = _unet_output(base.unet)
    reference = load_base(cfg, "cpu")  # the trained adapter on an fp32 base: what the file must reproduce
    adapters.prepare_models(reference, cfg.adapter, gradient_checkpointing=False)
    with torch.no_grad():
        for name, p in reference.unet.named_parameters():
            if p.requires_grad:
                p.copy_(trained[f"unet.{name}"])
    want = _unet_output(reference.unet)
    apply_loras(base, [(read_lora(lora_file), 1.0)])
    got = _unet_output(base.unet)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (want - before).abs().max() > 1e-4  # the LoRA does change the output
