"""Every benchmark script runs: each one's `--smoke` mode (seconds: tiny sizes, the bundled OpenKBP
patients, the test CT/MR pair), in this process (one import of torch for all), and the index in
benchmarks/README.md and docs/benchmarks.md lists exactly the scripts that exist."""

import re
import runpy
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SHARED = {"common.py"}  # imported by the scripts, not a benchmark
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in SHARED)
# their smoke modes run shipped 3D models on a whole patient: minutes on 2 cores, so `-m slow` only
SLOW = {"diffkt3d_ablation.py", "diffkt3d_autoencoder_floor.py"}


def indexed(page: Path) -> list[str]:
    """The scripts an index page lists: the first cell of each table row, `NAME.py`."""
    return [m.group(1) for m in re.finditer(r"^\| \[?`([\w]+\.py)`", page.read_text(), re.MULTILINE)]


@pytest.mark.parametrize("page", ["benchmarks/README.md", "docs/benchmarks.md"])
def test_the_index_lists_every_benchmark_once_and_nothing_else(page):
    names = indexed(REPO / page)
    assert sorted(names) == SCRIPTS, f"{page}: index {sorted(names)} != scripts {SCRIPTS}"
    text = (REPO / page).read_text()
    for name in SCRIPTS:  # each with its smoke command
        assert f"python benchmarks/{name} --smoke" in text, f"{page}: no smoke command for {name}"


def test_no_script_imports_a_private_name_or_another_script():
    for name in SCRIPTS + sorted(SHARED):
        source = (BENCHMARKS / name).read_text()
        assert not re.search(r"import[^\n]*\b_[a-z]\w*|\brtgen(\.\w+)*\._[a-z]\w*", source), name
        others = {Path(s).stem for s in SCRIPTS} - {Path(name).stem}
        imported = set(re.findall(r"^\s*(?:from|import) (\w+)", source, re.MULTILINE))
        assert not imported & others, f"{name} imports {imported & others}"


@pytest.mark.parametrize("name", sorted(SLOW))
def test_the_slow_scripts_load_in_the_default_run(name, monkeypatch):
    """Their imports and names checked in every run; their smoke runs with `-m slow`."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    assert callable(runpy.run_path(str(BENCHMARKS / name), run_name="smoke")["main"])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SCRIPTS])
def test_smoke(name, monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what the scripts write goes here
    monkeypatch.chdir(tmp_path)
    main = runpy.run_path(str(BENCHMARKS / name), run_name="smoke")["main"]
    assert main(["--smoke"]) in (None, 0)
    assert capsys.readouterr().out.strip(), f"{name} printed nothing"
