"""The tiny models' VAE is the exact linear codec it claims to be, in the real AutoencoderKL layout, and
survives the A1111 single-file round trip (GroupNorm groups are inferred from the widths)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from animegen.models.detect import family_config, norm_num_groups
from animegen.models.single_file import load_single_file
from animegen.models.tiny import build_tiny_pipeline, save_tiny_model
from animegen.models.tiny_vae import LATENT_TO_RGB, make_linear_codec, rgb_to_latent_matrix


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """Each 8x8 block replaced by its mean colour."""
    return F.avg_pool2d(x, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_encode_is_block_means_through_the_colour_matrix_and_decode_inverts_it(arch):
    vae = build_tiny_pipeline(arch).vae
    sf = vae.config.scaling_factor
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        want = torch.einsum("lc,bchw->blhw", rgb_to_latent_matrix(), F.avg_pool2d(x, 8))
        torch.testing.assert_close(posterior.mean * sf, want, atol=2e-4, rtol=1e-4)
        assert float(posterior.std.max()) < 1e-6  # a point posterior: sampling changes nothing
        torch.testing.assert_close(vae.decode(posterior.mean).sample, _blocks(x), atol=2e-4, rtol=0)

        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        image = vae.decode(z / sf).sample
        colours = torch.einsum("cl,blhw->bchw", LATENT_TO_RGB, z)
        torch.testing.assert_close(image, colours.repeat_interleave(8, 2).repeat_interleave(8, 3), atol=2e-4, rtol=1e-4)


def test_different_images_get_latents_as_far_apart_as_their_colours():
    """What the random VAE could not do: red and blue squares land far apart (it put them 0.05 apart)."""
    vae = build_tiny_pipeline("sd15").vae
    red = torch.tensor([0.8, -0.85, -0.85])[None, :, None, None].expand(1, 3, 64, 64)
    blue = torch.tensor([-0.85, -0.85, 0.8])[None, :, None, None].expand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = (vae.encode(c).latent_dist.mean * vae.config.scaling_factor for c in (red, blue))
    assert float((a - b).pow(2).mean().sqrt()) > 1.0


def test_groupnorm_groups_follow_the_widths():
    for family in ("sd1", "sd2", "sdxl"):  # every real family: 32, as the shipped configs say
        for component in ("unet", "vae"):
            cfg = family_config(family, component)
            assert norm_num_groups(cfg["block_out_channels"]) == cfg["norm_num_groups"] == 32
    assert norm_num_groups((32, 32, 64, 64)) == 8 and norm_num_groups((64, 64, 128)) == 16


def test_the_codec_survives_the_single_file_round_trip(tmp_path):
    save_tiny_model("sd15", single_file=tmp_path / "tiny.safetensors")
    pipe = load_single_file(tmp_path / "tiny.safetensors", dtype=torch.float32)
    assert pipe.vae.config.norm_num_groups == 8 and pipe.unet.config.norm_num_groups == 8
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        out = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    torch.testing.assert_close(out, _blocks(x), atol=2e-4, rtol=0)


def test_layouts_the_codec_cannot_live_in_are_refused():
    from diffusers import AutoencoderKL

    narrow = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=32)
    with pytest.raises(ValueError, match="groups"):
        make_linear_codec(narrow)
