"""CT-to-MR registration with SimpleITK: a constrained, checked rigid step, then a coarse B-spline,
with QA before and after (body Dice, bone distance, MI, checkerboard). Paired CT/MR are never
voxel-aligned as scanned; synthesis models train and are scored on the MR grid, so the CT must be
brought there first. Registration is SimpleITK's; only the guards and the QA are rtgen's."""

from rtgen.data.registration.folders import LoadedPair, PairFiles, find_pairs, load_pair, read_image
from rtgen.data.registration.pair import RegistrationError, RegistrationResult, RegistrationSettings, register_pair
from rtgen.data.registration.qa import PairQA, QAThresholds, assess, checkerboard_png
from rtgen.data.registration.run import PatientReport, register_patient

__all__ = [
    "LoadedPair", "PairFiles", "PairQA", "PatientReport", "QAThresholds", "RegistrationError", "RegistrationResult",
    "RegistrationSettings", "assess", "checkerboard_png", "find_pairs", "load_pair", "read_image", "register_pair",
    "register_patient",
]
