"""The `rtgen` command: one small module a command, each a thin shell over library functions."""

from __future__ import annotations

import os
import sys

from rtgen.core.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before anything loads PyTorch (its OpenMP reads the environment once)
if sys.argv[1:2] == ["plan"]:  # before NumPy loads: the dose engine's many small products run far faster on one thread
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# the command modules register themselves on `app` when imported
from rtgen.cli import (  # noqa: E402, F401
    bench,
    convert,
    demo,
    evaluate,
    inspect_patients,
    models,
    plan,
    predict,
    register,
    report,
    train,
)
from rtgen.cli.app import app  # noqa: E402


def run():  # console-script entry point
    app()


__all__ = ["app", "run"]
