"""`rtgen bench`: benchmarks that print a table with the machine they ran on."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rtgen.cli.app import bench_app, err, out, user_errors
from rtgen.core.errors import RtgenError


@bench_app.command("ssm")
@user_errors
def bench_ssm(
    device: str = typer.Option("cpu", help="cpu or cuda"),
    lengths: List[int] = typer.Option([1024, 4096, 16384, 65536], "--length", help="Sequence lengths (repeatable)."),
    widths: List[int] = typer.Option([64, 128], "--width", help="Model widths (repeatable)."),
    budget: float = typer.Option(60.0, help="Skip a measurement estimated to take longer than this (s)."),
    only: Optional[List[str]] = typer.Option(None, help="Run only implementations whose name contains this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON."),
):
    """Selective scan, Mamba and Mamba2 blocks vs the sequential reference, mambapy, transformers and attention."""
    from rtgen.bench.ssm import format_table, format_targets, machine_description, run_benchmark, save_json, targets

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RtgenError("--device cuda requested but no CUDA device is available")
    rows = run_benchmark(lengths, widths, device, budget, only=only, progress=lambda m: err.print(f"[dim]{m}[/]"))
    out.print(f"machine: {machine_description(device)}\n", highlight=False)
    print(format_table(rows))
    print()
    print(format_targets(targets(rows)))
    if json_out:
        save_json(json_out, rows, device)
