"""ROI names of real exports: the built-in table (AAPM TG-263 names and common variants) on names as
clinics write them, with the derived structures that must not pass for the organ or the target (PRVs,
rings, optimisation and evaluation structures, margins, "minus" structures); the PTV's level from an
RTPLAN's prescription (a plan built with pydicom); `--aliases` on the commands that read DICOM; and a
dose prediction refused, in one line naming the ROIs found, for a patient without a target."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError, RtgenWarning
from rtgen.data import load_patient
from rtgen.data.records import Patient
from rtgen.data.sources.dicom import (
    BODY,
    DEFAULT_ALIASES,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    load_aliases,
    match_roi_names,
    ptv_dose_gy,
    read_dicom_patient,
    write_dicom_patient,
)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- the built-in table


@pytest.mark.parametrize("name,target", [
    # targets: TG-263 (dose in cGy, classifier, index), dose in Gy, with and without separators
    ("PTV_7000", "PTV70"), ("PTV70", "PTV70"), ("PTV_70Gy", "PTV70"), ("PTV 70 Gy", "PTV70"), ("ptv_70", "PTV70"),
    ("PTVp_7000", "PTV70"), ("PTVp1_7000", "PTV70"), ("PTV1_7000", "PTV70"), ("PTV_High_7000", "PTV70"),
    ("PTV 69.96 Gy", "PTV70"), ("PTV_7000cGy", "PTV70"), ("PTV-56", "PTV56"), ("PTVn_5600", "PTV56"),
    ("PTV63", "PTV63"), ("PTV 63Gy", "PTV63"), ("PTV_6300", "PTV63"),
    # organs
    ("Parotid_L", "LeftParotid"), ("L_Parotid", "LeftParotid"), ("Lt Parotid", "LeftParotid"),
    ("Parotid_Lt", "LeftParotid"), ("LParotid", "LeftParotid"), ("Left Parotid", "LeftParotid"),
    ("PAROTID_L", "LeftParotid"), ("Parotid_R", "RightParotid"), ("R_Parotid", "RightParotid"),
    ("Rt Parotid", "RightParotid"), ("Parotid_Rt", "RightParotid"), ("RParotid", "RightParotid"),
    ("parotid rt", "RightParotid"), ("SpinalCord", "SpinalCord"), ("Spinal_Cord", "SpinalCord"),
    ("Spinal Cord", "SpinalCord"), ("Cord", "SpinalCord"), ("BrainStem", "Brainstem"), ("Brainstem", "Brainstem"),
    ("Brain_Stem", "Brainstem"), ("Esophagus", "Esophagus"), ("Oesophagus", "Esophagus"), ("Esoph", "Esophagus"),
    ("Larynx", "Larynx"), ("Mandible", "Mandible"), ("Bone_Mandible", "Mandible"),
    ("External", BODY), ("BODY", BODY), ("Body", BODY),
])
def test_real_world_names_map_with_no_flag(name, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact levels and table names: nothing to warn about
        assert match_roi_names([name]) == ({target: name}, [])


@pytest.mark.parametrize("name", [
    # PRVs, rings, optimisation, evaluation and derived structures of organs
    "SpinalCord_PRV05", "Cord_PRV", "Cord_PRV5mm", "SpinalCord+5mm", "PRV_Cord", "BrainStem_PRV03", "Brainstem_PRV",
    "Parotid_L_PRV", "Parotid_R-PTV", "Parotid_L_opt", "Parotids", "Mandible_PRV", "Larynx-PTV", "External_PRV",
    "Skin_5mm", "Body-PTV",
    # other structures that TG-263 names apart from rtgen's organs
    "SpinalCanal", "Spinal_Canal", "Brainstem_Core", "Brainstem_Surf", "Glottis", "Larynx_Glottic", "Larynx_SG",
    "Medulla", "Brain",
    # targets: derived ones, other kinds of volume, and PTVs without a level rtgen knows
    "Ring_PTV70", "PTV70_Ring", "opt_PTV70", "zPTV70", "PTV70_opt", "PTV70-eval", "PTV_7000_Eval", "PTV70-5mm",
    "PTV70+5mm", "PTV56_minus_PTV70", "PTV56-PTV70", "PTV70_exp3", "PTV70_crop", "avoid_PTV70", "PTV70_PRV",
    "CTV70", "CTV_7000", "GTV70", "GTV_7000", "ITV", "PTV_All", "PTV",
])
def test_derived_and_other_structures_are_not_mistaken(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtgenWarning)
        assert match_roi_names([name]) == ({}, [name])


def test_ptv_levels_without_a_plan():
    assert ptv_dose_gy("PTV_7000") == 70 and ptv_dose_gy("PTV1") is None and ptv_dose_gy("PTV_High") is None
    assert ptv_dose_gy("CTV_7000") is False and ptv_dose_gy("PTV70_opt") is False
    # 66 Gy is not a level rtgen's models know: the nearest (63 Gy), said in a warning
    with pytest.warns(RtgenWarning, match=r"'PTV_66' \(66 Gy\) read as PTV63"):
        assert match_roi_names(["PTV_66"]) == ({"PTV63": "PTV_66"}, [])
    with pytest.warns(RtgenWarning, match=r"'PTV_5412' \(54.12 Gy\) read as PTV56"):
        assert match_roi_names(["PTV_5412"]) == ({"PTV56": "PTV_5412"}, [])
    # 50 Gy is more than 10 % from 56 Gy: not a target
    with pytest.warns(RtgenWarning, match=r"'PTV_50' \(50 Gy\) is more than 10%"):
        assert match_roi_names(["PTV_50"]) == ({}, ["PTV_50"])
    with pytest.warns(RtgenWarning, match="no dose level in its name"):
        assert match_roi_names(["PTV_High", "PTV_Low"]) == ({}, ["PTV_High", "PTV_Low"])
    # two ROIs for one level: the exact one wins, whatever the order
    with pytest.warns(RtgenWarning, match="'PTV_66' would be PTV63 too"):
        assert match_roi_names(["PTV_66", "PTV_6300"]) == ({"PTV63": "PTV_6300"}, ["PTV_66"])


def test_an_alias_file_extends_the_table_and_beats_the_rule(tmp_path):
    f = tmp_path / "aliases.yaml"
    f.write_text("PTV70: [Volume1]\nPTV56: [PTV_50]\nSpinalCord: [SpinalCord_PRV05]\n")
    table = load_aliases(f)
    names = ["Volume1", "PTV_50", "SpinalCord_PRV05", "Parotid_L"]
    assert match_roi_names(names, table) == (
        {"PTV70": "Volume1", "PTV56": "PTV_50", "SpinalCord": "SpinalCord_PRV05", "LeftParotid": "Parotid_L"}, [])
    assert load_aliases({"PTV70": "Volume1"})["PTV70"] == ("volume1",)  # a mapping, as the Python API takes


def test_the_docs_show_the_whole_table():
    page = (ROOT / "docs" / "dicom.md").read_text()
    missing = [a for names in DEFAULT_ALIASES.values() for a in names if f"`{a}`" not in page]
    assert not missing, missing


# ---------------------------------------------------------------- DICOM patients


def patient(names: dict[str, str], pid: str = "pt") -> Patient:
    """A 20 x 16 x 6 patient: a high-dose box, a low-dose box around it and a cord, the ROIs named
    {role: ROI name} for role in ("high", "low", "cord")."""
    shape = (20, 16, 6)
    ct = np.full(shape, -1000, np.int16)
    ct[2:18, 2:14] = 20
    high = np.zeros(shape, bool)
    high[7:11, 6:10, 1:5] = True
    low = np.zeros(shape, bool)
    low[5:13, 4:12, 1:5] = True
    cord = np.zeros(shape, bool)
    cord[14:16, 7:9, :] = True
    masks = {"high": high, "low": low & ~high, "cord": cord}
    dose = np.where(high, 70.0, np.where(low, 56.0, 5.0)).astype(np.float32) * (ct > -500)
    return Patient(pid, ct, dose, ct > -500, {names[r]: masks[r] for r in names}, (3.0, 3.0, 3.0))


def add_rtplan(folder: Path, prescriptions: list[tuple[str | None, float]], structure_set: str | None = None,
               description: bool = False) -> Path:
    """An RTPLAN (the few tags rtgen reads) prescribing `dose` Gy to the ROI named `roi` (None: a site)
    through ReferencedROINumber (or DoseReferenceDescription if `description`)."""
    st = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    numbers = {r.ROIName: r.ROINumber for r in st.StructureSetROISequence}
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RT_PLAN_STORAGE, generate_uid(), "RTPLAN"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = st.PatientID, st.StudyInstanceUID, generate_uid()
    ds.FrameOfReferenceUID = st.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    ss = Dataset()
    ss.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ss.ReferencedSOPInstanceUID = structure_set or st.SOPInstanceUID
    ds.ReferencedStructureSetSequence = [ss]
    items = []
    for k, (roi, dose) in enumerate(prescriptions, start=1):
        item = Dataset()
        item.DoseReferenceNumber = k
        item.DoseReferenceUID = generate_uid()
        item.DoseReferenceType = "TARGET"
        item.TargetPrescriptionDose = dose
        if roi is None:
            item.DoseReferenceStructureType = "SITE"
        elif description:
            item.DoseReferenceStructureType = "SITE"
            item.DoseReferenceDescription = roi
        else:
            item.DoseReferenceStructureType = "VOLUME"
            item.ReferencedROINumber = numbers[roi]
        items.append(item)
    oar = Dataset()  # a constraint on an organ is not a prescription
    oar.DoseReferenceNumber, oar.DoseReferenceType = len(items) + 1, "ORGAN_AT_RISK"
    oar.DoseReferenceStructureType, oar.ReferencedROINumber = "VOLUME", numbers.get("Cord", 1)
    oar.OrganAtRiskMaximumDose = 45.0
    ds.DoseReferenceSequence = [*items, oar]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = RT_PLAN_STORAGE, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "RTPLAN.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def read_quietly(folder, **kw):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", RtgenWarning)
        p = read_dicom_patient(folder, **kw)
    return p, [str(w.message) for w in rec if issubclass(w.category, RtgenWarning)]


def test_prescription_from_the_rtplan(tmp_path):
    names = {"high": "PTV_High", "low": "PTV_Low", "cord": "Cord"}
    folder = write_dicom_patient(patient(names), tmp_path / "pt")
    p, said = read_quietly(folder)
    assert set(p.structures) == {"SpinalCord"} and any("no target" in s for s in said)  # no plan, no level
    add_rtplan(folder, [("PTV_High", 70.0), ("PTV_Low", 56.0)])
    p, said = read_quietly(folder)
    src = patient(names)
    assert set(p.structures) == {"PTV70", "PTV56", "SpinalCord"}, said
    assert np.array_equal(p.structures["PTV70"], src.structures["PTV_High"])
    assert np.array_equal(p.structures["PTV56"], src.structures["PTV_Low"])
    # by DoseReferenceDescription when the item has no ReferencedROINumber
    add_rtplan(folder, [("PTV_High", 70.0), ("PTV_Low", 56.0)], description=True)
    assert set(read_quietly(folder)[0].structures) == {"PTV70", "PTV56", "SpinalCord"}
    # the plan beats the name: PTV_7000 prescribed 63 Gy is PTV63, and the conflict is said
    folder = write_dicom_patient(patient({"high": "PTV_7000", "cord": "Cord"}), tmp_path / "conflict")
    add_rtplan(folder, [("PTV_7000", 63.0)])
    p, said = read_quietly(folder)
    assert set(p.structures) == {"PTV63", "SpinalCord"}
    assert any("prescribes 63 Gy, its name says 70 Gy" in s for s in said), said
    # one site prescription goes to the one PTV; a plan of another structure set has no say on ROIs
    folder = write_dicom_patient(patient({"high": "PTV", "cord": "Cord"}), tmp_path / "site")
    add_rtplan(folder, [(None, 69.96)])
    assert set(read_quietly(folder)[0].structures) == {"PTV70", "SpinalCord"}
    add_rtplan(folder, [("PTV", 70.0)], structure_set=generate_uid())
    p, said = read_quietly(folder)
    assert "PTV70" not in p.structures and any("not the RTSTRUCT read" in s for s in said), said


def no_target(tmp_path: Path, name: str = "Volume1") -> Path:
    return write_dicom_patient(patient({"high": name, "cord": "Cord"}, name), tmp_path / name)


def test_a_dose_prediction_without_a_target_is_refused_with_the_names(tmp_path):
    folder = no_target(tmp_path)
    add_rtplan(folder, [("Volume1", 70.0)])  # prescribed, but not named as a PTV: the hint names it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtgenWarning)
        with pytest.raises(DataError) as e:
            load_patient(folder, require_target=True)
        message = str(e.value)
        assert message.startswith(str(folder / "RTSTRUCT.dcm")) and "\n" not in message
        assert "no target" in message and "'Volume1', 'Cord', 'External'" in message
        assert "--aliases aliases.yaml holding `PTV70: [Volume1]`" in message
        p = load_patient(folder)  # reading alone: a warning, not an error
        assert "SpinalCord" in p.structures
        p = load_patient(folder, aliases=load_aliases({"PTV70": ["Volume1"]}), require_target=True)
        assert "PTV70" in p.structures
    import rtgen

    assert "PTV70" in rtgen.read_patient(folder, aliases={"PTV70": ["Volume1"]}).structures


def test_predict_batch_goes_on_past_a_patient_without_a_target(tmp_path, flat_model):
    """Two patients: Volume1 is nothing, Volume2 is mapped by --aliases: one predicted, one refused
    (the model: `flat_model`, 60 Gy in the body; the command's batch and reading are under test)."""
    split = tmp_path / "split"
    no_target(split)
    no_target(split, "Volume2")
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("PTV70: [Volume2]\n")
    r = invoke("predict", "--patients", split, "--out", tmp_path / "pred", "--aliases", aliases, "--format", "nifti",
               "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert (tmp_path / "pred" / "Volume2.nii.gz").is_file() and not (tmp_path / "pred" / "Volume1.nii.gz").exists()
    errors = [line.split("error:", 1)[1] for line in r.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no target" in errors[0] and "'Volume1'" in errors[0], r.output
    assert "1 of 2 patients predicted" in r.output


def test_inspect_takes_aliases(tmp_path):
    import json

    folder = no_target(tmp_path)
    aliases = tmp_path / "aliases.json"
    aliases.write_text(json.dumps({"PTV70": ["Volume1"]}))
    r = invoke("inspect", folder, "--out", tmp_path / "insp", "--json", "--aliases", aliases)
    assert r.exit_code == 0, r.output
    assert "PTV70" in r.output
    r = invoke("inspect", folder, "--out", tmp_path / "insp2", "--json")
    assert r.exit_code == 0 and "PTV70" not in r.output.split("[", 1)[1] and "no target" in r.output, r.output


def test_evaluate_and_report_take_aliases_for_the_references(tmp_path):
    from rtgen.data.sources.nifti import write_nifti

    no_target(tmp_path / "split")
    ref = patient({"high": "Volume1", "cord": "Cord"}, "Volume1")
    write_nifti(tmp_path / "pred" / "Volume1.nii.gz", ref.dose * 1.02, ref.spacing)
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("PTV70: [Volume1]\n")
    r = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "split")
    assert r.exit_code == 0 and "HI PTV70" not in r.output and "no target" in r.output, r.output
    r = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "split", "--aliases", aliases)
    assert r.exit_code == 0 and "HI PTV70" in r.output, r.output
    r = invoke("report", "--pred", tmp_path / "pred", "--ref", tmp_path / "split", "--out", tmp_path / "r.html",
               "--aliases", aliases)
    assert r.exit_code == 0 and "PTV70" in (tmp_path / "r.html").read_text(), r.output


@pytest.mark.parametrize("content,problem", [
    (None, "alias file cannot be read|not found"),
    ("PTV70: [Volume1\n", "alias file is not valid JSON/YAML"),
    ("- Volume1\n", "alias file must map rtgen structure names"),
    ("Cochlea: [coch]\n", "unknown structure 'Cochlea'"),
])
def test_a_bad_alias_file_is_one_line_for_every_command(tmp_path, content, problem):
    f = tmp_path / "aliases.yaml"
    if content is not None:
        f.write_text(content)
    for args in (["inspect", tmp_path, "--out", tmp_path / "o"], ["evaluate", "--pred", tmp_path, "--ref", tmp_path],
                 ["report", "--pred", tmp_path, "--ref", tmp_path, "--out", tmp_path / "r.html"],
                 ["convert", "from-dicom", tmp_path, tmp_path / "c"]):
        r = invoke(*args, "--aliases", f)
        assert r.exit_code == 1, (args, r.output)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and re.search(problem, lines[0]) and "aliases.yaml" in lines[0], (args, r.output)


def test_predict_checks_the_alias_file_before_importing_torch(tmp_path):
    f = tmp_path / "aliases.yaml"
    f.write_text("Cochlea: [coch]\n")
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rtgen", "predict", "--patients", str(tmp_path),
                        "--out", str(tmp_path / "out"), "--aliases", str(f)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert r.returncode == 1 and "torch" not in imported
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown structure 'Cochlea'" in errors[0], r.stderr[-2000:]
