"""DICOM RT that a planning system wrote: dicompyler-core's example export (a breast boost plan: a CT
slice, an RTSTRUCT of ten ROIs, an RTPLAN and its RTDOSE; tests/data/dicompyler_example, its README.md)
read, refused and written as rtgen does with a clinic's files: the export as it ships (one CT slice)
refused, its ROIs (no head-and-neck structure) listed, a dose predicted once its target is mapped, the
plan dose's DVHs as dicompyler-core computes them, and the failures of real exports (a wrong Modality,
a plan dose beside a beam dose, an empty frame of reference, an invalid PatientSex) on these files."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError, RtgenNote, RtgenWarning
from rtgen.data.sources.dicom import chosen_doses, read_dicom_case, read_dicom_patient

EXAMPLE = Path(__file__).parent / "data" / "dicompyler_example"
ROIS = ["BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed", "Tumor Bed Block"]
DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian/Ubuntu: apt-get "
                                                              "install dicom3tools)")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def errors_of(r) -> list[str]:
    return [line.split("error:", 1)[1].strip() for line in r.output.splitlines() if "error:" in line]


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert "Assertion" not in out.stderr, out.stderr  # dciodvfy gave up on the file
    return [s for s in (out.stdout + out.stderr).splitlines() if s.startswith("Error")]


def unpack(name: str, dest: Path) -> Path:
    """One of the example files (stored gzipped to keep the repository small) written to `dest`."""
    with gzip.open(EXAMPLE / f"{name}.gz") as f, open(dest, "wb") as g:
        shutil.copyfileobj(f, g)
    return dest


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The export with a CT series: rtss.dcm, rtplan.dcm, rtdose.dcm and CT/ct.NNN.dcm.

    The export ships one CT slice of the 98 the plan was made on; dicompyler-core's own tests need no
    more, since it computes DVHs from the RTSTRUCT and the RTDOSE alone. rtgen reads a patient on its CT
    grid, so the series is rebuilt from that slice: one copy per frame of the RTDOSE (the z positions
    the RTSTRUCT's contours are drawn on too), each with its own ImagePositionPatient, SliceLocation
    and InstanceNumber, and the SOPInstanceUID the RTSTRUCT's contours on that slice refer to, in the
    slice's series and frame of reference. The CT values are the one slice's, repeated."""
    folder = tmp_path_factory.mktemp("dicompyler") / "breast"
    (folder / "CT").mkdir(parents=True)
    for name in ("rtss.dcm", "rtplan.dcm", "rtdose.dcm"):
        unpack(name, folder / name)
    rd = pydicom.dcmread(folder / "rtdose.dcm", stop_before_pixels=True)
    frames = float(rd.ImagePositionPatient[2]) + np.array(rd.GridFrameOffsetVector, float)
    image_at: dict[float, str] = {}  # z -> the SOPInstanceUID of the image the contours there are drawn on
    for rc in pydicom.dcmread(folder / "rtss.dcm").ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            z = float(c.ContourData[2])
            k = int(np.argmin(abs(frames - z)))
            assert abs(frames[k] - z) < 0.01, z  # every contour lies on a frame of the dose
            image_at[k] = c.ContourImageSequence[0].ReferencedSOPInstanceUID
    ds = pydicom.dcmread(unpack("ct.0.dcm", folder / "ct.0.tmp"))
    (folder / "ct.0.tmp").unlink()
    assert abs(float(ds.ImagePositionPatient[2]) - frames[-1]) < 0.01  # the one slice is the last frame's
    for k, z in enumerate(frames):
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], f"{z:.4f}"]
        ds.SliceLocation, ds.InstanceNumber = f"{z:.4f}", k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = image_at.get(k) or pydicom.uid.generate_uid()
        ds.save_as(folder / "CT" / f"ct.{k:03d}.dcm")
    return folder


def variant(export: Path, dest: Path) -> Path:
    """A copy of the export to edit (files hard-linked where possible: `edit` replaces, never writes
    through, a link)."""
    for src in export.rglob("*"):
        if src.is_file():
            target = dest / src.relative_to(export)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
    return dest


def edit(path: Path, dest: Path | None = None, **tags) -> Path:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    dest = dest or path
    dest.unlink(missing_ok=True)
    ds.save_as(dest)
    return dest


# ---------------------------------------------------------------- as it ships, and as a patient


def test_the_export_as_it_ships_one_ct_slice_is_refused(tmp_path):
    folder = tmp_path / "breast"
    folder.mkdir()
    for name in ("ct.0.dcm", "rtss.dcm", "rtplan.dcm", "rtdose.dcm"):
        unpack(name, folder / name)
    r = invoke("inspect", folder, "--out", tmp_path / "out")
    assert r.exit_code == 1, r.output
    (line,) = errors_of(r)
    assert line.startswith(f"{folder / 'ct.0.dcm'}: the CT series has 1 slice"), line
    assert "Traceback" not in r.output


def test_inspect_reads_the_export(export, tmp_path):
    """BODY is the possible dose mask; the breast ROIs match none of rtgen's (head-and-neck) structures
    and are listed; the plan dose is read; the RTPLAN's 14 Gy to the Breast site is far from 56, 63
    and 70 Gy, so no ROI is a target, which is said with the ROI to map."""
    r = invoke("inspect", export, "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    import json

    (s,) = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["grid"] == [512, 512, 98] and s["spacing_mm"] == pytest.approx([1.074219, 1.074219, 3.0])
    assert s["structures"] == {}
    assert s["possible_dose_mask_cc"] == pytest.approx(14882.1, rel=0.002)  # BODY as dicompyler-core measures it
    rd = pydicom.dcmread(export / "rtdose.dcm")
    plan_max = float(rd.pixel_array.max() * rd.DoseGridScaling)
    assert s["dose"]["max_gy"] == pytest.approx(plan_max, abs=0.3)  # its maximum, sampled on the CT's grid
    text = " ".join(r.output.split())
    unmatched = "ROIs not matched to rtgen structures, not used (name them in an alias file to use them): "
    assert unmatched + ", ".join(repr(n) for n in ROIS[1:]) in text
    assert "no target" in text and "the RTPLAN prescribes 14 Gy to 'Breast', more than 10% from 56, 63 and 70 Gy" in text
    assert "--aliases aliases.yaml holding `PTV70: [Breast]`" in text


# ---------------------------------------------------------------- a prediction on it


# the dose model is `flat_model` (tests/conftest.py): 60 Gy in the body. The reading and writing of the
# export are under test, not a network (the shipped model on this patient:
# `test_the_shipped_model_predicts_an_rtdose_on_it`)


def test_predict_without_a_target_is_refused_with_the_roi_names(export, tmp_path, flat_model):
    r = invoke("predict", "--patients", export, "--out", tmp_path / "pred", "--format", "dicom", "--device", "cpu")
    assert r.exit_code == 1, r.output
    (line,) = errors_of(r)
    assert line.startswith(f"{export / 'rtss.dcm'}: no target: ") and "ROIs found: " + ", ".join(map(repr, ROIS)) in line
    assert line.endswith("map the PTV with --aliases aliases.yaml holding `PTV70: [Breast]` (skipped)"), line
    assert not list((tmp_path / "pred").glob("*.dcm"))


def _check_predicted_rtdose(path: Path, export: Path) -> pydicom.Dataset:
    """The RTDOSE written onto the export: the plan's dose (PLAN, referencing rtplan.dcm), on the CT's
    frame of reference and structure set, conformant."""
    ds = pydicom.dcmread(path)
    plan = pydicom.dcmread(export / "rtplan.dcm", stop_before_pixels=True)
    rs = pydicom.dcmread(export / "rtss.dcm", stop_before_pixels=True)
    ct = pydicom.dcmread(export / "CT" / "ct.000.dcm", stop_before_pixels=True)
    assert ds.DoseSummationType == "PLAN"
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert (ds.FrameOfReferenceUID, ds.StudyInstanceUID) == (ct.FrameOfReferenceUID, ct.StudyInstanceUID)
    assert {str(d.DVHReferencedROISequence[0].ReferencedROINumber) for d in ds.DVHSequence} == \
        {str(r.ROINumber) for r in rs.StructureSetROISequence}  # every ROI's DVH, Areola's (no contour) too
    if DCIODVFY is not None:
        assert not dciodvfy_errors(path)
    return ds


@pytest.mark.slow
def test_the_shipped_model_predicts_an_rtdose_on_it(export, tmp_path):
    """The default model (head-and-neck, so the dose is no breast plan: the flow is under test) on the
    export with its Breast mapped as PTV70 (20 to 35 s on two CPU cores)."""
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("PTV70: [Breast]\n")
    r = invoke("predict", "--patients", export, "--out", tmp_path / "pred", "--format", "dicom", "--device", "cpu",
               "--aliases", aliases)
    assert r.exit_code == 0, r.output
    ds = _check_predicted_rtdose(tmp_path / "pred" / "breast_RTDOSE.dcm", export)
    assert 30.0 < float(ds.pixel_array.max() * ds.DoseGridScaling) < 100.0


# ---------------------------------------------------------------- DVHs: rtgen and dicompyler-core


def test_plan_dose_dvh_agrees_with_dicompyler_core(export, monkeypatch):
    """rtgen's DVH (the plan dose on the CT's grid, the ROI rasterised there, as its RTDOSE's DVH module
    is computed) against dicompyler-core's (on the dose grid, from the RTSTRUCT and RTDOSE alone).
    Measured: Dmean, D95 and D2 within 0.06 Gy (Tumor Bed Block D95), volumes within 1.1 %."""
    import pydicom.dicomio

    monkeypatch.setattr(pydicom.dicomio, "read_file", pydicom.dcmread, raising=False)  # dicompyler-core 0.5.6
    dvhcalc = pytest.importorskip("dicompylercore.dvhcalc")
    from rtgen.data.sources.dicom import read_rtdose_on_grid
    from rtgen.data.sources.dicom.read import read_dose_reference
    from rtgen.dosimetry.dvh import dmean, dose_at_volume_percent

    ref, masks, plan_uid = read_dose_reference(export)
    assert plan_uid == pydicom.dcmread(export / "rtplan.dcm", stop_before_pixels=True).SOPInstanceUID
    dose = read_rtdose_on_grid(export / "rtdose.dcm", ref.shape, ref).ravel()
    voxel_cc = float(np.prod(ref.spacing)) / 1000.0
    for number, (name, voxels) in masks.items():
        if name not in ("Breast", "Heart", "Lt Lung", "Tumor Bed"):
            continue
        theirs = dvhcalc.get_dvh(str(export / "rtss.dcm"), str(export / "rtdose.dcm"), number)
        ours = dose[voxels]
        assert voxels.size * voxel_cc == pytest.approx(theirs.volume, rel=0.015), name
        for what, mine, other in (("Dmean", dmean(ours), theirs.mean),
                                  ("D95", dose_at_volume_percent(ours, 95), theirs.D95.value),
                                  ("D2", dose_at_volume_percent(ours, 2), theirs.D2.value)):
            assert abs(mine - other) < 0.5, (name, what, mine, other)


# ---------------------------------------------------------------- the failures of real exports


def test_an_rtstruct_with_a_wrong_modality_is_read_by_its_sop_class(export, tmp_path):
    folder = variant(export, tmp_path / "breast")
    edit(folder / "rtss.dcm", Modality="CT")
    with pytest.warns(RtgenWarning, match=r"rtss\.dcm: Modality 'CT' but SOP Class UID .* read as RTSTRUCT"):
        case = read_dicom_case(folder, load_ct=False, load_dose=False)
    assert case.rtstruct == folder / "rtss.dcm"
    assert case.matched == {"possible_dose_mask": "BODY"} and case.unmatched == ROIS[1:]


def test_the_plan_dose_is_chosen_before_a_beam_dose_and_dose_chooses(export, tmp_path):
    """The same RTDOSE twice, once relabelled BEAM (named to come first): the PLAN one is read and the
    choice said; --dose reads the other."""
    folder = variant(export, tmp_path / "breast")
    beam = edit(export / "rtdose.dcm", folder / "RD_beam.dcm", DoseSummationType="BEAM",
                SOPInstanceUID=pydicom.uid.generate_uid())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case = read_dicom_case(folder, load_ct=False)
    assert (case.dose.path, case.dose.how) == (folder / "rtdose.dcm", "PLAN")
    notes = [str(w.message) for w in caught if issubclass(w.category, RtgenNote)]
    assert notes == [f"{folder}: 2 RTDOSEs: using the plan dose rtdose.dcm (PLAN); not used: RD_beam.dcm (BEAM) "
                     "(--dose FILE chooses another)"], notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtgenWarning)
        with chosen_doses([beam]):
            other = read_dicom_case(folder, load_ct=False)
    assert (other.dose.path, other.dose.how, other.dose.summation) == (beam, "--dose", "BEAM")
    assert np.array_equal(other.patient.dose, case.patient.dose)  # the same dose, relabelled


def test_an_empty_frame_of_reference_on_the_ct_is_refused(export, tmp_path):
    folder = variant(export, tmp_path / "breast")
    for f in sorted((folder / "CT").glob("*.dcm")):
        edit(f, FrameOfReferenceUID="")
    with pytest.raises(DataError, match=r"CT/ct\.\d{3}\.dcm: empty FrameOfReferenceUID") as e:
        read_dicom_patient(folder)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # pydicom's, on writing the bad value
def test_predict_with_an_alias_writes_the_plan_rtdose_without_an_invalid_patient_sex(export, tmp_path, flat_model):
    """Mapped by an alias file, the Breast is the target and the flow runs to an RTDOSE of the plan,
    conformant. PatientSex X on the CT (valid: M, F, O or empty) is named in a warning and written empty,
    the rest of the identity copied. (`rtgen convert to-dicom` copies no identity from what it converts:
    PatientName is the patient's id, PatientSex empty.)"""
    folder = variant(export, tmp_path / "breast")
    for f in sorted((folder / "CT").glob("*.dcm")):
        edit(f, PatientSex="X")
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("PTV70: [Breast]\n")
    r = invoke("predict", "--patients", folder, "--out", tmp_path / "pred", "--format", "dicom", "--device", "cpu",
               "--aliases", aliases)
    assert r.exit_code == 0, r.output
    assert re.search(rf"{re.escape(str(folder / 'CT'))}/ct\.\d{{3}}\.dcm: invalid PatientSex 'X': not copied",
                     " ".join(r.output.split())), r.output
    ds = _check_predicted_rtdose(tmp_path / "pred" / "breast_RTDOSE.dcm", folder)
    ct = pydicom.dcmread(export / "CT" / "ct.000.dcm", stop_before_pixels=True)
    assert ds.PatientSex == "" and ct.PatientSex == "O"
    assert float((ds.pixel_array * float(ds.DoseGridScaling)).max()) == pytest.approx(60.0, abs=0.01)
    assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate) == (ct.PatientName, ct.PatientID, ct.PatientBirthDate)
