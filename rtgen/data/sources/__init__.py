"""Sources: read a patient from any layout (OpenKBP CSV folder, NIfTI folder, .npz cache), and whole
splits lazily. A new source is one module here plus one line in `load_patient` and `is_patient`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from rtgen.core.errors import DataError
from rtgen.core.structures import TARGETS
from rtgen.data.sources.dicom import is_dicom_dir, is_dicom_patient_dir, read_dicom_patient
from rtgen.data.sources.nifti import is_nifti_patient_dir, read_nifti_patient
from rtgen.data.sources.npz import read_npz
from rtgen.data.sources.openkbp import Patient, is_patient_dir, patient_number, read_patient

VOLUME_SUFFIXES = (".csv.gz", ".csv", ".nii.gz", ".nii")


def load_patient(path: str | Path, load_ct: bool = True, load_dose: bool = True, aliases=None,
                 require_target: bool = False) -> Patient:
    """Read a patient from whichever format `path` holds; every volume is validated by its reader.

    `aliases` (a DICOM export: an alias table or file, see `read_dicom_patient`) maps ROI names;
    `require_target` refuses a patient with no target (PTV56, PTV63 or PTV70), for a dose prediction."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        patient = read_npz(path, load_ct, load_dose)
    else:
        if path.is_dir():
            check_patient_folder(path)
        if is_nifti_patient_dir(path):
            patient = read_nifti_patient(path, load_ct, load_dose)
        elif not is_patient_dir(path) and is_dicom_dir(path):  # CT series (+ RTSTRUCT, RTDOSE), any nesting
            return read_dicom_patient(path, load_ct, load_dose, aliases=aliases, require_target=require_target)
        else:
            patient = read_patient(path, load_ct, load_dose)
    if require_target and not any(t in patient.structures for t in TARGETS):
        raise DataError(path, f"no target (PTV56, PTV63 or PTV70), and a dose is predicted from the patient's "
                              f"targets; structures found: {', '.join(patient.structures) or 'none'}")
    return patient


def check_patient_folder(folder: Path) -> None:
    """Refuse what no reader can resolve by itself: an empty folder (a half-copied export) and two
    files for one volume (ct.csv beside ct.nii.gz: which one is the patient?)."""
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    if not names:
        raise DataError(folder, "is an empty patient folder (a half-copied export?)")
    by_stem: dict[str, list[str]] = {}
    for name in names:
        suffix = next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)
        if suffix:
            by_stem.setdefault(name[: -len(suffix)], []).append(name)
    for stem, files in sorted(by_stem.items()):
        if len(files) > 1:
            raise DataError(folder, f"holds {' and '.join(sorted(files))}: two files for the volume {stem!r}; "
                                    "keep one (rtgen does not guess which is right)")


def is_patient(path: str | Path) -> bool:
    """One patient in any layout rtgen reads: an OpenKBP CSV folder, a NIfTI folder, an .npz cache or a
    DICOM folder (checked last: it may sniff a few file headers)."""
    path = Path(path)
    return ((path.is_file() and path.suffix == ".npz") or is_patient_dir(path) or is_nifti_patient_dir(path)
            or is_dicom_patient_dir(path))


def patients_in(path: str | Path) -> list[Path]:
    """`path` itself if it is one patient, else the patients of the split folder it is."""
    return [Path(path)] if is_patient(path) else find_patients(path)


def find_patients(root: str | Path) -> list[Path]:
    """The patient entries of a split folder, sorted by patient number: every .npz cache and every
    sub-folder. A sub-folder that is not a readable patient (empty, half-copied) is kept, so that
    reading it fails with its reason and batch commands report it, instead of skipping it unseen."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "split folder not found" if not root.exists() else "is not a folder or a patient")
    entries = [p for p in root.iterdir()
               if not p.name.startswith(".") and (p.is_dir() or is_patient(p))]
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
