"""`resolve` is the one home of generation defaults: a field the request leaves unset takes the preset's
value, and only what the preset leaves unset takes the model family's default (never a third copy)."""

from __future__ import annotations

import pytest

from animegen.generate import request as request_module
from animegen.generate.request import GenerationRequest, resolve


@pytest.fixture
def user_presets(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[presets.sized]\nsteps = 9\nwidth = 640\nheight = 768\n\n'
                    '[presets.textonly]\ntemplate = "best, {prompt}"\n')
    return path


@pytest.mark.parametrize("family_size", [512, 1024])
def test_a_preset_without_settings_leaves_them_to_the_family(user_presets, family_size):
    got = resolve(GenerationRequest(prompt="1girl", preset="textonly", seed=1), family_size, user_presets)
    plain = resolve(GenerationRequest(prompt="1girl", seed=1), family_size)
    assert (got.width, got.height) == (family_size, family_size)
    assert (got.sampler, got.steps, got.cfg_scale) == (plain.sampler, plain.steps, plain.cfg_scale)
    assert got.prompt == "best, 1girl"


def test_the_preset_fills_only_what_the_request_leaves_unset(user_presets):
    got = resolve(GenerationRequest(prompt="x", preset="sized", width=64, seed=1), 1024, user_presets)
    assert (got.width, got.height, got.steps) == (64, 768, 9)


def test_the_none_preset_carries_no_settings_of_its_own():
    from animegen.prompts.presets import get_preset

    none = get_preset("none")
    assert (none.sampler, none.steps, none.cfg_scale, none.width, none.height) == (None,) * 5
    got = resolve(GenerationRequest(prompt="x", seed=1), 1024)
    assert (got.sampler, got.steps, got.cfg_scale) == (request_module.DEFAULT_SAMPLER, request_module.DEFAULT_STEPS,
                                                       request_module.DEFAULT_CFG)
