"""Choose between rtgen's PyTorch kernels, its fused numba CPU kernel and the CUDA kernels of `mamba_ssm`.

Setting: "auto" (default: CUDA kernels when `mamba_ssm` imports and tensors are on a GPU, else on a
GPU the chunked matmul scan; on the CPU the fused numba selective scan when numba compiles it and it
takes the arguments, else the pure-PyTorch path), "torch" (always the pure-PyTorch path),
"chunked" (always `selective_scan_chunked`, the scan as a few batched matmuls per call), "numba"
(always the fused numba CPU selective scan, rtgen.ssm.fused, for float32/bf16/fp16, real A, ungrouped B and C; an error if
impossible) or "cuda" (always mamba_ssm's; an error if impossible). The fused kernel is the CPU
default because it measured 2-5x faster than the PyTorch path (`rtgen bench ssm`) and gives the shipped
MD-Dose model's doses within 3e-5 Gy of it. On a GPU without `mamba_ssm` the chunked scan is the
default: the PyTorch path's per-step loops launch tens of thousands of small kernels per training
step, and an H100 trained DiffMa-B only 3.7x faster than 2 CPU cores on it (2.9x faster again on
the chunked scan: docs/reports/2026-11-27-diffma-b-on-a-gpu.md). RTGEN_DISABLE_NUMBA=1 turns the fused
kernel off. Set the backend with
`set_backend`, the `use_backend` context manager, or the RTGEN_SSM_BACKEND variable. Mamba2's SSD has
no fused kernel: "numba" runs it on the PyTorch path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

from rtgen.core.errors import RtgenError
from rtgen.ssm.scan import selective_scan_fast
from rtgen.ssm.scan_chunked import selective_scan_chunked
from rtgen.ssm.ssd import ssd_chunked

BACKENDS = ("auto", "torch", "chunked", "numba", "cuda")
_backend = os.environ.get("RTGEN_SSM_BACKEND", "auto")


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise RtgenError(f"unknown SSM backend {name!r}; choose one of {BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@functools.cache
def kernels_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401

        return True
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False


COMPILE_NOTICE_AFTER_S = 3.0
COMPILE_NOTICE = ("rtgen: compiling the fused CPU selective-scan kernels (20-60 s on 2 cores, once: "
                  "numba caches them) ...")


def announce_if_slow(work, after_s: float, message: str):
    """`work()`, with `message` on stderr if it has not returned after `after_s` seconds: a first run
    otherwise sits silent while numba compiles."""
    timer = threading.Timer(after_s, lambda: print(message, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        return work()
    finally:
        timer.cancel()


def _fused():
    """rtgen.ssm.fused, imported only when asked for (it sets numba's threading layer). With a cold
    numba cache its import compiles the kernels, so a slow import says so."""
    if "rtgen.ssm.fused" in sys.modules:
        return sys.modules["rtgen.ssm.fused"]

    def load():
        from rtgen.ssm import fused

        return fused

    return announce_if_slow(load, COMPILE_NOTICE_AFTER_S, COMPILE_NOTICE)


def fused_available() -> bool:
    """numba imports and the fused CPU kernel compiles (checked once)."""
    return _fused().available()


def choose(setting: str, available: bool, on_cuda: bool, fused_ok: bool = False) -> str:
    """The decision alone, so it can be tested without a GPU. `available`: mamba_ssm imports;
    `fused_ok`: the fused CPU kernel compiled and supports these arguments."""
    if setting not in BACKENDS:
        raise RtgenError(f"unknown SSM backend {setting!r}; choose one of {BACKENDS}")
    if setting in ("torch", "chunked"):
        return setting
    if setting == "cuda":
        if not available:
            raise RtgenError("SSM backend 'cuda' requested but mamba_ssm is not installed (pip install mamba-ssm)")
        if not on_cuda:
            raise RtgenError("SSM backend 'cuda' requested but the tensors are not on a CUDA device")
        return "cuda"
    if setting == "numba":
        if not fused_ok:
            raise RtgenError("SSM backend 'numba' requested but the fused kernel cannot run here (numba missing or "
                             "failing to compile, or tensors it does not take: CUDA, float64, complex, grouped B/C)")
        return "numba"
    if on_cuda:
        return "cuda" if available else "chunked"
    return "numba" if fused_ok else "torch"


def _scan_backend(u, delta, A, B, C, D, z, delta_bias) -> str:
    """Which implementation `selective_scan` takes for these arguments under the current setting."""
    fused_ok = False
    if _backend in ("numba", "auto") and not u.is_cuda:
        fused = _fused()
        fused_ok = fused.supports(u, delta, A, B, C, D, z, delta_bias) and fused.available()
    return choose(_backend, kernels_available() if u.is_cuda or _backend == "cuda" else False, u.is_cuda, fused_ok)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """`mamba_ssm.selective_scan_fn` semantics on any device."""
    which = _scan_backend(u, delta, A, B, C, D, z, delta_bias)
    if which == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if which == "numba":
        return _fused().selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if which == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_projected_dt(u, dt_low, dt_weight, A, B, C, D=None, z=None, delta_bias=None,
                                delta_softplus=False):
    """The Mamba block's dt projection and selective scan: delta = dt_weight @ dt_low, with dt_low the
    (b, R, L) low-rank steps and dt_weight (d, R). The fused CPU kernel folds the projection in
    (its three thin matmuls took about 7 ms of a 16k-token block step); every other path runs it as
    `F.linear` first, exactly as before."""
    if _scan_backend(u, dt_low, A, B, C, D, z, delta_bias) == "numba":
        return _fused().selective_scan_fused(u, dt_low, A, B, C, D, z, delta_bias, delta_softplus,
                                             dt_weight=dt_weight)
    import torch.nn.functional as F

    delta = F.linear(dt_low.transpose(1, 2), dt_weight).transpose(1, 2)
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def fused_causal_conv(x, weight) -> bool:
    """Whether the Mamba block's causal conv + SiLU runs on the fused numba kernel
    (`rtgen.ssm.fused_conv`): on the CPU under "auto" or "numba" when the kernels compile. Under
    "cuda" or "torch", and on a GPU, it runs as a PyTorch convolution."""
    if _backend not in ("numba", "auto") or x.is_cuda or not _fused().available():
        return False
    from rtgen.ssm import fused_conv

    return fused_conv.supports(x, weight)


def ssd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
        return_final_states=False):
    """`mamba_ssm.mamba_chunk_scan_combined` semantics on any device (no fused CPU kernel: "numba" and
    "auto" on the CPU run `ssd_chunked`)."""
    setting = "auto" if _backend == "numba" else _backend
    if choose(setting, kernels_available() if x.is_cuda or setting == "cuda" else False, x.is_cuda) == "cuda":
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        return mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
            dt_softplus=dt_softplus, return_final_states=return_final_states,
        )
    return ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, return_final_states)
