"""Shared fixtures: the two bundled OpenKBP validation patients (never the shared data folder)."""

from __future__ import annotations

import os

# rich wraps CLI output at 80 columns when it is not a terminal: a long temporary path (longer under
# xdist) would then split a file name that a test looks for
os.environ.setdefault("COLUMNS", "200")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one compute thread a worker: two workers share 2 cores
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import shutil  # noqa: E402
from pathlib import Path

import pytest

from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir

EXAMPLES = example_patients_dir()
EXAMPLE_IDS = ("pt_204", "pt_219")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def patient():
    return read_patient(EXAMPLES / "pt_204")


@pytest.fixture(scope="session")
def patients():
    return [read_patient(EXAMPLES / pid) for pid in EXAMPLE_IDS]


@pytest.fixture
def patient_copy(tmp_path) -> Path:
    """A writable copy of pt_204's folder, for corrupting."""
    dest = tmp_path / "pt_204"
    shutil.copytree(EXAMPLES / "pt_204", dest)
    return dest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads and lose much when the cores are shared: a module
    uses it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
