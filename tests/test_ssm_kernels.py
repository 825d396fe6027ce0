import numpy as np
import pytest
import torch

from rtgen.core.errors import RtgenError
from rtgen.ssm import dispatch, fused, linear_scan, selective_scan_fast, selective_scan_ref, ssd_chunked, ssd_ref
from rtgen.ssm.scan import LinearScan


def scan_inputs(b, d, n, L, groups=None, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    BC = (b, n, L) if groups is None else (b, groups, n, L)
    t = dict(u=r(b, d, L), delta=r(b, d, L) * 0.5, A=-torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1,
             B=r(*BC), C=r(*BC), D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.1)
    if grad:
        for v in t.values():
            v.requires_grad_()
    return t


@pytest.mark.parametrize("b,d,n,L,groups", [(2, 8, 4, 37, None), (1, 6, 3, 100, 2), (2, 4, 16, 257, None), (1, 16, 8, 64, 4)])
def test_fast_selective_scan_equals_reference(b, d, n, L, groups):
    t = scan_inputs(b, d, n, L, groups)
    y1, s1 = selective_scan_fast(**t, delta_softplus=True, return_last_state=True)
    y2, s2 = selective_scan_ref(**t, delta_softplus=True, return_last_state=True)
    assert torch.allclose(y1, y2, atol=1e-4, rtol=1e-4)
    assert torch.allclose(s1, s2, atol=1e-5, rtol=1e-4)


def test_fast_selective_scan_gradients_match_reference():
    t1 = scan_inputs(2, 6, 4, 45, grad=True)
    t2 = {k: v.detach().clone().requires_grad_() for k, v in t1.items()}
    w = torch.randn(2, 6, 45)
    (selective_scan_fast(**t1, delta_softplus=True) * w).sum().backward()
    (selective_scan_ref(**t2, delta_softplus=True) * w).sum().backward()
    for k in t1:
        assert torch.allclose(t1[k].grad, t2[k].grad, atol=1e-4, rtol=1e-3), k


@pytest.mark.parametrize("groups", [None, 2])
def test_selective_scan_gradcheck_float64(groups):
    t = scan_inputs(1, 4, 2, 11, groups, dtype=torch.float64, grad=True)
    h0 = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    names = list(t)

    def f(*args):
        kw = dict(zip(names, args[:-1]))
        return selective_scan_fast(**kw, delta_softplus=True, return_last_state=True, h0=args[-1])

    assert torch.autograd.gradcheck(f, (*t.values(), h0))


def test_linear_scan_forward_reverse_and_chunking():
    a, x = torch.rand(2, 37, 3), torch.randn(2, 37, 3)
    h_ref, prev = [], torch.zeros(2, 3)
    for t in range(37):
        prev = a[:, t] * prev + x[:, t]
        h_ref.append(prev)
    h_ref = torch.stack(h_ref, 1)
    for chunk in (1, 4, 8, 37, 64):
        h, last = linear_scan(a, x, chunk=chunk)
        assert torch.allclose(h, h_ref, atol=1e-6) and torch.allclose(last, h_ref[:, -1], atol=1e-6)
    hr, _ = linear_scan(a, x, reverse=True, chunk=8)
    hf, _ = linear_scan(a.flip(1), x.flip(1), chunk=8)
    assert torch.allclose(hr, hf.flip(1), atol=1e-6)
    a64 = torch.rand(1, 9, 2, 1, dtype=torch.float64, requires_grad=True)  # broadcast decay
    x64 = torch.randn(1, 9, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, x, h: LinearScan.apply(a, x, h), (a64, x64, h0))


def test_long_sequence_is_finite_in_float32_and_bfloat16():
    t = scan_inputs(1, 4, 16, 65536)
    t["delta"] = t["delta"] * 4  # strong decays: products underflow, never overflow
    y = selective_scan_fast(**t, delta_softplus=True)
    assert torch.isfinite(y).all()
    # the end of the long sequence equals a short run started from the state just before it
    _, state = selective_scan_fast(**{k: (v[..., :-100] if v.dim() == 3 and v.shape[-1] == 65536 else v)
                                      for k, v in t.items()}, delta_softplus=True, return_last_state=True)
    tail = {k: (v[..., -100:] if v.dim() == 3 and v.shape[-1] == 65536 else v) for k, v in t.items()}
    y_tail = selective_scan_fast(**tail, delta_softplus=True, h0=state)
    assert torch.allclose(y[..., -100:], y_tail, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = selective_scan_fast(**{k: v.bfloat16() for k, v in t.items()}, delta_softplus=True)
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()
    assert (yb.float() - y).abs().mean() < 0.05 * y.abs().mean()


def ssd_inputs(b, L, h, p, g, n, dtype=torch.float32, grad=False):
    gen = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    t = dict(x=r(b, L, h, p), dt=r(b, L, h) * 0.5, A=-torch.rand(h, generator=gen, dtype=dtype) - 0.1,
             B=r(b, L, g, n), C=r(b, L, g, n), D=r(h), z=r(b, L, h, p), dt_bias=r(h) * 0.1,
             initial_states=r(b, h, p, n))
    if grad:
        for v in t.values():
            v.requires_grad_()
    return t


@pytest.mark.parametrize("b,L,h,p,g,n,chunk", [(2, 37, 4, 8, 2, 16, 16), (1, 130, 2, 4, 1, 8, 64), (1, 64, 3, 5, 3, 4, 8)])
def test_ssd_chunked_equals_sequential(b, L, h, p, g, n, chunk):
    t = ssd_inputs(b, L, h, p, g, n)
    y1, s1 = ssd_chunked(**t, chunk_size=chunk, dt_softplus=True, return_final_states=True)
    y2, s2 = ssd_ref(**t, dt_softplus=True, return_final_states=True)
    assert torch.allclose(y1, y2, atol=1e-4, rtol=1e-4) and torch.allclose(s1, s2, atol=1e-4, rtol=1e-4)


def test_ssd_gradcheck_float64():
    t = ssd_inputs(1, 11, 2, 2, 1, 3, dtype=torch.float64, grad=True)
    names = list(t)
    f = lambda *a: ssd_chunked(**dict(zip(names, a)), chunk_size=4, dt_softplus=True, return_final_states=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(t.values()))


def test_ssd_long_sequence_finite():
    t = ssd_inputs(1, 65536, 2, 4, 1, 8)
    assert torch.isfinite(ssd_chunked(**t, chunk_size=64, dt_softplus=True)).all()


@pytest.mark.parametrize(
    "setting,available,on_cuda,fused_ok,expected",
    [("auto", True, True, False, "cuda"), ("auto", True, False, False, "torch"), ("auto", False, True, False, "chunked"),
     ("torch", True, True, False, "torch"), ("cuda", True, True, False, "cuda"), ("auto", False, False, True, "numba"),
     ("auto", True, True, True, "cuda"), ("torch", False, False, True, "torch"), ("numba", False, False, True, "numba"),
     ("chunked", False, False, True, "chunked"), ("chunked", True, True, False, "chunked")],
)
def test_dispatch_decision(setting, available, on_cuda, fused_ok, expected):
    assert dispatch.choose(setting, available, on_cuda, fused_ok) == expected


def test_dispatch_errors_and_setting():
    with pytest.raises(RtgenError, match="mamba_ssm is not installed"):
        dispatch.choose("cuda", False, True)
    with pytest.raises(RtgenError, match="not on a CUDA device"):
        dispatch.choose("cuda", True, False)
    with pytest.raises(RtgenError, match="fused kernel cannot run"):
        dispatch.choose("numba", False, False, False)
    with pytest.raises(RtgenError, match="unknown SSM backend"):
        dispatch.set_backend("triton")
    with dispatch.use_backend("torch"):
        assert dispatch.get_backend() == "torch"
    assert dispatch.get_backend() == "auto"
    # "torch" forces the pure-PyTorch path; auto on the CPU gives the same numbers (fused when available)
    t = scan_inputs(1, 4, 3, 20)
    with dispatch.use_backend("torch"):
        assert torch.equal(dispatch.selective_scan(**t), selective_scan_fast(**t))
    assert torch.allclose(dispatch.selective_scan(**t), selective_scan_fast(**t), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not (torch.cuda.is_available() and dispatch.kernels_available()), reason="needs CUDA and mamba_ssm")
def test_cuda_kernels_match_torch_path():
    t = {k: v.cuda() for k, v in scan_inputs(2, 32, 16, 1000).items()}
    with dispatch.use_backend("cuda"):
        y_cuda = dispatch.selective_scan(**t, delta_softplus=True)
    with dispatch.use_backend("torch"):
        y_torch = dispatch.selective_scan(**t, delta_softplus=True)
    assert torch.allclose(y_cuda, y_torch, atol=1e-3, rtol=1e-3)
    s = {k: v.cuda() for k, v in ssd_inputs(2, 256, 4, 16, 1, 32).items()}
    s.pop("initial_states")
    with dispatch.use_backend("cuda"):
        a = dispatch.ssd(**s, chunk_size=64, dt_softplus=True)
    with dispatch.use_backend("torch"):
        b = dispatch.ssd(**s, chunk_size=64, dt_softplus=True)
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- fused numba kernel (Mamba1 selective scan)

fused_ok = pytest.mark.skipif(not fused.available(), reason="numba kernel unavailable")


def _ref64(t, **kw):
    """selective_scan_ref in float64 on copies of t (the ground truth for float32 kernels)."""
    t64 = {k: v.detach().double().requires_grad_() for k, v in t.items() if v is not None}
    return t64, selective_scan_ref(**t64, **kw)


@fused_ok
@pytest.mark.parametrize("b,d,n,L", [(2, 8, 4, 37), (1, 20, 3, 1), (1, 16, 16, 64), (2, 40, 5, fused.CHECKPOINT * 3 + 1),
                                     (3, 33, 2, 95), (1, 17, 3, fused.TILE * 2 + fused.CHECKPOINT + 5),
                                     (1, 48, 18, 70)])  # 18 states: padded to 20, summed as 16 + 4
@pytest.mark.parametrize("parts", ["all", "bare", "no_z", "no_D_bias"])
def test_fused_scan_equals_reference_with_gradients(b, d, n, L, parts):
    t = scan_inputs(b, d, n, L)
    if parts in ("bare", "no_z"):
        t["z"] = None
    if parts in ("bare", "no_D_bias"):
        t["D"] = t["delta_bias"] = None
    softplus = parts != "bare"
    if not softplus:
        t["delta"] = t["delta"].abs()
    t = {k: (v.requires_grad_() if v is not None else None) for k, v in t.items()}
    y, last = fused.selective_scan_fused(**t, delta_softplus=softplus, return_last_state=True)
    t64, (y64, last64) = _ref64(t, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == torch.float32 and y.shape == (b, d, L) and last.shape == (b, d, n)
    assert torch.allclose(y.double(), y64, atol=1e-4, rtol=1e-4)
    assert torch.allclose(last.double(), last64, atol=1e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(3)
    w, wl = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    ((y * w).sum() + (last * wl).sum()).backward()
    ((y64 * w.double()).sum() + (last64 * wl.double()).sum()).backward()
    for k, v in t.items():
        if v is not None:
            ref = t64[k].grad
            assert torch.allclose(v.grad.double(), ref, atol=2e-4 * (1 + ref.abs().max().item()), rtol=1e-3), k


@fused_ok
@pytest.mark.parametrize("L", [7, fused.TILE + 3])
def test_fused_scan_reads_strided_views_in_place(L):
    """The layouts a Mamba block hands over: delta, z, B, C (and the incoming gradient) are transposed
    views of (b, L, ...) tensors, z a slice of in_proj's output; results and gradients as the reference."""
    b, d, n = 2, 24, 4
    g = torch.Generator().manual_seed(7)
    xz = torch.randn(b, L, 2 * d, generator=g)
    t = dict(u=torch.randn(b, d, L, generator=g), delta=(torch.randn(b, L, d, generator=g) * 0.5).transpose(1, 2),
             A=-torch.rand(d, n, generator=g) - 0.1, B=torch.randn(b, L, n, generator=g).transpose(1, 2),
             C=torch.randn(b, L, n, generator=g).transpose(1, 2), D=torch.randn(d, generator=g),
             z=xz[..., d:].transpose(1, 2), delta_bias=torch.randn(d, generator=g) * 0.1)
    assert not t["delta"].is_contiguous() and not t["z"].is_contiguous()
    t = {k: v.clone() if k in ("A", "D", "delta_bias", "u") else v for k, v in t.items()}
    leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
    views = {k: (leaves[k].transpose(1, 2).contiguous().transpose(1, 2) if k in ("delta", "B", "C") else leaves[k])
             for k in leaves}
    y = fused.selective_scan_fused(**views, delta_softplus=True)
    t64, y64 = _ref64(leaves, delta_softplus=True)
    assert torch.allclose(y.double(), y64, atol=1e-4, rtol=1e-4)
    w = torch.randn(b, L, d, generator=g).transpose(1, 2)
    (y * w).sum().backward()
    (y64 * w.double()).sum().backward()
    for k, v in leaves.items():
        ref = t64[k].grad
        assert torch.allclose(v.grad.double(), ref, atol=2e-4 * (1 + ref.abs().max().item()), rtol=1e-3), k


@fused_ok
def test_kernel_layout_reads_projection_slices_in_place():
    """Where a (b, c, L) tensor lies decides what the kernels read: a slice of a wider time-major
    projection in place (rows of the full width, from its channel offset), channel-major memory in
    place, anything else as one time-major copy."""
    b, L, d = 2, 9, 6
    xz = torch.randn(b, L, 2 * d)
    for start in (0, d):
        a, cm, off = fused._kernel_layout(xz[..., start:start + d].transpose(1, 2))
        assert (cm, off, a.shape) == (0, start, (b, L, 2 * d)) and np.shares_memory(a, xz.numpy())
    cmaj = torch.randn(b, d, L)
    a, cm, off = fused._kernel_layout(cmaj)
    assert (cm, off) == (1, 0) and np.shares_memory(a, cmaj.numpy())
    odd = torch.randn(L, b, d).permute(1, 2, 0)  # batch not outermost: copied
    a, cm, off = fused._kernel_layout(odd)
    assert (cm, off, a.shape) == (0, 0, (b, L, d)) and np.array_equal(a, odd.transpose(1, 2).numpy())


@fused_ok
def test_fused_exp2_and_softplus_derivative_are_accurate():
    from rtgen.ssm.simd import vload, vstore

    @fused.numba.njit
    def run(x, out, out2):
        for i in range(0, x.shape[0] - 15, 16):
            vstore(out, i, fused._vexp2(vload(x, i)))
        for i in range(x.shape[0]):
            out2[i] = fused._one_minus_exp_neg(abs(x[i]))

    x = np.linspace(-126, 127, 400000, dtype=np.float32)  # a multiple of 16
    out, out2 = np.empty_like(x), np.empty_like(x)
    run(x, out, out2)
    x64 = x.astype(np.float64)
    assert (np.abs(out / np.exp2(x64) - 1)).max() < 4e-7  # a few ulp of float32
    small = np.abs(x64) < 4  # sigmoid(v) = 1 - e^-softplus(v): relative accuracy down to tiny steps
    ref = -np.expm1(-np.abs(x64[small]))
    nz = ref > 0
    assert (np.abs(out2[small][nz] / ref[nz] - 1)).max() < 1e-6
    tiny = np.array([1e-7, 1e-5, 1e-3], np.float32)
    out_t, out2_t = np.empty_like(tiny), np.empty_like(tiny)
    run(tiny, out_t, out2_t)
    assert np.allclose(out2_t, -np.expm1(-tiny.astype(np.float64)), rtol=1e-6, atol=0)


@fused_ok
def test_fused_scan_grouped_single_group_and_no_grad():
    t = scan_inputs(1, 16, 4, 50, groups=1)
    with torch.no_grad():
        y = fused.selective_scan_fused(**t, delta_softplus=True)
    assert torch.allclose(y, selective_scan_ref(**t, delta_softplus=True), atol=1e-4, rtol=1e-4)
    assert not fused.supports(**scan_inputs(1, 16, 4, 50, groups=2))
    assert not fused.supports(**scan_inputs(1, 4, 2, 5, dtype=torch.float64))


@fused_ok
def test_fused_scan_bfloat16_computes_in_float32():
    t = {k: v.bfloat16() for k, v in scan_inputs(2, 24, 8, 70).items()}
    ref = selective_scan_ref(**{k: v.float() for k, v in t.items()}, delta_softplus=True)
    tg = {k: v.clone().requires_grad_() for k, v in t.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused.selective_scan_fused(**tg, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref, atol=2e-2, rtol=2e-2)  # bf16 rounding of the output only
    y.float().sum().backward()
    t32 = {k: v.float().requires_grad_() for k, v in t.items()}
    selective_scan_ref(**t32, delta_softplus=True).sum().backward()
    for k in t:
        assert tg[k].grad.dtype == torch.bfloat16
        ref_g = t32[k].grad
        assert (tg[k].grad.float() - ref_g).abs().max() <= 2e-2 * (1 + ref_g.abs().max()), k


@fused_ok
def test_dispatch_runs_the_fused_kernel_when_asked_and_refuses_what_it_cannot_take(monkeypatch):
    t = scan_inputs(1, 16, 4, 40)
    calls = []
    real = fused.selective_scan_fused
    monkeypatch.setattr(fused, "selective_scan_fused", lambda *a, **k: calls.append(1) or real(*a, **k))
    with dispatch.use_backend("torch"):
        y_torch = dispatch.selective_scan(**t, delta_softplus=True)
    assert calls == []
    y_auto = dispatch.selective_scan(**t, delta_softplus=True)
    assert calls == [1]  # auto takes the fused kernel on the CPU
    with dispatch.use_backend("numba"):
        y_fused = dispatch.selective_scan(**t, delta_softplus=True)
    assert calls == [1, 1] and torch.allclose(y_torch, y_fused, atol=1e-5, rtol=1e-5) and torch.equal(y_auto, y_fused)
    # float64 is not the kernel's: "numba" refuses with one clear error
    t64 = {k: v.double() for k, v in t.items()}
    with dispatch.use_backend("numba"), pytest.raises(RtgenError, match="fused kernel cannot run"):
        dispatch.selective_scan(**t64)
    # float64: auto falls back to the PyTorch path
    assert torch.equal(dispatch.selective_scan(**t64), selective_scan_fast(**t64))
    # no numba / failed compilation: "numba" refuses, auto falls back to the PyTorch path
    monkeypatch.setattr(fused, "available", lambda: False)
    with dispatch.use_backend("numba"), pytest.raises(RtgenError, match="fused kernel cannot run"):
        dispatch.selective_scan(**t)
    assert torch.equal(dispatch.selective_scan(**t), selective_scan_fast(**t))


@fused_ok
def test_fused_exp_is_accurate():
    @fused.numba.njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = fused._exp(x[i])

    x = np.linspace(-87, 88, 200001, dtype=np.float32)
    out = np.empty_like(x)
    run(x, out)
    rel = np.abs(out.astype(np.float64) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 3e-7  # a few ulp of float32


@pytest.mark.slow  # over 9 s: `pytest -m slow` runs it (CONTRIBUTING.md)
@fused_ok
def test_shipped_md_dose_predicts_the_same_dose_on_the_fused_kernel():
    """The issue's bar: the shipped model with Mamba1 blocks gives the same doses (within 1e-4 Gy) on
    the fused kernel (the CPU default) as on the pure-PyTorch scan, seeded sampling and all."""
    from pathlib import Path

    import numpy as np

    from rtgen.inference.predictor import load_predictor

    root = Path(__file__).resolve().parents[1] / "rtgen"
    predictor = load_predictor(root / "hub" / "md_dose_openkbp", device="cpu")
    patient = root / "examples" / "openkbp" / "pt_204"
    with dispatch.use_backend("torch"):
        reference = predictor.predict(patient)
    fused_dose = predictor.predict(patient)
    assert reference.max() > 50  # a real plan, not an empty volume
    assert np.abs(fused_dose - reference).max() < 1e-4


def test_a_slow_first_compile_is_announced_and_a_fast_one_is_not(capsys):
    import time

    from rtgen.ssm.dispatch import announce_if_slow

    assert announce_if_slow(lambda: time.sleep(0.4) or 7, 0.05, "compiling ...") == 7
    assert capsys.readouterr().err == "compiling ...\n"
    assert announce_if_slow(lambda: 8, 0.2, "compiling ...") == 8
    time.sleep(0.3)  # past the deadline: the cancelled notice never comes
    assert capsys.readouterr().err == ""


@fused_ok
@pytest.mark.parametrize("b,d,n,L,R", [(2, 24, 4, 37, 3), (1, 40, 8, fused.TILE + 45, 4), (2, 17, 3, 130, 1)])
def test_fused_scan_folds_the_dt_projection_with_gradients(b, d, n, L, R):
    """With dt_weight, delta is the block's low-rank step (a slice of x_proj's output, read in place)
    and delta = dt_weight @ it inside the kernel: outputs and all gradients, the projection's too, as
    the float64 reference on the projected delta."""
    g = torch.Generator().manual_seed(L + R)
    low = torch.randn(b, L, R + 2 * n, generator=g)[..., :R].transpose(1, 2).detach().requires_grad_()
    leaves = dict(u=torch.randn(b, L, d, generator=g).transpose(1, 2), A=-torch.rand(d, n, generator=g) - 0.2,
                  B=torch.randn(b, n, L, generator=g), C=torch.randn(b, n, L, generator=g),
                  D=torch.randn(d, generator=g), z=torch.randn(b, d, L, generator=g),
                  delta_bias=torch.randn(d, generator=g) * 0.1, dt_weight=torch.randn(d, R, generator=g) * 0.5)
    leaves = {k: v.detach().requires_grad_() for k, v in leaves.items()}
    y = fused.selective_scan_fused(delta=low, delta_softplus=True, **leaves)
    l64 = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    low64 = low.detach().double().requires_grad_()
    w64 = l64.pop("dt_weight")
    y64 = selective_scan_ref(delta=torch.einsum("dr,brl->bdl", w64, low64), delta_softplus=True, **l64)
    assert torch.allclose(y.double(), y64, atol=1e-4, rtol=1e-4)
    w = torch.randn(y.shape, generator=g)
    (y * w).sum().backward()
    (y64 * w.double()).sum().backward()
    l64["dt_weight"] = w64
    for k, v in {**leaves, "low": low}.items():
        ref = low64.grad if k == "low" else l64[k].grad
        assert v.grad.shape == ref.shape, k
        assert torch.allclose(v.grad.double(), ref, atol=2e-4 * (1 + ref.abs().max().item()), rtol=1e-3), k


def test_chunked_backend_runs_the_chunked_scan_with_the_reference_result():
    """`use_backend("chunked")` (the GPU default without mamba_ssm) gives the plain recurrence's
    output and gradients, through the same `selective_scan` entry the blocks call."""
    from rtgen.ssm.scan import selective_scan_ref

    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 6, 4, 37
    args = [torch.randn(b, d, L, generator=g, dtype=torch.float64), torch.randn(b, d, L, generator=g, dtype=torch.float64),
            -torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.1,
            torch.randn(b, n, L, generator=g, dtype=torch.float64), torch.randn(b, n, L, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64), torch.randn(b, d, L, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64)]
    outs = []
    for run in (lambda *a: dispatch.selective_scan(*a, delta_softplus=True),
                lambda *a: selective_scan_ref(*a, delta_softplus=True)):
        leaves = [a.clone().requires_grad_() for a in args]
        with dispatch.use_backend("chunked"):
            assert dispatch._scan_backend(*leaves[:7], leaves[7]) == "chunked"
            y = run(*leaves)
        y.square().sum().backward()
        outs.append((y.detach(), [a.grad for a in leaves]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-9)
    assert all(torch.allclose(a, r, atol=1e-7) for a, r in zip(outs[0][1], outs[1][1]))
