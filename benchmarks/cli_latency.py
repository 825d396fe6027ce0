"""CLI latency: python benchmarks/cli_latency.py [--runs 5]  (smoke: --smoke).

Wall-clock seconds, from process start to exit, of the commands a user waits on before anything
runs, each a fresh process (`python -m rtgen ...`, what the `rtgen` script runs), with their targets:

    rtgen --help                                                     2 s
    rtgen models --json                                              2 s
    rtgen train BAD.yaml          (configs/unet_cpu.yaml with epochs: ten)   3 s, one error line
    rtgen predict --patients <bundled example> --out A_FILE/sub      3 s, one error line

Prints min / median / max of N runs and whether the median meets the target, and checks that each
error command printed exactly one `error:` line naming the key or path. Exit 1 if a command fails
its check (not its target: a busy machine is slower; the figures say what was measured).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"help": 2.0, "models": 2.0, "train": 3.0, "predict": 3.0}
REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(importlib.util.find_spec("rtgen").origin).parent  # found, not imported: this process stays light
EXAMPLE = PACKAGE / "examples" / "openkbp" / "pt_204"  # a bundled patient


def machine() -> str:
    """The CPU model (as `lscpu` names it) and the core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def commands(work: Path) -> dict[str, tuple[list[str], str | None]]:
    """name -> (arguments after `python -m rtgen`, the text its one error line must hold, or None)."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "unet_cpu.yaml").read_text())
    config.setdefault("train", {})["epochs"] = "ten"
    bad = work / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    blocker = work / "a_file"
    blocker.write_text("not a folder")
    return {
        "help": (["--help"], None),
        "models": (["models", "--json"], None),
        "train": (["train", str(bad)], "train.epochs"),
        "predict": (["predict", "--patients", str(EXAMPLE), "--out", str(blocker / "sub")],
                    f"{blocker / 'sub'}: cannot be written"),
    }


def run_once(args: list[str], expect: str | None) -> tuple[float, str | None]:
    """(wall seconds, a problem or None)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rtgen", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if expect is None:
        return wall, None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if proc.returncode != 1 or len(errors) != 1 or expect not in errors[0] or "Traceback" in proc.stderr:
        return wall, f"expected one error line naming {expect!r}, got exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    return wall, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each command (a fresh process each)")
    ap.add_argument("--smoke", action="store_true", help="one run of each: checks the commands, in seconds")
    args = ap.parse_args(argv)
    runs = 1 if args.smoke else max(1, args.runs)
    work = Path(tempfile.mkdtemp(prefix="rtgen-cli-latency-"))
    print(f"machine: {machine()}; {runs} run(s) of each command, wall seconds, a fresh process each")
    print(f"{'command':<10}{'min':>8}{'median':>8}{'max':>8}{'target':>8}  status")
    failed = False
    for name, (cmd, expect) in commands(work).items():
        times, problem = [], None
        for _ in range(runs):
            wall, problem = run_once(cmd, expect)
            times.append(wall)
            if problem:
                break
        med = statistics.median(times)
        status = f"FAILED: {problem}" if problem else ("meets target" if med <= TARGETS[name] else "over target")
        failed |= problem is not None
        print(f"{name:<10}{min(times):>8.2f}{med:>8.2f}{max(times):>8.2f}{TARGETS[name]:>8.1f}  {status}")
        shown = (a.replace(str(work), "$TMP").replace(str(PACKAGE), "rtgen") for a in cmd)
        print(f"{'':<10}rtgen {' '.join(shown)}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
