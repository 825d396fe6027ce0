"""The `rtgen` command: one small module a command, each a thin shell over library functions."""

from __future__ import annotations

from rtgen.core.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before anything loads PyTorch (its OpenMP reads the environment once)

from rtgen.cli import bench, convert, demo, evaluate, inspect_patients, models, predict, report, train  # noqa: F401 (registers commands)
from rtgen.cli import register  # noqa: F401 (registers `rtgen register`)
from rtgen.cli.app import app


def run():  # console-script entry point
    app()


__all__ = ["app", "run"]
