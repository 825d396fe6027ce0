"""Benchmark of rtgen's state-space layers against the sequential reference, other pure-PyTorch
Mamba implementations (mambapy, transformers' Mamba2 fallback), attention and, on a GPU,
mamba_ssm's CUDA kernels. Batch 1; forward (no grad) and forward+backward time, peak memory.

Run as `rtgen bench ssm` or `python benchmarks/bench_ssm.py`.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn

from rtgen.layers.attention import SelfAttention
from rtgen.ssm import Mamba, Mamba2, dispatch, selective_scan_fast, selective_scan_ref

D_STATE = 16


@dataclass
class Row:
    length: int
    width: int
    name: str
    forward_ms: float | None = None
    train_ms: float | None = None  # forward + backward
    peak_mb: float | None = None
    note: str = ""


# ---------------------------------------------------------------- memory


def _trim_heap() -> None:
    """Return freed heap memory to the OS so RSS reflects live memory (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak memory of a block of work: CUDA allocator peak, or the CPU process's RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = device.type == "cpu" and os.path.exists("/proc/self/clear_refs")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.cpu:
            _trim_heap()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.cpu:
            self.peak = (_proc_status("VmHWM") - self.base) / 2**20
        else:
            self.peak = None


# ---------------------------------------------------------------- workloads


def _scan_workload(fn, width: int, L: int, device):
    g = torch.Generator().manual_seed(0)
    t = dict(
        u=torch.randn(1, width, L, generator=g), delta=torch.randn(1, width, L, generator=g),
        A=-torch.rand(width, D_STATE, generator=g) - 0.5, B=torch.randn(1, D_STATE, L, generator=g),
        C=torch.randn(1, D_STATE, L, generator=g), D=torch.ones(width), z=torch.randn(1, width, L, generator=g),
        delta_bias=torch.zeros(width),
    )
    t = {k: v.to(device) for k, v in t.items()}
    return lambda: fn(**t, delta_softplus=True), list(t.values())


def _module_workload(module: nn.Module, width: int, L: int, device):
    module = module.to(device)
    x = torch.randn(1, L, width, device=device)
    return lambda: module(x), [x] + list(module.parameters())


def _mambapy_block(width: int):
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=width, n_layers=1, d_state=D_STATE))


def _transformers_mamba2(width: int):
    from transformers import Mamba2Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(hidden_size=width, num_heads=2 * width // 64, head_dim=64, state_size=64, n_groups=1,
                       expand=2, chunk_size=64, num_hidden_layers=1, vocab_size=16)
    mixer = Mamba2Mixer(cfg, layer_idx=0)
    return _Forward(mixer)


class _Forward(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


def _mamba_ssm_scan(**kw):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(**kw)


def implementations(device) -> list[tuple[str, Callable, float, str]]:
    """(name, workload factory(width, L), complexity exponent in L, availability note)."""
    impls = [
        ("selective scan, rtgen fast", lambda w, L: _scan_workload(selective_scan_fast, w, L, device), 1.0, ""),
        ("selective scan, sequential ref", lambda w, L: _scan_workload(selective_scan_ref, w, L, device), 1.0, ""),
        ("Mamba block, rtgen", lambda w, L: _module_workload(_TorchPath(Mamba(w, d_state=D_STATE)), w, L, device), 1.0, ""),
        ("Mamba2 block, rtgen", lambda w, L: _module_workload(_TorchPath(Mamba2(w, headdim=64)), w, L, device), 1.0, ""),
        ("Mamba block, mambapy", lambda w, L: _module_workload(_mambapy_block(w), w, L, device), 1.0, _missing("mambapy")),
        ("Mamba2 mixer, transformers (torch)", lambda w, L: _module_workload(_transformers_mamba2(w), w, L, device),
         1.0, _missing("transformers")),
        ("attention, SDPA", lambda w, L: _module_workload(SelfAttention(w), w, L, device), 2.0, ""),
    ]
    if device.type == "cuda":
        note = "" if dispatch.kernels_available() else "mamba_ssm not installed"
        impls += [
            ("selective scan, mamba_ssm CUDA", lambda w, L: _scan_workload(_mamba_ssm_scan, w, L, device), 1.0, note),
            ("Mamba block, rtgen + mamba_ssm", lambda w, L: _module_workload(Mamba(w, d_state=D_STATE), w, L, device),
             1.0, note),
        ]
    return impls


class _TorchPath(nn.Module):
    """Run a block on rtgen's PyTorch kernels even where mamba_ssm is installed."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        with dispatch.use_backend("torch"):
            return self.block(x)


def _missing(module: str) -> str:
    try:
        __import__(module)
        return ""
    except Exception:
        return f"{module} not installed (pip install {module})"


# ---------------------------------------------------------------- timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(make, device, repeats: int) -> tuple[float, float, float | None]:
    run, tensors = make()
    leaves = [t for t in tensors if t.is_floating_point()]
    with torch.no_grad():
        run()  # warm-up
        _sync(device)
        fwd = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            _sync(device)
            fwd = min(fwd, time.perf_counter() - t0)
    for t in leaves:
        t.requires_grad_(True)
    run().sum().backward()  # warm-up
    train = math.inf
    peak = None
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        with PeakMemory(device) as pm:
            t0 = time.perf_counter()
            run().sum().backward()
            _sync(device)
            train = min(train, time.perf_counter() - t0)
        peak = pm.peak if peak is None or pm.peak is None else max(peak, pm.peak)
    return fwd * 1000, train * 1000, peak


def run_benchmark(lengths=(1024, 4096, 16384, 65536), widths=(64, 128), device="cpu", budget_s: float = 60.0,
                  repeats: int = 3, only: list[str] | None = None, progress: Callable[[str], None] | None = None):
    device = torch.device(device)
    torch.manual_seed(0)
    rows: list[Row] = []
    for width in widths:
        for name, factory, exponent, note in implementations(device):
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            last: tuple[int, float] | None = None
            for L in lengths:
                row = Row(L, width, name)
                reps = repeats if L <= 16384 else 1
                if note:
                    row.note = note
                elif last and last[1] / 1000 * (L / last[0]) ** exponent * (2 * reps + 2) > budget_s:
                    est = last[1] / 1000 * (L / last[0]) ** exponent
                    row.note = f"skipped: one forward+backward would take about {est:.0f} s"
                else:
                    if progress:
                        progress(f"{name}, width {width}, L {L}")
                    try:
                        row.forward_ms, row.train_ms, row.peak_mb = measure(lambda: factory(width, L), device, reps)
                        last = (L, row.train_ms)
                    except (RuntimeError, MemoryError) as e:  # out of memory and the like
                        row.note = f"failed: {str(e).splitlines()[0][:80]}"
                rows.append(row)
                gc.collect()
    return rows


def machine_description(device="cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores), torch {torch.__version__}"


def format_table(rows: list[Row]) -> str:
    head = f"{'L':>7} {'width':>5}  {'implementation':<36}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MB':>10}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"{r.length:>7} {r.width:>5}  {r.name:<36}{f(r.forward_ms):>10}{f(r.train_ms):>12}"
                     f"{f(r.peak_mb, 0):>10}  {r.note}")
    return "\n".join(lines)


def targets(rows: list[Row], width: int = 64) -> list[tuple[str, float | None, str, bool | None]]:
    """The issue's targets as ratios measured in this run: (what, value, goal, met)."""
    def t(name, L):
        for r in rows:
            if r.name == name and r.length == L and r.width == width and r.train_ms:
                return r.train_ms
        return None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    out = []
    v = ratio(t("selective scan, sequential ref", 16384), t("selective scan, rtgen fast", 16384))
    out.append(("fast scan speed-up over sequential (L 16384)", v, ">= 20x", None if v is None else v >= 20))
    v = ratio(t("Mamba block, mambapy", 16384), t("Mamba block, rtgen", 16384))
    out.append(("Mamba block speed-up over mambapy (L 16384)", v, ">= 2x", None if v is None else v >= 2))
    for name in ("selective scan, rtgen fast", "Mamba block, rtgen"):
        v = ratio(t(name, 65536), t(name, 16384))
        out.append((f"{name}: time(65536) / time(16384)", v, "<= 4.5", None if v is None else v <= 4.5))
    for L in (16384, 65536):
        v = ratio(t("attention, SDPA", L), t("Mamba block, rtgen", L))
        out.append((f"Mamba block speed-up over attention (L {L})", v, "> 1x", None if v is None else v > 1))
    return out


def format_targets(items) -> str:
    lines = ["targets (width 64, batch 1, forward+backward, ratios from this run):"]
    for what, v, goal, met in items:
        val = "not measured" if v is None else f"{v:.2f}"
        status = "" if met is None else ("met" if met else "NOT met")
        lines.append(f"  {what:<52}{val:>14}  goal {goal:<7} {status}")
    return "\n".join(lines)


def save_json(path, rows, device):
    from rtgen.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"machine": machine_description(device), "rows": [asdict(r) for r in rows]},
                                       indent=2) + "\n")
