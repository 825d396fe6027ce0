"""`rtgen train`: any registered model and task from one YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from rtgen.cli.app import app, out, user_errors
from rtgen.core.errors import RtgenError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory (default: train.out from the config)."),
):
    """Train a model: rtgen train CONFIG.yaml [section.key=value ...]. Also runs under torchrun."""
    from rtgen.core.atomic import check_can_create
    from rtgen.engine.config import check_config

    overrides = list(ctx.args)
    if resume is not None and not (resume / "resolved_config.yaml").is_file():
        raise RtgenError(f"{resume}: not a run directory (no resolved_config.yaml)")
    path = resume / "resolved_config.yaml" if resume is not None else config
    # every section and key, before PyTorch is imported (a resumed run's keys under today's names)
    raw, train_cfg = check_config(path, overrides, migrate=resume is not None)
    run_dir = resume or out_dir or Path(train_cfg.out)
    check_can_create(run_dir, 200_000_000)  # before minutes of feature computation: checkpoints need room

    from rtgen.engine.config import from_dict
    from rtgen.engine.direct import runner_for
    from rtgen.evaluation.training_figures import figure_hooks

    cfg = from_dict(raw, str(path))  # the task's own checks (what combines keys with its data)
    runner = runner_for(cfg)
    result = runner(cfg, run_dir, resume=resume is not None, hooks=figure_hooks(cfg.task)).fit()
    units = f" {cfg.task.metric_units}" if cfg.task.metric_units else ""
    when = "" if getattr(cfg.task, "fits_directly", False) else f" after {result['epochs']} epochs"
    out.print(f"best validation {result['metric'].replace('_', ' ')} {result['best']:.3f}{units}{when}; "
              f"run directory [bold]{run_dir}[/]")
