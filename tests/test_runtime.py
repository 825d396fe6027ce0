"""rtgen's process settings for CPU commands (rtgen.core.runtime), each checked in a fresh interpreter:
they act once, at start-up."""

import subprocess
import sys

import pytest

CODE = """
import os, sys
from rtgen.core.runtime import configure_cpu_runtime, describe_cpu_runtime
s = configure_cpu_runtime()
print(s["GOMP_SPINCOUNT"], s["keep freed memory"], "torch" in sys.modules)
print(describe_cpu_runtime())
"""


def _run(env_extra):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "RTGEN_CPU_RUNTIME")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_defaults_shorten_the_spin_and_keep_freed_memory_without_loading_torch():
    first, line = _run({})
    assert first == "10000 True False"  # torch is not imported by the settings themselves
    assert "GOMP_SPINCOUNT=10000" in line and "freed memory kept" in line


def test_describing_the_settings_does_not_apply_them():
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "RTGEN_CPU_RUNTIME")}
    code = ("import os; from rtgen.core.runtime import describe_cpu_runtime as d; "
            "print(d()); print(os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == ["GOMP_SPINCOUNT=unset, malloc: glibc defaults", "None"]


def test_an_explicit_value_wins_and_the_switch_turns_everything_off():
    assert _run({"GOMP_SPINCOUNT": "500"})[0].startswith("500 ")
    first, line = _run({"RTGEN_CPU_RUNTIME": "0"})
    assert first == "unset False False" and "glibc defaults" in line
