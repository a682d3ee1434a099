"""IP-Adapter (issue #15): real key layouts load, weight 0 / outside the guidance range is the plain UNet, the image
changes the output, and the attention equals a hand-written softmax(QK^T)V + scale * softmax(QK_ip^T)V_ip."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from animegen.generate.controlnet import ControlUnit
from animegen.generate.ip_adapter import IPAdapterRun, is_ip_adapter_unit, read_ip_adapter
from animegen.models.tiny import build_tiny_pipeline
from animegen.models.tiny_ip_adapter import save_tiny_ip_adapter


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request, tmp_path_factory):
    pipe = build_tiny_pipeline(request.param)
    paths = save_tiny_ip_adapter(tmp_path_factory.mktemp("ipa"), pipe.unet, request.param)
    return request.param, pipe.unet, paths


def _inputs(unet, arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500.0, 500.0])
    embeds = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    extra = {}
    if arch == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, unet.config.projection_class_embeddings_input_dim
                                                                 - 6 * unet.config.addition_time_embed_dim, generator=g),
                                      "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)}
    return x, t, embeds, torch.tensor([0.0, 1.0]), extra


def _plain(unet, x, t, embeds, extra):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=embeds, return_dict=False, **extra)[0]


def _unit(path, image, **kw):
    return ControlUnit(model=path, image=image, preprocessor="ip-adapter_clip_sd15", **kw)


RED, BLUE = Image.new("RGB", (40, 48), (220, 30, 30)), Image.new("RGB", (40, 48), (20, 40, 230))


@pytest.mark.parametrize("kind", ["plain", "plus"])
def test_real_layout_loads_and_image_changes_output(setup, kind):
    arch, unet, paths = setup
    state = read_ip_adapter(paths[kind])
    assert any(k.startswith("1.to_k_ip") for k in state["ip_adapter"])  # h94's odd numbering
    x, t, embeds, mark, extra = _inputs(unet, arch)
    red = IPAdapterRun([_unit(paths[kind], RED)], unet, 10).forward(unet, x, t, embeds, mark, extra)
    blue = IPAdapterRun([_unit(paths[kind], BLUE)], unet, 10).forward(unet, x, t, embeds, mark, extra)
    plain = _plain(unet, x, t, embeds, extra)
    assert not torch.allclose(red[0], plain[0], atol=1e-5)
    assert not torch.allclose(red[0], blue[0], atol=1e-5)  # the image, not just the adapter, matters
    # negative rows get the uncond (zero-image) tokens: the same for both images
    assert torch.allclose(red[1], blue[1], atol=1e-6)


def test_weight_zero_and_outside_range_are_plain_bit_exact(setup):
    arch, unet, paths = setup
    x, t, embeds, mark, extra = _inputs(unet, arch)
    plain = _plain(unet, x, t, embeds, extra)
    zero = IPAdapterRun([_unit(paths["plain"], RED, weight=0.0)], unet, 10)
    assert torch.equal(zero.forward(unet, x, t, embeds, mark, extra), plain)
    late = IPAdapterRun([_unit(paths["plain"], RED, guidance_start=0.5, guidance_end=1.0)], unet, 10)
    late.on_step({"i": 4})
    assert torch.equal(late.forward(unet, x, t, embeds, mark, extra), plain)
    late.on_step({"i": 5})
    assert not torch.equal(late.forward(unet, x, t, embeds, mark, extra), plain)
    assert torch.equal(_plain(unet, x, t, embeds, extra), plain)  # the UNet's processors were restored


def test_attention_equals_hand_written_reference(setup):
    arch, unet, paths = setup
    if arch != "sd15":
        pytest.skip("one architecture suffices for the formula")
    run = IPAdapterRun([_unit(paths["plain"], RED, weight=0.7)], unet, 10)
    name = next(n for n in run.processors if n.endswith("attn2.processor"))
    attn = unet.get_submodule(name[: -len(".processor")])
    proc = run.processors[name]
    proc.scale = [0.7]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 16, attn.to_q.in_features, generator=g)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    ip = torch.randn(2, 4, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        got = proc(attn, h, encoder_hidden_states=(text, [ip]))

        def heads(z):
            return z.view(2, z.shape[1], attn.heads, -1).transpose(1, 2)

        def sdpa(q, k, v):
            w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (heads(q).shape[-1] ** 0.5), dim=-1)
            return (w @ heads(v)).transpose(1, 2).reshape(2, q.shape[1], -1)

        q = attn.to_q(h)
        mixed = sdpa(q, attn.to_k(text), attn.to_v(text)) + 0.7 * sdpa(q, proc.to_k_ip[0](ip), proc.to_v_ip[0](ip))
        want = attn.to_out[1](attn.to_out[0](mixed))
        if attn.residual_connection:
            want = want + h
        want = want / attn.rescale_output_factor
    assert torch.allclose(got, want, atol=1e-5)


def test_routing_by_module_or_file_name(tmp_path):
    assert is_ip_adapter_unit(ControlUnit(model="x/ip-adapter_sd15.pth", image=RED))
    assert is_ip_adapter_unit(ControlUnit(model="x/renamed.safetensors", image=RED,
                                          preprocessor="ip-adapter_clip_sdxl_plus_vith"))
    assert not is_ip_adapter_unit(ControlUnit(model="x/control_v11p_sd15_canny.safetensors", image=RED,
                                              preprocessor="canny"))


def test_kpipeline_txt2img_with_ip_adapter_unit(setup):
    """Through KPipeline: weight 0 is the plain pass bit for bit; weight 1 changes the latents."""
    from animegen.generate.controlnet import find_controlnet
    from animegen.generate.kpipeline import KPipeline
    from animegen.generate.samplers import resolve_sampler
    from animegen.prompts.encode import ConditioningPair
    from animegen.serve.api_controlnet import units_from_api_args

    arch, unet, paths = setup
    if arch != "sd15":
        pytest.skip("the routing is the same for both architectures")
    pipe = build_tiny_pipeline("sd15")
    kp = KPipeline(pipe, is_sdxl=False)
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=g)
    pair = ConditioningPair(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:])
    choice = resolve_sampler("Euler")
    # the A1111 extension's API shape: module ip-adapter_clip_sd15, model by name in the ControlNet folder
    (unit,) = units_from_api_args([{"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15 [abcd1234]",
                                    "image": "red", "weight": 1.0}], image=lambda data, field: RED,
                                  find_model=lambda name: find_controlnet(name, paths["plain"].parent))
    assert unit.model == paths["plain"] and unit.preprocessor == "ip-adapter_clip_sd15"
    run = dict(width=64, height=64, steps=3, cfg_scale=5.0)
    plain = kp.txt2img(choice, pair, [1], **run)
    zero = kp.txt2img(choice, pair, [1], controlnet_units=[_unit(paths["plain"], RED, weight=0.0)], **run)
    on = kp.txt2img(choice, pair, [1], controlnet_units=[unit], **run)
    assert torch.equal(zero, plain)
    assert not torch.allclose(on, plain, atol=1e-4)
