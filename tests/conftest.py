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


class FlatDoseModel:
    """A dose model stand-in (what `rtgen predict` asks of one): 60 Gy in the body, 0 elsewhere. For
    tests of the command's reading, batch and writing, not of a network."""

    output_kind = "dose"
    task = type("Task", (), {"stochastic": False})()

    def sampling_config(self, *args, **kwargs):
        return None

    def predict_with_uncertainty(self, patient, *args):
        import numpy as np

        return np.where(patient.possible_dose_mask, 60.0, 0.0).astype(np.float32), None


@pytest.fixture
def flat_model(monkeypatch):
    """`rtgen predict` with `FlatDoseModel` whatever model it names (and no import of the models)."""
    import rtgen.inference

    monkeypatch.setattr(rtgen.inference, "load_predictor", lambda *args: FlatDoseModel())
    monkeypatch.setattr(rtgen.inference, "resolve_model", lambda model: model)
