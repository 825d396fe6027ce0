"""Sources: read a patient from any layout (OpenKBP CSV folder, NIfTI folder, .npz cache), and whole
splits lazily. A new source is one module here plus one line in `load_patient` and `is_patient`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from rtgen.data.sources.nifti import is_nifti_patient_dir, read_nifti_patient
from rtgen.data.sources.npz import read_npz
from rtgen.data.sources.openkbp import Patient, is_patient_dir, patient_number, read_patient
from rtgen.core.errors import DataError


def load_patient(path: str | Path, load_ct: bool = True, load_dose: bool = True) -> Patient:
    """Read a patient from whichever format `path` holds."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return read_npz(path, load_ct, load_dose)
    if is_nifti_patient_dir(path):
        return read_nifti_patient(path, load_ct, load_dose)
    return read_patient(path, load_ct, load_dose)


def is_patient(path: str | Path) -> bool:
    """One patient in any layout rtgen reads: an OpenKBP CSV folder, a NIfTI folder or an .npz cache."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".npz") or is_patient_dir(path) or is_nifti_patient_dir(path)


def patients_in(path: str | Path) -> list[Path]:
    """`path` itself if it is one patient, else the patients of the split folder it is."""
    return [Path(path)] if is_patient(path) else find_patients(path)


def find_patients(root: str | Path) -> list[Path]:
    """The patient entries of a split folder, sorted by patient number."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "split folder not found")
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and is_patient(p)]
    if not entries:
        raise DataError(root, "holds no patients (expected pt_* folders or .npz caches)")
    return sorted(entries, key=lambda p: patient_number(p.name))


class PatientSplit(Sequence[Patient]):
    """A lazily read split: patients are loaded on access, never all at once."""

    def __init__(self, root: str | Path, load_ct: bool = True, load_dose: bool = True, progress: bool = True):
        self.root = Path(root)
        self.paths = find_patients(self.root)
        self.load_ct, self.load_dose, self.progress = load_ct, load_dose, progress

    @property
    def ids(self) -> list[str]:
        return [p.name.removesuffix(".npz") for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return load_patient(self.paths[i], self.load_ct, self.load_dose)

    def __iter__(self) -> Iterator[Patient]:
        for path in tqdm(self.paths, desc=f"reading {self.root.name}", unit="patient", disable=not self.progress):
            yield load_patient(path, self.load_ct, self.load_dose)
