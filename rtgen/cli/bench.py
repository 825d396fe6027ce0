"""`rtgen bench`: benchmarks that print a table with the machine they ran on."""

from __future__ import annotations

from pathlib import Path

import typer

from rtgen.cli.app import bench_app, err, user_errors
from rtgen.core.errors import RtgenError


@bench_app.command("ssm")
@user_errors
def bench_ssm(
    device: str = typer.Option("cpu", help="cpu or cuda"),
    lengths: list[int] = typer.Option([1024, 4096, 16384, 65536], "--length", help="Sequence lengths (repeatable)."),
    widths: list[int] = typer.Option([64, 128], "--width", help="Model widths (repeatable)."),
    budget: float = typer.Option(60.0, help="Skip a measurement estimated to take longer than this (s)."),
    only: list[str] | None = typer.Option(None, help="Run only implementations whose name contains this."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON."),
):
    """Selective scan, Mamba and Mamba2 blocks vs the sequential reference, mambapy, transformers and attention."""
    from rtgen.bench.ssm import format_table, format_targets, machine_description, run_benchmark, save_json, targets

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RtgenError("--device cuda requested but no CUDA device is available")
    rows = run_benchmark(lengths, widths, device, budget, only=only, progress=lambda m: err.print(f"[dim]{m}[/]"))
    print(f"machine: {machine_description(device)}\n")
    print(format_table(rows))
    print()
    print(format_targets(targets(rows)))
    if json_out:
        save_json(json_out, rows, device)


@bench_app.command("fuzz")
@user_errors
def bench_fuzz(
    minutes: float = typer.Option(10.0, min=0.01, help="How long to fuzz."),
    seed: int = typer.Option(0, help="Random seed (a run is reproducible for a seed and a count)."),
    only: str | None = typer.Option(None, help="Only targets whose name contains this (e.g. nifti)."),
    crash_dir: Path = typer.Option(Path("rtgen-out/fuzz-crashes"), "--crashes", help="Where crashing inputs are saved."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the counts as JSON."),
):
    """Feed mutated CSV, NIfTI, npz, YAML and checkpoint files to the readers; count inputs and crashes.
    A crash is any exception other than rtgen's one-line errors; exit 1 if there was one."""
    from rtgen.bench.fuzz import format_report, report_json, run_fuzz
    from rtgen.bench.ssm import machine_description
    from rtgen.core.atomic import atomic_write_text

    report = run_fuzz(seconds=minutes * 60, seed=seed, crash_dir=crash_dir, only=only,
                      progress=lambda m: err.print(f"[dim]{m}[/]"))
    print(f"machine: {machine_description('cpu')}\n")
    print(format_report(report))
    if json_out:
        atomic_write_text(json_out, report_json(report) + "\n")
    if report.crashes:
        raise typer.Exit(1)
