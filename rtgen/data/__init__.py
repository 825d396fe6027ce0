"""Patient readers and writers, model input features and datasets. Knows nothing about networks."""

from rtgen.data.openkbp import Patient, read_dose_csv, read_patient, write_dose_csv, write_patient
from rtgen.data.patients import PatientSplit, find_patients, load_patient

__all__ = [
    "Patient", "PatientSplit", "find_patients", "load_patient", "read_dose_csv", "read_patient",
    "write_dose_csv", "write_patient",
]
