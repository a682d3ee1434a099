"""Prompt editing, alternation and composable AND through the sampler, against A1111 1.10's rules.

The reference is the independent A1111 sampler (`a1111_reference`, float64) over the tiny SD1.5's UNet with
diffusers' own prompt encoding; what changes per step is written out by hand in each test from A1111's rules:
the schedule (`prompt_parser`: a decimal is a fraction of the scheduled steps, second-order samplers schedule
twice the steps), and denoiser call k (counted from 0) taking the first entry whose end is >= k
(`reconstruct_cond_batch`). AND is `combine_denoised`: D = D_u + sum_i (D_i - D_u) * w_i * cfg; since D is
affine in the network output, the reference feeds the sampler eps_u + sum_i w_i (eps_i - eps_u) as "pos".
"""

from __future__ import annotations

import a1111_reference as ref
import numpy as np
import pytest
import torch

from animegen.generate.conditioning import PromptConditioning
from animegen.generate.kpipeline import KPipeline
from animegen.generate.samplers import resolve_sampler

SEED, CFG, SHAPE = 31, 6.0, (4, 8, 8)  # 64x64 images
RED, BLUE = "1girl, red hair", "1girl, scenery, night sky"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on one thread (root conftest)."""


class PlannedModel:
    """The reference's model_fn: at denoiser call k, "pos" is the AND combination of `positive(k)` =
    [(text, weight), ...] and "neg" the text `negative(k)`; k advances after each "neg" (A1111's `step`)."""

    def __init__(self, pipe, positive, negative):
        self.pipe, self.positive, self.negative, self.k, self.cache = pipe, positive, negative, 0, {}

    def _eps(self, x_in, t, text):
        if text not in self.cache:
            with torch.no_grad():
                self.cache[text] = self.pipe.encode_prompt(text, "cpu", 1, False)[0]
        with torch.no_grad():
            return self.pipe.unet(x_in.to(torch.float32), torch.tensor([float(t)]),
                                  encoder_hidden_states=self.cache[text]).sample.to(torch.float64)

    def __call__(self, x_in, t, which):
        eps_u = self._eps(x_in, t, self.negative(self.k))
        if which == "neg":
            self.k += 1
            return eps_u
        return eps_u + sum(w * (self._eps(x_in, t, text) - eps_u) for text, w in self.positive(self.k))


def _reference(pipe, sampler, steps, positive, negative):
    model = PlannedModel(pipe, positive, negative)
    latents = ref.a1111_sample(sampler, "Automatic", steps, model, ref.Model(), "pos", "neg", CFG, [SEED], SHAPE)
    return latents, model.k


def _ours(pipe, sampler, steps, prompt, negative):
    kp = KPipeline(pipe, is_sdxl=False)
    return kp.txt2img(resolve_sampler(sampler), PromptConditioning(pipe, prompt, negative), [SEED], width=64,
                      height=64, steps=steps, cfg_scale=CFG)


def _relative(a, b) -> float:
    return float((a.to(torch.float64) - b).abs().max() / b.abs().max())


def test_prompt_editing_is_the_first_text_then_the_second(ref_pipe):
    """`[red hair:scenery, night sky:0.5]` at 6 Euler steps: end step 3, so calls 0..3 use red and 4, 5 blue (A1111's `<=`)."""
    got = _ours(ref_pipe, "Euler", 6, "1girl, [red hair:scenery, night sky:0.5]", "lowres")
    want, calls = _reference(ref_pipe, "Euler", 6, lambda k: [(RED if k <= 3 else BLUE, 1.0)], lambda k: "lowres")
    assert calls == 6 and _relative(got, want) < 1e-5  # measured 1.1e-6 (float32 against float64)
    red_only, _ = _reference(ref_pipe, "Euler", 6, lambda k: [(RED, 1.0)], lambda k: "lowres")
    assert _relative(got, red_only) > 1e-4  # measured 3.6e-4: the last two of six steps change little


def test_alternation_takes_a_a_b_a(ref_pipe):
    """`[A|B]` at 4 steps: entries end at 1, 2, 3, 4; calls 0 and 1 take the first (A), 2 takes B, 3 A."""
    got = _ours(ref_pipe, "Euler", 4, "1girl, [red hair|scenery, night sky]", "lowres")
    want, _ = _reference(ref_pipe, "Euler", 4, lambda k: [([RED, RED, BLUE, RED][k], 1.0)], lambda k: "lowres")
    assert _relative(got, want) < 1e-5


def test_the_negative_prompt_is_scheduled_too(ref_pipe):
    """Negative `[lowres:blurry:2]` at 4 steps: calls 0..2 lowres, 3 blurry."""
    got = _ours(ref_pipe, "Euler", 4, RED, "[lowres:blurry:2]")
    want, _ = _reference(ref_pipe, "Euler", 4, lambda k: [(RED, 1.0)], lambda k: "lowres" if k <= 2 else "blurry")
    assert _relative(got, want) < 1e-5


def test_second_order_samplers_schedule_twice_the_steps(ref_pipe):
    """Heun at 3 steps: A1111 schedules 6 steps, so 0.5 ends at 3; its 5 calls are red, red, red, red, blue."""
    got = _ours(ref_pipe, "Heun", 3, "1girl, [red hair:scenery, night sky:0.5]", "lowres")
    want, calls = _reference(ref_pipe, "Heun", 3, lambda k: [(RED if k <= 3 else BLUE, 1.0)], lambda k: "lowres")
    assert calls == 5 and _relative(got, want) < 1e-5


def test_composable_and_with_weights(ref_pipe):
    """`1girl AND red hair :1.2`: two parts, weights 1 and 1.2 (the part keeps its leading space)."""
    got = _ours(ref_pipe, "DPM++ 2M", 4, "1girl AND red hair :1.2", "lowres")
    want, _ = _reference(ref_pipe, "DPM++ 2M", 4, lambda k: [("1girl", 1.0), (" red hair", 1.2)], lambda k: "lowres")
    assert _relative(got, want) < 1e-5


def test_and_parts_are_scheduled_each_on_their_own(ref_pipe):
    got = _ours(ref_pipe, "Euler", 4, "1girl AND [red:blue:0.5] hair:0.5", "")
    want, _ = _reference(ref_pipe, "Euler", 4, lambda k: [("1girl", 1.0), (" red hair" if k <= 2 else " blue hair", 0.5)],
                         lambda k: "")
    assert _relative(got, want) < 1e-5


def test_a_plain_prompt_is_exactly_the_old_single_conditioning(ref_pipe):
    from animegen.prompts.encode import encode_prompts

    kp, choice = KPipeline(ref_pipe, is_sdxl=False), resolve_sampler("Euler a")
    common = {"width": 64, "height": 64, "steps": 4, "cfg_scale": CFG}
    old = kp.txt2img(choice, encode_prompts(ref_pipe, RED, "lowres").repeat_interleave(2), [SEED, SEED + 1],
                      **common)
    new = kp.txt2img(choice, PromptConditioning(ref_pipe, RED, "lowres").repeat_interleave(2), [SEED, SEED + 1],
                     **common)
    assert torch.equal(old, new)


def test_each_distinct_text_is_encoded_once(ref_pipe, monkeypatch):
    from animegen.prompts import encode

    batches = []
    real = encode.encode_text

    def counting(tokenizers, encoders, prompts, *args, **kwargs):
        batches.append(list(prompts))
        return real(tokenizers, encoders, prompts, *args, **kwargs)

    monkeypatch.setattr(encode, "encode_text", counting)
    conditioning = PromptConditioning(ref_pipe, "[a|b] AND [a:c:2]", "[x|x]")
    for batch in (1, 2):  # two batches of seeds: first pass, then hires pass (where [a:c:2] is already c)
        conditioning.repeat_interleave(batch).for_pass(4)
        conditioning.hires_pass(resolve_sampler("Euler"), 4).repeat_interleave(batch).for_pass(4)
    # The AND part keeps its leading space; a pass's texts are one batch; nothing is encoded twice.
    assert batches == [["a", "b", " a", " c", "x"], ["a", "b", " c", "x"]]


def test_hires_pass_plan_counts_from_the_first_pass(ref_pipe):
    """Hires after 10 Euler steps, 4 hires steps: `[a:b:1.5]` ends at (1.5 - 1) * 4 = 2 (calls 0..2 a, 3 b);
    `[a:b:12]` ends at 12 - 10 = 2 as well; `[a:b:0.5]` and `[a:b:5]` are over before the hires pass; a
    second-order first pass (DPM2, 10 steps) was scheduled over 20, so `[a:b:22]` ends at hires step 2."""
    def texts(prompt, first="Euler"):
        plan = PromptConditioning(ref_pipe, prompt).hires_pass(resolve_sampler(first), 10).for_pass(4)
        return "".join(plan.texts[plan.at(k)[0][0][0]] for k in range(4))

    assert texts("[a:b:1.5]") == "aaab"
    assert texts("[a:b:12]") == "aaab"
    assert texts("[a:b:0.5]") == texts("[a:b:5]") == "bbbb"
    assert texts("[a:b:22]", first="DPM2") == "aaab"
    assert texts("[a:b:12]", first="DPM2") == "bbbb"


def test_and_on_a_toy_denoiser_is_a1111s_combine_denoised():
    """D = D_u + sum_i (D_i - D_u) * w_i * cfg on eps models, k-diffusion view and timestep view alike."""
    from animegen.generate.denoiser import CFGDenoiser
    from animegen.generate.schedules import DiscreteSchedule
    from animegen.models.tiny import SCHEDULER_CONFIG

    def unet_fn(x, t, c):
        return 0.3 * x + c["mu"] * (1 + t[:, None, None, None] / 1000)

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mu = {name: {"mu": torch.full((2, 4, 8, 8), v)} for name, v in (("a", 0.5), ("b", -1.0), ("u", 0.1))}
    den = CFGDenoiser(unet_fn, DiscreteSchedule.from_config(SCHEDULER_CONFIG), cfg_scale=7.0,
                      cond=lambda step: [(mu["a"], 1.0), (mu["b"], 0.4)], uncond=lambda step: mu["u"])
    sigma = torch.tensor(3.0)
    t = den.schedule.sigma_to_t(sigma.expand(2))
    x_in = x / (3.0 ** 2 + 1) ** 0.5

    def d(name):
        return x - 3.0 * unet_fn(x_in, t, mu[name])

    want = d("u") + (d("a") - d("u")) * 7.0 + (d("b") - d("u")) * (0.4 * 7.0)
    torch.testing.assert_close(den(x, sigma), want, rtol=1e-5, atol=1e-5)
    tt = torch.full((2,), 500.0)

    def e(name):
        return unet_fn(x, tt, mu[name])

    want_eps = e("u") + (e("a") - e("u")) * 7.0 + (e("b") - e("u")) * (0.4 * 7.0)
    torch.testing.assert_close(den.eps(x, 500.0), want_eps, rtol=1e-5, atol=1e-5)
    assert den.calls == 2


def test_engine_runs_prompt_editing(sd15_engine, ref_pipe):
    """Through `Generator`: the request's prompt is scheduled (image compared after the VAE)."""
    from animegen.generate import GenerationRequest

    req = GenerationRequest("1girl, [red hair:scenery, night sky:0.5]", negative_prompt="lowres", sampler="Euler", steps=6,
                            cfg_scale=CFG, seed=SEED, width=64, height=64, rng="CPU")
    ours = sd15_engine(req)[0].array
    latents, _ = _reference(ref_pipe, "Euler", 6, lambda k: [(RED if k <= 3 else BLUE, 1.0)], lambda k: "lowres")
    with torch.no_grad():
        image = ref_pipe.vae.decode(latents.to(torch.float32) / ref_pipe.vae.config.scaling_factor).sample
    want = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    assert np.abs(ours - want).max() <= 1e-4


def test_emphasis_mode_from_an_infotext_reaches_the_encoder(sd15_engine, ref_pipe):
    """"Emphasis: No norm" (A1111's `sd_emphasis`: weights without the mean restore) read from an infotext conditions
    the image and is written back; the image is the one `encode_prompts(emphasis="No norm")` gives, not Original's."""
    from animegen.generate.request import request_from_infotext
    from animegen.prompts.encode import encode_prompts

    prompt = "1girl, (red hair:1.6), [smile]"
    req = request_from_infotext(f"{prompt}\nNegative prompt: lowres\nSteps: 4, Sampler: Euler, CFG scale: 6, "
                                "Seed: 31, Size: 64x64, RNG: CPU, Emphasis: No norm")
    got = sd15_engine(req)[0]
    kp, choice = KPipeline(ref_pipe, is_sdxl=False), resolve_sampler("Euler")
    images = {mode: kp.decode(kp.txt2img(choice, encode_prompts(ref_pipe, prompt, "lowres", emphasis=mode), [31],
                                         width=64, height=64, steps=4, cfg_scale=6.0))[0]
              for mode in ("No norm", "Original")}
    assert np.abs(got.array - images["No norm"]).max() <= 1e-5
    assert np.abs(got.array - images["Original"]).max() > 1e-3
    assert "Emphasis: No norm" in got.infotext
