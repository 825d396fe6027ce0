"""Fuzzing the readers: a mutated CSV, NIfTI, npz, YAML or checkpoint either loads or raises
rtgen's one-line error (RtgenError); anything else is a crash. The default suite runs a short
seeded version; `rtgen bench fuzz --minutes 10` is the long run (its count goes in the README)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rtgen.bench.fuzz import build_targets, run_fuzz, try_input
from rtgen.cli import app

TARGETS = build_targets()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_every_seed_loads_unmutated(tmp_path, target):
    folder = tmp_path / "case"
    folder.mkdir()
    for rel, content in target.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    target.read(folder / target.entry if target.entry else folder)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(TARGETS), seed=st.integers(0, 2**32 - 1))
def test_mutated_inputs_load_or_raise_one_clear_error(tmp_path_factory, target, seed):
    outcome, error, _ = try_input(target, tmp_path_factory.mktemp("fuzz") / "case", np.random.default_rng(seed))
    assert outcome != "crash", f"{target.name}: {type(error).__name__}: {error}"


def test_fuzz_run_counts_and_the_cli_reports(tmp_path):
    report = run_fuzz(iterations=len(TARGETS) * 5, seed=3, crash_dir=tmp_path / "crashes")
    assert report.total == len(TARGETS) * 5 and not report.crashes
    assert sum(report.loaded.values()) + sum(report.refused.values()) == report.total
    r = CliRunner().invoke(app, ["bench", "fuzz", "--minutes", "0.05", "--crashes", str(tmp_path / "c"),
                                 "--json", str(tmp_path / "fuzz.json")])
    assert r.exit_code == 0, r.output
    assert "total" in r.output and (tmp_path / "fuzz.json").is_file()
