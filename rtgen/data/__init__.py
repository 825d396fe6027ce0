"""Records of named volumes, sources that read them (OpenKBP CSV, NIfTI, npz), transforms that turn
them into model inputs, and datasets. Knows nothing about networks."""

from rtgen.data.records import Patient, Record
from rtgen.data.sources import PatientSplit, find_patients, load_patient
from rtgen.data.sources.openkbp import read_dose_csv, read_patient, write_dose_csv, write_patient

__all__ = [
    "Patient", "PatientSplit", "Record", "find_patients", "load_patient", "read_dose_csv", "read_patient",
    "write_dose_csv", "write_patient",
]
