"""Process settings for rtgen's CPU commands, applied once at start-up, before PyTorch loads.

Two costs outside any kernel, measured on a 2-core Zen 4 (`python benchmarks/bench_cpu_runtime.py`:
together they make a Mamba block's forward+backward 1.14x faster at 16k tokens and 1.42-1.54x at 64k):

- OpenMP spin-waiting. After each parallel PyTorch op, its OpenMP (libgomp) workers spin, by
  default 300,000 rounds, waiting for more work before they sleep. rtgen's numba kernels run on
  threads of their own, so a spinning worker takes a core from them. `GOMP_SPINCOUNT` shortens
  the spin. (`OMP_WAIT_POLICY=PASSIVE`, no spin at all, made the MambaUNetV2 training step 2x
  slower: its many short ops then wait for sleeping workers.) libgomp reads it once, when it
  loads, so the `rtgen` command sets it first thing; a value already in the environment wins.
- Page faults. glibc returns large freed blocks to the system (mmap for blocks over 32 MB, trim
  of the heap's top), so the next tensor of that size faults in its pages again: 96,000-157,000
  minor faults per Mamba block forward+backward at 64k tokens, a third of its time. Without mmap and trim, freed
  memory is reused, as PyTorch's CUDA caching allocator does on a GPU. The resident size then
  stays at its peak until the process ends, which is what a training or prediction run wants.

`RTGEN_CPU_RUNTIME=0` turns both off. Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
SPINCOUNT = "10000"  # libgomp's spin rounds before an idle worker sleeps (default 300,000)
_applied: dict | None = None


def _keep_freed_memory() -> bool:
    """glibc only: serve every allocation from the heap and never give freed memory back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


def configure_cpu_runtime() -> dict:
    """Apply the settings above once; returns what is in effect (for benchmark headers)."""
    global _applied
    if _applied is None:
        if os.environ.get("RTGEN_CPU_RUNTIME", "1") == "0":
            _applied = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "unset"), "keep freed memory": False}
        else:
            torch_loaded = "torch" in sys.modules
            if not torch_loaded:
                os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)
            _applied = {
                "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "unset (torch loaded first)"),
                "keep freed memory": _keep_freed_memory(),
            }
    return dict(_applied)


def describe_cpu_runtime() -> str:
    """One line for a benchmark header: the settings in effect. It changes nothing: a process that
    never called `configure_cpu_runtime` (a library user's script) is described as it runs."""
    s = _applied or {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "unset"), "keep freed memory": False}
    memory = "freed memory kept (no mmap, no trim)" if s["keep freed memory"] else "glibc defaults"
    return f"GOMP_SPINCOUNT={s['GOMP_SPINCOUNT']}, malloc: {memory}"


__all__ = ["configure_cpu_runtime", "describe_cpu_runtime"]
