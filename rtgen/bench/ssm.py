"""Benchmark of rtgen's state-space layers against the sequential reference, other pure-PyTorch
Mamba implementations (mambapy, transformers' Mamba2 fallback), attention and, on a GPU,
mamba_ssm's CUDA kernels. Batch 1; forward (no grad) and forward+backward time, peak memory.

Method. Every workload is warmed up (forward, then forward+backward) outside the timed region;
times are the median of at least `repeats` (3) runs, more for quick workloads (up to 15, while
their total stays under a second): on a shared 2-core machine a slow second otherwise decides a
3-run median. Nothing touches the allocator inside the timed region: peak memory is measured in
one extra, untimed run. Scan rows use d = 2 x width channels, as the Mamba block's d_inner; Mamba2 rows use d_state 32, as the
models. The machine's fp32 (and bf16) matmul peak and its stream-copy bandwidth are measured in
the same run, and the scan rows report GFLOP/s and GB/s as fractions of them.

Run as `rtgen bench ssm` or `python benchmarks/bench_ssm.py`.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn

from rtgen.core.runtime import describe_cpu_runtime
from rtgen.layers.attention import SelfAttention
from rtgen.ssm import Mamba, Mamba2, dispatch, fused, selective_scan_fast, selective_scan_ref
from rtgen.ssm.scan_chunked import selective_scan_chunked

D_STATE = 16
D_STATE_MAMBA2 = 32  # as the shipped Mamba2 models
EXPAND = 2  # scan channels = EXPAND x width, the Mamba block's d_inner


@dataclass
class Row:
    length: int
    width: int
    name: str
    forward_ms: float | None = None
    train_ms: float | None = None  # forward + backward
    peak_mb: float | None = None
    note: str = ""
    gflops: float | None = None  # forward+backward GFLOP/s (scan rows)
    gbs: float | None = None  # forward+backward GB/s of minimum traffic (scan rows)
    fwd_gflops: float | None = None


class Rows(list):
    """The rows of one run, with the machine peaks measured in it (`peaks`: name -> value)."""

    peaks: dict


def measure_peaks(device="cpu", seconds: float = 0.5) -> dict:
    """fp32 and bf16 matmul GFLOP/s and stream-copy GB/s of this machine, now (best of a few runs)."""
    dev = torch.device(device)
    out = {}
    for name, dtype in (("fp32 matmul GFLOP/s", torch.float32), ("bf16 matmul GFLOP/s", torch.bfloat16)):
        n = 2048
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        c = a @ b
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end or best == float("inf"):
            _sync(dev)
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n**3 / best / 1e9
    src = torch.ones(64 * 2**20 // 4, device=dev)  # 64 MiB, far beyond the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        _sync(dev)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    out["stream copy GB/s"] = 2 * src.numel() * 4 / best / 1e9  # read + write
    return out


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


def scan_workload(fn, width: int, L: int, device):
    """The scan as the Mamba block of this width runs it on the CPU: d_inner = EXPAND * width
    channels, and the block's layouts: u, delta, z, B and C are (b, d, L) views of time-major (b, L, d)
    memory (channels contiguous): delta, z, B and C come from linear projections, and u from the
    channels-last causal conv (`SelectiveSSM.causal_conv`)."""
    width = EXPAND * width
    g = torch.Generator().manual_seed(0)
    bld = lambda n: torch.randn(1, L, n, generator=g).transpose(1, 2)  # noqa: E731
    t = dict(
        u=bld(width), delta=bld(width),
        A=-torch.rand(width, D_STATE, generator=g) - 0.5, B=bld(D_STATE),
        C=bld(D_STATE), D=torch.ones(width), z=bld(width),
        delta_bias=torch.zeros(width),
    )
    t = {k: v.to(device) for k, v in t.items()}
    return lambda: fn(**t, delta_softplus=True), list(t.values())


def _module_workload(module: nn.Module, width: int, L: int, device):
    module = module.to(device)
    x = torch.randn(1, L, width, device=device)
    return lambda: module(x), [x] + list(module.parameters())


def mambapy_block(width: int):
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=width, n_layers=1, d_state=D_STATE))


def _transformers_mamba2(width: int):
    from transformers import Mamba2Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(hidden_size=width, num_heads=2 * width // 64, head_dim=64, state_size=D_STATE_MAMBA2, n_groups=1,
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
    cpu = device.type == "cpu"
    fused_note = "" if cpu and fused.available() else "fused kernel unavailable (numba, CPU only)"
    impls = [
        ("selective scan, rtgen fused", lambda w, L: scan_workload(fused.selective_scan_fused, w, L, device), 1.0,
         fused_note),
        ("selective scan, rtgen fast", lambda w, L: scan_workload(selective_scan_fast, w, L, device), 1.0, ""),
        ("selective scan, chunked matmul fp32", lambda w, L: scan_workload(selective_scan_chunked, w, L, device), 1.0,
         ""),
        ("selective scan, chunked matmul bf16", lambda w, L: scan_workload(
            partial(selective_scan_chunked, matmul_dtype=torch.bfloat16), w, L, device), 1.0, ""),
        ("selective scan, sequential ref", lambda w, L: scan_workload(selective_scan_ref, w, L, device), 1.0, ""),
        ("Mamba block, rtgen", lambda w, L: _module_workload(
            Mamba(w, d_state=D_STATE), w, L, device), 1.0, ""),
        ("Mamba block, rtgen torch path", lambda w, L: _module_workload(_TorchPath(Mamba(w, d_state=D_STATE)), w, L,
                                                                        device), 1.0, ""),
        ("Mamba2 block, rtgen", lambda w, L: _module_workload(Mamba2(w, d_state=D_STATE_MAMBA2, headdim=64), w, L,
                                                              device), 1.0, ""),
        ("Mamba block, mambapy", lambda w, L: _module_workload(mambapy_block(w), w, L, device), 1.0, _missing("mambapy")),
        ("Mamba2 mixer, transformers (torch)", lambda w, L: _module_workload(_transformers_mamba2(w), w, L, device),
         1.0, _missing("transformers")),
        ("attention, SDPA", lambda w, L: _module_workload(SelfAttention(w), w, L, device), 2.0, ""),
    ]
    if device.type == "cuda":
        note = "" if dispatch.kernels_available() else "mamba_ssm not installed"
        impls += [
            ("selective scan, mamba_ssm CUDA", lambda w, L: scan_workload(_mamba_ssm_scan, w, L, device), 1.0, note),
            ("Mamba block, rtgen + mamba_ssm", lambda w, L: _module_workload(_Backend(Mamba(w, d_state=D_STATE), "cuda"),
                                                                             w, L, device), 1.0, note),
        ]
    return impls


class _Backend(nn.Module):
    """Run a block on one SSM backend."""

    def __init__(self, block, backend: str):
        super().__init__()
        self.block, self.backend = block, backend

    def forward(self, x):
        with dispatch.use_backend(self.backend):
            return self.block(x)


def _TorchPath(block):  # noqa: N802
    """Run a block on rtgen's pure-PyTorch kernels (neither the fused kernel nor mamba_ssm)."""
    return _Backend(block, "torch")


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


MIN_TIMED_S = 1.0  # quick workloads repeat until this much time is measured ...
MAX_REPEATS = 15  # ... or this many runs


def _timed(fn, device, repeats: int) -> float:
    """Median wall time of at least `repeats` runs (see the module's Method)."""
    times = []
    while len(times) < repeats or (sum(times) < MIN_TIMED_S and len(times) < MAX_REPEATS):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(make, device, repeats: int) -> tuple[float, float, float | None]:
    """(forward ms, forward+backward ms, peak MB): medians of `repeats` runs after a warm-up; the
    peak comes from one more, untimed run (its allocator bookkeeping stays out of the times)."""
    run, tensors = make()
    leaves = [t for t in tensors if t.is_floating_point()]
    with torch.no_grad():
        run()  # warm-up
        fwd = _timed(run, device, repeats)
    for t in leaves:
        t.requires_grad_(True)

    def train():
        for t in leaves:
            t.grad = None
        run().sum().backward()

    train()  # warm-up
    tr = _timed(train, device, repeats)
    with PeakMemory(device) as pm:
        train()
    return fwd * 1000, tr * 1000, pm.peak


def _rates(row: Row) -> None:
    if not row.name.startswith("selective scan") or not row.train_ms:
        return
    d, L = EXPAND * row.width, row.length
    row.gflops = fused.scan_flops(1, d, D_STATE, L, backward=True) / row.train_ms / 1e6
    row.gbs = fused.scan_bytes(1, d, D_STATE, L, backward=True) / row.train_ms / 1e6
    row.fwd_gflops = fused.scan_flops(1, d, D_STATE, L) / row.forward_ms / 1e6


def run_benchmark(lengths=(1024, 4096, 16384, 65536), widths=(64, 128), device="cpu", budget_s: float = 60.0,
                  repeats: int = 3, only: list[str] | None = None, progress: Callable[[str], None] | None = None,
                  peak_seconds: float = 0.5):
    """The rows of every implementation (those whose name holds a substring of `only`, if given) at
    each width and length; `peak_seconds`: how long each machine peak is measured (0: one run)."""
    device = torch.device(device)
    torch.manual_seed(0)
    rows = Rows()
    if progress:
        progress("measuring the machine's peaks")
    rows.peaks = measure_peaks(device, peak_seconds)
    for width in widths:
        for name, factory, exponent, note in implementations(device):
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            last: tuple[int, float] | None = None
            for L in lengths:
                row = Row(L, width, name)
                if note:
                    row.note = note
                elif last and last[1] / 1000 * (L / last[0]) ** exponent * (2 * repeats + 3) > budget_s:
                    est = last[1] / 1000 * (L / last[0]) ** exponent
                    row.note = f"skipped: one forward+backward would take about {est:.0f} s"
                else:
                    if progress:
                        progress(f"{name}, width {width}, L {L}")
                    try:
                        row.forward_ms, row.train_ms, row.peak_mb = measure(lambda: factory(width, L), device, repeats)
                        last = (L, row.train_ms)
                        _rates(row)
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
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu} CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores), torch {torch.__version__}; "
            f"{describe_cpu_runtime()}")


def _row_time(rows, name, L, width):
    for r in rows:
        if r.name == name and r.length == L and r.width == width and r.train_ms:
            return r
    return None


def format_table(rows: list[Row]) -> str:
    peaks = getattr(rows, "peaks", None) or {}
    f32, bw = peaks.get("fp32 matmul GFLOP/s"), peaks.get("stream copy GB/s")
    lines = []
    if peaks:
        lines.append("measured peaks in this run: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
        lines.append(f"scan rows: d = {EXPAND} x width channels, d_state {D_STATE}; Mamba2 rows: d_state {D_STATE_MAMBA2}; "
                     "times are medians of the repeats")
        lines.append("")
    head = (f"{'L':>7} {'width':>5}  {'implementation':<36}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MB':>10}"
            f"{'GFLOP/s':>9}{'%fp32':>7}{'GB/s':>7}{'%copy':>7}  note")
    lines += [head, "-" * len(head)]
    for r in rows:
        f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        frac_f = None if r.gflops is None or not f32 else 100 * r.gflops / f32
        frac_b = None if r.gbs is None or not bw else 100 * r.gbs / bw
        lines.append(f"{r.length:>7} {r.width:>5}  {r.name:<36}{f(r.forward_ms):>10}{f(r.train_ms):>12}"
                     f"{f(r.peak_mb, 0):>10}{f(r.gflops):>9}{f(frac_f):>7}{f(r.gbs):>7}{f(frac_b):>7}  {r.note}")
    # side-by-side ratios of the Mamba block (fused path) to the others, forward+backward
    pairs = [("Mamba block, mambapy", "mambapy"), ("attention, SDPA", "SDPA attention"),
             ("Mamba block, rtgen torch path", "rtgen torch path")]
    ratio_lines = []
    for width in sorted({r.width for r in rows}):
        for L in sorted({r.length for r in rows}):
            mine = _row_time(rows, "Mamba block, rtgen", L, width)
            if mine is None:
                continue
            parts = []
            for name, label in pairs:
                other = _row_time(rows, name, L, width)
                if other is not None:
                    parts.append(f"{other.train_ms / mine.train_ms:.2f}x faster than {label}")
            if parts:
                ratio_lines.append(f"  width {width:>3}, L {L:>6}: " + ", ".join(parts))
    if ratio_lines:
        lines += ["", "Mamba block, rtgen (auto backend), forward+backward, same run:"] + ratio_lines
    scal = []
    for width in sorted({r.width for r in rows}):
        for name in sorted({r.name for r in rows}):
            a, b = _row_time(rows, name, 65536, width), _row_time(rows, name, 16384, width)
            if a is not None and b is not None:
                scal.append(f"  width {width:>3}, {name:<36} t(65536)/t(16384) = {a.train_ms / b.train_ms:.2f}")
    if scal:
        lines += ["", "scaling, forward+backward (linear is 4.00):"] + scal
    return "\n".join(lines)


def targets(rows: list[Row], width: int = 64) -> list[tuple[str, float | None, str, bool | None]]:
    """The issue's targets as ratios measured in this run: (what, value, goal, met)."""
    def t(name, L):
        r = _row_time(rows, name, L, width)
        return None if r is None else r.train_ms

    def ratio(a, b):
        return None if a is None or b is None else a / b

    out = []
    v = ratio(t("selective scan, sequential ref", 16384), t("selective scan, rtgen fast", 16384))
    out.append(("fast scan speed-up over sequential (L 16384)", v, ">= 20x", None if v is None else v >= 20))
    v = ratio(t("selective scan, rtgen fast", 16384), t("selective scan, rtgen fused", 16384))
    out.append(("fused scan speed-up over the torch path (L 16384)", v, "> 1x", None if v is None else v > 1))
    v = ratio(t("Mamba block, mambapy", 16384), t("Mamba block, rtgen", 16384))
    out.append(("Mamba block speed-up over mambapy (L 16384)", v, ">= 8x", None if v is None else v >= 8))
    for name in ("selective scan, rtgen fused", "Mamba block, rtgen"):
        v = ratio(t(name, 65536), t(name, 16384))
        out.append((f"{name}: time(65536) / time(16384)", v, "<= 4.2", None if v is None else v <= 4.2))
    peaks = getattr(rows, "peaks", None) or {}
    for L in (16384, 65536):
        r = _row_time(rows, "selective scan, rtgen fused", L, width)
        f32 = peaks.get("fp32 matmul GFLOP/s")
        v = None if r is None or r.gflops is None or not f32 else 100 * r.gflops / f32
        out.append((f"fused scan, % of fp32 matmul peak (L {L})", v, ">= 15", None if v is None else v >= 15))
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

    atomic_write_text(path, json.dumps({"machine": machine_description(device), "peaks": getattr(rows, "peaks", None),
                                        "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
