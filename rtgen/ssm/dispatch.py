"""Choose between rtgen's PyTorch kernels and the CUDA kernels of `mamba_ssm`.

Setting: "auto" (default; CUDA kernels when `mamba_ssm` imports and tensors are on a GPU),
"torch" (always ours) or "cuda" (always theirs; an error if impossible). Set it with
`set_backend`, the `use_backend` context manager, or the RTGEN_SSM_BACKEND variable.
"""

from __future__ import annotations

import contextlib
import functools
import os

from rtgen.core.errors import RtgenError
from rtgen.ssm.scan import selective_scan_fast
from rtgen.ssm.ssd import ssd_chunked

BACKENDS = ("auto", "torch", "cuda")
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


@functools.lru_cache(maxsize=None)
def kernels_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401

        return True
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False


def choose(setting: str, available: bool, on_cuda: bool) -> str:
    """The decision alone, so it can be tested without a GPU."""
    if setting not in BACKENDS:
        raise RtgenError(f"unknown SSM backend {setting!r}; choose one of {BACKENDS}")
    if setting == "torch":
        return "torch"
    if setting == "cuda":
        if not available:
            raise RtgenError("SSM backend 'cuda' requested but mamba_ssm is not installed (pip install mamba-ssm)")
        if not on_cuda:
            raise RtgenError("SSM backend 'cuda' requested but the tensors are not on a CUDA device")
        return "cuda"
    return "cuda" if available and on_cuda else "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """`mamba_ssm.selective_scan_fn` semantics on any device."""
    if choose(_backend, kernels_available(), u.is_cuda) == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def ssd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
        return_final_states=False):
    """`mamba_ssm.mamba_chunk_scan_combined` semantics on any device."""
    if choose(_backend, kernels_available(), x.is_cuda) == "cuda":
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        return mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
            dt_softplus=dt_softplus, return_final_states=return_final_states,
        )
    return ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, return_final_states)
