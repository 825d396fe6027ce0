"""TAEF2, the shipped pretrained autoencoder: strict loading, shapes, and that it really reconstructs."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtgen.core.errors import DataError, RtgenError
from rtgen.models.taef2 import TAEF2, default_folder, load_taef2

HUB = default_folder()


@pytest.fixture(scope="module")
def taef2() -> TAEF2:
    return load_taef2()


def _smooth_image(size: int = 64) -> torch.Tensor:
    """A soft bright ellipse on a gentle gradient, grey replicated to RGB: (1, 3, size, size) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.2 + 0.2 * xx + 0.5 * np.exp(-(((xx - 0.5) / 0.25) ** 2 + ((yy - 0.45) / 0.18) ** 2))
    return torch.tensor(img, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1)


def test_shipped_weights_fill_every_parameter(taef2):
    for half, module in (("encoder", taef2.encoder), ("decoder", taef2.decoder)):
        state = load_file(str(HUB / f"{half}.safetensors"))
        assert set(state) == set(module.state_dict())
        for key, value in module.state_dict().items():
            assert value.dtype == torch.float32 and value.shape == state[key].shape
            assert torch.equal(value, state[key].float())  # fp16 -> fp32 is exact
    assert sum(p.numel() for p in taef2.encoder.parameters()) == 1_338_528
    assert sum(p.numel() for p in taef2.decoder.parameters()) == 1_338_499
    assert not any(p.requires_grad for p in taef2.parameters()) and not taef2.training
    assert (HUB / "LICENSE").read_text().startswith("MIT License")
    assert "MIT" in (HUB / "README.md").read_text()


def test_latent_shapes_and_sizes_that_are_not_multiples_of_8(taef2):
    with torch.no_grad():
        z = taef2.encode(torch.rand(2, 3, 64, 64))
        assert z.shape == (2, 32, 8, 8)
        assert taef2.decode(z).shape == (2, 3, 64, 64)
        assert taef2.encode(torch.rand(1, 3, 48, 80)).shape == (1, 32, 6, 10)
    with pytest.raises(RtgenError, match="multiples of 8, got \\(60, 64\\)"):
        taef2.encode(torch.rand(1, 3, 60, 64))
    with pytest.raises(RtgenError, match="expects \\(B, 3, H, W\\)"):
        taef2.encode(torch.rand(1, 1, 64, 64))
    with pytest.raises(RtgenError, match="expects \\(B, 32, h, w\\)"):
        taef2.decode(torch.rand(1, 16, 8, 8))


def test_a_smooth_image_is_reconstructed_above_25_db(taef2):
    x = _smooth_image()
    with torch.no_grad():
        r = taef2(x).clamp(0, 1)
    psnr = 10 * np.log10(1.0 / ((r - x) ** 2).mean().item())
    assert psnr > 25.0, psnr
    # the latent carries the image: an unrelated latent decodes to something far from it
    with torch.no_grad():
        other = taef2.decode(taef2.encode(torch.flip(x, dims=[-1, -2]))).clamp(0, 1)
    assert 10 * np.log10(1.0 / ((other - x) ** 2).mean().item()) < psnr - 5


def test_corrupt_swapped_or_missing_weights_name_the_file(tmp_path):
    folder = tmp_path / "taef2"
    shutil.copytree(HUB, folder)
    enc = folder / "encoder.safetensors"

    enc.write_bytes(enc.read_bytes()[:1000])  # truncated
    with pytest.raises(DataError, match=re.escape(f"{enc}: ") + "not a readable safetensors file"):
        load_taef2(folder)

    shutil.copy(HUB / "decoder.safetensors", enc)  # the wrong half
    with pytest.raises(DataError, match=re.escape(f"{enc}: ") + r"not TAEF2 encoder weights: \d+ keys missing"):
        load_taef2(folder)

    shutil.copy(HUB / "encoder.safetensors", enc)
    (folder / "decoder.safetensors").unlink()
    with pytest.raises(DataError, match="decoder.safetensors: TAEF2 weights not found"):
        load_taef2(folder)


def test_the_bf16_autoencoder_reconstructs_as_the_float32_one():
    """bfloat16 changes the arithmetic, not the model: the latents move (about 11 % of their size
    here), but the decoder maps them to the same image, and the round trip is as good as float32's
    (run where the CPU has native bf16, as rtgen then uses it)."""
    from rtgen.models.frozen_autoencoders import FrozenTAEF2, native_cpu_bf16

    if not native_cpu_bf16():
        pytest.skip("this CPU has no native bfloat16: rtgen keeps TAEF2 in float32 here")
    x = _smooth_image()[:, :1]
    exact, fast = FrozenTAEF2(), FrozenTAEF2(cpu_bf16=True)
    with torch.no_grad():
        z, zb = exact.encode(x), fast.encode(x)
        r, rb = exact.decode(z), fast.decode(zb)
    assert zb.dtype == rb.dtype == torch.float32
    assert (zb - z).abs().mean() < 0.2 * z.abs().mean()
    assert (rb - r).abs().max() < 0.02 and (rb - r).abs().mean() < 0.005
    assert (rb - x).abs().mean() < 1.2 * (r - x).abs().mean()
    with torch.no_grad(), fast.exact():  # training latents: float32 whatever the CPU
        assert torch.equal(fast.encode(x), z)
    assert fast.cpu_bf16
