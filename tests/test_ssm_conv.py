"""The fused causal depthwise conv + SiLU of the Mamba block (rtgen.ssm.fused_conv) against PyTorch's
conv1d in float64, and a Mamba block on it against the same block on the pure-PyTorch path."""

import pytest
import torch
import torch.nn.functional as F

from rtgen.ssm import Mamba, dispatch, fused

fused_ok = pytest.mark.skipif(not fused.available(), reason="numba kernel unavailable")


def _reference(x, w, b):
    """silu(causal depthwise conv1d) in float64 on copies (the ground truth)."""
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    L, K = x.shape[-1], w.shape[-1]
    return (x64, w64, b64), F.silu(F.conv1d(x64, w64, b64, padding=K - 1, groups=x.shape[1])[..., :L])


@fused_ok
@pytest.mark.parametrize("b,C,L,K", [(1, 20, 37, 4), (2, 48, 300, 4), (1, 16, 2, 4), (2, 33, 517, 3), (1, 8, 600, 1)])
@pytest.mark.parametrize("layout", ["time-major", "channel-major", "slice"])
def test_fused_conv_equals_conv1d_with_gradients(b, C, L, K, layout):
    from rtgen.ssm.fused_conv import causal_conv_silu

    g = torch.Generator().manual_seed(C + L)
    if layout == "time-major":
        x = torch.randn(b, L, C, generator=g).transpose(1, 2)
    elif layout == "channel-major":
        x = torch.randn(b, C, L, generator=g)
    else:  # the block's case: the first or second half of the in_proj output, read in place
        x = torch.randn(b, L, 2 * C, generator=g)[..., C:].transpose(1, 2)
    x = x.detach().requires_grad_()
    w = torch.randn(C, 1, K, generator=g, requires_grad=True)
    bias = torch.randn(C, generator=g, requires_grad=True)
    y = causal_conv_silu(x, w, bias)
    (x64, w64, b64), y64 = _reference(x, w, bias)
    assert y.shape == (b, C, L) and y.dtype == torch.float32
    assert torch.allclose(y.double(), y64, atol=1e-5, rtol=1e-5)
    gy = torch.randn(b, C, L, generator=g)
    (y * gy).sum().backward()
    (y64 * gy.double()).sum().backward()
    for got, ref, name in ((x.grad, x64.grad, "x"), (w.grad, w64.grad, "weight"), (bias.grad, b64.grad, "bias")):
        assert got.shape == ref.shape, name
        assert torch.allclose(got.double(), ref, atol=1e-5 * (1 + ref.abs().max().item()), rtol=1e-5), name


@fused_ok
def test_fused_conv_bfloat16_computes_in_float32():
    from rtgen.ssm.fused_conv import causal_conv_silu

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 120, 24, generator=g).transpose(1, 2).bfloat16().requires_grad_()
    w = torch.randn(24, 1, 4, generator=g).bfloat16().requires_grad_()
    bias = torch.randn(24, generator=g).bfloat16().requires_grad_()
    y = causal_conv_silu(x, w, bias)
    (x64, w64, b64), y64 = _reference(x, w, bias)  # the same bf16 values, in float64
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.double(), y64, atol=2e-2, rtol=2e-2)  # bf16 rounding of the output only
    y.float().sum().backward()
    y64.sum().backward()
    for got, ref in ((x.grad, x64.grad), (w.grad, w64.grad), (bias.grad, b64.grad)):
        assert got.dtype == torch.bfloat16
        assert (got.double() - ref).abs().max() <= 2e-2 * (1 + ref.abs().max())


@fused_ok
def test_fused_conv_refuses_what_it_cannot_take():
    from rtgen.ssm.fused_conv import supports

    x = torch.randn(1, 4, 10)
    assert supports(x, torch.randn(4, 1, 3))
    assert not supports(x.double(), torch.randn(4, 1, 3))
    assert not supports(x, torch.randn(4, 2, 3))  # not depthwise


@fused_ok
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_block_on_fused_kernels_matches_the_torch_path(bidirectional):
    """The whole block (in_proj split, fused conv, fused scan) against rtgen's pure-PyTorch kernels:
    outputs and every parameter gradient."""
    torch.manual_seed(0)
    block = Mamba(24, d_state=8, bidirectional=bidirectional)
    x = torch.randn(2, 150, 24)
    outs = {}
    for backend in ("torch", "auto"):
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with dispatch.use_backend(backend):
            y = block(xi)
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs[backend] = (y.detach(), xi.grad, {k: p.grad.clone() for k, p in block.named_parameters()})
    (y0, gx0, gp0), (y1, gx1, gp1) = outs["torch"], outs["auto"]
    assert torch.allclose(y0, y1, atol=1e-5, rtol=1e-4)
    assert torch.allclose(gx0, gx1, atol=1e-5, rtol=1e-4)
    for k in gp0:
        assert torch.allclose(gp0[k], gp1[k], atol=1e-4 * (1 + gp0[k].abs().max().item()), rtol=1e-3), k
