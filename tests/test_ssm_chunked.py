"""The chunked, matmul-form Mamba1 selective scan against the sequential reference in float64."""

import pytest
import torch

from rtgen.ssm import selective_scan_ref
from rtgen.ssm.scan_chunked import LIMIT, safe_chunk, selective_scan_chunked


def scan_inputs(b, d, n, L, groups=None, seed=0, parts="all", softplus=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    BC = (b, n, L) if groups is None else (b, groups, n, L)
    t = dict(u=r(b, d, L), delta=r(b, d, L) * 0.5, A=-torch.rand(d, n, generator=g) * 2 - 0.1,
             B=r(*BC), C=r(*BC), D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.1)
    if not softplus:  # raw delta is the step: keep it a decay
        t["delta"], t["delta_bias"] = t["delta"].abs(), t["delta_bias"].abs()
    if parts in ("bare", "no_z"):
        t["z"] = None
    if parts in ("bare", "no_D_bias"):
        t["D"] = t["delta_bias"] = None
    return t


def _ref64(t, **kw):
    """selective_scan_ref in float64 on copies of t (the ground truth)."""
    t64 = {k: v.detach().double().requires_grad_() for k, v in t.items() if v is not None}
    return t64, selective_scan_ref(**t64, **kw)


def _check_grads(t, t64, y, y64, last, last64):
    g = torch.Generator().manual_seed(3)
    w, wl = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    ((y.float() * w).sum() + (last * wl).sum()).backward()
    ((y64 * w.double()).sum() + (last64 * wl.double()).sum()).backward()
    for k, v in t.items():
        if v is not None:
            ref = t64[k].grad
            assert torch.isfinite(v.grad).all(), k
            assert torch.allclose(v.grad.double(), ref, atol=2e-4 * (1 + ref.abs().max().item()), rtol=1e-3), k


@pytest.mark.parametrize("b,d,n,L,chunk,groups", [(2, 8, 4, 37, 32, None), (1, 6, 3, 1, 32, None), (1, 5, 4, 7, 32, None),
                                                  (2, 4, 8, 33, 32, None), (1, 8, 2, 3 * 32 + 5, 32, 2),
                                                  (1, 16, 8, 100, 16, 4)])
@pytest.mark.parametrize("parts,softplus", [("all", True), ("bare", False), ("no_z", True), ("no_D_bias", False)])
def test_chunked_scan_equals_reference_with_gradients(b, d, n, L, chunk, groups, parts, softplus):
    t = scan_inputs(b, d, n, L, groups, parts=parts, softplus=softplus)
    t = {k: (v.requires_grad_() if v is not None else None) for k, v in t.items()}
    y, last = selective_scan_chunked(**t, delta_softplus=softplus, return_last_state=True, chunk_size=chunk)
    t64, (y64, last64) = _ref64(t, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == torch.float32 and y.shape == (b, d, L) and last.shape == (b, d, n)
    assert torch.allclose(y.double(), y64, atol=1e-4, rtol=1e-4)
    assert torch.allclose(last.double(), last64, atol=1e-4, rtol=1e-4)
    assert torch.equal(selective_scan_chunked(**t, delta_softplus=softplus, chunk_size=chunk), y)
    _check_grads(t, t64, y, y64, last, last64)


def test_initial_state_and_float64_gradcheck():
    t = {k: v.double().requires_grad_() for k, v in scan_inputs(1, 4, 2, 11, groups=2).items()}
    h0 = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    y, last = selective_scan_chunked(**t, delta_softplus=True, return_last_state=True, chunk_size=4, h0=h0)
    y2, last2 = selective_scan_ref(**t, delta_softplus=True, return_last_state=True, h0=h0)
    assert y.dtype == torch.float64 and torch.allclose(y, y2, atol=1e-10) and torch.allclose(last, last2, atol=1e-10)
    names = list(t)
    f = lambda *a: selective_scan_chunked(**dict(zip(names, a[:-1])), delta_softplus=True,  # noqa: E731
                                          return_last_state=True, chunk_size=4, h0=a[-1])
    assert torch.autograd.gradcheck(f, (*t.values(), h0))


def test_bfloat16_inputs_and_bfloat16_matmuls():
    t = scan_inputs(2, 8, 8, 150)
    # bf16 inputs: computed in float32, returned in bf16; against float64 on the same (rounded) inputs
    tb = {k: v.bfloat16() for k, v in t.items()}
    yb = selective_scan_chunked(**tb, delta_softplus=True)
    _, y64 = _ref64(tb, delta_softplus=True)
    scale = y64.abs().max().item()
    assert yb.dtype == torch.bfloat16 and (yb.double() - y64).abs().max() < 3e-2 * scale
    # fp32 inputs, bf16 operands of the (Q x n) @ (n x Q) products: float32 out, bf16-sized error
    t = {k: v.requires_grad_() for k, v in t.items()}
    y, last = selective_scan_chunked(**t, delta_softplus=True, return_last_state=True, matmul_dtype=torch.bfloat16)
    t64, (y64, last64) = _ref64(t, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float32 and (y.double() - y64).abs().max() < 3e-2 * y64.abs().max()
    assert (last.double() - last64).abs().max() < 1e-5 * (1 + last64.abs().max())  # state terms stay fp32
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (y * w).sum().backward()
    (y64 * w.double()).sum().backward()
    for k, v in t.items():
        ref = t64[k].grad
        tol = 1e-1 if k == "delta_bias" else 3e-2  # a sum over every step of the dt gradient's bf16 noise
        assert (v.grad.double() - ref).abs().max() < tol * (1 + ref.abs().max()), k


def test_strong_decay_stays_finite_and_accurate():
    """dt |A| up to 32 per step: one chunk of 32 spans a log-decay of ~1000, where exp(-S) overflows;
    the chunks shrink until each factor's exponent is within LIMIT."""
    t = scan_inputs(2, 8, 8, 160)
    g = torch.Generator().manual_seed(5)
    t["A"] = -torch.rand(8, 8, generator=g) * 15.9 - 0.1  # down to -16
    t["delta"] = torch.rand(2, 8, 160, generator=g) * 2  # up to 2, no softplus
    t["delta"][..., :40] *= 0.01  # and a weakly decaying stretch, where long memory matters
    t["delta_bias"] = None
    assert safe_chunk(t["delta"], t["A"], 32) < 32
    t = {k: (v.requires_grad_() if v is not None else None) for k, v in t.items()}
    y, last = selective_scan_chunked(**t, return_last_state=True)
    t64, (y64, last64) = _ref64(t, return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert torch.allclose(y.double(), y64, atol=1e-4, rtol=1e-4)
    assert torch.allclose(last.double(), last64, atol=1e-4, rtol=1e-4)
    _check_grads(t, t64, y, y64, last, last64)


def test_safe_chunk_bound():
    dt = torch.full((1, 2, 64), 0.5)
    A = -torch.ones(2, 3)
    assert safe_chunk(dt, A, 32) == 32  # range 15.5 <= 2 LIMIT
    assert safe_chunk(dt, A * 8, 32) == 16  # 124 -> 60 fits exactly
    assert safe_chunk(dt, A * 1e4, 32) == 1
    assert safe_chunk(dt[..., :5], A, 32) == 5  # never longer than the sequence
    assert 2 * LIMIT < 88  # a product of two factors cannot overflow float32
