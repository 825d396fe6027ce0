"""The `rtgen` command: one small module a command, each a thin shell over library functions."""

from __future__ import annotations

from rtgen.core.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before anything loads PyTorch (its OpenMP reads the environment once)

# the command modules register themselves on `app` when imported
from rtgen.cli import (  # noqa: E402, F401
    bench,
    convert,
    demo,
    evaluate,
    inspect_patients,
    models,
    predict,
    register,
    report,
    train,
)
from rtgen.cli.app import app  # noqa: E402


def run():  # console-script entry point
    app()


__all__ = ["app", "run"]
